"""The predecessor's validation metrics, with its names and thresholds, for any allocation.

Every solver's allocation goes through :func:`compute_metrics`, so the ILP and
the heuristic are compared on equal terms, and ``layerlens-opt validate``
recomputes them from an allocation file alone.

Definitions
-----------
utility_cv
    standard deviation / mean of the layer utilities (>= 0.2: the utilities tell layers apart).
utility_gradient_correlation, utility_fisher_correlation
    Pearson correlation of utility with ``metadata.gradient_norms`` /
    ``metadata.fisher_traces`` (else with the ``gradient_energy`` / ``fisher``
    metrics); >= 0.7 and >= 0.6. ``None`` where the numbers are absent.
compatibility_rate
    share of layers whose method the layer accepts (>= 95%).
budget_compliance
    total parameters <= budget.
budget_utilization
    total / budget, inside the window (default 70-90%).
constraint_satisfaction
    every constraint holds: window, per-method caps, tied blocks, min methods.
method_diversity
    distinct methods used, 'none' not counted (>= 2).
rank_utility_correlation
    Spearman correlation of rank (0 for none) with utility (>= 0.6). Spearman,
    not Pearson, because ranks are powers of two: only their order means something.
rank_utility_consistency
    of all layer pairs where one has strictly higher utility, the share whose
    rank is >= the other's (>= 80%).
"""

from __future__ import annotations

import math

from collections import Counter
from dataclasses import dataclass
from typing import Any, Collection, Iterable, Mapping, Sequence

import numpy as np

from .methods import DEFAULT_WINDOW, METHODS

PASS, WARN, FAIL, SKIP = "PASS", "WARN", "FAIL", "SKIP"

#: name -> the lower limit a metric must reach (the others are true/false or the utilization window)
LIMITS: dict[str, float] = {
    "utility_cv": 0.2,
    "utility_gradient_correlation": 0.7,
    "utility_fisher_correlation": 0.6,
    "compatibility_rate": 0.95,
    "method_diversity": 2,
    "rank_utility_correlation": 0.6,
    "rank_utility_consistency": 0.8,
}
_SEVERITY = {
    "utility_cv": WARN, "utility_gradient_correlation": WARN, "utility_fisher_correlation": WARN,
    "compatibility_rate": FAIL, "budget_compliance": FAIL, "budget_utilization": FAIL, "constraint_satisfaction": FAIL,
    "method_diversity": WARN, "rank_utility_correlation": WARN, "rank_utility_consistency": WARN,
}
_TEXT = {"budget_compliance": "true", "budget_utilization": "in window", "constraint_satisfaction": "true"}
#: name -> (threshold text, severity when missed), in report order
THRESHOLDS: dict[str, tuple[str, str]] = {
    name: (_TEXT.get(name) or f">= {LIMITS[name]:g}", severity) for name, severity in _SEVERITY.items()
}

#: the metrics an allocation controls (the utilities' own quality is the manifest's business)
ALLOCATION_METRICS = (
    "compatibility_rate",
    "budget_compliance",
    "budget_utilization",
    "constraint_satisfaction",
    "rank_utility_correlation",
    "rank_utility_consistency",
)


def pearson(a: Sequence[float], b: Sequence[float]) -> float | None:
    """Pearson correlation, or None where either side is constant or too short."""
    x = np.asarray(a, dtype=float)
    y = np.asarray(b, dtype=float)
    if len(x) < 2 or np.ptp(x) == 0 or np.ptp(y) == 0:
        return None
    # the correlation does not change with scale; divided by their largest magnitude, numbers near the float limit
    # (gradient norms of 1e300) no longer overflow the products inside corrcoef into a NaN or a wrong 0
    r = float(np.corrcoef(x / np.abs(x).max(), y / np.abs(y).max())[0, 1])
    return r if np.isfinite(r) else None


def average_ranks(values) -> np.ndarray:
    """1-based ranks of ``values``, ties sharing their average rank."""
    values = np.asarray(values, dtype=float)
    if not len(values):
        return np.empty(0)
    _, inverse, counts = np.unique(values, return_inverse=True, return_counts=True)
    first = np.cumsum(counts) - counts  # 0-based position of each distinct value's first copy in sorted order
    return (first + (counts - 1) / 2 + 1)[inverse.reshape(-1)]


