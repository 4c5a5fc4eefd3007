"""The feature map in headless Chromium: clicking a point opens that latent's feature page."""

from __future__ import annotations

import numpy as np
import pytest
from dictionary_workspace import make_dictionary_workspace
from test_app_browser import CHROMIUM, CHROMIUM_ARGS, chromium_on

import saebench.feature_map as fm

pytestmark = pytest.mark.skipif(not __import__("os").path.exists(CHROMIUM),
                                reason=f"{CHROMIUM} is missing")
# Scattergl draws with WebGL; headless Chromium without a GPU needs SwiftShader allowed.
ARGS = [a for a in CHROMIUM_ARGS if a != "--disable-gpu"] + ["--enable-unsafe-swiftshader"]
LATENT = 21

# Plotly's own axis maps give the pixel of a data point inside the page.
POINT_JS = """([x, y]) => {
  const gd = document.querySelector('.js-plotly-plot');
  const r = gd.getBoundingClientRect(), xa = gd._fullLayout.xaxis, ya = gd._fullLayout.yaxis;
  return [r.left + xa._offset + xa.l2p(x), r.top + ya._offset + ya.l2p(y)];
}"""


def test_clicking_a_map_point_opens_its_feature_page(tmp_path, monkeypatch):
    ws = make_dictionary_workspace(tmp_path / "ws")
    monkeypatch.setattr(fm, "embed", lambda W, s=None: np.ascontiguousarray(W[:, :2]))
    table = fm.read_feature_map(fm.build_feature_map(ws / "saes" / "sae-a").parent)
    x, y = float(table["x"][LATENT].as_py()), float(table["y"][LATENT].as_py())
    with chromium_on(ws, ARGS) as (browser, port):
        page = browser.new_page(viewport={"width": 1400, "height": 1400})
        page.goto(f"http://localhost:{port}/feature_map?sae=sae-a")
        page.locator(".js-plotly-plot .legendtext").first.wait_for(timeout=60_000)
        page.wait_for_timeout(1000)  # the WebGL draw follows the SVG legend
        page.screenshot(path=str(tmp_path / "feature_map.png"))
        px, py = page.evaluate(POINT_JS, [x, y])
        page.mouse.click(px, py)
        page.get_by_text(f"Latent {LATENT}").first.wait_for(timeout=60_000)
        assert f"latent={LATENT}" in page.url and "/feature" in page.url
