"""A real browser on the real server: `saebench app`, headless Chromium driven by Playwright."""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update",
                 "--disable-sync"]

pytestmark = pytest.mark.skipif(
    not os.path.exists(CHROMIUM),
    reason=f"{CHROMIUM} is missing (Debian: apt-get install -y chromium)")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _serve(workspace: Path, port: int) -> subprocess.Popen:
    from saebench.cli import COMMANDS

    if "app" in COMMANDS:
        cmd = [sys.executable, "-m", "saebench.cli", "app"]
    else:  # until the subcommand is registered in saebench/cli.py
        cmd = [sys.executable, "-c", "import sys, tyro; from saebench.commands.app import "
               "Args, main; main(tyro.cli(Args, args=sys.argv[1:]))"]
    return subprocess.Popen(cmd + ["--workspace", str(workspace), "--port", str(port)],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def _stop(proc: subprocess.Popen) -> None:
    """Stop the server; a loaded machine can take longer than a polite wait to exit."""
    proc.terminate()
    try:
        proc.wait(timeout=20)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout=20)


def _wait_healthy(proc: subprocess.Popen, port: int, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"saebench app exited early:\n{proc.stdout.read()}")
        try:
            with urllib.request.urlopen(f"http://localhost:{port}/_stcore/health", timeout=1):
                return
        except OSError:
            time.sleep(0.2)
    pytest.fail("saebench app did not become healthy in time")


# Every element of the main column whose content is wider than its box (scrollWidth against
# clientWidth): text running under its neighbours, a metric clipped to "3,688 / 248,1…", a
# table running off the page. Skipped: inline boxes (clientWidth 0), 1-px screen-reader text
# (clipped on purpose), the inside of plotly's SVG (its own layout), and a slider's value
# label (it hangs over the thumb by design). A dataframe's corner resize handle (empty, 20 px,
# 10 px outside the frame by design) is hidden first, or every dataframe and its column count.
OVERFLOWING = """() => {
  const main = document.querySelector('[data-testid="stMain"]');
  for (const el of main.querySelectorAll('[data-testid="stDataFrameResizable"] div')) {
    if (el.style.cursor.endsWith('-resize') && !el.childElementCount) {
      el.style.display = 'none';
    }
  }
  const out = [];
  for (const el of [main, ...main.querySelectorAll('*')]) {
    if (el instanceof SVGElement || el.clientWidth < 4) continue;
    if (el.closest('[data-testid="stSlider"]')) continue;
    // Text cut with an ellipsis overflows by any fraction of a pixel ("3,688 / 248,1…" was
    // 223.86 px of text in a 223 px box, scrollWidth 224), so measure the text itself there.
    const style = getComputedStyle(el);
    const clipped = style.textOverflow === 'ellipsis' && (() => {
      const range = document.createRange();
      range.selectNodeContents(el);
      const box = el.getBoundingClientRect().width - parseFloat(style.paddingLeft)
                  - parseFloat(style.paddingRight);
      return range.getBoundingClientRect().width > box + 0.25;
    })();
    if (clipped || el.scrollWidth > el.clientWidth + 1) {
      out.push(`${el.tagName}[${el.getAttribute('data-testid') || el.className}] `
               + `${el.scrollWidth} > ${el.clientWidth}: ${(el.innerText || '').slice(0, 60)}`);
    }
  }
  return out;
}"""
# The script has finished (stApp's script state) and no element is still a loading skeleton.
SETTLED = """() => {
  const app = document.querySelector('[data-testid="stApp"]');
  return app && app.getAttribute('data-test-script-state') === 'notRunning'
         && !document.querySelector('[data-testid="stSkeleton"]');
}"""
ERRORS = '[data-testid="stException"], [data-testid="stAlertContentError"]'
# Pages that need what the synthetic workspace lacks (a model that loads, a store to sample
# excerpts from): test_model_pages_in_chromium visits them on the tiny real workspace.
NEEDS_MODEL_OR_STORE = {"test_text", "blind_test"}


def _pages() -> list[str]:
    """The url paths registered in app/main.py's PAGES (read, not imported: it runs the app)."""
    import ast

    tree = ast.parse((Path(__file__).resolve().parents[1] / "app" / "main.py").read_text())
    node = next(n for n in tree.body if isinstance(n, ast.Assign)
                and getattr(n.targets[0], "id", "") == "PAGES")
    return [e.elts[2].value for e in node.value.elts]  # the first is the default page


@contextlib.contextmanager
def chromium_on(workspace: Path, args: list[str] = CHROMIUM_ARGS):
    """Headless Chromium and the port of `saebench app` serving the workspace; both stopped
    on exit, the server even when the browser never starts."""
    sync_api = pytest.importorskip("playwright.sync_api", reason="pip install playwright")
    port = _free_port()
    proc = _serve(workspace, port)
    try:
        _wait_healthy(proc, port)
        with sync_api.sync_playwright() as pw:
            browser = pw.chromium.launch(executable_path=CHROMIUM, args=args)
            yield browser, port
            browser.close()
    finally:
        _stop(proc)