def spearman(a: Sequence[float], b: Sequence[float]) -> float | None:
    """Spearman rank correlation (average ranks for ties), or None where undefined."""
    x = np.asarray(a, dtype=float)
    y = np.asarray(b, dtype=float)
    if len(x) < 2 or np.ptp(x) == 0 or np.ptp(y) == 0:
        return None
    return pearson(average_ranks(x), average_ranks(y))


def consistency(utility: Sequence[float], rank: Sequence[float]) -> float | None:
    """Share of pairs (i, j) with utility_i > utility_j where rank_i >= rank_j.

    O(n log n) per distinct rank (a handful): for each layer, the layers of lower utility are
    counted by binary search among all layers and among those of rank <= its own.
    """
    u = np.asarray(utility, dtype=float)
    r = np.asarray(rank, dtype=float)
    lower = np.searchsorted(np.sort(u), u, side="left")  # layers of strictly lower utility
    total = int(lower.sum())
    if not total:
        return None
    good = 0
    for value in np.unique(r):
        mine = r == value
        pool = np.sort(u[r <= value])
        good += int(np.searchsorted(pool, u[mine], side="left").sum())
    return good / total


@dataclass(frozen=True)
class Columns:
    """An allocation's layers as columns: what the metrics and the constraint checks read.

    Built from :class:`~layerlens_opt.allocation.LayerChoice` objects (or mappings with the same
    keys, as ``solve --json`` writes them) by :meth:`of`, or straight from a solver's arrays.
    """

    method: Sequence[str]
    rank: np.ndarray
    params: np.ndarray
    utility: np.ndarray
    block: Sequence[Any]
    group: Sequence[Any]
    kind: Sequence[str]

    def __len__(self) -> int:
        return len(self.method)

    @classmethod
    def of(cls, layers: Iterable[Any]) -> "Columns":
        if isinstance(layers, Columns):
            return layers
        layers = list(layers)
        # one kind of row decides how every row is read (a per-row ABC isinstance costs ~2 us; 50,000 layers)
        if len({type(l) for l in layers}) == 1 and not isinstance(layers[0], Mapping):
            # objects: read attribute by attribute (vars() makes each object build its __dict__: ~1.5 us a row)
            def column(name, default=_REQUIRED):
                return [getattr(l, name) for l in layers] if default is _REQUIRED else [getattr(l, name, default) for l in layers]
        else:
            rows = [l if isinstance(l, Mapping) else vars(l) for l in layers]

            def column(name, default=_REQUIRED):
                return [r[name] for r in rows] if default is _REQUIRED else [r.get(name, default) for r in rows]

        return cls(
            method=column("method"),
            rank=np.array([float(v) for v in column("rank", 0)]),
            params=np.array([int(v) for v in column("params")], dtype=np.int64),
            utility=np.array([float(v) for v in column("utility", 0.0)]),
            block=column("block", None),
            group=column("group", None),
            kind=column("kind", "other"),
        )


#: :meth:`Columns.of`'s mark of a field every row must have
_REQUIRED = object()


