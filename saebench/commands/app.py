"""`saebench app`: the Streamlit feature browser over a workspace (read-only but labels)."""

from __future__ import annotations

import importlib.util
import signal
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from store.errors import UserError


@dataclass(frozen=True)
class Args:
    """Browse a workspace's SAEs, features and evals in a local Streamlit app."""

    workspace: Path = Path("runs")
    """The workspace folder (holds saes/<name>/ and catalog.duckdb)."""
    port: int = 8501
    """Port to serve on."""
    address: str = "localhost"
    """Address to bind; the default keeps the app private to this machine."""


def command(args: Args) -> list[str]:
    """The `streamlit run` command line for these arguments."""
    # Located, not imported: imports run app -> saebench, never the reverse.
    spec = importlib.util.find_spec("app")
    if spec is None or not spec.submodule_search_locations:
        raise UserError("the `app` package is not installed (pip install -e .)")
    main_py = Path(spec.submodule_search_locations[0]) / "main.py"
    return [
        sys.executable, "-m", "streamlit", "run", str(main_py),
        "--server.address", args.address, "--server.port", str(args.port),
        "--server.headless", "true", "--browser.gatherUsageStats", "false",
        "--server.fileWatcherType", "none", "--client.toolbarMode", "minimal",
        "--", "--workspace", str(Path(args.workspace).resolve()),
    ]


def main(args: Args) -> None:
    if not any(Path(args.workspace).glob("saes/*/cfg.json")):
        raise UserError(f"{args.workspace} holds no SAEs (no saes/*/cfg.json); "
                        "train one with `saebench train` first")
    print(f"saebench app: http://{args.address}:{args.port}", flush=True)
    proc = subprocess.Popen(command(args))
    # Ctrl-C reaches streamlit through the terminal's process group; a SIGTERM sent to this
    # process alone (a test harness, a supervisor) must be passed on, or streamlit outlives us.
    signal.signal(signal.SIGTERM, lambda *_: proc.terminate())
    try:
        code = proc.wait()
    except KeyboardInterrupt:
        proc.wait()
        return
    if code not in (0, -2, -15, 130):
        raise UserError(f"streamlit exited with status {code}")
