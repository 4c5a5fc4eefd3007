"""Probes of the absorption eval: the ground-truth letter probes on the residual stream, and the
k-sparse probes on SAE latents that pick each letter's main latents.

Procedure of SAEBench's `absorption/probing.py` and `k_sparse_probing.py` (Chanin et al. 2024,
arXiv 2409.14507, §3.1-3.2), reimplemented: one-vs-rest logistic regression per letter,
class-balanced; an L1-penalised probe on all latents ranks them; for k = 1..max_k a logistic
regression on the k top-ranked latents; a larger k adds main latents while its test F1 jumps.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass

import numpy as np
import torch
from jaxtyping import Float
from torch import Tensor

N_LETTERS = 26


def f1(y: np.ndarray, pred: np.ndarray) -> float:
    """Binary F1 (0 where there are neither positives nor predictions, as sklearn's default)."""
    tp = float(np.sum(y & pred))
    denom = float(np.sum(y) + np.sum(pred))
    return 2 * tp / denom if denom else 0.0


def _logreg(x: np.ndarray, y: np.ndarray, max_iter: int) -> tuple[np.ndarray, float]:
    """Class-balanced logistic regression (sklearn); (weight, bias)."""
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.linear_model import LogisticRegression

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        fit = LogisticRegression(max_iter=max_iter, class_weight="balanced").fit(x, y)
    return fit.coef_[0].astype(np.float32), float(fit.intercept_[0])


@dataclass
class LetterProbes:
    """One linear probe per letter; a score above 0 predicts the letter."""

    W: Float[Tensor, "letters d"]
    b: Float[Tensor, " letters"]

    def scores(self, x: Tensor) -> Tensor:
        return x.float() @ self.W.T + self.b


def fit_letter_probes(x: Tensor, letters: np.ndarray, max_iter: int = 1000) -> LetterProbes:
    """The ground-truth probes on residual activations. A letter with no train word (or only
    such words) gets a probe that never fires, so its F1 is 0 and it is not counted."""
    W = torch.zeros(N_LETTERS, x.shape[1])
    b = torch.full((N_LETTERS,), -math.inf)
    xs = x.float().numpy()
    for i in range(N_LETTERS):
        y = letters == i
        if 0 < y.sum() < len(y):
            w, bias = _logreg(xs, y, max_iter)
            W[i], b[i] = torch.from_numpy(w), bias
    return LetterProbes(W, b)


def l1_ranking(
    codes: Tensor, letters: np.ndarray, l1_decay: float, epochs: int, seed: int
) -> Float[Tensor, "letters d_sae"]:
    """Weights of an L1-penalised one-vs-rest probe on all latents, trained as SAEBench's
    `train_sparse_multi_probe`: BCE with positive-class weighting, Adam 1e-2 decaying
    exponentially to 1e-5, L2 1e-6, penalty l1_decay * mean over letters of sum |w|."""
    g = torch.Generator().manual_seed(seed)
    y = torch.nn.functional.one_hot(torch.from_numpy(letters), N_LETTERS).float()
    pos = y.sum(0)
    pos_weight = (len(y) - pos) / pos.clamp(min=1)  # a letter with no words: weight irrelevant
    probe = torch.nn.Linear(codes.shape[1], N_LETTERS)
    # SAEBench keeps nn.Linear's random init (±1/sqrt(d_sae)): negligible at its >= 16k widths,
    # but at small widths it can outweigh what the short schedule learns. Zero init ranks
    # latents by learned weight alone.
    torch.nn.init.zeros_(probe.weight)
    torch.nn.init.zeros_(probe.bias)
    opt = torch.optim.Adam(probe.parameters(), lr=1e-2, weight_decay=1e-6)
    sched = torch.optim.lr_scheduler.ExponentialLR(opt, gamma=(1e-5 / 1e-2) ** (1 / epochs))
    loss_fn = torch.nn.BCEWithLogitsLoss(pos_weight=pos_weight)
    batch = 4096
    for _ in range(epochs):
        for idx in torch.randperm(len(y), generator=g).split(batch):
            opt.zero_grad()
            loss = loss_fn(probe(codes[idx]), y[idx])
            loss = loss + l1_decay * probe.weight.abs().sum(-1).mean()
            loss.backward()
            opt.step()
        sched.step()
    return probe.weight.detach()


@dataclass
class MainLatents:
    """A letter's main latents and the k-sparse probes' test F1 that chose them."""

    latents: list[int]
    f1_by_k: list[float]


def main_latents(
    codes_train: Tensor,
    letters_train: np.ndarray,
    codes_test: Tensor,
    letters_test: np.ndarray,
    ranking: Tensor,
    max_k: int,
    f1_jump: float,
) -> list[MainLatents]:
    """Per letter: k-sparse probes on the top-k latents of `ranking` (largest signed weight:
    latents that predict the letter, not its absence), and the main latents they imply."""
    out = []
    for i in range(N_LETTERS):
        y_train, y_test = letters_train == i, letters_test == i
        order = ranking[i].topk(min(max_k, ranking.shape[1])).indices.tolist()
        f1s: list[float] = []
        for k in range(1, len(order) + 1):
            ids = order[:k]
            if 0 < y_train.sum() < len(y_train):
                w, bias = _logreg(codes_train[:, ids].numpy(), y_train, 500)
                pred = codes_test[:, ids].numpy() @ w + bias > 0
            else:
                pred = np.zeros(len(y_test), dtype=bool)
            f1s.append(f1(y_test, pred))
        out.append(MainLatents(order[: split_size(f1s, f1_jump)], f1s))
    return out


def split_size(f1_by_k: list[float], jump: float) -> int:
    """How many latents the main set holds: grow k while F1 beats the best so far by more
    than `jump` (SAEBench `add_feature_splits_to_metrics_df`; k = 1 always counts)."""
    best, size = -math.inf, 0
    for k, score in enumerate(f1_by_k, start=1):
        if score > best + jump:
            best, size = score, k
        else:
            break
    return size


@torch.inference_mode()
def encode_all(sae, x: Tensor, batch: int = 4096) -> Tensor:
    """SAE codes of rows of x, in batches, as float32 on the CPU."""
    dtype, device = sae.W_dec.dtype, sae.W_dec.device
    parts = [sae.encode(x[lo : lo + batch].to(device, dtype)).float().cpu()
             for lo in range(0, len(x), batch)]
    return torch.cat(parts)
