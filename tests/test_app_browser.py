"""A real browser on the real server: `saebench app`, headless Chromium driven by Playwright."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
from test_app import make_workspace

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


def test_feature_page_in_chromium(tmp_path):
    sync_api = pytest.importorskip("playwright.sync_api", reason="pip install playwright")
    workspace = make_workspace(tmp_path / "ws")
    port = _free_port()
    proc = _serve(workspace, port)
    try:
        _wait_healthy(proc, port)
        with sync_api.sync_playwright() as pw:
            browser = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
            page = browser.new_page(viewport={"width": 1400, "height": 1800})
            page.goto(f"http://localhost:{port}/feature?sae=synth-a&latent=3")
            page.wait_for_selector(".saebench-tok", timeout=20_000)
            page.get_by_text("Promoted tokens").wait_for(timeout=10_000)
            tokens = page.locator(".saebench-tok")
            assert tokens.count() >= 8
            center = page.locator(".saebench-tok", has_text="apple").first
            assert float(center.get_attribute("title")) == pytest.approx(1.3, rel=1e-3)
            assert "rgba(255, 140, 0, 1.00)" in center.get_attribute("style")
            table = page.locator("table").filter(has_text="banana")
            assert table.count() >= 1  # the promoted-logit table
            page.screenshot(path=str(tmp_path / "feature.png"), full_page=True)
            browser.close()
        assert (tmp_path / "feature.png").stat().st_size > 10_000
    finally:
        proc.terminate()
        proc.wait(timeout=10)
