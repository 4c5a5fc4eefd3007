"""The Python API for notebooks: open a workspace, query it with SQL, run its SAEs on text.

    import saebench
    ws = saebench.open_workspace("runs/demo")
    ws.sql("SELECT latent, density FROM features WHERE sae = ? ORDER BY density DESC", ["topk"])
    ws.sae("topk-k32-w4608").encode_text("It is a truth universally acknowledged")

Everything is read-only: queries go through the catalog's views (store.catalog.connect opens
it read-only), so a notebook never blocks a run that is writing into the same workspace.
Torch, the model and pandas are imported on first use, not when this module is imported.
"""

from __future__ import annotations

from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, Any

from store.errors import UserError

if TYPE_CHECKING:
    import pandas as pd
    from torch import Tensor
    from transformer_lens import HookedTransformer

    from saebench.steering import SteerResult

__all__ = ["SAEHandle", "Workspace", "load_model", "load_sae", "open_workspace"]


def load_model(name: str = "smollm2-135m", device: str = "cpu") -> HookedTransformer:
    """A model by saebench name, local HF folder or TransformerLens name (store.models)."""
    from store.models import load_model as _load_model

    return _load_model(name, device)


def load_sae(folder: str | Path, device: str = "cpu"):
    """Any SAELens-format folder as a SparseCoder in eval mode (trainers.saelens_format)."""
    from trainers.saelens_format import load_sae as _load_sae

    return _load_sae(folder, device)


def open_workspace(path: str | Path = "runs/demo") -> Workspace:
    """Open a workspace folder (stores, saes/<name>/ folders and catalog.duckdb), read-only."""
    path = Path(path)
    if not path.is_dir():
        raise UserError(f"{path}: no such workspace folder")
    return Workspace(path)


class Workspace:
    """A workspace folder: its SAEs, and SQL over its catalog views."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)

    def __repr__(self) -> str:
        return f"Workspace({str(self.path)!r}, saes={self.saes()})"

    def saes(self) -> list[str]:
        """Names of the complete SAE folders under saes/ (those with a cfg.json)."""
        return sorted(p.parent.name for p in self.path.glob("saes/*/cfg.json"))

    def sae(self, name: str, device: str = "cpu") -> SAEHandle:
        """One SAE by folder name; weights and model load on first use."""
        folder = self.path / "saes" / name
        if not (folder / "cfg.json").is_file():
            raise UserError(f"no SAE {name!r} in {self.path}; have {self.saes()}")
        return SAEHandle(folder, device)

    def tables(self) -> list[str]:
        """The catalog views that currently have data (features, contexts, eval_metrics, ...)."""
        from store.catalog import VIEWS

        return [name for name, glob in VIEWS.items() if any(self.path.glob(glob))]

    def sql(self, query: str, params: list | None = None) -> pd.DataFrame:
        """Run one read-only SQL query over the catalog views; a pandas DataFrame."""
        from store.catalog import query as run_query

        return run_query(self.path, query, params).to_pandas()

    def search(self, text: str, sae: str | None = None,
               limit: int = 20) -> pd.DataFrame | list[dict[str, Any]]:
        """Latents ranked by BM25 over their labels, explanations and top tokens, best first;
        across every SAE, or one (saebench.search)."""
        from dataclasses import asdict

        from saebench.search import search

        return _frame([asdict(h) for h in search(self.path, text, sae, limit)])

    def metrics(self, eval: str = "core") -> pd.DataFrame:
        """One eval's metrics pivoted to one row per SAE, one column per metric."""
        import pandas as pd

        if "eval_metrics" not in self.tables():
            return pd.DataFrame(index=pd.Index([], name="sae"))
        rows = self.sql("SELECT sae, metric, value FROM eval_metrics WHERE eval = ?", [eval])
        return rows.pivot_table(index="sae", columns="metric", values="value", aggfunc="last")

    def prompt_graph(self, saes: list[str], prompt: str, target: str,
                     contrast: str | None = None, device: str = "cpu", **settings) -> dict:
        """One prompt's attribution graph for a target token through these SAEs (one per
        hook); settings: metric, nodes, edges (saebench.circuits.prompt_graph)."""
        from saebench.circuits.prompt_graph import graph_for_folders
        from saebench.circuits.prompt_graph_config import GraphSettings

        folders = [self.sae(name).path for name in saes]
        return graph_for_folders(folders, prompt, target, contrast,
                                 settings=GraphSettings(**settings), device=device)


