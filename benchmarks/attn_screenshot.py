"""Issue #15 item 5: a headless-Chromium screenshot of the feature page of a hook_z latent,
with its head-attribution chart and, after a click, the DFA strips; prints the timings.

    .venv/bin/python benchmarks/attn_screenshot.py --workspace runs/attn \
        --sae topk-k32-s0 --latent 7 --out benchmarks/figures/attn_feature_page.png
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

CHROMIUM = "/usr/bin/chromium"
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
        "--disable-background-networking", "--disable-component-update", "--disable-sync"]
SETTLED = """() => {
  const app = document.querySelector('[data-testid="stApp"]');
  return app && app.getAttribute('data-test-script-state') === 'notRunning'
         && !document.querySelector('[data-testid="stSkeleton"]');
}"""


def _wait_healthy(port: int, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(f"http://localhost:{port}/_stcore/health", timeout=1):
                return
        except OSError:
            time.sleep(0.5)
    raise SystemExit("the app did not become healthy")


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--workspace", type=Path, required=True)
    p.add_argument("--sae", required=True)
    p.add_argument("--latent", type=int, required=True)
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--port", type=int, default=8597)
    a = p.parse_args()
    from playwright.sync_api import sync_playwright

    proc = subprocess.Popen([sys.executable, "-m", "saebench.cli", "app", "--workspace",
                             str(a.workspace), "--port", str(a.port)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        _wait_healthy(a.port)
        with sync_playwright() as pw:
            browser = pw.chromium.launch(executable_path=CHROMIUM, args=ARGS)
            page = browser.new_page(viewport={"width": 1400, "height": 2400})
            t0 = time.monotonic()
            page.goto(f"http://localhost:{a.port}/feature?sae={a.sae}&latent={a.latent}")
            page.get_by_text("Attention heads").wait_for(timeout=300_000)
            page.wait_for_function(SETTLED, timeout=300_000)
            print(f"feature page with the head chart: {time.monotonic() - t0:.1f} s")
            page.get_by_text("Direct feature attribution by source token").click()
            t0 = time.monotonic()
            page.get_by_role("button", name="Compute DFA for the top contexts").click()
            page.wait_for_selector(".saebench-dfa", timeout=600_000)
            page.wait_for_function(SETTLED, timeout=600_000)
            print(f"DFA of the top contexts (first click: model load + forward): "
                  f"{time.monotonic() - t0:.1f} s")
            page.wait_for_timeout(1500)  # plotly lays out after the script has finished
            a.out.parent.mkdir(parents=True, exist_ok=True)
            page.get_by_text("Attention heads").scroll_into_view_if_needed()
            page.screenshot(path=str(a.out), full_page=True)
            browser.close()
    finally:
        proc.terminate()
        proc.wait(timeout=30)


if __name__ == "__main__":
    main()
