"""Where a sweep trains: the device of each SAE (`--device`, `--devices`, one GPU per rank).

A sweep may spread its SAEs over several devices of one process (`--devices cuda:0 cuda:1`,
round-robin, no gradient sync between them: each SAE is independent); each batch is copied
once to every device that holds an SAE. Under torchrun each rank has one GPU instead.
"""

from __future__ import annotations

import torch
from torch import Tensor

from store.errors import UserError
from trainers.config import TrainConfig
from trainers.distributed import World
from trainers.member import Member


def pick_device(spec: str, world: World) -> torch.device:
    if spec == "auto":
        spec = "cuda" if torch.cuda.is_available() else "cpu"
    if spec.startswith("cuda") and not torch.cuda.is_available():
        raise UserError(f"--device {spec}: CUDA is not available")
    if spec.startswith("cuda") and world.size > 1:  # one GPU per rank, as torchrun numbers them
        # (more ranks than GPUs share them round-robin: gpu_check's one-GPU DDP smoke test)
        return torch.device("cuda", world.local_rank % torch.cuda.device_count())
    return torch.device(spec)


def device_of(m: Member) -> torch.device:
    return m.sae.W_dec.device


def placed(x: Tensor, grad: Tensor | None, members: list[Member]) -> dict:
    """{device: (x, grad)} for every device the sweep's members sit on (`--devices`)."""
    on = {x.device: (x, grad)}
    for d in {device_of(m) for m in members} - {x.device}:
        on[d] = (x.to(d, non_blocking=True), None if grad is None else grad.to(d))
    return on


def devices(train: TrainConfig, world: World) -> list[torch.device]:
    """Where each member of the sweep trains: round-robin over --devices, else --device."""
    if not train.devices:
        return [pick_device(train.device, world)]
    if world.size > 1:
        raise UserError("--devices spreads one process's sweep over GPUs; under torchrun each "
                        "rank already has its own GPU: give one or the other")
    return [pick_device(d, world) for d in train.devices]
