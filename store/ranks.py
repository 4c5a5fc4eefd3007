"""Which rank of a torchrun launch this process is, and the few collectives caching needs.

`store` imports nothing from `trainers` (DESIGN §1), so this is caching's own small reader of
torchrun's environment (RANK, WORLD_SIZE, LOCAL_RANK); trainers/distributed.py is the
training side. Caching only coordinates (who computes what, when rank 0 may merge), so it
talks over gloo even on GPUs: its messages are a few small pickled objects.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import torch.distributed as dist

# Rank 0 waits at the final barrier for the slowest rank's last chunks, which may take long
# on a big store; a dead rank makes torchrun stop the others, so a long timeout never hangs.
TIMEOUT = timedelta(hours=24)


@dataclass(frozen=True)
class Ranks:
    """This process's place among torchrun's ranks; one process without torchrun."""

    rank: int = 0
    size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def barrier(self) -> None:
        if self.size > 1:
            dist.barrier()

    def broadcast(self, obj: Any) -> Any:
        """Rank 0's picklable `obj` on every rank (what only rank 0 may read: the store)."""
        if self.size == 1:
            return obj
        box = [obj if self.is_main else None]
        dist.broadcast_object_list(box, src=0)
        return box[0]


def from_env() -> Ranks:
    """The ranks torchrun set up (WORLD_SIZE of 1, or none, is a single process)."""
    size = int(os.environ.get("WORLD_SIZE", "1"))
    if size == 1:
        return Ranks()
    return Ranks(int(os.environ["RANK"]), size, int(os.environ.get("LOCAL_RANK", "0")))


@contextmanager
def process_group(ranks: Ranks) -> Iterator[None]:
    """A gloo process group for the duration (none for one process, and an existing one
    is reused and left alone)."""
    made = ranks.size > 1 and not dist.is_initialized()
    if made:
        dist.init_process_group("gloo", timeout=TIMEOUT)
    try:
        yield
    finally:
        if made and dist.is_initialized():
            dist.destroy_process_group()
