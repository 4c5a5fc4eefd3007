"""SAE folders in SAELens's format: `cfg.json` + `sae_weights.safetensors` (+ our run record).

Writing: the weights first, then `saebench_train.json` (run config, store metadata, final
metrics), then `cfg.json`, each atomically. `cfg.json` comes last because SAELens needs it to
load anything, so a folder that has it is complete.

Reading: `load_sae` turns any SAELens folder of architecture topk, standard, jumprelu (SAELens
saves BatchTopK as jumprelu) or matching_pursuit into a SparseCoder that computes what SAELens's
own module does.
Weights are loaded as float32; hook_z reshaping is ignored (we work on flat [tokens, d_in]).
"""

from __future__ import annotations

import json
import os
from importlib import metadata as importlib_metadata
from pathlib import Path
from typing import Any

import torch
from jaxtyping import Float
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import Tensor, nn

from store.errors import UserError
from trainers.mp import MPSAE, MPConfig
from trainers.topk import TopKConfig, TopKSAE

CFG_FILE = "cfg.json"
WEIGHTS_FILE = "sae_weights.safetensors"
RUN_FILE = "saebench_train.json"
# SAELens applies these at inference as the identity (the scaling is folded into the weights).
IDENTITY_NORMS = ("none", "expected_average_only_in")


def _saelens_version() -> str:
    try:
        return importlib_metadata.version("sae-lens")
    except importlib_metadata.PackageNotFoundError:
        return "6.54.12"  # the pinned version; SAELens treats < 6.0 configs as legacy


def saelens_metadata(store_meta: dict) -> dict:
    """The cfg.json `metadata` block that SAELens and Neuronpedia read, from a store's meta."""
    version = _saelens_version()
    out = {"sae_lens_version": version, "sae_lens_training_version": version}
    for ours, theirs in (("model", "model_name"), ("hook", "hook_name"), ("ctx", "context_size"),
                         ("dataset", "dataset_path")):
        if store_meta.get(ours) is not None:
            out[theirs] = store_meta[ours]
    if isinstance(store_meta.get("bos_policy"), str):
        # Our store puts a BOS at position 0 of every window (and drops it from SAE data).
        out["prepend_bos"] = store_meta["bos_policy"].startswith("bos")
    return out


def _write_atomic(path: Path, write) -> None:
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    write(tmp)
    os.replace(tmp, path)


def _write_json(path: Path, obj: dict) -> None:
    _write_atomic(path, lambda p: p.write_text(json.dumps(obj, indent=2, default=str)))


def save_sae(
    folder: Path,
    export: tuple[str, dict, dict[str, Tensor]],
    *,
    d_in: int,
    d_sae: int,
    meta: dict,
    run: dict,
) -> None:
    """Write an SAE folder from an architecture's `export_saelens(scale)` output."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    architecture, fields, tensors = export
    cfg = {
        "d_in": d_in, "d_sae": d_sae, "dtype": "float32", "device": "cpu",
        "apply_b_dec_to_input": True, "normalize_activations": "none",
        "reshape_activations": "none", "metadata": meta, **fields, "architecture": architecture,
    }
    tensors = {k: v.detach().float().cpu().contiguous() for k, v in tensors.items()}
    _write_atomic(folder / WEIGHTS_FILE, lambda p: save_file(tensors, str(p)))
    _write_json(folder / RUN_FILE, run)
    _write_json(folder / CFG_FILE, cfg)


def update_tensors(folder: Path, tensors: dict[str, Tensor]) -> None:
    """Replace some tensors of a complete folder's weights file, atomically."""
    folder = Path(folder)
    current = load_file(str(folder / WEIGHTS_FILE))
    for name, value in tensors.items():
        if name not in current or tuple(current[name].shape) != tuple(value.shape):
            raise UserError(f"{folder}: no tensor {name} of shape {tuple(value.shape)} to update")
        current[name] = value.detach().float().cpu().contiguous()
    _write_atomic(folder / WEIGHTS_FILE, lambda p: save_file(current, str(p)))


def update_run(folder: Path, key: str, value: object) -> None:
    """Set one entry of a folder's saebench_train.json (created if absent), atomically."""
    path = Path(folder) / RUN_FILE
    run = json.loads(path.read_text()) if path.is_file() else {}
    _write_json(path, {**run, key: value})


