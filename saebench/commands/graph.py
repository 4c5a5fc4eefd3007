"""`saebench graph`: an attribution graph for one prompt and one target token."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated

import tyro

from saebench.circuits.prompt_graph_config import GRAPHS_DIR, GraphSettings


@dataclass(frozen=True)
class Args:
    """Attribute one prompt's target-token logit to SAE latents at every position; write the
    graph as JSON into the SAEs' workspace (graphs/<name>.json) with catalog rows."""

    saes: tuple[Path, ...]
    """SAE folders (SAELens format), one per hook, all of one model (cfg.json metadata)."""
    prompt: str
    """The prompt; the metric is read at its last token."""
    target: str
    """The target next token, exactly one token (mind the leading space: " Mary")."""
    contrast: str | None = None
    """Optional contrast token: the metric becomes target minus contrast (a logit difference)."""
    settings: Annotated[GraphSettings, tyro.conf.OmitArgPrefixes] = field(
        default_factory=GraphSettings)
    """How the graph is scored and pruned."""
    name: str | None = None
    """File name (no extension); default: the prompt's words, the target and a short hash."""
    out: Path | None = None
    """Graph JSON; default: <workspace of the first SAE>/graphs/<name>.json. The catalog rows
    always go to that workspace's graphs/, named after this file's stem."""
    device: str | None = None
    """Torch device; default: cuda if available, else cpu."""


def main(args: Args) -> None:
    import torch

    from saebench.circuits.graph_output import slug, write_graph
    from saebench.circuits.prompt_graph import graph_for_folders
    from store.catalog import workspace_of
    from store.errors import UserError

    if not args.saes:
        raise UserError("give at least one SAE folder (--saes DIR ...)")
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    rec = graph_for_folders(args.saes, args.prompt, args.target, args.contrast,
                            settings=args.settings, device=device)
    ws = workspace_of(args.saes[0])
    path = write_graph(ws, rec, args.name or slug(rec), args.out)
    _print(rec, path, ws)


def _print(rec: dict, path: Path, ws: Path) -> None:
    against = f" − {rec['contrast']!r}" if rec["contrast"] else ""
    print(f"{rec['metric']} {rec['target']!r}{against} at the last token: {rec['value']:.3f}"
          f" (target is the top prediction: {'yes' if rec['target_is_top'] else 'no'})")
    print(f"{'hook':<28} {'pos':>4} {'token':<14} {'latent':>7} {'act':>8} {'effect':>8}")
    for n in rec["nodes"][:10]:
        print(f"{n['hook']:<28} {n['pos']:>4} {n['token']!r:<14} {n['latent']!s:>7} "
              f"{n['activation']:>8.3g} {n['effect']:>+8.3g}")
    print(f"{len(rec['nodes'])} nodes ({rec['kept_share']:.0%} of the summed |effect|), "
          f"{len(rec['edges'])} edges; {rec['seconds']:.1f} s -> {path}")
    print(f"catalog rows -> {ws / GRAPHS_DIR}/{path.stem}.{{nodes,edges}}.parquet "
          "(views graph_nodes, graph_edges)")
