"""A second artifact per eval in SAEBench's output schema: `evals/<name>.saebench.json`.

SAEBench (adamkarvonen/SAEBench, `sae_bench/evals/base_eval_output.py`) writes one JSON per
(eval, SAE) with a fixed top level: eval_type_id, eval_config, eval_id (a uuid),
datetime_epoch_millis, eval_result_metrics ({group: {metric: value}}), eval_result_details (a
list of per-feature or per-item records), eval_result_unstructured, sae_bench_commit_hash,
sae_lens_id, sae_lens_release_id, sae_lens_version and sae_cfg_dict. Writing the same shape
lets SAEBench's graphing code and Neuronpedia's uploader read our results.

An eval opts in by defining `saebench_output(result, cfg) -> (eval_type_id, metrics, details)`
in its module; this file adds everything else. Values follow SAEBench's conventions: NaN (and
inf) become -1, as SAEBench core's `replace_nans_with_negative_one` does.
"""

from __future__ import annotations

import math
import time
import uuid
from dataclasses import asdict
from pathlib import Path
from types import ModuleType

from saebench.evals.context import EvalResult, sae_name
from saebench.evals.report import code_version, write_json_atomic
from store.catalog import workspace_of

SUFFIX = ".saebench.json"


def _minus_one_for_nan(value):
    if isinstance(value, float) and not math.isfinite(value):
        return -1.0
    if isinstance(value, dict):
        return {k: _minus_one_for_nan(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_minus_one_for_nan(v) for v in value]
    return value


def saebench_payload(
    module: ModuleType, config, result: EvalResult, sae_cfg: dict, sae_dir: Path
) -> dict | None:
    """The SAEBench-schema document of one eval, or None if its module defines no mapping."""
    mapping = getattr(module, "saebench_output", None)
    if mapping is None:
        return None
    eval_type_id, metrics, details = mapping(result, config)
    code = code_version()
    sae_lens = code.get("sae-lens")
    return _minus_one_for_nan({
        "eval_type_id": eval_type_id,
        "eval_config": asdict(config),
        "eval_id": str(uuid.uuid4()),
        "datetime_epoch_millis": int(time.time() * 1000),
        "eval_result_metrics": metrics,
        "eval_result_details": details,
        # Not SAEBench's code: say whose it is, and keep our notes and flat metrics with it.
        "eval_result_unstructured": {
            "producer": "saebench workbench (not adamkarvonen/SAEBench)",
            "notes": result.notes,
            "flat_metrics": result.metrics,
        },
        "sae_bench_commit_hash": f"saebench-workbench {code.get('saebench')} "
                                 f"evals-sha256 {code['evals_sha256']}",
        # A local folder, not a SAELens registry entry: the workspace plays the release, the
        # folder the id (SAEBench does the same for custom SAEs: a release name and an id).
        "sae_lens_id": sae_name(sae_dir),
        "sae_lens_release_id": workspace_of(Path(sae_dir)).resolve().name,
        "sae_lens_version": None if sae_lens in (None, "unknown") else sae_lens,
        "sae_cfg_dict": sae_cfg,
    })


def write_saebench(
    module: ModuleType, eval_name: str, config, result: EvalResult, sae_cfg: dict, sae_dir: Path
) -> Path | None:
    """Write `evals/<eval_name>.saebench.json` if the eval maps onto SAEBench's schema."""
    payload = saebench_payload(module, config, result, sae_cfg, sae_dir)
    if payload is None:
        return None
    path = Path(sae_dir) / "evals" / f"{eval_name}{SUFFIX}"
    write_json_atomic(path, payload)
    return path