class JumpReLUSAE(nn.Module):
    """Inference-only JumpReLU SAE (SAELens "jumprelu"; "standard" is threshold 0).

    codes = ReLU(pre)·[pre > threshold], pre = W_encᵀ(x − b_dec·apply_b_dec_to_input) + b_enc.
    """

    def __init__(self, d_in: int, d_sae: int, apply_b_dec_to_input: bool = True) -> None:
        super().__init__()
        self.d_in, self.d_sae, self.apply_b_dec_to_input = d_in, d_sae, apply_b_dec_to_input
        self.W_enc = nn.Parameter(torch.zeros(d_in, d_sae))
        self.b_enc = nn.Parameter(torch.zeros(d_sae))
        self.W_dec = nn.Parameter(torch.zeros(d_sae, d_in))
        self.b_dec = nn.Parameter(torch.zeros(d_in))
        self.threshold = nn.Parameter(torch.zeros(d_sae))

    def encode(self, x: Float[Tensor, "tokens d_in"]) -> Float[Tensor, "tokens d_sae"]:
        x = x.float() - (self.b_dec if self.apply_b_dec_to_input else 0.0)
        pre = x @ self.W_enc + self.b_enc
        return pre.relu() * (pre > self.threshold)

    def decode(self, codes: Float[Tensor, "tokens d_sae"]) -> Float[Tensor, "tokens d_in"]:
        return codes @ self.W_dec + self.b_dec

    def forward(self, x: Float[Tensor, "tokens d_in"]) -> Float[Tensor, "tokens d_in"]:
        return self.decode(self.encode(x))

    def loss(self, x: Float[Tensor, "tokens d_in"], ctx: Any = None) -> Any:
        raise NotImplementedError("SAEs loaded from SAELens jumprelu/standard folders are "
                                  "inference-only; train with `saebench train --arch ...`")


def _read_cfg(folder: Path) -> dict:
    if not folder.is_dir():
        raise UserError(f"{folder} is not an SAE folder (no such directory)")
    path = folder / CFG_FILE
    if not path.is_file():
        training = (folder / "checkpoints").is_dir()
        hint = " (training not finished? rerun it to resume)" if training else ""
        raise UserError(f"{folder} is not a complete SAE folder: {CFG_FILE} is missing{hint}")
    try:
        cfg = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise UserError(f"{path} is corrupt: {str(err).splitlines()[0]}") from None
    if not isinstance(cfg, dict) or not all(isinstance(cfg.get(k), int) for k in ("d_in", "d_sae")):
        raise UserError(f"{path} is corrupt: d_in and d_sae must be integers")
    if "architecture" not in cfg:
        # SAELens < 6 configs: TopK was a "standard" SAE with activation_fn "topk".
        kwargs = cfg.get("activation_fn_kwargs") or {}
        is_topk = cfg.get("activation_fn", cfg.get("activation_fn_str")) == "topk"
        cfg["architecture"] = "topk" if is_topk else "standard"
        cfg.setdefault("k", kwargs.get("k"))
    return cfg


def _read_weights(folder: Path, cfg: dict) -> dict[str, Tensor]:
    path = folder / WEIGHTS_FILE
    if not path.is_file():
        raise UserError(f"{folder} is not a complete SAE folder: {WEIGHTS_FILE} is missing")
    try:
        tensors = load_file(str(path))
    except (SafetensorError, OSError, ValueError, RuntimeError) as err:
        raise UserError(f"{path} is corrupt: {str(err).splitlines()[0]}") from None
    d_in, d_sae = cfg["d_in"], cfg["d_sae"]
    shapes = {"W_enc": (d_in, d_sae), "b_enc": (d_sae,), "W_dec": (d_sae, d_in), "b_dec": (d_in,)}
    if cfg["architecture"] == "jumprelu":
        shapes["threshold"] = (d_sae,)
    if cfg["architecture"] == "matching_pursuit":  # tied: the encoder is W_decᵀ
        del shapes["W_enc"], shapes["b_enc"]
    for name, shape in shapes.items():
        if name not in tensors:
            raise UserError(f"{path} is missing tensor {name}")
        if tuple(tensors[name].shape) != shape:
            raise UserError(f"{path}: {name} has shape {tuple(tensors[name].shape)}, "
                            f"expected {shape} from {CFG_FILE}")
    return {name: tensors[name].float() for name in shapes}


