"""`saebench info`: describe a store, an SAE folder or a workspace."""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path

import tyro

from store.errors import UserError


@dataclass(frozen=True)
class Args:
    """Describe a store (*.duckdb), an SAE folder (cfg.json) or a workspace folder."""

    path: tyro.conf.Positional[Path] = Path("runs")
    """A store file (or s3://bucket/prefix/name.duckdb), an SAE folder or a workspace folder."""
    verify: bool = False
    """Check every shard of the store(s) against its manifest checksum (reads every byte);
    exits non-zero naming the bad shards."""


def describe_store(path: Path, verify: bool = False) -> str:
    """A store's summary; with `verify`, a UserError naming any bad shard."""
    text, error = _describe_store(path, verify)
    if error:
        raise UserError(error)
    return text


def _describe_store(path: Path, verify: bool) -> tuple[str, str | None]:
    """(summary, error): a failed verification is summarised too, then reported."""
    from store.reader import open_store

    s = open_store(path)
    m = s.meta
    total = sum(c.n_tokens for c in s.chunks)
    on_disk = s.disk_bytes()
    # SQL views need local shards (store/remote.py says why).
    remote = not isinstance(s.path, Path)
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
        "sql       " + ("(local stores only: download this one to query it)" if remote
                       else "SELECT act FROM activations WHERE seq = 3 AND pos = 7"),
    ]
    line, error = _checksums(s, verify)
    return "\n".join([*lines, line]), error


def _checksums(s, verify: bool) -> tuple[str, str | None]:
    n = sum(1 + bool(c.grad_file) for c in s.chunks)
    old = "" if s.checksummed else " (some written before checksums: unverified)"
    if not verify:
        return f"checksums xxh3_64 per shard, checked on first read (--verify: all now){old}", None
    t, nbytes = time.perf_counter(), sum(c.bytes for c in s.chunks)
    bad = s.bad_shards()
    dt = time.perf_counter() - t
    if bad:
        shown = "; ".join(bad[:3]) + (f"; and {len(bad) - 3} more" if len(bad) > 3 else "")
        error = (f"{s.path}: {len(bad)} of {n} shards fail verification: {shown}; rerun the "
                 "`saebench cache` command that wrote it to rewrite them")
        return f"checksums {len(bad)} of {n} shards FAILED", error
    return (
        f"checksums {n} shards verified OK{old}: {nbytes / 1e6:,.1f} MB in {dt:.2f} s "
        f"({nbytes / 1e9 / max(dt, 1e-9):.2f} GB/s)",
        None,
    )


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
    return _describe_workspace(path, verify=False)[0]


def _describe_workspace(path: Path, verify: bool) -> tuple[str, list[str]]:
    """(summary, names of the stores that failed to open or to verify)."""
    lines, bad = [f"workspace {path.resolve()}"], []
    for store in sorted(p for p in path.glob("*.duckdb") if p.name != "catalog.duckdb"):
        try:
            text, error = _describe_store(store, verify)
            lines += [text] + ([f"          {error}"] if error else [])
        except UserError as err:
            lines.append(f"store     {store}: {err}")
            error = str(err)
        if error:
            bad.append(store.name)
    for sae in sorted(path.glob("saes/*/cfg.json")):
        lines.append(describe_sae(sae.parent))
    if len(lines) == 1:
        lines.append("(empty: no stores and no SAEs yet)")
    return "\n".join(lines), bad


def main(args: Args) -> None:
    from store.remote import remote_url

    path = args.path
    if not remote_url(path) and not path.exists():
        raise UserError(f"{path}: no such file or folder")
    if remote_url(path) or path.is_file():
        text, error = _describe_store(path, args.verify)
    elif (path / "cfg.json").exists():
        text, error = describe_sae(path), None
    else:
        text, bad = _describe_workspace(path, args.verify)
        failed = f"{len(bad)} store(s) failed to open or verify: {', '.join(bad)}"
        error = failed if args.verify and bad else None
    print(text)
    if error:
        raise UserError(error)
