"""From a manifest and a budget to one immutable problem.

A :class:`Problem` holds, for every layer, its candidate options (method, rank)
with exact parameter cost and utility-weighted gain — compatibility already
applied — and the global :class:`Constraints`. Solvers read it and never write
into it: its arrays are read-only.

Utilities
---------
Each metric is normalised exactly once, here, by dividing by its largest value
over the layers (``normalization="max"``: keeps zero at zero and ratios intact),
or by its rank (``"rank"``: percentile in (0, 1], for metrics that span orders of
magnitude). The utility is the weighted mean of the normalised metrics with the
weights rescaled to sum to 1, so it lies in [0, 1]. ``shrink`` pulls the
utilities toward their mean, a prior for noisy first-order profiles that
favours breadth. Weight keys must equal the metric names (checked in :mod:`layerlens_opt.manifest`), so the predecessor's
double normalisation and its mismatched keys cannot happen.
"""

from __future__ import annotations

import functools
import math
import re
from dataclasses import dataclass, field, replace
from typing import Mapping, Sequence

import numpy as np

from .errors import LayerlensError
from .manifest import Manifest, check_weights
from .metrics import average_ranks
from .naming import role
from .records import Rows, column_of, positional
from .methods import (
    DEFAULT_METHODS,
    DEFAULT_RANKS,
    DEFAULT_WINDOW,
    METHOD_NAMES,
    METHODS,
    check_method,
    default_curve,
    default_ranks,
    measured_curve,
    param_cost,
)

NORMALIZATIONS = ("max", "rank")



@dataclass(frozen=True)
class Constraints:
    """The global constraints: budget, utilization window and optional side constraints.

    ``method_caps`` limits how many layers may use a method; ``tie_blocks``
    lets the layers of one block use at most one method besides none;
    ``min_methods`` asks for at least that many distinct methods (none excluded);
    ``tie_groups`` is a regex: layers whose names give the same tuple of capture
    groups under it (``re.search``) form one tied group (same method and rank),
    besides the groups a manifest names in its layers' ``group`` fields.
    """

    budget: int
    min_utilization: float = DEFAULT_WINDOW[0]
    max_utilization: float = DEFAULT_WINDOW[1]
    min_methods: int = 0
    method_caps: tuple[tuple[str, int], ...] = ()
    tie_blocks: bool = False
    tie_groups: str | None = None

    def __post_init__(self) -> None:
        if self.tie_groups is not None:
            if not self.tie_groups:  # '' would silently tie nothing (or, searched, everything)
                raise LayerlensError("--tie-groups is empty; give a regex whose capture groups name a layer's group, "
                                     "e.g. 'layers\\.(\\d+)\\.mlp\\.experts\\.\\d+\\.(\\w+)'")
            try:
                re.compile(self.tie_groups)
            except (re.error, TypeError) as exc:
                raise LayerlensError(f"--tie-groups {self.tie_groups!r}: bad regex ({exc}); e.g. 'layers\\.(\\d+)\\.mlp\\.experts\\.\\d+\\.(\\w+)'") from None
        if isinstance(self.budget, bool) or not isinstance(self.budget, int) or self.budget <= 0:
            raise LayerlensError(f"budget must be a positive number of parameters, got {self.budget!r}")
        lo, hi = self.min_utilization, self.max_utilization
        if not (0.0 <= lo <= 1.0) or not (0.0 < hi <= 1.0):
            raise LayerlensError(
                f"utilization window must lie in [0, 1], got min {lo!r}, max {hi!r}; e.g. --min-utilization 0.7 --max-utilization 0.9"
            )
        if lo > hi:
            raise LayerlensError(
                f"min utilization {lo} is above max utilization {hi}; the window is empty — swap or widen them"
            )
        if self.lo > self.hi:
            raise LayerlensError(
                f"the window {lo:.0%}-{hi:.0%} of a budget of {self.budget:,} holds no whole number of parameters "
                f"([{lo * self.budget:g}, {hi * self.budget:g}]); raise the budget or widen the window"
            )
        if self.min_methods < 0:
            raise LayerlensError(f"min_methods must be >= 0, got {self.min_methods}")
        for method, cap in self.method_caps:
            check_method(method, "method cap")
            if method == "none":
                raise LayerlensError("method cap: 'none' cannot be capped; cap the methods you want fewer of")
            if cap < 0:
                raise LayerlensError(f"method cap for {method!r} must be >= 0, got {cap}")

    @property
    def lo(self) -> int:
        """Smallest allowed total parameter count."""
        return math.ceil(self.min_utilization * self.budget - 1e-9)

    @property
    def hi(self) -> int:
        """Largest allowed total parameter count."""
        return math.floor(self.max_utilization * self.budget + 1e-9)

    @property
    def has_side_constraints(self) -> bool:
        """True when a constraint beyond the knapsack window is present."""
        return self.min_methods > 0 or bool(self.method_caps) or self.tie_blocks

    def to_dict(self) -> dict:
        return {
            "budget": self.budget,
            "min_utilization": self.min_utilization,
            "max_utilization": self.max_utilization,
            "min_methods": self.min_methods,
            "method_caps": {m: c for m, c in self.method_caps},
            "tie_blocks": self.tie_blocks,
            **({"tie_groups": self.tie_groups} if self.tie_groups is not None else {}),
        }


