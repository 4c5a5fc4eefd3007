"""`saebench illusion`: is an MLP latent's patching effect an illusion? (arXiv 2311.17030)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path

from saebench.illusion import IllusionConfig

FORMAT = "saebench.illusion/1"


@dataclass(frozen=True)
class Args:
    """Split MLP latents' directions into W_out's row and null space, patch each; write JSON."""

    sae: Path
    """An SAE folder at an MLP hidden hook (blocks.L.mlp.hook_post, d_in = d_mlp)."""
    latents: str = ""
    """Comma-separated latent ids, e.g. 12,40; empty: the --top most active on the prompts."""
    top: int = 20
    """How many latents to check when --latents is empty (largest summed activation)."""
    prompts: str = "ioi"
    """The prompt set: a task (see `saebench tasks`); its clean prompts are patched with its
    corrupt prompts' projections, and the effect is the change of its metric."""
    n: int = 32
    """Prompt pairs."""
    seed: int = 0
    """Seed of the prompt generator."""
    check: IllusionConfig = field(default_factory=IllusionConfig)
    """How directions are split and patched."""
    out: Path | None = None
    """JSON file; default: <workspace of the SAE>/illusion/<sae name>-<prompts>.json."""
    device: str | None = None
    """Torch device; default: cuda if available, else cpu."""


def parse_latents(text: str) -> list[int]:
    """"12,40" -> [12, 40]; a UserError for anything that is not comma-separated integers."""
    from store.errors import UserError

    items = [t.strip() for t in text.split(",") if t.strip()]
    try:
        latents = [int(t) for t in items]
    except ValueError:
        raise UserError(f"--latents must be comma-separated integers, got {text!r}") from None
    if any(i < 0 for i in latents):
        raise UserError(f"--latents must be non-negative, got {text!r}")
    return latents


def _hook_of(folder: Path, latents: list[int]) -> str:
    """The SAE's hook; bad hooks and latents fail here, before the model loads."""
    from saebench.circuits.saes import read_set
    from saebench.illusion import mlp_layer
    from store.errors import UserError
    from trainers.saelens_format import read_meta

    _, [(hook, _)] = read_set([folder])
    mlp_layer(hook)
    d_sae = read_meta(folder)["cfg"]["d_sae"]
    if any(i >= d_sae for i in latents):
        raise UserError(f"latent {max(latents)} is out of range for d_sae {d_sae}")
    return hook


def main(args: Args) -> None:
    import time

    import torch

    from saebench.circuits.output import write
    from saebench.circuits.saes import load_set
    from saebench.illusion import task_prompts
    from saebench.illusion_check import check_latents, summary, top_latents
    from saebench.tasks import get_task
    from store.catalog import workspace_of
    from store.errors import UserError

    latents = parse_latents(args.latents)
    if args.n < 1 or args.top < 1:
        raise UserError(f"--n ({args.n}) and --top ({args.top}) must be positive")
    hook = _hook_of(args.sae, latents)
    task = get_task(args.prompts)  # an unknown task fails before the model loads
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    sset, model = load_set([args.sae], device=device)
    sae = sset.saes[0]
    batch = task.batch(model.tokenizer, args.n, args.seed)
    start = time.perf_counter()
    chosen = latents or top_latents(model, sae, hook, batch.clean, batch.pos, args.top)
    rec = check_latents(model, sae, hook, chosen, task_prompts(task, batch), args.check,
                        progress=True)
    rec = {"format": FORMAT, "sae": str(args.sae), "model": sset.model_name,
           "prompts": args.prompts, "n": args.n, "seed": args.seed,
           "latents_from": "given" if latents else f"top {args.top} by activation",
           "config": asdict(args.check), **rec, "summary": summary(rec["rows"]),
           "seconds": time.perf_counter() - start}
    out = args.out or (workspace_of(args.sae) / "illusion"
                       / f"{Path(args.sae).name}-{args.prompts}.json")
    write(out, rec)  # atomic: a temp file, then os.replace
    _print(rec, out)


def _fmt(v: float | None) -> str:
    return "-" if v is None else f"{v:.3f}"


def _print(rec: dict, out: Path) -> None:
    print(f"{rec['hook']}: W_out row space rank {rec['row_rank']} of d_mlp {rec['d_mlp']}; "
          f"{rec['prompts']} metric clean {rec['clean_metric']:.3f}, corrupt "
          f"{rec['source_metric']:.3f}; patching the whole hook moves it by "
          f"{rec['effect_layer']:.3f} (a 1-d patch beyond that is suspect)")
    print(f"{'latent':>7} {'null_share':>10} {'full':>8} {'row':>8} {'null':>8} {'needs_null':>10}")
    for r in rec["rows"]:
        print(f"{r['latent']:>7} {r['null_share']:>10.3f} {r['effect_full']:>8.3f} "
              f"{r['effect_row']:>8.3f} {r['effect_null']:>8.3f} "
              f"{_fmt(r['share_needing_null']):>10}")
    s = rec["summary"]
    print(f"{s['illusions']} of {s['n']} latents need the null-space part for over half of "
          f"their effect; {rec['seconds']:.1f} s -> {out}")
