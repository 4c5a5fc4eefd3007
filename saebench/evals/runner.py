"""Open an SAE folder and a store, run the requested evals, write their artifacts."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

from saebench.evals import get_eval
from saebench.evals.context import EvalContext, EvalResult, sae_name
from saebench.evals.report import format_table, write_result
from saebench.evals.saebench_format import write_saebench
from store.catalog import workspace_of
from store.errors import UserError

# Where an SAE folder may record its store's path: keys of cfg.json, of its `metadata`, or of
# any JSON beside it (saebench_train.json), directly or inside a `store` object.
_STORE_KEYS = ("store_path", "store", "path")


def read_sae_cfg(sae_dir: Path) -> dict:
    """The folder's cfg.json, or a UserError saying why not."""
    path = Path(sae_dir) / "cfg.json"
    if not path.exists():
        raise UserError(f"{sae_dir}: not an SAE folder (no cfg.json)")
    try:
        return json.loads(path.read_text())
    except ValueError as err:
        raise UserError(f"{path}: not valid JSON ({err})") from None


def _records(sae_dir: Path, sae_cfg: dict) -> list[dict]:
    records = [sae_cfg, sae_cfg.get("metadata") or {}]
    for extra in sorted(Path(sae_dir).glob("*.json")):
        if extra.name != "cfg.json":
            try:
                data = json.loads(extra.read_text())
            except ValueError:
                continue
            if isinstance(data, dict):
                records.append(data)
                if isinstance(data.get("store"), dict):
                    records.append(data["store"])
    return records


def recorded_store(sae_dir: Path, sae_cfg: dict) -> Path:
    """The store an SAE was trained on: a recorded path (as given, or relative to the SAE's
    workspace), else the one store in the workspace whose meta matches the recorded meta."""
    sae_dir = Path(sae_dir)
    records = _records(sae_dir, sae_cfg)
    for record in records:
        for key in _STORE_KEYS:
            value = record.get(key)
            if isinstance(value, str) and value.endswith(".duckdb"):
                for path in (Path(value), workspace_of(sae_dir) / value):
                    if path.exists():
                        return path
    metas = [r for r in records if "hook" in r and "created_at" in r]
    if metas:
        from store.reader import open_store

        ident = ("model", "hook", "dataset", "created_at")
        found = []
        for path in sorted(workspace_of(sae_dir).glob("*.duckdb")):
            try:
                meta = open_store(path).meta
            except UserError:
                continue  # the catalog, or a store being written
            if all(meta.get(k) == metas[0].get(k) for k in ident):
                found.append(path)
        if len(found) == 1:
            return found[0]
    raise UserError(f"{sae_dir} does not say where its store is; pass --store")


def open_context(sae_dir: Path, store_path: Path | None, device: str) -> EvalContext:
    """Load the SAE and open its store read-only; checks that the two match."""
    from store.activation_store import open_store
    from trainers import saelens_format

    sae_cfg = read_sae_cfg(sae_dir)
    store_path = store_path or recorded_store(sae_dir, sae_cfg)
    store = open_store(store_path)
    sae = as_trained(saelens_format.load_sae(sae_dir, device), sae_dir)
    return EvalContext(sae, sae_cfg, store, device=device, store_path=str(store_path))


def as_trained(sae, sae_dir: Path):
    """The loaded SAE as the architecture that trained it, where that adds an inference mode:
    a g-SAE folder loads as SAELens TopK, and its run record says to add gradient-aware mode."""
    from trainers import saelens_format

    meta = saelens_format.read_meta(sae_dir)
    run = meta["run"] or {}
    if run.get("arch") == "gsae":
        from trainers.gsae import GSAE

        beta_raw = meta["cfg"].get("gsae_beta_raw", (run.get("config") or {}).get("beta", 1.0))
        return GSAE.from_topk(sae, beta_raw=float(beta_raw))
    return sae


def run_evals(
    ctx: EvalContext,
    sae_dir: Path,
    names: tuple[str, ...],
    configs: dict[str, object],
    echo: Callable[[str], None] = print,
    skip_inapplicable: bool = False,
) -> dict[str, EvalResult]:
    """Check every requested eval, then run each and write its artifacts as it finishes.

    `skip_inapplicable` (`--evals all`): an eval whose check fails is skipped with its one-line
    reason instead of stopping the others."""
    if not names:
        raise UserError("no evals requested")
    modules = {name: get_eval(name).load() for name in names}
    for name, module in list(modules.items()):
        try:
            module.check(ctx, configs[name])  # every check before any run: no artifact
        except UserError as err:
            if not skip_inapplicable:
                raise
            echo(f"  skipped {name}: {err}")
            del modules[name]
    results = {}
    for name, module in modules.items():
        result = module.run(ctx, configs[name])
        json_path = write_result(
            sae_dir, name, configs[name], result, ctx.sae_cfg, ctx.store.meta, ctx.store_path
        )
        saebench_path = write_saebench(module, name, configs[name], result, ctx.sae_cfg, sae_dir)
        echo(format_table(name, sae_name(sae_dir), result))
        echo(f"  wrote {json_path} and the catalog rows")
        if saebench_path is not None:
            echo(f"  wrote {saebench_path} (SAEBench's output schema)")
        results[name] = result
    return results