@dataclass(frozen=True)
class ModelOptions:
    """How options and gains are generated from a manifest."""

    #: the methods offered; None: the catalog's defaults plus every method the manifest measured (a gain curve on some
    #: layer), so a profile that measured IA3 offers it without a --methods
    methods: tuple[str, ...] | None = None
    ranks: Mapping[str, tuple[int, ...]] = field(default_factory=dict)
    metric_weights: Mapping[str, float] | None = None
    normalization: str = "max"
    max_rank: int | None = None
    #: shrink utilities toward their mean: u <- (1 - shrink) u + shrink mean(u)
    shrink: float = 0.0
    #: use the manifest's pairwise interactions (if it has any)
    interactions: bool = True

    def __post_init__(self) -> None:
        if self.methods is not None and not self.methods:
            raise LayerlensError("the method set is empty; give at least one of " + ", ".join(METHOD_NAMES))
        for m in self.methods or ():
            check_method(m, "method set")
        for m, ranks in self.ranks.items():
            check_method(m, "ranks")
            if not METHODS[m].ranked:
                ranked = ", ".join(n for n in METHOD_NAMES if METHODS[n].ranked)
                raise LayerlensError(f"--ranks {m}: {m} has no rank (one option per layer); ranks apply to {ranked}")
            if not ranks or any(isinstance(r, bool) or not isinstance(r, int) or r <= 0 for r in ranks):
                raise LayerlensError(f"ranks for {m!r} must be positive integers, got {list(ranks)!r}")
        if self.normalization not in NORMALIZATIONS:
            raise LayerlensError(
                f"unknown normalization {self.normalization!r}; valid ones are {', '.join(NORMALIZATIONS)}"
            )
        if self.max_rank is not None and self.max_rank <= 0:
            raise LayerlensError(f"max rank must be positive, got {self.max_rank}")
        if not 0.0 <= self.shrink <= 1.0:
            raise LayerlensError(f"shrink must be in [0, 1], got {self.shrink}")


@dataclass(frozen=True)
class LayerInfo:
    """What solvers and reports need to know of one layer."""

    name: str
    kind: str
    block: int | None
    in_features: int
    out_features: int
    utility: float
    methods: tuple[str, ...]
    #: a tied group: its members (manifest index, layer) in manifest order, and each member's gain
    #: per option of the group (the group's options cost the members' costs summed, gain their gains summed)
    members: tuple[tuple[int, "LayerInfo"], ...] = ()
    member_gains: tuple[tuple[float, ...], ...] = ()
    group: str | None = None


#: a LayerInfo from every field, in order (tens of thousands of layers: see :func:`positional`)
new_info = positional(LayerInfo)


@dataclass(frozen=True)
class PairTerm:
    """A pairwise objective term between layers ``i`` and ``j`` in gain units.

    ``when="either"``: ``value`` counts when at least one of the two is adapted
    (any method but none); ``"both"``: when both are.
    """

    i: int
    j: int
    value: float
    when: str = "either"

    def active(self, adapted_i: bool, adapted_j: bool) -> bool:
        return (adapted_i or adapted_j) if self.when == "either" else (adapted_i and adapted_j)


