"""Data-parallel training on torch.distributed, launched by torchrun (DESIGN §6).

    torchrun --nproc-per-node 8 -m saebench train --store s.duckdb --out runs/saes/x ...
    torchrun --nnodes 2 --node-rank R --master-addr HOST --master-port 29500 \\
        --nproc-per-node 8 -m saebench train ...

Every rank opens the same source and keeps its fixed contiguous slice of each global batch
(batches are a pure function of (seed, batch index)), so `--batch-size` is the global batch and
must divide by the number of ranks. Gradients are averaged, and everything that selection reads
(dead counters, thresholds, usage, the gradient scale, batch-level top-k cuts, FVU
denominators) is reduced over the global batch, so every rank holds the same SAE and N ranks
train what one rank trains on the same global batch, up to summation order. Rank 0 alone
writes checkpoints, curves and the SAE folder. Without torchrun's environment (or with
WORLD_SIZE=1) the world is one process with no process group, and every helper is the identity.
"""

from __future__ import annotations

import atexit
import os
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor

from store.ranks import Ranks


class World(Ranks):
    """This process's place among the ranks (rank, size, is_main, barrier and broadcast come
    from store.ranks, which caching shares), and the collectives the trainers use."""

    def _reduce(self, t: Tensor, op: Any) -> Tensor:
        if self.size > 1:
            dist.all_reduce(t, op=op)
        return t

    def sum(self, t: Tensor) -> Tensor:
        """In place: the sum over ranks."""
        return self._reduce(t, dist.ReduceOp.SUM)

    def mean(self, t: Tensor) -> Tensor:
        """In place: the mean over ranks (gloo has no AVG, so a sum then a division)."""
        return self.sum(t).div_(self.size) if self.size > 1 else t

    def max(self, t: Tensor) -> Tensor:
        """In place: the elementwise maximum over ranks."""
        return self._reduce(t, dist.ReduceOp.MAX)

    def gather(self, t: Tensor) -> Tensor:
        """[size, *t.shape]: every rank's t, in rank order (t has the same shape everywhere)."""
        if self.size == 1:
            return t[None]
        parts = [torch.empty_like(t) for _ in range(self.size)]
        dist.all_gather(parts, t.contiguous())
        return torch.stack(parts)

    def any(self, flag: bool, device: torch.device) -> bool:
        """True on every rank if `flag` is true on any (e.g. one rank saw Ctrl-C)."""
        if self.size == 1:
            return flag
        return bool(self.max(torch.tensor([int(flag)], device=device)))


SINGLE = World()


def of(ctx: Any) -> World:
    """The world a loss runs in: `ctx.world`, or one process when there is no context."""
    return getattr(ctx, "world", None) or SINGLE


def env_size() -> int:
    """The number of ranks torchrun launched (WORLD_SIZE), 1 without torchrun."""
    return int(os.environ.get("WORLD_SIZE", "1"))


def is_main_process() -> bool:
    """Rank 0 by torchrun's RANK, or no torchrun: the process that prints and writes."""
    return int(os.environ.get("RANK", "0")) == 0


def init_world(device: str = "auto") -> World:
    """The world torchrun launched us into, making its process group on the first call.

    nccl for CUDA devices, gloo for the CPU; a WORLD_SIZE of 1 (or none) makes no group, so a
    single process runs exactly as without torchrun. The group lives until the process exits:
    destroying and re-making it between two runs in one process races (a fast rank can reach
    rank 0's old rendezvous store before it closes).
    """
    if env_size() == 1:
        return SINGLE
    rank, local_rank = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    if not dist.is_initialized():
        cuda = device.startswith("cuda") or (device == "auto" and torch.cuda.is_available())
        # nccl needs one GPU per rank; more ranks than GPUs on a node (the one-GPU smoke test
        # of benchmarks/gpu_check.py) share GPUs and talk over gloo, which takes CUDA tensors.
        per_node = int(os.environ.get("LOCAL_WORLD_SIZE", env_size()))
        own_gpu = cuda and torch.cuda.device_count() >= per_node
        if cuda:
            torch.cuda.set_device(local_rank % max(1, torch.cuda.device_count()))
        dist.init_process_group("nccl" if own_gpu else "gloo")
        atexit.register(teardown)
    return World(rank, dist.get_world_size(), local_rank)


def teardown() -> None:
    """Destroy the process group, if there is one (at exit, after the last barrier)."""
    if dist.is_initialized():
        dist.destroy_process_group()


def sync_grads(params: list[Tensor], world: World) -> None:
    """Average the parameters' gradients over ranks, in one flat all-reduce.

    Every rank runs the same code on identical state, so a gradient is None on all ranks or
    none; None stays None (Adam then skips that parameter everywhere)."""
    grads = [p.grad for p in params if p.grad is not None]
    if world.size == 1 or not grads:
        return
    flat = world.mean(torch.cat([g.reshape(-1).float() for g in grads]))
    for g, part in zip(grads, flat.split([g.numel() for g in grads]), strict=True):
        g.copy_(part.view_as(g))


def ratio(num: Tensor, den: Tensor, world: World) -> Tensor:
    """Σnum / Σden over the global batch, as this rank's share `size·num / Σden`.

    `num` and `den` are sums over this rank's slice and `den` needs no gradient: the mean over
    ranks of the shares, and of their gradients, is then the global ratio and its gradient.
    """
    if world.size == 1:
        return num / den.clamp_min(1e-12)
    return num * world.size / world.sum(den.detach().clone()).clamp_min(1e-12)


def centred_sq_sum(x: Tensor, world: World) -> Tensor:
    """Σ‖x − E[x]‖² with E over the global batch (FVU's denominator, DESIGN §5)."""
    if world.size == 1:
        return (x - x.mean(0)).pow(2).sum()
    mean = world.sum(x.detach().sum(0)) / (x.shape[0] * world.size)
    return (x.detach() - mean).pow(2).sum()


def global_cut(v: Tensor, n: Tensor, world: World) -> tuple[Tensor, Tensor, Tensor]:
    """Keep the n[c] largest entries of column c over all ranks' v [m, c].

    Returns (this rank's keep mask, the cut: the n[c]-th largest, and the global top n.max()+1
    values of each column, sorted). Each rank's v must hold every one of its entries that could
    be in the global top n[c] (its own top n[c], padded with -inf), so the gathered columns
    contain the global top. Ties at the cut go to the lower ranks first, so exactly n[c] are
    kept in all, as one rank's topk keeps exactly n.
    """
    every = world.gather(v).reshape(-1, v.shape[1])
    top = every.topk(min(int(n.max()) + 1, every.shape[0]), dim=0).values
    cut = top.gather(0, (n - 1)[None]).squeeze(0)
    above, tied = v > cut, v == cut
    counts = world.gather(torch.stack([above.sum(0), tied.sum(0)]))  # [size, 2, c]
    need = n - counts[:, 0].sum(0)
    before = counts[: world.rank, 1].sum(0)
    take = (need - before).clamp_min(0).minimum(counts[world.rank, 1])
    return above | (tied & (tied.cumsum(0) <= take)), cut, top
