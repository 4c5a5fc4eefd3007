"""The search and blind-test pages in a real browser (headless Chromium, `saebench app`).

Set SAEBENCH_SHOTS=<folder> to keep the 1400 px screenshots and look at them.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest
from test_app import make_workspace
from test_app_browser import CHROMIUM, chromium_on
from test_blind_test import APPLE, make_planted_workspace
from test_search import add_explanations

from saebench.blind_test import blind_set

pytestmark = pytest.mark.skipif(not os.path.exists(CHROMIUM), reason=f"{CHROMIUM} is missing")


def _shot(page, tmp_path: Path, name: str) -> None:
    path = tmp_path / name
    page.screenshot(path=str(path), full_page=True)
    assert path.stat().st_size > 10_000
    if os.environ.get("SAEBENCH_SHOTS"):
        (Path(os.environ["SAEBENCH_SHOTS"]) / name).write_bytes(path.read_bytes())


def test_search_and_blind_test_in_chromium(tmp_path):
    ws = make_workspace(tmp_path / "ws")
    add_explanations(make_planted_workspace(ws))
    truth = blind_set(ws, "planted", APPLE).truth
    with chromium_on(ws) as (browser, port):
        page = browser.new_page(viewport={"width": 1400, "height": 1000})
        page.goto(f"http://localhost:{port}/search?sae=synth-a")
        box = page.get_by_label("Words in a latent's explanation, label or top tokens")
        box.fill("apple fruit")
        box.press("Enter")
        page.get_by_text("2 latents of synth-a match").wait_for(timeout=20_000)
        page.get_by_text("all SAEs", exact=True).click()
        page.get_by_text("4 latents of all SAEs match").wait_for(timeout=20_000)
        page.locator('[data-testid="stDataFrame"] canvas').first.wait_for(timeout=20_000)
        page.wait_for_timeout(1500)  # the grid paints its canvas after it mounts
        _shot(page, tmp_path, "search.png")

        page = browser.new_page(viewport={"width": 1400, "height": 1400})
        page.goto(f"http://localhost:{port}/blind_test?sae=planted&latent={APPLE}")
        submit = page.get_by_role("button", name="Score my answers")
        submit.wait_for(timeout=60_000)  # torch, the SAE and the sampling load here
        boxes = page.locator('[data-testid="stCheckbox"]')
        boxes.nth(13).wait_for(timeout=20_000)
        assert boxes.count() == 14
        firing = [i for i, t in enumerate(truth) if t]
        for i in firing[1:]:  # every firing excerpt but one
            boxes.nth(i).click()
        _shot(page, tmp_path, "blind_quiz.png")
        submit.click()
        page.get_by_text(re.compile(r"You got \d+ of 14 right")).wait_for(timeout=20_000)
        assert page.get_by_text("You got 13 of 14 right").count() == 1
        assert page.locator(".saebench-tok").count() > 14 * 5  # activations, shaded
        page.set_viewport_size({"width": 1400, "height": 3000})  # Streamlit scrolls inside
        page.locator('[data-testid="stDataFrame"] canvas').first.wait_for(timeout=10_000)
        page.wait_for_timeout(1500)
        _shot(page, tmp_path, "blind_answers.png")
