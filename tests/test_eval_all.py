"""`saebench eval --evals all`: every eval that applies runs; one that does not is skipped with
its one-line reason instead of stopping the others."""

from __future__ import annotations

import shutil

import pytest
from workspace_builder import SAE_NAME

from saebench.evals import EVALS
from saebench.evals.configs import CoreConfig
from saebench.evals.meta_config import MetaStructureConfig
from saebench.evals.runner import open_context, run_evals
from store.errors import UserError


@pytest.mark.usefixtures("one_thread")
def test_inapplicable_eval_is_skipped_with_its_reason(tiny_workspace, tmp_path):
    sae = tmp_path / SAE_NAME
    shutil.copytree(tiny_workspace / "saes" / SAE_NAME, sae)
    ctx = open_context(sae, tiny_workspace / "store.duckdb", "cpu")
    configs = {"core": CoreConfig(n_tokens=10**9),  # more than the store holds: check fails
               "meta_structure": MetaStructureConfig(steps=50)}
    with pytest.raises(UserError):  # named explicitly, a failing check stops everything
        run_evals(ctx, sae, ("core", "meta_structure"), configs, echo=lambda _: None)
    said: list[str] = []
    results = run_evals(ctx, sae, ("core", "meta_structure"), configs, echo=said.append,
                        skip_inapplicable=True)
    assert list(results) == ["meta_structure"]
    assert said[0].startswith("  skipped core: ") and "\n" not in said[0]
    assert (sae / "evals" / "meta_structure.json").exists()


def test_all_runs_every_eval_but_synthetic_core_first():
    assert list(EVALS)[0] == "core" and "synthetic" in EVALS
