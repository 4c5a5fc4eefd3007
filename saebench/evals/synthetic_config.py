"""SyntheticConfig: the ground-truth eval's sizes, kept free of torch for `--help`."""

from __future__ import annotations

from dataclasses import dataclass, fields

from store.errors import UserError


@dataclass(frozen=True)
class SyntheticConfig:
    """Train every registered architecture on SAELens synthetic data; score against the truth."""

    d_in: int = 256
    """Width of the synthetic activations (SAELens's `hidden_dim`)."""
    n_features: int = 1024
    """Number of true features (unit directions, Zipfian firing from 0.3 down to 0.01)."""
    d_sae: int = 1024
    """Latents of every SAE trained (equal to n_features: one latent per true feature)."""
    k: int = 12
    """Active latents per token, the same for every architecture (the default is close to
    the data's true L0 of about 12.1 at 1024 features)."""
    tokens: int = 5_000_000
    """Training tokens per SAE; every SAE sees the same stream, once."""
    eval_tokens: int = 100_000
    """Held-out tokens (a separate stream) on which every SAE is scored."""
    batch_size: int = 1024
    """Tokens per optimiser step, for our loop and SAELens's trainer alike."""
    lr: float | None = None
    """Adam learning rate for every SAE; None: the loop's default for d_sae."""
    dead_window: int = 200_000
    """Training tokens without a fire after which a latent counts as dead (enables AuxK)."""
    magnitude_std: float = 0.0
    """Std of a firing feature's magnitude around its mean (0: always exactly its mean)."""
    magnitude_mean_range: tuple[float, float] = (1.0, 1.0)
    """Mean firing magnitude of the most and of the least frequent feature, geometric in
    between (SAELens's ExponentialMagnitudeConfig); (1, 1): every feature's mean is 1."""
    hierarchy: bool = False
    """Impose SAELens's generated feature hierarchy (children fire only with their parent)."""
    # The knobs' defaults are the shallow trees over a quarter of the features that this eval
    # first fixed: enough absorption pressure to show (Chanin et al. 2024, "A is for
    # Absorption") without starving the leaves of fires.
    hierarchy_roots: int | None = None
    """Trees in the hierarchy (SAELens's total_root_nodes); None: n_features // 16."""
    hierarchy_branching: tuple[int, int] = (2, 4)
    """Children per parent, drawn uniformly from [min, max]; equal numbers fix it."""
    hierarchy_depth: int = 1
    """Levels below the roots (SAELens's max_depth): features sit at depth + 1 levels."""
    hierarchy_exclusive: float = 0.0
    """Portion of parents (rounded down) whose children are mutually exclusive: at most one
    fires per token."""
    correlation: bool = False
    """Correlate feature firings with SAELens's random low-rank correlation matrix."""
    readout_features: int = 64
    """True features that the synthetic downstream loss reads (gradient for gsae)."""
    archs: tuple[str, ...] = ()
    """Architectures to train (trainers.registry names); empty: every registered one."""
    reference: bool = True
    """Also train SAELens's own TopK and BatchTopK trainers on the same stream, as references."""
    seed: int = 0
    """Seed of the synthetic model, the data streams and every SAE's initialisation."""
    device: str = "auto"
    """cpu, cuda, cuda:N or auto, for training and scoring."""

    def __post_init__(self) -> None:
        for name in ("d_in", "n_features", "d_sae", "k", "batch_size", "eval_tokens",
                     "dead_window", "readout_features"):
            if getattr(self, name) < 1:
                raise UserError(f"synthetic: {name} must be positive")
        if self.k >= self.d_sae:
            raise UserError(f"synthetic: k ({self.k}) must be smaller than d_sae ({self.d_sae})")
        if self.tokens < self.batch_size:
            raise UserError(f"synthetic: tokens ({self.tokens}) must be at least batch_size "
                            f"({self.batch_size})")
        if self.readout_features > self.n_features:
            raise UserError("synthetic: readout_features must not exceed n_features")
        if self.magnitude_std < 0 or (self.lr is not None and self.lr <= 0):
            raise UserError("synthetic: magnitude_std must be >= 0 and lr positive")
        if min(self.magnitude_mean_range) <= 0:
            raise UserError("synthetic: magnitude_mean_range must be positive")
        self._check_hierarchy()

    def _check_hierarchy(self) -> None:
        changed = [f.name for f in _knobs() if getattr(self, f.name) != f.default]
        if changed and not self.hierarchy:
            # A knob that would be silently ignored is a mistake worth one line.
            raise UserError(f"synthetic: {', '.join(changed)} need --synthetic.hierarchy")
        roots, (low, high) = self.hierarchy_roots, self.hierarchy_branching
        if roots is not None and not 1 <= roots <= self.n_features:
            raise UserError(f"synthetic: hierarchy_roots ({roots}) must be in [1, n_features]")
        if not 2 <= low <= high:
            raise UserError(f"synthetic: hierarchy_branching ({low}, {high}) needs 2 <= min "
                            "<= max")
        if self.hierarchy_depth < 1:
            raise UserError("synthetic: hierarchy_depth must be at least 1")
        if not 0.0 <= self.hierarchy_exclusive <= 1.0:
            raise UserError("synthetic: hierarchy_exclusive must be in [0, 1]")

    @property
    def root_count(self) -> int:
        """Trees in the hierarchy, with None resolved."""
        return self.hierarchy_roots or max(1, self.n_features // 16)

    def data_fields(self) -> dict:
        """The fields that define the synthetic data (not the SAEs trained on it)."""
        keys = ("d_in", "n_features", "magnitude_std", "magnitude_mean_range", "hierarchy",
                *(f.name for f in _knobs()), "correlation", "readout_features", "seed")
        return {key: getattr(self, key) for key in keys}


def _knobs() -> list:
    """The hierarchy's shape knobs (hierarchy_*), which take effect only with `hierarchy`."""
    return [f for f in fields(SyntheticConfig) if f.name.startswith("hierarchy_")]

# A CI-sized configuration: trains in seconds on one CPU core. The high learning rate lets
# SAELens's reference trainer (decoder initialised at norm 0.1, raw units) converge within
# ~900 steps too; our loop reaches the same MCC at its default rate.
CI = SyntheticConfig(d_in=32, n_features=64, d_sae=64, k=2, tokens=60_000, eval_tokens=8192,
                     batch_size=64, lr=1e-2, dead_window=8192, readout_features=8,
                     device="cpu")
