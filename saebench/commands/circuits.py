"""`saebench circuits`: a sparse feature circuit for a task (Marks et al. 2024)."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Literal


@dataclass(frozen=True)
class Args:
    """Find a feature circuit for a task across SAEs at several hooks of one model; write JSON."""

    saes: tuple[Path, ...]
    """SAE folders (SAELens format), one per hook, all of one model (cfg.json metadata)."""
    task: str = "ioi"
    """Task (see `saebench tasks`): ioi, sva, docstring, induction, greater_than."""
    method: Literal["attrib", "ig", "mask"] = "attrib"
    """Node effects by attribution patching (1 forward+backward) or integrated gradients
    (10 steps per hook, Marks et al. 2024 §2), circuits by thresholds on them; or "mask":
    circuits from gates learned to keep the metric with as few nodes as possible
    (saebench.circuits.mask; needs --by-template; the sweep's threshold is then λ)."""
    patch: Literal["mean", "corrupt"] = "mean"
    """What a node is patched to when its effect is estimated: its clean mean at that
    position (what faithfulness ablates to), or its corrupt-prompt value. With "corrupt",
    nodes identical on both prompts (shared context) have effect 0 and never join a circuit:
    on IOI with SmolLM2 faithfulness then stalls at 0.31 (see BENCHMARKS.md)."""
    n: int = 100
    """Prompt pairs."""
    seed: int = 0
    """Seed of the prompt generator and of the random-circuit control."""
    node_threshold: float = 0.1
    """Nodes with |effect| above this form the circuit (effects in metric units)."""
    edge_threshold: float = 0.01
    """Edges with |effect| above this are kept (between kept nodes at consecutive hooks)."""
    thresholds: tuple[float, ...] = ()
    """Node thresholds of the faithfulness sweep; default: 8 from max |effect| down 10^4."""
    per_position: bool = False
    """Nodes per (position, latent) instead of summed over positions (for templatic tasks)."""
    by_template: bool = False
    """Group pairs by template (ioi) so positions align; nodes are then (hook, role, latent)
    with --per-position, else (hook, latent), ablated to template-group means (Marks et al.
    2024 §4; saebench.circuits.positional)."""
    ablate: Literal["mean", "corrupt"] = "mean"
    """With --method mask: what a node outside the circuit is set to, its template-group mean
    at its position (as faithfulness does everywhere else), or its value on the pair's corrupt
    prompt (a counterfactual patch; then m(∅) is the corrupt prompts' metric)."""
    mask_batch: int | None = None
    """With --method mask: pairs per step, drawn afresh from the --n pairs, so a large --n
    costs no more per step (default: all of them, every step)."""
    mask_steps: int = 20
    """With --method mask: Adam steps per λ stage (12 stages; one gated forward+backward
    over all pairs per step)."""
    edges: bool = True
    """Compute edges (one batched backward per 8 kept downstream nodes and pair chunk)."""
    edge_pairs: int = 32
    """Pairs (a seeded subset) on which edges are estimated: they cost one backward pass per
    8 kept downstream nodes, where nodes cost one for all."""
    batch_size: int = 32
    """Pairs per forward pass."""
    check_task: bool = True
    """Refuse a task the model does not do (accuracy < 0.6 or mean clean metric ≤ 0)."""
    out: Path | None = None
    """Circuit JSON; default: <workspace of the first SAE>/circuits/<task>-<method>.json. The
    catalog rows always go to that workspace's circuits/, named after this file's stem."""
    device: str | None = None
    """Torch device; default: cuda if available, else cpu."""
    illusion: int = 0
    """Also check the top N nodes at each MLP hidden hook (blocks.L.mlp.hook_post) for the
    subspace-patching illusion (arXiv 2311.17030; saebench.illusion_check); 0: off."""


def _check(args: Args) -> None:
    from store.errors import UserError

    if min(args.n, args.batch_size, args.edge_pairs) < 1:
        raise UserError("--n, --batch-size and --edge-pairs must be positive")
    if args.node_threshold < 0 or args.edge_threshold < 0 or min(args.thresholds, default=0) < 0:
        raise UserError("thresholds must be non-negative")
    if args.method == "mask" and not args.by_template:
        raise UserError("--method mask learns gates over template groups: add --by-template")
    if args.ablate != "mean" and args.method != "mask":
        raise UserError("--ablate corrupt needs --method mask (the threshold sweep mean-ablates)")
    if args.mask_steps < 1 or (args.mask_batch is not None and args.mask_batch < 1):
        raise UserError("--mask-steps and --mask-batch must be positive")


def main(args: Args) -> None:
    import time

    import torch

    from saebench.circuits import output
    from saebench.circuits.attribution import edge_effects, node_effects
    from saebench.circuits.collapse import collapse, head_effects, per_head
    from saebench.circuits.faithfulness import evaluate
    from saebench.circuits.saes import load_set
    from saebench.tasks import get_task
    from saebench.tasks.run import MIN_ACCURACY
    from store.catalog import refresh, workspace_of
    from store.errors import UserError

    _check(args)
    task = get_task(args.task)  # an unknown task fails before the model loads
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    sset, model = load_set(args.saes, device=device)
    if args.illusion:  # fail before the circuit's work, not after it
        from saebench.illusion_check import mlp_hooks

        mlp_hooks(sset.hooks, args.illusion)
    if args.by_template:
        return _by_template(args, task, sset, model)
    batch = task.batch(model.tokenizer, args.n, args.seed)
    start = time.perf_counter()
    kw = {"batch_size": args.batch_size, "progress": True}
    attr = node_effects(model, sset, task, batch, method=args.method, patch=args.patch,
                        per_position=args.per_position, **kw)
    clean = attr.clean_metric.mean().item()
    if args.check_task and (attr.accuracy < MIN_ACCURACY or not clean > 0):
        raise UserError(f"{sset.model_name} does not do task {args.task} (accuracy "
                        f"{attr.accuracy:.2f}, mean metric {clean:.3g}); pass --no-check-task "
                        "to go on anyway")
    top = max(e.abs().max().item() for e in attr.effects.values())
    thresholds = list(args.thresholds) or (top * torch.logspace(-0.3, -4, 8)).tolist()
    if args.edges:
        edge_effects(model, sset, task, batch, attr, args.node_threshold,
                     max_pairs=args.edge_pairs, **kw)
    else:
        from saebench.circuits.attribution import kept_nodes

        attr.kept = {h: kept_nodes(attr.effects[h], args.node_threshold) for h in sset.hooks}
    faith = evaluate(model, sset, task, batch, attr, thresholds, args.node_threshold,
                     seed=args.seed, **kw)
    heads = None
    if per_head(sset):  # attention SAEs: also rank heads by what the circuit routes through
        heads = collapse(head_effects(model, sset, task, batch, patch=args.patch,
                                      batch_size=args.batch_size), sset, attr.kept)
    settings = {k: (str(v) if isinstance(v, Path) else v) for k, v in asdict(args).items()
                if k not in ("saes", "out", "device")}
    settings["seconds"] = time.perf_counter() - start
    rec = output.record(args.task, sset, attr, faith, {**settings, "thresholds": thresholds})
    if heads is not None:
        rec["heads"] = heads
    if args.illusion:
        from saebench.illusion_check import check_circuit

        rec["illusion"] = check_circuit(model, sset, task, batch, attr.effects, args.illusion)
    ws = workspace_of(args.saes[0])
    out = args.out or ws / output.CIRCUITS_DIR / f"{args.task}-{args.method}.json"
    output.write(out, rec)
    # The rows go beside the SAEs even when --out is elsewhere: the browser reads a workspace.
    output.write_catalog(rec, ws, Path(out).stem)
    refresh(ws)
    _print(rec, out)
    print(f"catalog rows -> {ws / output.CIRCUITS_DIR}/{Path(out).stem}.*.parquet "
          "(views circuit_sweeps, circuit_nodes, circuit_edges)")


def _by_template(args: Args, task, sset, model) -> None:
    """`--by-template`: per-position (or summed) nodes over template groups."""
    import time

    from saebench.circuits import output
    from saebench.circuits.positional_sweep import discover, label_roles
    from saebench.tasks.run import MIN_ACCURACY
    from store.catalog import refresh, workspace_of
    from store.errors import UserError

    start = time.perf_counter()
    attr, faith, extra = discover(model, sset, task, args)
    clean = attr.clean_metric.mean().item()
    if args.check_task and (attr.accuracy < MIN_ACCURACY or not clean > 0):
        raise UserError(f"{sset.model_name} does not do task {args.task} (accuracy "
                        f"{attr.accuracy:.2f}, mean metric {clean:.3g}); pass --no-check-task "
                        "to go on anyway")
    settings = {k: (str(v) if isinstance(v, Path) else v) for k, v in asdict(args).items()
                if k not in ("saes", "out", "device")}
    settings["seconds"] = time.perf_counter() - start
    settings["thresholds"] = extra.pop("thresholds")
    rec = label_roles({**output.record(args.task, sset, attr, faith, settings), **extra},
                      extra["roles"])
    ws = workspace_of(args.saes[0])
    kind = "pos" if args.per_position else "summed"
    out = args.out or ws / output.CIRCUITS_DIR / f"{args.task}-{args.method}-{kind}.json"
    output.write(out, rec)
    output.write_catalog(rec, ws, Path(out).stem)
    # Role names beside the catalog rows, whose `pos` is the role index (app/views/circuits.py).
    if args.per_position:
        output.write(ws / output.CIRCUITS_DIR / f"{Path(out).stem}.roles.json",
                     {"roles": extra["roles"]})
    refresh(ws)
    _print(rec, out)


def _print(rec: dict, out: Path) -> None:
    label = "lambda" if rec["settings"]["method"] == "mask" else "threshold"
    print(f"{label:>10} {'nodes':>6} {'faithful':>9} {'random':>8} {'complete':>9}")
    for r in rec["faithfulness"]["sweep"]:
        print(f"{r['threshold']:>10.3g} {r['n_nodes']:>6} {r['faithfulness']:>9.3f} "
              f"{r['random_faithfulness']:>8.3f} {r['completeness']:>9.3f}")
    if "heads" in rec:
        top = list(rec["heads"].items())[:10]
        print("heads by the circuit's effect through them: "
              + ", ".join(f"{h} {v:.3g}" for h, v in top))
    s = rec["summary"]
    chosen = ("the mask's smallest circuit past 80%" if rec["settings"]["method"] == "mask"
              else "circuit at the node threshold")
    print(f"{chosen}: {s['n_nodes']} nodes, {len(rec['edges'])} edges, "
          f"faithfulness {s['faithfulness']:.3f}, completeness {s['completeness']:.3f}; "
          f"{rec['settings']['seconds']:.1f} s -> {out}")
    n80, c80 = s["nodes_for_80"], s["completeness_at_80"]
    print("nodes for 80% faithfulness: " + ("not reached" if n80 is None else
          f"{n80:.0f} (completeness of the first circuit past 80%: {c80:.3f})"))