def violations(layers: Columns | Iterable[Any], constraints: Mapping[str, Any]) -> list[str]:
    """What the allocation breaks, each as a sentence with numbers (empty when it is feasible)."""
    cols = Columns.of(layers)
    out: list[str] = []
    budget = constraints["budget"]
    total = int(cols.params.sum())
    lo_u, hi_u = constraints.get("min_utilization", 0.0), constraints.get("max_utilization", 1.0)
    if total > budget:
        out.append(f"total {total:,} exceeds the budget {budget:,}")
    if total > hi_u * budget + 1e-9:
        out.append(f"utilization {total / budget:.1%} is above the {hi_u:.0%} cap")
    if total < lo_u * budget - 1e-9:
        out.append(f"utilization {total / budget:.1%} is below the {lo_u:.0%} floor")
    caps = constraints.get("method_caps") or {}
    if caps:
        counts = Counter(cols.method)
        for method, cap in caps.items():
            if counts[method] > cap:
                out.append(f"{counts[method]} layers use {method}, above the cap of {cap}")
    if constraints.get("tie_blocks"):
        per_block: dict[Any, set[str]] = {}
        for block, method in zip(cols.block, cols.method):
            if block is not None and not METHODS[method].is_none:
                per_block.setdefault(block, set()).add(method)
        for block, methods in sorted(per_block.items()):
            if len(methods) > 1:
                out.append(f"block {block} mixes methods {', '.join(sorted(methods))} although blocks are tied")
    per_group: dict[str, set] = {}
    if set(cols.group) - {None}:  # (a C-level pass: most allocations have no tied group)
        for group, method, rank in zip(cols.group, cols.method, cols.rank):
            if group is not None:
                per_group.setdefault(group, set()).add((method, int(rank)))
    for group, choices in sorted(per_group.items()):
        if len(choices) > 1:
            shown = ", ".join(f"{m} r={r}" for m, r in sorted(choices, key=str))
            out.append(f"tied group {group!r} mixes {shown}; its layers must share one method and rank")
    k = constraints.get("min_methods") or 0
    used_methods = {m for m in set(cols.method) if not METHODS[m].is_none}
    if len(used_methods) < k:
        out.append(f"{len(used_methods)} distinct methods used, fewer than the {k} asked for")
    return out


def compute_metrics(
    layers: Columns | Iterable[Any],
    constraints: Mapping[str, Any],
    gradient_norms: Sequence[float] | None = None,
    fisher_traces: Sequence[float] | None = None,
    allowed: Sequence[Collection[str]] | None = None,
) -> dict[str, Any]:
    """All validation metrics of an allocation's layers (columns, or LayerChoice objects / dicts).

    ``allowed`` gives each layer's accepted methods; without it the kind table of
    :mod:`layerlens_opt.methods` decides compatibility.
    """
    cols = Columns.of(layers)
    if not len(cols):
        return {name: None for name in THRESHOLDS}
    utility, rank = cols.utility, cols.rank
    top = float(np.max(np.abs(utility))) if len(utility) else 0.0
    if top > 0 and math.isfinite(top):  # the statistics are scale-free: computed on [0, 1] they cannot overflow
        utility = utility / top
    mean = utility.mean()
    if allowed is None:
        ok = [m in METHODS and k in METHODS[m].fits for m, k in zip(cols.method, cols.kind)]
    else:
        ok = [m in a for m, a in zip(cols.method, allowed)]
    budget = constraints["budget"]
    total = int(cols.params.sum())
    return {
        "utility_cv": float(utility.std() / mean) if mean > 0 else None,
        "utility_gradient_correlation": pearson(utility, gradient_norms) if gradient_norms is not None else None,
        "utility_fisher_correlation": pearson(utility, fisher_traces) if fisher_traces is not None else None,
        "compatibility_rate": sum(ok) / len(ok),
        "budget_compliance": total <= budget,
        "budget_utilization": total / budget,
        "constraint_satisfaction": not violations(cols, constraints),
        "method_diversity": len({m for m in set(cols.method) if not METHODS[m].is_none}),
        "rank_utility_correlation": spearman(utility, rank),
        "rank_utility_consistency": consistency(utility, rank),
    }


def verdict(name: str, value: Any, constraints: Mapping[str, Any] | None = None) -> str:
    """PASS, WARN, FAIL or SKIP (value unknown) for one metric."""
    if value is None:
        return SKIP
    _, severity = THRESHOLDS[name]
    if name in ("budget_compliance", "constraint_satisfaction"):
        ok = bool(value)
    elif name == "budget_utilization":
        c = constraints or {}
        ok = c.get("min_utilization", DEFAULT_WINDOW[0]) - 1e-9 <= value <= c.get("max_utilization", DEFAULT_WINDOW[1]) + 1e-9
    else:
        ok = value >= LIMITS[name] - 1e-12
    return PASS if ok else severity


def verdicts(metrics: Mapping[str, Any], constraints: Mapping[str, Any] | None = None) -> dict[str, str]:
    return {name: verdict(name, metrics.get(name), constraints) for name in THRESHOLDS}
