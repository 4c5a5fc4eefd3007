"""Fetch a Debian package's files without installing it (no root install, no dependencies).

The default corpora ship in Debian packages (DESIGN.md section 4). `apt-get download` fetches
only the one .deb and `dpkg-deb -x` unpacks it anywhere, so nothing touches the system.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from pathlib import Path

from store.errors import AptUnavailable

MARKER = ".saebench-unpacked"
_TIMEOUT_S = 600


def fetch_deb(package: str, dest: Path) -> Path:
    """Download `package` and unpack it into `dest`; a second call reuses the unpacked tree."""
    if (dest / MARKER).exists():
        return dest
    for tool in ("apt-get", "dpkg-deb"):
        if shutil.which(tool) is None:
            raise AptUnavailable(f"cannot fetch {package}: '{tool}' is not on PATH")
    dest.parent.mkdir(parents=True, exist_ok=True)
    # Work beside `dest` so the final rename stays on one file system and is atomic.
    with tempfile.TemporaryDirectory(dir=dest.parent, prefix=f".{dest.name}.") as tmp:
        work = Path(tmp)
        # apt drops privileges to _apt for downloads; a 0700 temp dir makes it warn.
        work.chmod(0o755)
        deb = _download(package, work)
        tree = work / "tree"
        _run(["dpkg-deb", "-x", str(deb), str(tree)], package)
        (tree / MARKER).write_text(f"{deb.name}\n")
        if dest.exists() and not (dest / MARKER).exists():
            shutil.rmtree(dest)  # a half-finished tree from an older, interrupted layout
        try:
            os.replace(tree, dest)
        except OSError:
            # Another process finished first; its tree is as good as ours.
            if not (dest / MARKER).exists():
                raise
    return dest


def _download(package: str, work: Path) -> Path:
    """Run `apt-get download`, refreshing the package lists once if it cannot find it."""
    try:
        _run(["apt-get", "download", package], package, cwd=work)
    except AptUnavailable:
        # Fresh containers often have empty lists; one `apt-get update` fixes that.
        _run(["apt-get", "update"], package)
        _run(["apt-get", "download", package], package, cwd=work)
    debs = sorted(work.glob(f"{package}_*.deb"))
    if not debs:
        raise AptUnavailable(f"apt-get download {package} produced no .deb file")
    return debs[0]


def _run(cmd: list[str], package: str, cwd: Path | None = None) -> None:
    """Run a command; any failure becomes a one-line AptUnavailable."""
    try:
        proc = subprocess.run(
            cmd, cwd=cwd, capture_output=True, text=True, timeout=_TIMEOUT_S, check=False
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise AptUnavailable(f"cannot fetch {package}: {' '.join(cmd)}: {exc}") from exc
    if proc.returncode != 0:
        lines = [ln for ln in (proc.stderr or proc.stdout).splitlines() if ln.strip()]
        reason = lines[-1].strip() if lines else f"exit status {proc.returncode}"
        raise AptUnavailable(f"cannot fetch {package}: {' '.join(cmd)} failed: {reason}")
