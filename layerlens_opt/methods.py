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

Adding a method
---------------
One :class:`MethodSpec` passed to :func:`register_method` (its exact cost, rank
cap, default curve, the layer kinds it fits, the learning rate it trains at) and, to train it, one injector
passed to :func:`layerlens_opt.inject.register_injector`. Nothing else in the
package compares method names: solvers, reports, validation and export read
this catalog (tests/test_method_catalog.py adds a toy method this way and
solves, validates, exports and applies it).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from .errors import LayerlensError

KINDS = ("attention", "mlp", "linear", "block", "embedding", "other")

#: Method order used everywhere (tables, variable indices, the heuristic's sequence); registered
#: methods are appended (a list, so every module that imported it sees them)
METHOD_NAMES: list[str] = []

DEFAULT_METHODS = ("lora", "adapter", "prefix", "none")

DEFAULT_RANKS = (1, 2, 4, 8, 16, 32, 64)

#: the default budget-utilization window (share of the budget an allocation must spend)
DEFAULT_WINDOW = (0.70, 0.90)


@dataclass(frozen=True)
class MethodSpec:
    """What the allocator knows about one method.

    ``cost(rank, d_in, d_out)`` is its exact trainable parameter count on a layer;
    ``rank_cap(d_in, d_out)`` the largest rank that makes sense there (None: no cap);
    an unranked method has the single rank ``fixed_rank``; ``one_per_block`` methods
    (prefix) are offered on one attention layer per block; ``peft_lora``: peft's
    ``LoraConfig`` can express it; ``color`` for plots.
    """

    name: str
    efficiency: float
    half_rank: float | None
    fits: frozenset[str]
    ranked: bool
    cost: Callable[[int, int, int], int] = lambda rank, d_in, d_out: 0
    rank_cap: Callable[[int, int], int | None] = lambda d_in, d_out: None
    fixed_rank: int = 1
    one_per_block: bool = False
    peft_lora: bool = False
    color: str = "#cccccc"
    #: AdamW learning rate this method trains at (the probe and the training benchmark), chosen on the
    #: development tasks only (docs/benchmarks.md, "Learning rates"); None: the caller's rate
    lr: float | None = None

    @property
    def is_none(self) -> bool:
        """The absence of a method ('none': no parameters, rank 0)."""
        return not self.ranked and self.fixed_rank == 0

    def __post_init__(self) -> None:
        if not 0.0 <= self.efficiency <= 1.0:
            raise ValueError(f"MethodSpec {self.name!r}: efficiency must be in [0, 1], got {self.efficiency!r}")
        if self.half_rank is not None and self.half_rank <= 0:
            raise ValueError(f"MethodSpec {self.name!r}: half_rank must be positive, got {self.half_rank!r}")


METHODS: dict[str, MethodSpec] = {}


def register_method(spec: MethodSpec) -> MethodSpec:
    """Add ``spec`` to the catalog (after the built-in methods); a name may be registered once."""
    if spec.name in METHODS:
        raise ValueError(f"method {spec.name!r} is already registered")
    if not spec.name or not spec.name.replace("_", "").isalnum():
        raise ValueError(f"method name {spec.name!r} must be a non-empty identifier")
    METHODS[spec.name] = spec
    METHOD_NAMES.append(spec.name)
    return spec


for _spec in (
    MethodSpec("none", 0.0, None, frozenset(KINDS), ranked=False, fixed_rank=0, color="#eeeeee"),
    MethodSpec("ia3", 0.25, None, frozenset({"attention", "mlp", "linear"}), ranked=False,
               cost=lambda r, d_in, d_out: d_out, color="#b3de69", lr=3e-2),
    MethodSpec("prefix", 0.60, 4.0, frozenset({"attention", "block"}), ranked=True,
               cost=lambda r, d_in, d_out: 2 * r * d_out, one_per_block=True, color="#80b1d3", lr=3e-2),
    MethodSpec("adapter", 0.90, 6.0, frozenset({"attention", "mlp", "block"}), ranked=True,
               cost=lambda r, d_in, d_out: 2 * d_out * r + r + d_out, rank_cap=lambda d_in, d_out: d_out, color="#fdb462",
               lr=3e-3),
    MethodSpec("lora", 1.00, 8.0, frozenset({"attention", "mlp", "linear", "block"}), ranked=True,
               cost=lambda r, d_in, d_out: r * (d_in + d_out), rank_cap=lambda d_in, d_out: min(d_in, d_out), peft_lora=True,
               color="#fb8072", lr=2e-3),
):
    register_method(_spec)


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
    spec = METHODS.get(method)
    if spec is None:
        raise ValueError(f"unknown method {method!r}; valid methods are {', '.join(METHOD_NAMES)}")
    return int(spec.cost(rank, in_features, out_features))


def default_ranks(method: str, in_features: int, out_features: int, ranks: tuple[int, ...] = DEFAULT_RANKS) -> tuple[int, ...]:
    """Candidate ranks for ``method`` on a layer, capped by the layer's size.

    LoRA's rank is capped at ``min(d_in, d_out)`` and an adapter's bottleneck at
    ``d_out`` (a wider one is no longer a bottleneck). A prefix length is not
    tied to the layer's size. IA3 has one option (reported as rank 1), none has rank 0.
    """
    spec = METHODS[method]
    if not spec.ranked:
        return (spec.fixed_rank,)
    cap = spec.rank_cap(in_features, out_features)
    out = tuple(r for r in ranks if cap is None or r <= cap)
    return out if out else (cap,)


def default_curve(method: str, rank: int) -> float:
    """The parametric captured fraction ``1 - 2**(-rank/half_rank)`` (1 for IA3, 0 for none)."""
    spec = METHODS[method]
    if spec.is_none:
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
