"""The method catalog: exact parameter costs, compatibility and the default gain model.

Every number the allocator uses about a PEFT method lives here, so the cost
table of docs/design.md and the default gain curve can be read (and tested) in one
place.

Default gain model
------------------
``gain = utility * efficiency[m] * curve[m](r)`` where, unless the manifest
gives a measured curve, ``curve[m](r) = 1 - 2 ** (-r / half_rank[m])``: concave,
increasing, 0 at r = 0 and 1/2 at ``r = half_rank``.

=========  ==========  =========  ===========================================
method     efficiency  half_rank  reasoning
=========  ==========  =========  ===========================================
lora       1.00        8          the reference; most of a layer's useful
                                  update sits in its first few directions
adapter    0.90        6          a non-linear bottleneck: a little less
                                  per parameter than LoRA, saturates sooner
prefix     0.60        4          steers attention only; short prefixes
                                  capture most of what it can do
ia3        0.25        -          one scaling vector (curve = 1)
=========  ==========  =========  ===========================================

The efficiencies are priors, not measurements: a profiled manifest's
``gain_curves`` replace the curve for that layer and method.
"""

from __future__ import annotations

from dataclasses import dataclass

from .errors import LayerlensError

KINDS = ("attention", "mlp", "linear", "block", "embedding", "other")

#: Method order used everywhere (tables, variable indices, the heuristic's sequence).
METHOD_NAMES = ("none", "ia3", "prefix", "adapter", "lora")

DEFAULT_METHODS = ("lora", "adapter", "prefix", "none")

DEFAULT_RANKS = (1, 2, 4, 8, 16, 32, 64)

#: the default budget-utilization window (share of the budget an allocation must spend)
DEFAULT_WINDOW = (0.70, 0.90)


@dataclass(frozen=True)
class MethodSpec:
    """What the allocator knows about one method."""

    name: str
    efficiency: float
    half_rank: float | None
    fits: frozenset[str]
    ranked: bool

    def __post_init__(self) -> None:
        if not 0.0 <= self.efficiency <= 1.0:
            raise ValueError(f"MethodSpec {self.name!r}: efficiency must be in [0, 1], got {self.efficiency!r}")
        if self.half_rank is not None and self.half_rank <= 0:
            raise ValueError(f"MethodSpec {self.name!r}: half_rank must be positive, got {self.half_rank!r}")


METHODS: dict[str, MethodSpec] = {
    "none": MethodSpec("none", 0.0, None, frozenset(KINDS), ranked=False),
    "ia3": MethodSpec("ia3", 0.25, None, frozenset({"attention", "mlp", "linear"}), ranked=False),
    "prefix": MethodSpec("prefix", 0.60, 4.0, frozenset({"attention", "block"}), ranked=True),
    "adapter": MethodSpec("adapter", 0.90, 6.0, frozenset({"attention", "mlp", "block"}), ranked=True),
    "lora": MethodSpec("lora", 1.00, 8.0, frozenset({"attention", "mlp", "linear", "block"}), ranked=True),
}


def check_method(name: str, where: str = "method") -> str:
    """Return ``name`` if it is a known method, else raise LayerlensError naming the valid ones."""
    if name not in METHODS:
        raise LayerlensError(f"{where}: unknown method {name!r}; valid methods are {', '.join(METHOD_NAMES)}")
    return name


def param_cost(method: str, rank: int, in_features: int, out_features: int) -> int:
    """Exact trainable parameters of ``method`` at ``rank`` on a layer (docs/design.md, section 2).

    ``rank`` is the LoRA rank, the adapter bottleneck width or the prefix length;
    IA3 and none ignore it.
    """
    if method == "none":
        return 0
    if method == "lora":
        return rank * (in_features + out_features)
    if method == "adapter":
        return 2 * out_features * rank + rank + out_features
    if method == "prefix":
        return 2 * rank * out_features
    if method == "ia3":
        return out_features
    raise ValueError(f"unknown method {method!r}; valid methods are {', '.join(METHOD_NAMES)}")


def default_ranks(method: str, in_features: int, out_features: int, ranks: tuple[int, ...] = DEFAULT_RANKS) -> tuple[int, ...]:
    """Candidate ranks for ``method`` on a layer, capped by the layer's size.

    LoRA's rank is capped at ``min(d_in, d_out)`` and an adapter's bottleneck at
    ``d_out`` (a wider one is no longer a bottleneck). A prefix length is not
    tied to the layer's size. IA3 has one option (reported as rank 1), none has rank 0.
    """
    if method == "none":
        return (0,)
    if method == "ia3":
        return (1,)
    if method == "lora":
        cap = min(in_features, out_features)
    elif method == "adapter":
        cap = out_features
    else:
        cap = None
    out = tuple(r for r in ranks if cap is None or r <= cap)
    return out if out else (cap,)


def default_curve(method: str, rank: int) -> float:
    """The parametric captured fraction ``1 - 2**(-rank/half_rank)`` (1 for IA3, 0 for none)."""
    spec = METHODS[method]
    if method == "none":
        return 0.0
    if spec.half_rank is None:
        return 1.0
    return 1.0 - 2.0 ** (-rank / spec.half_rank)


def measured_curve(points: dict[int, float], rank: int) -> float:
    """Captured fraction at ``rank`` from measured points: linear between them, (0, 0) anchored, flat beyond."""
    ranks = sorted(points)
    if rank in points:
        return points[rank]
    prev_r, prev_v = 0, 0.0
    for r in ranks:
        if rank < r:
            return prev_v + (points[r] - prev_v) * (rank - prev_r) / (r - prev_r)
        prev_r, prev_v = r, points[r]
    return prev_v
