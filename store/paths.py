"""Where saebench keeps things that are fetched or derived once per machine."""

import os
from pathlib import Path


def cache_dir() -> Path:
    """The user cache ($SAEBENCH_CACHE, default ~/.cache/saebench), created on demand."""
    path = Path(os.environ.get("SAEBENCH_CACHE", "~/.cache/saebench")).expanduser()
    path.mkdir(parents=True, exist_ok=True)
    return path