def _build_mp(cfg: dict, w: dict[str, Tensor]) -> MPSAE:
    steps = cfg.get("max_iterations")
    steps = cfg["d_in"] if steps is None else steps  # SAELens's default bound
    threshold = cfg.get("residual_threshold", 1e-2)
    if not isinstance(steps, int) or steps < 1 or not isinstance(threshold, int | float):
        raise UserError(f"{CFG_FILE} is corrupt: matching_pursuit needs an integer "
                        "max_iterations >= 1 and a numeric residual_threshold")
    if not cfg.get("apply_b_dec_to_input", True):
        # SAELens then neither subtracts nor adds b_dec: the same as our MP with b_dec = 0.
        w["b_dec"] = torch.zeros_like(w["b_dec"])
    mp_cfg = MPConfig(d_sae=cfg["d_sae"], k=steps, residual_threshold=max(float(threshold), 0.0),
                      stop_on_duplicate_support=bool(cfg.get("stop_on_duplicate_support", True)),
                      decoder_bias=True)  # SAELens's b_dec, whatever it holds
    return MPSAE(cfg["d_in"], mp_cfg)


def _build(cfg: dict, w: dict[str, Tensor]) -> nn.Module:
    arch, d_in, d_sae = cfg["architecture"], cfg["d_in"], cfg["d_sae"]
    if arch == "matching_pursuit":
        sae = _build_mp(cfg, w)
    elif arch == "topk":
        k = cfg.get("k")
        if not isinstance(k, int) or not 0 < k < d_sae:
            raise UserError(f"{CFG_FILE} is corrupt: topk needs an integer k in [1, d_sae)")
        if not cfg.get("apply_b_dec_to_input", True):
            # Our TopKSAE always centres by b_dec; fold the difference into b_enc.
            w["b_enc"] = w["b_enc"] + w["b_dec"] @ w["W_enc"]
        if cfg.get("rescale_acts_by_decoder_norm", False):
            # SAELens scales pre-activations by ‖W_dec row‖ and divides codes by it: folding
            # the norms into the encoder gives identical outputs with unit-norm rows.
            norm = w["W_dec"].norm(dim=1).clamp_min(1e-8)
            w["W_enc"], w["b_enc"] = w["W_enc"] * norm, w["b_enc"] * norm
            w["W_dec"] = w["W_dec"] / norm[:, None]
        sae = TopKSAE(d_in, TopKConfig(d_sae=d_sae, k=k))
    else:
        sae = JumpReLUSAE(d_in, d_sae, bool(cfg.get("apply_b_dec_to_input", True)))
    with torch.no_grad():
        for name, tensor in w.items():
            getattr(sae, name).copy_(tensor)  # copy_ keeps W_enc's column-major layout
    return sae


def load_sae(folder: str | Path, device: str | torch.device = "cpu") -> nn.Module:
    """Any SAELens-format folder (topk, standard, jumprelu, matching_pursuit) as a SparseCoder,
    in eval mode."""
    folder = Path(folder)
    cfg = _read_cfg(folder)
    known = ("topk", "standard", "jumprelu", "matching_pursuit")
    if cfg["architecture"] not in known:
        raise UserError(f"{folder}: SAELens architecture {cfg['architecture']!r} is not "
                        f"supported ({', '.join(known)})")
    norm = cfg.get("normalize_activations", "none") or "none"
    if norm not in IDENTITY_NORMS:
        raise UserError(f"{folder}: normalize_activations={norm!r} is not supported")
    sae = _build(cfg, _read_weights(folder, cfg))
    return sae.to(device).eval()


def read_meta(folder: str | Path) -> dict:
    """{"cfg": cfg.json, "run": saebench_train.json or None}: what an SAE folder says of itself."""
    folder = Path(folder)
    cfg = _read_cfg(folder)
    run_path = folder / RUN_FILE
    run = None
    if run_path.is_file():
        try:
            run = json.loads(run_path.read_text())
        except json.JSONDecodeError as err:
            raise UserError(f"{run_path} is corrupt: {err}") from None
    return {"cfg": cfg, "run": run}