class SAEHandle:
    """One SAE folder: its cfg, its SparseCoder, and its codes on any text."""

    def __init__(self, folder: Path, device: str = "cpu") -> None:
        from trainers.saelens_format import read_meta

        self.path, self.device = Path(folder), device
        self.name = self.path.name
        meta = read_meta(self.path)
        self.cfg: dict = meta["cfg"]
        self.run: dict | None = meta["run"]

    def __repr__(self) -> str:
        c = self.cfg
        return (f"SAEHandle({self.name!r}: {c['architecture']} d_in={c['d_in']} "
                f"d_sae={c['d_sae']} k={c.get('k', '-')} {self.model_name} {self.hook_name})")

    @property
    def model_name(self) -> str:
        """The model the SAE was trained on (cfg metadata model_name)."""
        return (self.cfg.get("metadata") or {}).get("model_name") or self.cfg["model_name"]

    @property
    def hook_name(self) -> str:
        """The TransformerLens hook the SAE reads (cfg metadata hook_name)."""
        return (self.cfg.get("metadata") or {}).get("hook_name") or self.cfg["hook_name"]

    @cached_property
    def sparse_coder(self):
        """The SAE as a SparseCoder (encode/decode/W_dec), loaded on first access."""
        return load_sae(self.path, self.device)

    @property
    def model(self) -> HookedTransformer:
        """The SAE's model (store.models.load_model caches it across handles)."""
        return load_model(self.model_name, self.device)

    def tokens(self, text: str) -> Tensor:
        """Token ids [1, n] under the store's BOS policy: one BOS, then the text's tokens."""
        import torch

        from store.windows import special_ids

        tokenizer = self.model.tokenizer
        ids = tokenizer(text, add_special_tokens=False)["input_ids"]
        if (self.cfg.get("metadata") or {}).get("prepend_bos", True):
            ids = [special_ids(tokenizer)[0], *ids]
        return torch.tensor([ids], device=self.device)

    def hook_activations(self, text: str) -> tuple[list[str], Tensor]:
        """(token strings, x [n, d_in]): the model's activations at the SAE's hook, BOS dropped."""
        import torch

        from store.hooks import stop_layer

        tokens = self.tokens(text)
        saved: dict[str, Tensor] = {}

        def keep(act, hook):
            saved["x"] = act.detach()

        with torch.inference_mode():
            self.model.run_with_hooks(tokens, fwd_hooks=[(self.hook_name, keep)],
                                      stop_at_layer=stop_layer(self.hook_name))
        strs = self.model.tokenizer.convert_ids_to_tokens(tokens[0].tolist())
        # BOS is an attention sink with an outlier norm; the SAE never trained on it.
        start = 1 if (self.cfg.get("metadata") or {}).get("prepend_bos", True) else 0
        return [self._show(s) for s in strs[start:]], saved["x"][0, start:].float()

    def codes(self, text: str) -> tuple[list[str], Tensor]:
        """(token strings, codes [n, d_sae]) for a text, BOS dropped."""
        import torch

        strs, x = self.hook_activations(text)
        with torch.inference_mode():
            return strs, self.sparse_coder.encode(x)

    def steer(self, latents: int | list[int], strengths: float | list[float] = 1.0,
              **options) -> SteerResult:
        """Default and steered generations, the latents' activations on them and the held-out
        loss change. Options: saebench.steering.SteerConfig's fields (method, prompt, n_tokens,
        temperature, seed), heldout_text, max_acts (saebench.steering_inputs.steer_handle)."""
        from saebench.steering_inputs import steer_handle

        return steer_handle(self, latents, strengths, **options)

    @staticmethod
    def _show(token: str) -> str:
        # Byte-level BPE marks a leading space with Ġ and a newline with Ċ.
        return token.replace("Ġ", " ").replace("Ċ", "\\n")

    def encode_text(self, text: str, top: int = 5) -> pd.DataFrame | list[dict[str, Any]]:
        """The top latents per token: rows (pos, token, rank, latent, act), strongest first."""
        strs, codes = self.codes(text)
        vals, idx = codes.topk(min(top, codes.shape[1]), dim=1)
        rows = [
            {"pos": pos, "token": tok, "rank": r, "latent": int(i), "act": float(v)}
            for pos, tok in enumerate(strs)
            for r, (v, i) in enumerate(zip(vals[pos].tolist(), idx[pos].tolist(), strict=True))
            if v > 0
        ]
        return _frame(rows)

    def activations(self, text: str, latent: int) -> pd.DataFrame | list[dict[str, Any]]:
        """One latent's activation on every token of a text: rows (pos, token, act)."""
        if not 0 <= latent < self.cfg["d_sae"]:
            raise UserError(f"latent {latent} is out of range for d_sae {self.cfg['d_sae']}")
        strs, codes = self.codes(text)
        acts = codes[:, latent].tolist()
        return _frame([{"pos": p, "token": t, "act": a}
                       for p, (t, a) in enumerate(zip(strs, acts, strict=True))])


def _frame(rows: list[dict[str, Any]]):
    """A pandas DataFrame when pandas is installed, else the rows themselves."""
    try:
        import pandas as pd
    except ImportError:
        return rows
    return pd.DataFrame(rows)
