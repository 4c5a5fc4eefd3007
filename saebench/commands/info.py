"""`saebench info`: describe a store, an SAE folder or a workspace."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import tyro

from store.errors import UserError


@dataclass(frozen=True)
class Args:
    """Describe a store (*.duckdb), an SAE folder (cfg.json) or a workspace folder."""

    path: tyro.conf.Positional[Path] = Path("runs")
    """A store file, an SAE folder or a workspace folder."""


def _size(path: Path) -> int:
    if path.is_file():
        return path.stat().st_size
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file()) if path.exists() else 0


def describe_store(path: Path) -> str:
    from store.reader import open_store

    s = open_store(path)
    m = s.meta
    total = sum(c.n_tokens for c in s.chunks)
    on_disk = _size(s.path) + _size(s.shards)
    lines = [
        f"store     {s.path}  ({m['status']}, created {m['created_at']})",
        f"model     {m['model']}   hook {m['hook']}   d_in {m['d_in']}   dtype {m['dtype']}",
        f"corpus    {m['dataset']} ({', '.join(m['corpus_sources'])})   ctx {m['ctx']}   "
        f"BOS policy {m['bos_policy']}",
        f"tokens    train {m['n_tokens']['train']:,}   heldout {m['n_tokens']['heldout']:,}   "
        f"chunks {len(s.chunks)}",
        f"grads     {'yes (' + m['grad_dtype'] + ')' if m.get('with_grads') else 'no'}",
        f"norm      mean |x| {m['norm']['mean_norm']:.3f} over {m['norm']['n_tokens']:,} tokens",
        f"disk      {on_disk / 1e6:.1f} MB, {on_disk / max(total, 1):.0f} bytes/token",
        "sql       SELECT act FROM activations WHERE seq = 3 AND pos = 7",
    ]
    return "\n".join(lines)


def describe_sae(path: Path) -> str:
    try:
        cfg = json.loads((path / "cfg.json").read_text())
    except (OSError, ValueError) as err:
        raise UserError(f"{path}: unreadable cfg.json ({err})") from None
    meta = cfg.get("metadata", {})
    line = (
        f"sae       {path}  {cfg.get('architecture')}  d_sae {cfg.get('d_sae')}  "
        f"k {cfg.get('k', '-')}  {meta.get('model_name', '?')} {meta.get('hook_name', '?')}"
    )
    for result in sorted(path.glob("evals/*.json")):
        try:
            m = json.loads(result.read_text())["metrics"]
        except (OSError, ValueError, KeyError):
            continue
        shown = ("l0", "explained_variance", "ce_recovered_vs_zero_ablation", "pct_dead")
        line += f"\n          {result.stem}: " + "  ".join(
            f"{k}={m[k]:.4g}" for k in shown if isinstance(m.get(k), int | float)
        )
    return line


def describe_workspace(path: Path) -> str:
    lines = [f"workspace {path.resolve()}"]
    for store in sorted(p for p in path.glob("*.duckdb") if p.name != "catalog.duckdb"):
        try:
            lines.append(describe_store(store))
        except UserError as err:
            lines.append(f"store     {store}: {err}")
    for sae in sorted(path.glob("saes/*/cfg.json")):
        lines.append(describe_sae(sae.parent))
    if len(lines) == 1:
        lines.append("(empty: no stores and no SAEs yet)")
    return "\n".join(lines)


def main(args: Args) -> None:
    path = args.path
    if not path.exists():
        raise UserError(f"{path}: no such file or folder")
    if path.is_file():
        print(describe_store(path))
    elif (path / "cfg.json").exists():
        print(describe_sae(path))
    else:
        print(describe_workspace(path))
