"""Settings of a prompt graph (saebench.circuits.prompt_graph), kept apart from torch so the
CLI's --help stays instant."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from store.errors import UserError

GRAPHS_DIR = "graphs"
"""Where graphs live in a workspace: graphs/<name>.json and graphs/<name>.{nodes,edges}.parquet."""


@dataclass(frozen=True)
class GraphSettings:
    """How a prompt graph is scored and pruned."""

    metric: Literal["logit", "logprob"] = "logit"
    """The target's logit or its log-probability at the last position (minus the contrast's)."""
    nodes: int = 40
    """Node budget: the nodes with the largest |effect| over every hook and position."""
    edges: int = 200
    """Edge budget between hooks: the edges with the largest |weight| among kept nodes (edges
    to the output are always kept)."""

    def __post_init__(self) -> None:
        if self.nodes < 1 or self.edges < 0:
            raise UserError("--nodes must be positive and --edges non-negative")