@contextlib.contextmanager
def _browser_on(workspace: Path):
    """A page of headless Chromium (1400 px wide) and the port of `saebench app` serving the
    workspace."""
    with chromium_on(workspace) as (browser, port):
        # Tall enough that a full-page screenshot holds the whole page (the main column
        # scrolls inside the viewport, not the document).
        yield browser.new_page(viewport={"width": 1400, "height": 4000}), port


def _check_page(page, name: str, out: Path) -> list[str]:
    """Screenshot `out/<name>.png`; the page's error elements and overflowing elements."""
    page.wait_for_function(SETTLED, timeout=60_000)
    page.wait_for_timeout(1500)  # plotly and st.html lay out after the script has finished
    page.screenshot(path=str(out / f"{name}.png"), full_page=True)
    problems = [f"{name}: error element: {e.inner_text()[:200]}" for e in
                page.locator(ERRORS).all()]
    if page.get_by_text("Page not found").count():  # Streamlit's modal for a wrong url path
        problems.append(f"{name}: page not found")
    return problems + [f"{name}: overflow: {o}" for o in page.evaluate(OVERFLOWING)]


def test_pages_in_chromium(tmp_path):
    """Every page at 1400 px: no error element, nothing wider than its box; one screenshot
    per page in tmp_path. The feature page also has its tokens, colours and hovers checked."""
    from test_app_feature_polish import make_polished_workspace

    problems: list[str] = []
    with _browser_on(make_polished_workspace(tmp_path / "ws")) as (page, port):
        page.goto(f"http://localhost:{port}/feature?sae=synth-a&latent=3")
        page.wait_for_selector(".saebench-tok", timeout=60_000)  # a loaded machine
        page.get_by_text("Promoted tokens").wait_for(timeout=10_000)
        assert page.locator(".saebench-tok").count() >= 33
        center = page.locator(".saebench-tok", has_text="apple").first
        title = center.get_attribute("title")
        assert float(title.split(" ·")[0]) == pytest.approx(1.3, rel=1e-3)
        assert "next-token loss +0.25" in title  # the loss effect, on hover
        assert "rgba(255, 140, 0, 1.00)" in center.get_attribute("style")
        # Streamlit streams elements in: wait for the logit table rather than count it once.
        page.locator("table").filter(has_text="banana").first.wait_for(timeout=30_000)
        problems += _check_page(page, "feature", tmp_path)
        for i, name in enumerate(_pages()):
            if name in NEEDS_MODEL_OR_STORE or name == "feature":
                continue
            path = "" if i == 0 else name  # the default page lives at the root
            page.goto(f"http://localhost:{port}/{path}?sae=synth-a&latent=3")
            problems += _check_page(page, name, tmp_path)
    assert (tmp_path / "feature.png").stat().st_size > 10_000
    assert not problems, "\n".join(problems)


def test_model_pages_in_chromium(tiny_workspace, tmp_path):
    """The two pages that run the model or read the store, on a copy of the tiny real
    workspace (random:tiny model, its store, one labelled latent): each renders its working
    state (per-token features; the blind test's excerpts) with no error and no overflow."""
    import shutil

    from workspace_builder import SAE_NAME

    from app.data import save_label

    workspace = tmp_path / "ws"
    shutil.copytree(tiny_workspace, workspace)
    latent = _busiest(workspace)
    save_label(workspace, SAE_NAME, latent, "a test label")
    problems: list[str] = []
    with _browser_on(workspace) as (page, port):
        assert set(_pages()) >= NEEDS_MODEL_OR_STORE
        page.goto(f"http://localhost:{port}/test_text?sae={SAE_NAME}&latent={latent}")
        page.get_by_text("Top features per token").wait_for(timeout=120_000)
        problems += _check_page(page, "test_text", tmp_path)
        page.goto(f"http://localhost:{port}/blind_test?sae={SAE_NAME}&latent={latent}")
        page.get_by_text("This latent fires on a test label").wait_for(timeout=120_000)
        problems += _check_page(page, "blind_test", tmp_path)
        assert page.locator('[data-testid="stCheckbox"]').count() >= 2  # the excerpts
    assert not problems, "\n".join(problems)


def _busiest(workspace: Path) -> int:
    """The tiny SAE's latent with the most indexed firings (enough excerpts to test)."""
    from workspace_builder import SAE_NAME

    from app.data import Catalog

    with Catalog(workspace) as db:
        rows = db.rows("SELECT latent FROM features WHERE sae = ? ORDER BY fires DESC "
                       "LIMIT 1", [SAE_NAME])
    return int(rows[0]["latent"])