@dataclass(frozen=True)
class Problem:
    """One immutable allocation problem. Options of layer ``l`` are ``layer_start[l]:layer_start[l+1]``."""

    layers: Sequence[LayerInfo]  # a tuple, or the :class:`~layerlens_opt.records.Rows` standing for one
    constraints: Constraints
    option_layer: np.ndarray
    option_method: np.ndarray  # index into METHOD_NAMES
    option_rank: np.ndarray
    option_cost: np.ndarray  # int64, exact parameter count
    option_gain: np.ndarray  # float64
    layer_start: np.ndarray
    notes: tuple[str, ...] = ()
    gradient_norms: tuple[float, ...] | None = None
    fisher_traces: tuple[float, ...] | None = None
    #: pairwise terms of the objective (from the manifest's ``interactions``)
    pairs: tuple[PairTerm, ...] = ()
    #: manifest index of each problem layer (None: the identity, no tied groups)
    layer_index: tuple[int, ...] | None = None
    #: with tied groups, every manifest layer's own LayerInfo, in manifest order (a group's ``members`` index it)
    manifest_layers: Sequence[LayerInfo] | None = field(default=None, compare=False, repr=False)
    #: how the gains were derived from the manifest (see :func:`gain_model_of`): what ``validate`` recomputes them with
    gain_model: Mapping = field(default_factory=dict, compare=False)

    @property
    def n_members(self) -> tuple[int, ...]:
        """Manifest layers behind each problem layer (1, or a tied group's size)."""
        return tuple(len(info.members) or 1 for info in self.layers)

    @property
    def n_layers(self) -> int:
        return len(self.layers)

    def layer_column(self, name: str) -> Sequence:
        """One field of every layer (a :class:`LayerInfo` field name), without building the layers' rows where
        they are still columns."""
        return column_of(self.layers, name)

    @property
    def n_options(self) -> int:
        return len(self.option_cost)

    def options_of(self, layer: int) -> range:
        return range(int(self.layer_start[layer]), int(self.layer_start[layer + 1]))

    def method_of(self, option: int) -> str:
        return METHOD_NAMES[int(self.option_method[option])]

    def cost(self, choice: Sequence[int]) -> int:
        """The trainable parameters of one option per layer."""
        return int(self.option_cost[list(choice)].sum()) if len(choice) else 0

    def value(self, choice: Sequence[int]) -> float:
        """The objective of one option per layer: the options' gains plus the active pair terms."""
        total = float(sum(self.option_gain[list(choice)].tolist())) if len(choice) else 0.0
        if self.pairs:
            none = METHOD_NAMES.index("none")
            adapted = [int(self.option_method[o]) != none for o in choice]
            total += sum(p.value for p in self.pairs if p.active(adapted[p.i], adapted[p.j]))
        return total

    def with_constraints(self, constraints: Constraints) -> "Problem":
        """The same layers and options under other constraints (the tied groups are part of the layers)."""
        if constraints.tie_groups != self.constraints.tie_groups:
            raise LayerlensError("tied groups shape the problem's layers; build a new problem to change --tie-groups")
        return replace(self, constraints=constraints)

    def cost_range(self) -> tuple[int, int]:
        """Smallest and largest total cost any allocation can have (ignoring the window)."""
        if not self.n_layers:
            return 0, 0
        starts = self.layer_start[:-1]
        return int(np.minimum.reduceat(self.option_cost, starts).sum()), int(np.maximum.reduceat(self.option_cost, starts).sum())

    def window_problem(self) -> str | None:
        """Why the utilization window cannot be met at all, or None.

        Only the simple reasons are found here (the window lies wholly above the
        largest or below the smallest possible allocation); a solver reports
        the rest.
        """
        c = self.constraints
        smallest, largest = self.cost_range()
        if largest == 0 and c.lo > 0:
            return (
                "no layer can take any method that costs parameters (every option is 'none'); "
                "offer methods (--methods) the layers accept, or fix the manifest's allowed_methods"
            )
        if largest < c.lo:
            return (
                f"the largest possible allocation uses {largest:,} parameters, {largest / c.budget:.0%} of the budget "
                f"{c.budget:,}, below the {c.min_utilization:.0%} floor ({c.lo:,}); lower --min-utilization "
                f"to {largest / c.budget:.2f} or less, lower the budget to {math.floor(largest / c.min_utilization) if c.min_utilization else largest:,} or less, "
                f"or allow more methods/ranks"
            )
        if smallest > c.hi:
            return (
                f"the smallest possible allocation uses {smallest:,} parameters, {smallest / c.budget:.0%} of the budget "
                f"{c.budget:,}, above the {c.max_utilization:.0%} cap ({c.hi:,}); raise the budget to "
                f"{math.ceil(smallest / c.max_utilization):,} or more, or allow 'none' on more layers"
            )
        return None


