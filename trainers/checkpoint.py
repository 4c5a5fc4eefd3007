"""Checkpoints for exact resume, and Ctrl-C that saves one before exiting.

A sweep's SAEs share one data position, so they are checkpointed together: each SAE folder gets
`checkpoints/step-000001000.pt`, and older steps are pruned only once every folder holds the new
one. A kill half-way through writing therefore leaves an older step common to all folders, and
resuming picks the newest step that every folder has.
"""

from __future__ import annotations

import json
import os
import signal
import threading
from pathlib import Path

import torch

from store.errors import UserError
from trainers.saelens_format import CFG_FILE, RUN_FILE

CKPT_DIR = "checkpoints"


def _path(out_dir: Path, step: int) -> Path:
    return Path(out_dir) / CKPT_DIR / f"step-{step:09d}.pt"


def steps_in(out_dir: Path) -> set[int]:
    """Steps with a complete checkpoint in one SAE folder."""
    folder = Path(out_dir) / CKPT_DIR
    if not folder.is_dir():
        return set()
    return {int(p.stem.split("-")[1]) for p in folder.glob("step-*.pt")}


def latest_common_step(out_dirs: list[Path]) -> int | None:
    """The newest step that every folder has a checkpoint for, or None."""
    common = set.intersection(*(steps_in(d) for d in out_dirs)) if out_dirs else set()
    return max(common) if common else None


def save_all(out_dirs: list[Path], step: int, states: list[dict]) -> None:
    """Write one checkpoint per folder (each atomically), then prune the older ones."""
    for out_dir, state in zip(out_dirs, states, strict=True):
        path = _path(out_dir, step)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
        torch.save(state, tmp)
        os.replace(tmp, path)
    for out_dir in out_dirs:
        for old in steps_in(out_dir) - {step}:
            _path(out_dir, old).unlink(missing_ok=True)


def load(out_dir: Path, step: int, device: torch.device | str = "cpu") -> dict:
    # mmap: checking a checkpoint's run key must not read its optimiser state into memory.
    return torch.load(_path(out_dir, step), map_location=device, weights_only=True, mmap=True)


def remove_all(out_dirs: list[Path]) -> None:
    """Delete the checkpoints of a finished run (the SAE folder then holds only artifacts)."""
    for out_dir in out_dirs:
        folder = Path(out_dir) / CKPT_DIR
        for path in folder.glob("*.pt*") if folder.is_dir() else []:
            path.unlink(missing_ok=True)
        if folder.is_dir() and not any(folder.iterdir()):
            folder.rmdir()


def check_outputs(out_dirs: list[Path], keys: list[dict]) -> bool:
    """True if every folder already holds this run's finished SAE; errors on foreign folders."""
    done = []
    for out_dir, key in zip(out_dirs, keys, strict=True):
        run_file, step = out_dir / RUN_FILE, latest_common_step([out_dir])
        if step is not None and load(out_dir, step)["key"] != key:
            raise UserError(f"{out_dir} holds a checkpoint of a different run; "
                            "use another --out or delete that folder")
        finished = (out_dir / CFG_FILE).is_file()
        ours = run_file.is_file() and json.loads(run_file.read_text()).get("key") == key
        if finished and not ours:
            raise UserError(f"{out_dir} already holds a different SAE; use another --out")
        done.append(finished and step is None)
    if any(done) and not all(done):
        raise UserError(f"some of {[str(d) for d in out_dirs]} are finished and some are not; "
                        "delete the unfinished ones or train them separately")
    return all(done)


class DeferredInterrupt:
    """Turns the first Ctrl-C into a flag that the loop checks between steps.

    Stopping between steps keeps the SAEs, optimisers and counters consistent, so the loop can
    checkpoint and then exit; a second Ctrl-C interrupts at once. Outside the main thread
    (where signal handlers cannot be installed) this does nothing.
    """

    def __init__(self) -> None:
        self.requested = False
        self._previous = None

    def _handler(self, _signum, _frame) -> None:
        if self.requested:
            raise KeyboardInterrupt
        self.requested = True

    def __enter__(self) -> DeferredInterrupt:
        if threading.current_thread() is threading.main_thread():
            self._previous = signal.signal(signal.SIGINT, self._handler)
        return self

    def __exit__(self, *exc) -> None:
        if self._previous is not None:
            signal.signal(signal.SIGINT, self._previous)
            self._previous = None