def compute_utilities(manifest: Manifest, weights: Mapping[str, float] | None = None, normalization: str = "max") -> np.ndarray:
    """Utility per layer in [0, 1]: each metric normalised once, then the weighted mean."""
    names = list(manifest.metric_names)
    weights = dict(manifest.metric_weights if weights is None else weights)
    check_weights(weights, names, "metric weights")
    top_weight = max(weights.values())
    weights = {k: v / top_weight for k, v in weights.items()}  # sums of huge weights stay finite
    total = float(sum(weights.values()))
    utility = np.zeros(len(manifest.layers))
    for name in names:
        w = weights[name] / total
        if w == 0:
            continue
        values = np.array([metrics[name] for metrics in manifest.column("metrics")], dtype=float)
        if normalization == "max":
            top = values.max()
            if top <= 0:
                raise LayerlensError(
                    f"metric {name!r} is zero on every layer, so it cannot rank them; give it weight 0 in metric_weights or re-profile"
                )
            normalised = values / top
        else:
            normalised = average_ranks(values) / len(values)
        utility += w * normalised
    return utility


def _prefix_layers(manifest: Manifest) -> tuple[set[int], str | None]:
    """Indices of attention layers that may take a prefix, and a note saying which.

    A prefix belongs to an attention block, not to a projection: where a block
    lists its projections separately, the prefix is offered on one layer per
    block — the value projection (its out_features is the key/value width), or
    a fused q/k/v projection, or the block's only attention layer.
    """
    by_block: dict[object, list[int]] = {}
    names = manifest.column("name")
    for i, (kind, listed, block) in enumerate(zip(manifest.column("kind"), manifest.column("allowed_methods"), manifest.column("block"))):
        if kind == "attention" and listed is None:
            key = block if block is not None else ("name", i)
            by_block.setdefault(key, []).append(i)
    eligible: set[int] = set()
    attention_total = 0
    for key, members in by_block.items():
        attention_total += len(members)
        roles = [role(names[i]) for i in members]
        values = [i for i, r in zip(members, roles) if r == "v"]
        fused = [i for i, r in zip(members, roles) if r == "qkv"]
        if values:
            eligible.add(values[0])
        elif fused:
            eligible.add(fused[0])
        elif len(members) == 1 and not isinstance(key, tuple):
            # a block's only attention layer; without a block index only the name can vouch
            eligible.add(members[0])
    if attention_total and len(eligible) < attention_total:
        return eligible, (
            f"prefix offered on {len(eligible)} of {attention_total} attention layers (the value projection of each block), "
            "so no block pays for two prefixes"
        )
    return eligible, None


def _per_block_methods() -> set[str]:
    """Methods that attach to an attention block, not a projection (prefix): one layer per block takes them."""
    return {m for m, spec in METHODS.items() if spec.one_per_block}


def allowed_methods(manifest: Manifest, options: ModelOptions, prefix_ok: set[int] | None = None) -> dict[str, frozenset[str]]:
    """Layer name -> the methods of ``options.methods`` it accepts (its ``allowed_methods``, else its kind's; prefix on one
    layer per block: ``prefix_ok``, from :func:`_prefix_layers` when not given)."""
    if prefix_ok is None:
        prefix_ok, _ = _prefix_layers(manifest)
    return dict(zip(manifest.column("name"), _accepted(manifest, set(options.methods), prefix_ok)))


def _accepted(manifest: Manifest, wanted: set[str], prefix_ok: set[int]) -> list[frozenset[str]]:
    """Per layer, the methods of ``wanted`` it accepts (see :func:`allowed_methods`): one set shared by all layers of
    the same kind, listed methods and prefix eligibility (tens of thousands of layers, a handful of sets)."""
    per_block = _per_block_methods()
    sets: dict[tuple, frozenset[str]] = {}
    out = []
    for l, (kind, listed) in enumerate(zip(manifest.column("kind"), manifest.column("allowed_methods"))):
        cut = kind == "attention" and listed is None and l not in prefix_ok
        key = (kind, listed, cut)
        fits = sets.get(key)
        if fits is None:
            if listed is not None:
                fits = frozenset(listed) & wanted
            else:
                fits = frozenset(m for m, spec in METHODS.items() if kind in spec.fits) & wanted
                fits = fits - per_block if cut else fits
            sets[key] = fits
        out.append(fits)
    return out


def _spans(begin: np.ndarray, end: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Ranges [begin, end) of a column laid end to end: for each position, its range's number and where it comes from,
    and the ranges' starts in the result (one more entry than ranges)."""
    sizes = end - begin
    starts = np.concatenate(([0], np.cumsum(sizes))).astype(np.int64)
    which = np.repeat(np.arange(len(sizes)), sizes)
    return which, starts, np.arange(starts[-1]) + (begin - starts[:-1])[which]


def _concat_templates(parts):
    """The option templates' columns end to end (methods int8, ranks and costs int64, efficiencies and fractions
    float64) and each template's start in them (one more entry than templates)."""
    dtypes = (np.int8, np.int64, np.int64, np.float64, np.float64)
    try:
        columns = tuple(np.array([v for p in parts for v in p[k]], dtype=dtype) for k, dtype in enumerate(dtypes))
    except OverflowError:  # a cost past int64: only absurd ranks on absurd shapes get here
        raise LayerlensError("an option's parameter count does not fit in 64 bits; lower --ranks or --max-rank") from None
    return columns, np.concatenate(([0], np.cumsum([len(p[0]) for p in parts]))).astype(np.int64)


def resolve_methods(manifest: Manifest, options: ModelOptions) -> ModelOptions:
    """``options`` with its methods decided: as given, else the catalog's defaults plus the methods the manifest measured."""
    if options.methods is not None:
        return options
    measured = {m for curves in manifest.column("gain_curves") if curves for m in curves}
    return replace(options, methods=tuple(m for m in METHOD_NAMES if m in DEFAULT_METHODS or m in measured))


def build_problem(manifest: Manifest, constraints: Constraints, options: ModelOptions | None = None) -> Problem:
    """Build the problem: options per layer with exact cost and gain, compatibility applied."""
    options = resolve_methods(manifest, options or ModelOptions())
    utility = compute_utilities(manifest, options.metric_weights, options.normalization)
    if options.shrink:
        utility = (1.0 - options.shrink) * utility + options.shrink * utility.mean()
    pairs = _pair_terms(manifest, options) if options.interactions else ()
    prefix_ok, prefix_note = _prefix_layers(manifest)
    accepted = _accepted(manifest, set(METHOD_NAMES), prefix_ok)
    notes: list[str] = []

    methods_col: list[tuple[str, ...]] = []  # each layer's methods
    method_index = {m: i for i, m in enumerate(METHOD_NAMES)}
    wanted = [m for m in METHOD_NAMES if m in options.methods]
    prefix_pruned = False
    per_block_wanted = bool(_per_block_methods() & set(options.methods))

    # a layer's options (methods, ranks, costs, efficiency and captured fraction) depend on its methods, its shape and
    # its measured curves only: layers without curves share a template by (methods, d_in, d_out); gains = utility x eff x frac
    templates: dict[tuple, int] = {}
    parts: list[tuple[list, list, list, list, list]] = []  # per template: methods, ranks, costs, efficiencies, fractions
    template_of: list[int] = []
    rank_sets = {m: tuple(sorted(options.ranks.get(m, DEFAULT_RANKS))) for m in wanted}
    methods_of: dict[frozenset, tuple[str, ...]] = {}  # a layer's accepted set -> the wanted methods in it, in order
    col = manifest.column
    names, kinds, d_ins, d_outs, curves = col("name"), col("kind"), col("in_features"), col("out_features"), col("gain_curves")
    for l, (kind, listed, d_in, d_out, gain_curves, fits) in enumerate(zip(kinds, col("allowed_methods"), d_ins, d_outs, curves, accepted)):
        if kind == "attention" and listed is None and l not in prefix_ok:
            prefix_pruned = prefix_pruned or per_block_wanted
        methods = methods_of.get(fits)
        if methods is None:
            methods = methods_of[fits] = tuple(m for m in wanted if m in fits)
        if not methods:
            raise LayerlensError(
                f"layer {names[l]!r} (kind {kind}) can take none of the methods {', '.join(options.methods)} "
                f"(it allows {', '.join(m for m in METHOD_NAMES if m in fits)}); add 'none' or one of those to the method set"
            )
        key = (methods, d_in, d_out)
        t = None if gain_curves else templates.get(key)
        if t is None:
            template = ([], [], [], [], [])
            for m in methods:
                spec = METHODS[m]
                ranks = default_ranks(m, d_in, d_out, rank_sets[m])
                if spec.ranked and options.max_rank is not None:
                    ranks = tuple(r for r in ranks if r <= options.max_rank)  # none under the cap: not offered here
                curve = dict(gain_curves[m]) if m in gain_curves else None
                for r in ranks:
                    template[0].append(method_index[m])
                    template[1].append(r)
                    template[2].append(param_cost(m, r, d_in, d_out))
                    template[3].append(1.0 if curve is not None else spec.efficiency)  # a measured curve is the whole value
                    template[4].append(measured_curve(curve, r) if curve is not None else default_curve(m, r))
            if not template[0]:
                raise LayerlensError(f"layer {names[l]!r}: none of its methods ({', '.join(methods)}) has a rank at most "
                                     f"--max-rank {options.max_rank}; raise --max-rank, offer smaller --ranks, or allow none")
            t = len(parts)
            parts.append(template)
            if not gain_curves:
                templates[key] = t
        template_of.append(t)
        methods_col.append(methods)
    # the layers' rows, built when read one by one (a solve reads columns: see Problem.layer_column)
    n = len(names)
    infos = Rows(new_info, {"name": names, "kind": kinds, "block": col("block"), "in_features": d_ins, "out_features": d_outs,
                            "utility": np.asarray(utility, dtype=np.float64).tolist(), "methods": methods_col,
                            "members": [()] * n, "member_gains": [()] * n, "group": [None] * n})
    # every layer's options gathered from its template in one pass; gains u * efficiency * frac, left to right
    (t_method, t_rank, t_cost, t_eff, t_frac), t_start = _concat_templates(parts)
    tid = np.asarray(template_of, dtype=np.int64)
    layer_of, starts, src = _spans(t_start[tid], t_start[tid + 1])
    method_of, rank_of, cost_of = t_method[src], t_rank[src], t_cost[src]
    gain_of = (np.asarray(utility, dtype=np.float64)[layer_of] * t_eff[src]) * t_frac[src]

    if prefix_pruned and prefix_note:
        notes.append(prefix_note)

    layer_index = manifest_layers = None
    groups = tied_groups(manifest, constraints.tie_groups)
    if constraints.tie_groups is not None and not any(key.startswith("~") for key in groups):
        raise LayerlensError(_ties_nothing(manifest, constraints.tie_groups))
    if groups:
        if constraints.tie_blocks:
            block_of = manifest.column("block")
            for key, members in groups.items():
                blocks = {block_of[i] for i in members}
                if len(blocks) > 1:
                    raise LayerlensError(f"tied group {key!r} spans blocks {sorted(blocks, key=str)}; --tie-blocks needs every group inside one block")
        manifest_layers = infos
        infos, layer_of, method_of, rank_of, cost_of, gain_of, starts, layer_index = _merge_groups(
            manifest, groups, infos, layer_of, method_of, rank_of, cost_of, gain_of, starts)
        where = {i: g for g, i in enumerate(layer_index)}
        group_of = {i: where[members[0]] for members in groups.values() for i in members}
        pairs = tuple(replace(p, i=group_of.get(p.i, where.get(p.i)), j=group_of.get(p.j, where.get(p.j))) for p in pairs)
        notes.append(f"{len(groups)} tied groups ({sum(len(m) for m in groups.values()):,} layers) solved as one choice each")

    def frozen(values: Sequence, dtype) -> np.ndarray:
        arr = np.asarray(values, dtype=dtype)
        arr.setflags(write=False)
        return arr

    names = manifest.column("name")
    meta = manifest.metadata or {}

    def per_layer(key: str) -> tuple[float, ...] | None:
        table = meta.get(key)
        if not isinstance(table, dict):
            return None
        try:
            return tuple(map(float, map(table.__getitem__, names)))
        except KeyError:  # the table misses a layer
            return None

    return Problem(
        layers=infos if isinstance(infos, Rows) else tuple(infos),
        constraints=constraints,
        option_layer=frozen(layer_of, np.int64),
        option_method=frozen(method_of, np.int8),
        option_rank=frozen(rank_of, np.int64),
        option_cost=frozen(cost_of, np.int64),
        option_gain=frozen(gain_of, np.float64),
        layer_start=frozen(starts, np.int64),
        notes=tuple(notes),
        gradient_norms=per_layer("gradient_norms"),
        fisher_traces=per_layer("fisher_traces"),
        pairs=pairs,
        layer_index=layer_index,
        manifest_layers=manifest_layers,
        gain_model=gain_model_of(options),
    )


def gain_model_of(options: ModelOptions) -> dict:
    """The options that decide a layer's gain at a (method, rank): metric weights (None: the manifest's),
    normalization, shrink and whether pair terms count. Recorded in every allocation."""
    weights = None if options.metric_weights is None else {k: float(v) for k, v in sorted(options.metric_weights.items())}
    return {"metric_weights": weights, "normalization": options.normalization, "shrink": float(options.shrink),
            "interactions": bool(options.interactions)}


def recomputed_gains(manifest: Manifest, gain_model: Mapping, choices: Sequence[tuple[str, int]]):
    """Each manifest layer's (utility, gain) at its (method, rank) in ``choices`` (manifest order), and the pair terms'
    total, computed from the manifest exactly as :func:`build_problem` computes them."""
    options = ModelOptions(metric_weights=gain_model.get("metric_weights"), normalization=gain_model.get("normalization", "max"),
                           shrink=gain_model.get("shrink", 0.0), interactions=gain_model.get("interactions", True))
    utility = compute_utilities(manifest, options.metric_weights, options.normalization)
    if options.shrink:
        utility = (1.0 - options.shrink) * utility + options.shrink * utility.mean()
    out = []
    for u, curves, (method, rank) in zip(utility.tolist(), manifest.column("gain_curves"), choices):
        if method == "none":
            out.append((u, 0.0))
            continue
        curve = curves.get(method) if curves else None
        if curve is not None:
            out.append((u, (u * 1.0) * measured_curve(dict(curve), rank)))
        else:
            out.append((u, (u * METHODS[method].efficiency) * default_curve(method, rank)))
    pairs = _pair_terms(manifest, options) if options.interactions else ()
    adapted = [m != "none" for m, _ in choices]
    pair_total = math.fsum(p.value for p in pairs if p.active(adapted[p.i], adapted[p.j]))
    return out, pair_total


def _ties_nothing(manifest: Manifest, regex: str) -> str:
    """The error for a ``--tie-groups`` regex under which no two layers share a group (as peft refuses target
    modules that match nothing: a typo must not pass for a tied solve)."""
    pattern = re.compile(regex)
    matched = [layer.name for layer in manifest.layers if pattern.search(layer.name)]
    if not matched:
        why = f"no layer name matches it (names look like {manifest.layers[0].name!r})"
    else:
        why = (f"{len(matched):,} of {len(manifest.layers):,} layer names match it but no two give the same capture groups "
               f"(e.g. {matched[0]!r})")
    return f"--tie-groups '{regex}' ties no layers: {why}; check the regex against the manifest's layer names"


def group_label(key: str) -> str:
    """The label a user sees for a :func:`tied_groups` key (regex keys carry a ``~`` so they never merge with a named group)."""
    return key[1:] if key.startswith("~") else key


def tied_groups(manifest: Manifest, regex: str | None = None) -> dict[str, list[int]]:
    """Group key -> manifest indices (2 or more) of the layers tied together: a layer's ``group``
    field, else the capture groups of ``regex`` in its name (``re.search``; no match: alone).
    :func:`group_label` gives the label to show."""
    pattern = re.compile(regex) if regex else None
    found: dict[str, list[int]] = {}
    keys: dict[tuple, str] = {}  # capture groups -> key (a few hundred groups among tens of thousands of layers)
    for i, (name, group) in enumerate(zip(manifest.column("name"), manifest.column("group"))):
        if group is not None:
            key = group
        elif pattern is not None and (m := pattern.search(name)):
            captured = m.groups() if pattern.groups else (m.group(0),)
            key = keys.get(captured)
            if key is None:  # regex groups never merge with a manifest's named group: "~"
                key = keys[captured] = "~" + "/".join(g if g is not None else "" for g in captured)
        else:
            continue
        found.setdefault(key, []).append(i)
    return {k: v for k, v in found.items() if len(v) > 1}


def _member(infos, i: int) -> tuple[int, LayerInfo]:
    """A tied group's member as its ``members`` list it: (manifest index, its own LayerInfo)."""
    return i, infos.row(i)


def _merge_groups(manifest, groups, infos, layer_of, method_of, rank_of, cost_of, gain_of, starts):
    """Each tied group becomes one layer of the problem at its first member's place: options
    (method, rank) shared by all members, costs and gains summed. Members must match in shape and options.
    The option columns are arrays; the result's are gathered from them in one pass. ``infos``: the manifest's
    layers as :class:`Rows` (read by column; a group's ``members`` built from it when read)."""
    first = {members[0]: key for key, members in groups.items()}
    grouped = {i for members in groups.values() for i in members}
    d_in = np.array(manifest.column("in_features"), dtype=np.int64)
    d_out = np.array(manifest.column("out_features"), dtype=np.int64)
    keep = [l for l in range(len(infos)) if l not in grouped or l in first]  # the merged problem's layers, in order
    n_infos = []
    times = np.ones(len(infos), dtype=np.int64)  # what each kept layer's costs are multiplied by: its members
    summed: list[tuple[int, np.ndarray]] = []  # (merged layer, its options' summed gains)

    methods_col, utility_col, block_col = (infos.column(f) for f in ("methods", "utility", "block"))
    for k, l in enumerate(keep):
        if l not in first:
            n_infos.append(infos.row(l))
            continue
        info = infos.row(l)
        key = first[l]
        members = groups[key]
        label = group_label(key)
        ref = infos.row(members[0])
        # every member against the first: its shape, then its options (method, rank); the first that differs is named
        at = np.asarray(members, dtype=np.int64)
        width = int(starts[l + 1] - starts[l])
        shape_bad = (d_in[at] != ref.in_features) | (d_out[at] != ref.out_features)
        same_width = (starts[at + 1] - starts[at]) == width
        span = starts[at[same_width]][:, None] + np.arange(width)
        options_bad = ~same_width
        options_bad[same_width] = ((method_of[span] != method_of[starts[l] : starts[l + 1]]).any(axis=1)
                                   | (rank_of[span] != rank_of[starts[l] : starts[l + 1]]).any(axis=1))
        bad = np.flatnonzero(shape_bad | options_bad)
        if len(bad):
            i = members[int(bad[0])]
            other = infos.row(i)
            if shape_bad[int(bad[0])]:
                raise LayerlensError(
                    f"tied group {label!r}: layer {other.name!r} is {other.in_features}x{other.out_features} but {ref.name!r} is "
                    f"{ref.in_features}x{ref.out_features}; a group's layers must have one shape (narrow --tie-groups or the 'group' fields)")
            raise LayerlensError(
                f"tied group {label!r}: layer {other.name!r} accepts methods {', '.join(methods_col[i])} but {ref.name!r} accepts "
                f"{', '.join(methods_col[members[0]])}; a group's layers must accept the same methods (check kind and allowed_methods)")
        gains = gain_of[span]  # members x options
        member_gains = tuple(map(tuple, gains.tolist()))
        summed.append((k, np.cumsum(gains, axis=0)[-1]))  # left to right in member order, as Python's sum of each column
        times[l] = len(members)
        blocks = set(map(block_col.__getitem__, members))
        n_infos.append(LayerInfo(
            name=f"group {label}", kind=info.kind, block=blocks.pop() if len(blocks) == 1 else None,
            in_features=info.in_features, out_features=info.out_features,
            utility=float(np.mean(list(map(utility_col.__getitem__, members)))), methods=info.methods,
            members=Rows(functools.partial(_member, infos), {"index": members}), member_gains=member_gains, group=label))
    kept = np.asarray(keep, dtype=np.int64)
    n_layer, n_starts, src = _spans(starts[kept], starts[kept + 1])
    per_option = times[kept][n_layer]
    if len(src) and int(cost_of[src].max()) * int(times.max()) >= 2**63:
        raise LayerlensError("a tied group's summed parameter count does not fit in 64 bits; split the group or lower --ranks")
    n_gain = gain_of[src]
    for k, gains in summed:
        n_gain[n_starts[k] : n_starts[k + 1]] = gains
    return n_infos, n_layer, method_of[src], rank_of[src], cost_of[src] * per_option, n_gain, n_starts, tuple(keep)


def _pair_terms(manifest: Manifest, options: ModelOptions) -> tuple[PairTerm, ...]:
    """The manifest's interactions in gain units: scaled exactly as their metric is in the utility."""
    if not manifest.interactions:
        return ()
    metric = manifest.interaction_metric
    if options.normalization != "max":
        raise LayerlensError(
            f"the manifest's interactions are in units of the metric {metric!r}, which only --normalization max keeps "
            "linear; use --normalization max or --no-interactions"
        )
    weights = dict(manifest.metric_weights if options.metric_weights is None else options.metric_weights)
    top_weight = max(weights.values())
    share = (weights[metric] / top_weight) / float(sum(v / top_weight for v in weights.values()))
    top = max(metrics[metric] for metrics in manifest.column("metrics"))
    scale = share / top * (1.0 - options.shrink) if top > 0 else 0.0
    index = dict(zip(manifest.column("name"), range(len(manifest.layers))))
    for t in manifest.interactions:
        scaled = t.value * scale
        if not math.isfinite(scaled) or abs(scaled) > MAX_PAIR_GAIN:
            raise LayerlensError(
                f"the interaction between {t.a!r} and {t.b!r} has value {t.value:.6g}, {abs(t.value) / top if top else math.inf:.3g} "
                f"times the largest {metric!r} of a layer ({top:.6g}); pair values are in units of that metric and must stay "
                f"within {MAX_PAIR_GAIN:.0e} times it: check the pair's value or solve with --no-interactions")
    return tuple(PairTerm(index[t.a], index[t.b], t.value * scale, t.when) for t in manifest.interactions if t.value * scale != 0)


#: the largest pair value, in gain units (a layer's gain is at most 1): beyond it the objective is nonsense and CBC's
#: tolerances lose the layers' gains
MAX_PAIR_GAIN = 1e9
