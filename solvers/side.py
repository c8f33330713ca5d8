"""Method caps, tied blocks and pair terms on the exact fast path (no LP library).

All three keep the knapsack structure once it is looked at the right way:

* **Pair terms** (an objective term for two layers, counted when either or both
  are adapted). The layers joined by pairs (the pair graph's components: a
  block's projections, as the probe writes them) become one choice: its options
  are the Pareto frontier (cost, gain with the pairs' values) of one option per
  layer, found by a DP whose state also carries whether each layer with a pair
  still to add is adapted (so every pair is added exactly once, when its second
  layer is chosen). States of different open layers are compared through bounds
  on what the open pairs can still add. Exact: a point off the frontier is beaten
  by one on it at no higher cost.

* **Tied blocks** ("a block uses one method besides none"). A block's layers
  become one choice: for each method m the block can take, the Pareto frontier
  (cost, gain) of its layers restricted to m or none, found by a small DP; the
  union of those frontiers (plus "all none") are the block's options. Choosing
  one option per block and one per block-less layer is again a multiple-choice
  knapsack, and every allocation that meets the tie is one of its choices
  (exact: a point off a frontier is beaten by one on it at no higher cost).
* **Method caps** ("at most K layers use m"). Each option uses a count of each
  capped method (a tied group's layers count each). The caps are relaxed with
  Lagrange multipliers mu >= 0: gains become g - mu . count, a bound is
  ``LP bound(g - mu . count) + mu . caps`` for any mu (chosen here by
  coordinate search on that convex function), reduced-cost fixing runs on the
  shifted gains, and the core DP keeps one frontier per vector of counts used,
  never above the caps; its best state in real gain is the optimum.

An incumbent that meets the constraints (repaired from the relaxed one) gives
the target to prune against. The answer is proven optimal for the cap-only
window; as on the plain fast path, the caller checks the floor and hands the
problem to CBC where it binds, where a limit stops the DP, or where the
constraints are combined in a way this module does not take (caps, ties or pairs
with min-methods; pairs across tied blocks; more than :data:`MAX_OPEN_LAYERS`
layers of one unit open at once).
"""

from __future__ import annotations

import itertools
import time
from dataclasses import dataclass
from types import SimpleNamespace

import numpy as np

from layerlens_opt.methods import METHOD_NAMES
from layerlens_opt.problem import Problem

from . import mckp

NONE = METHOD_NAMES.index("none")


@dataclass(frozen=True)
class Knapsack:
    """A multiple-choice knapsack with what :mod:`mckp` reads from a Problem (duck-typed); per choice the
    problem layers it stands for and, per option, their problem options; per option its counts of each
    capped method."""

    option_cost: np.ndarray
    option_gain: np.ndarray
    option_method: np.ndarray
    layer_start: np.ndarray
    constraints: SimpleNamespace
    #: per choice: (problem layers, matrix options x layers of problem option indices); None: choice u is problem
    #: layer u and option o is problem option ``origin[o]``
    units: list | None
    counts: np.ndarray  # options x capped methods
    origin: np.ndarray | None = None

    @property
    def n_layers(self) -> int:
        return len(self.layer_start) - 1

    def shifted(self, mu: np.ndarray) -> "Knapsack":
        gain = self.option_gain - (self.counts @ mu if len(mu) else 0.0)
        return Knapsack(self.option_cost, gain, self.option_method, self.layer_start, self.constraints, self.units, self.counts,
                        self.origin)

    def expand(self, choice, n_problem_layers: int) -> tuple[int, ...]:
        if self.units is None:
            return tuple(self.origin[list(choice)].tolist())
        out = [-1] * n_problem_layers
        for u, o in enumerate(choice):
            layers, rows = self.units[u]
            for l, po in zip(layers, rows[o - int(self.layer_start[u])].tolist()):
                out[l] = po
        return tuple(out)


def _capped(problem: Problem):
    """(method indices, caps) of the caps that can bind (below the layers that could use the method), and
    each option's weight (its layer's member count: a tied group's layers count each)."""
    members = np.asarray(problem.n_members, dtype=np.int64)
    weight = members[problem.option_layer]
    methods, caps = [], []
    for name, cap in problem.constraints.method_caps:
        m = METHOD_NAMES.index(name)
        could = int(members[np.unique(problem.option_layer[problem.option_method == m])].sum())
        if cap < could:
            methods.append(m)
            caps.append(int(cap))
    return methods, np.array(caps, dtype=np.int64), weight


#: entries (frontier points x block layers) the tied blocks' frontiers may hold together (8 bytes each: about 400 MB)
MAX_BLOCK_ENTRIES = 50_000_000


class _TooLarge(Exception):
    """A block's frontier outgrew the entries left, or the deadline passed while it was built."""


#: layers of one block whose pair terms are open at once in :func:`_frontier` (the state keys them as bits)
MAX_OPEN_LAYERS = 24


def _open_slots(n: int, pairs) -> tuple[list[int], list[int]]:
    """Per position of a unit: the bit that carries whether it is adapted while a pair with a later position is still
    to be added (-1: none is), and after which position that bit is freed."""
    last = list(range(n))
    for a, b, _, _ in pairs:
        last[min(a, b)] = max(last[min(a, b)], max(a, b))
    slot, free, busy = [-1] * n, list(range(MAX_OPEN_LAYERS - 1, -1, -1)), {}
    for j in range(n):
        for a in [a for a, end in busy.items() if end < j]:  # freed once its last partner is added
            free.append(slot[a])
            del busy[a]
        if last[j] > j:
            if not free:
                raise _TooLarge(f"a block's pair terms keep more than {MAX_OPEN_LAYERS} of its layers open at once")
            slot[j] = free.pop()
            busy[j] = last[j]
    return slot, last


def _across_keys(s_cost, s_gain, s_cnt, s_bits, ahead, *rest):
    """The states no other of the same count beats whatever the layers still to come choose (the per-key frontiers
    only compare states whose open layers are adapted alike).

    ``ahead``: (bit of an open layer, later position, value, both) of the pairs still to add. Given the open bits, such
    a pair adds its value for sure ("either" with the open layer adapted), never ("both" with it not adapted) or exactly
    when the later layer is adapted. So a state's future pair value is a known part plus, per later layer, a weight that
    counts if that layer is adapted; its value plus the known part plus the sum of the negative (positive) weights is a
    floor ``lo`` (ceiling ``hi``) on what it can reach over any state of the same later choices. A state is dropped when
    an earlier one of its count (by cost, then key) costs no more and has ``lo`` at least its ``hi``: exact."""
    later = sorted({f for _, f, _, _ in ahead})
    weight = np.zeros((len(s_cost), len(later)))
    known = np.zeros(len(s_cost))
    for bit, f, v, both in ahead:
        on = ((s_bits >> bit) & 1).astype(bool)
        if both:
            weight[:, later.index(f)] += np.where(on, v, 0.0)
        else:
            known += np.where(on, v, 0.0)
            weight[:, later.index(f)] += np.where(on, 0.0, v)
    lo = s_gain + known + np.minimum(weight, 0.0).sum(axis=1)
    hi = s_gain + known + np.maximum(weight, 0.0).sum(axis=1)
    order = np.lexsort((s_cost, s_cnt))
    beaten = np.empty(len(order), dtype=bool)
    beaten[order] = mckp._prior_max(mckp._segments(s_cnt[order]), lo[order]) >= hi[order]
    keep = np.flatnonzero(~beaten)
    return (s_cost[keep], s_gain[keep], s_cnt[keep], s_bits[keep], *(r[keep] for r in rest))


def _frontier(layer_opts: list[np.ndarray], cost, gain, count_of, cap: int, room: int | None = None,
              deadline: float | None = None, adapted=None, pairs=()):
    """Pareto frontier (per count) of choosing one option per layer: the options its points choose
    (points x layers) and each point's value (its options' gains plus its active ``pairs``).

    ``pairs``: (position a, position b, value, both) inside the unit, where ``adapted[o]`` says whether option ``o``
    adapts its layer; the value counts when either (``both``: both) of the two positions is adapted. The DP's state
    carries, besides cost and count, whether each layer with a pair still to be added is adapted (one bit each, at
    most :data:`MAX_OPEN_LAYERS` at once), so each pair is added exactly when its second layer is chosen and the
    frontier is exact. Raises :class:`_TooLarge` when the points kept for backtracking, or the points times the
    layers of the answer, pass ``room`` entries, or when ``deadline`` passes."""
    n_layers = len(layer_opts)
    slot, last = _open_slots(n_layers, pairs) if pairs else ([-1] * n_layers, list(range(n_layers)))
    later = [[] for _ in range(n_layers)]  # per position: (earlier position, value, both) of the pairs added there
    for a, b, v, both in pairs:
        later[max(a, b)].append((min(a, b), v, both))
    s_cost, s_gain, s_cnt = np.zeros(1, dtype=np.int64), np.zeros(1), np.zeros(1, dtype=np.int64)
    s_bits = np.zeros(1, dtype=np.int64)
    parents, picks = [], []
    stored = 0
    for j, idx in enumerate(layer_opts):
        if deadline is not None and time.perf_counter() > deadline:
            raise _TooLarge("the time limit passed while the tied blocks' and pair units' frontiers were built")
        n = len(idx)
        c = (s_cost[:, None] + cost[idx][None, :]).ravel()
        g = s_gain[:, None] + gain[idx][None, :]
        k = (s_cnt[:, None] + count_of[idx][None, :]).ravel()
        bits = np.repeat(s_bits, n)
        if later[j] or slot[j] >= 0:
            here = adapted[idx].astype(bool)[None, :]
            for a, v, both in later[j]:
                there = here if a == j else ((s_bits >> slot[a]) & 1).astype(bool)[:, None]
                g = g + v * ((there & here) if both else (there | here))
            if slot[j] >= 0:
                bits = bits | np.tile(here[0].astype(np.int64) << slot[j], len(s_cost))
            for a in range(j + 1):  # bits whose last pair was added here are free again
                if slot[a] >= 0 and last[a] == j:
                    bits = bits & ~(1 << slot[a])
        g = g.ravel()
        parent = np.repeat(np.arange(len(s_cost)), n)
        pick = np.tile(np.arange(n), len(s_cost))
        ok = c <= cap
        key = (k[ok] << MAX_OPEN_LAYERS) | bits[ok] if pairs else k[ok]
        s_cost, s_gain, key, parent, pick = mckp.pareto(c[ok], g[ok], key, parent[ok], pick[ok])
        if pairs:
            s_cnt, s_bits = key >> MAX_OPEN_LAYERS, key & ((1 << MAX_OPEN_LAYERS) - 1)
            ahead = [(slot[a], f, v, both) for f in range(j + 1, n_layers) for a, v, both in later[f] if a <= j]
            if ahead:
                s_cost, s_gain, s_cnt, s_bits, parent, pick = _across_keys(s_cost, s_gain, s_cnt, s_bits, ahead,
                                                                           parent, pick)
        else:
            s_cnt, s_bits = key, np.zeros(len(s_cost), dtype=np.int64)
        parents.append(parent)
        picks.append(pick)
        stored += len(s_cost)
        if room is not None and max(stored, len(s_cost) * len(layer_opts)) > room:
            raise _TooLarge(f"a block of {len(layer_opts):,} layers has more Pareto points than the knapsack path holds "
                            f"({len(s_cost):,} after {len(parents):,} of its layers)")
    chosen = np.empty((len(s_cost), len(layer_opts)), dtype=np.int64)
    state = np.arange(len(s_cost))
    for j in range(len(layer_opts) - 1, -1, -1):
        chosen[:, j] = layer_opts[j][picks[j][state]]
        state = parents[j][state]
    return chosen, s_gain


def _units(problem: Problem) -> list[list[int]]:
    """The choices of the knapsack: with tied blocks each block's problem layers (in order), else every layer alone;
    layers joined by pair terms are one choice too (the pair graph's components, merged with the blocks)."""
    unit_of = list(range(problem.n_layers))
    if problem.constraints.tie_blocks:
        first: dict = {}
        for l, info in enumerate(problem.layers):
            if info.block is not None:
                unit_of[l] = first.setdefault(info.block, l)
    if problem.pairs:
        def find(x):
            while unit_of[x] != x:
                unit_of[x] = unit_of[unit_of[x]]
                x = unit_of[x]
            return x
        for l in range(problem.n_layers):
            unit_of[l] = find(unit_of[l])
        for p in problem.pairs:
            a, b = find(p.i), find(p.j)
            if a != b:
                unit_of[max(a, b)] = min(a, b)
        unit_of = [find(l) for l in range(problem.n_layers)]
    by_root: dict = {}
    for l in range(problem.n_layers):
        by_root.setdefault(unit_of[l], []).append(l)
    return sorted(by_root.values(), key=lambda u: u[0])


def _cross_blocks(problem: Problem) -> str | None:
    """Why pair terms keep tied blocks off the knapsack path (a pair that leaves its block), or None."""
    if not (problem.pairs and problem.constraints.tie_blocks):
        return None
    block = problem.layer_column("block")
    for p in problem.pairs:
        if p.i != p.j and (block[p.i] is None or block[p.i] != block[p.j]):
            return (f"a pair term joins {problem.layers[p.i].name} and {problem.layers[p.j].name}, which are not in one tied "
                    "block")
    return None


def build_knapsack(problem: Problem, capped: list[int], weight: np.ndarray, deadline: float | None = None) -> Knapsack | str:
    """The knapsack whose choices are exactly the allocations meeting the tie (or the problem itself), or why not
    (also when ``deadline``, a ``time.perf_counter()`` time, passes while the blocks' frontiers are built: they
    check it before every layer). A unit of layers joined by pair terms is one choice among its Pareto points, its
    pairs' values in their gains."""
    c = problem.constraints
    cross = _cross_blocks(problem)
    if cross:
        return cross
    cost, gain, method = problem.option_cost, problem.option_gain, problem.option_method
    adapted = method != NONE
    starts = problem.layer_start
    k = len(capped)
    opt_counts = np.zeros((problem.n_options, k), dtype=np.int64)
    for j, m in enumerate(capped):
        opt_counts[:, j] = np.where(method == m, weight, 0)
    units = _units(problem)
    pairs_of: dict[int, list] = {}
    if problem.pairs:
        position = {}
        for u, unit in enumerate(units):
            for pos, l in enumerate(unit):
                position[l] = (u, pos)
        for p in problem.pairs:
            (u, a), (_, b) = position[p.i], position[p.j]
            pairs_of.setdefault(u, []).append((a, b, float(p.value), p.when == "both"))
    if k > 1:  # the frontiers are kept per count: one integer per count vector
        radix = int(opt_counts.max()) * max(map(len, units)) + 1
        flat_count = opt_counts @ (radix ** np.arange(k, dtype=np.int64))
        if radix ** k >= 2**38:
            return f"{k} method caps over blocks of {max(map(len, units))} layers count past what the frontiers key"
    else:
        flat_count = opt_counts[:, 0] if k else np.zeros(problem.n_options, dtype=np.int64)
    pieces = []  # per choice: (rows: options x layers of problem options, value, method per option, counts per option)
    held = 0  # entries of the blocks' frontiers so far (bounded by MAX_BLOCK_ENTRIES: memory)
    tied = c.tie_blocks
    for u, unit in enumerate(units):
        pairs = pairs_of.get(u, [])
        if len(unit) == 1 and not pairs:
            l = unit[0]
            span = np.arange(starts[l], starts[l + 1])
            pieces.append((unit, span[:, None], gain[span], method[span], opt_counts[span]))
            continue
        none_opt = []
        for l in unit:
            o_none = [o for o in range(starts[l], starts[l + 1]) if method[o] == NONE]
            none_opt.append(o_none[0] if o_none else None)
        is_block = tied and problem.layers[unit[0]].block is not None
        if is_block:  # one method (or none) across the block: a frontier per method
            methods = sorted({int(method[o]) for l in unit for o in range(starts[l], starts[l + 1])} - {NONE})
            menus = []
            for m in methods:
                layer_opts = []
                for l, o_none in zip(unit, none_opt):
                    opts = [o for o in range(starts[l], starts[l + 1]) if method[o] == m] + ([o_none] if o_none is not None else [])
                    if not opts:
                        break
                    layer_opts.append(np.array(opts, dtype=np.int64))
                else:
                    menus.append((m, layer_opts))
        else:
            menus = [(None, [np.arange(starts[l], starts[l + 1]) for l in unit])]
        rows, values, meths, cnts = [], [], [], []
        if is_block and all(o is not None for o in none_opt):
            rows.append(np.array([none_opt], dtype=np.int64))
            values.append(np.array([float(gain[none_opt].sum())]))
            meths.append(np.array([NONE]))
            cnts.append(np.zeros((1, k), dtype=np.int64))
        for m, layer_opts in menus:
            try:
                chosen, value = _frontier(layer_opts, cost, gain, flat_count, c.hi, MAX_BLOCK_ENTRIES - held, deadline,
                                          adapted, pairs)
            except _TooLarge as exc:
                return str(exc)
            held += chosen.size
            if m is not None:
                keep = (method[chosen] == m).any(axis=1)  # all-none is the one option above
                chosen, value = chosen[keep], value[keep]
                meths.append(np.full(len(chosen), m))
            else:  # a unit of pairs: its option's method is the first one it adapts a layer with (or none)
                first = np.where(adapted[chosen].any(axis=1), method[chosen][np.arange(len(chosen)), adapted[chosen].argmax(axis=1)], NONE)
                meths.append(first)
            rows.append(chosen)
            values.append(value)
            cnts.append(opt_counts[chosen].sum(axis=1))
        if not sum(len(r) for r in rows):
            return f"block {problem.layers[unit[0]].block}'s layers accept no common method and cannot all stay as they are"
        pieces.append((unit, np.concatenate(rows), np.concatenate(values), np.concatenate(meths), np.concatenate(cnts)))
    sizes = [len(r) for _, r, _, _, _ in pieces]
    k_cost = np.concatenate([cost[r].sum(axis=1) for _, r, _, _, _ in pieces]).astype(np.int64)
    k_gain = np.concatenate([v for _, _, v, _, _ in pieces])
    return Knapsack(k_cost, k_gain, np.concatenate([m for _, _, _, m, _ in pieces]).astype(np.int64),
                    np.concatenate(([0], np.cumsum(sizes))).astype(np.int64), SimpleNamespace(hi=c.hi),
                    [(u, r) for u, r, _, _, _ in pieces], np.concatenate([x for _, _, _, _, x in pieces], axis=0))


def _golden_min(f, lo: float, hi: float, iters: int) -> tuple[float, float]:
    """(x, f(x)) near the minimum of a convex ``f`` on [lo, hi] by golden-section search; the ends are tried too."""
    r = 0.6180339887498949
    a, b = hi - r * (hi - lo), lo + r * (hi - lo)
    fa, fb = f(a), f(b)
    for _ in range(iters):
        if fa <= fb:
            hi, b, fb = b, a, fa
            a = hi - r * (hi - lo)
            fa = f(a)
        else:
            lo, a, fa = a, b, fb
            b = lo + r * (hi - lo)
            fb = f(b)
    return min(((a, fa), (b, fb), (lo, f(lo))), key=lambda t: t[1])


def dual(knap: Knapsack, mu: np.ndarray, caps: np.ndarray) -> float:
    """``min over price >= 0`` of the Lagrangian bound with the caps relaxed by ``mu``: an upper bound on the optimum
    (any price gives one; the search only tightens it)."""
    gain = knap.option_gain - knap.counts @ mu
    cost = knap.option_cost.astype(float)
    starts = knap.layer_start[:-1]
    cap = knap.constraints.hi

    def at(price):
        return price * cap + float(np.maximum.reduceat(gain - price * cost, starts).sum())

    return _golden_min(at, 0.0, _price_ceiling(gain, cost), 30)[1] + float(mu @ caps)


def _price_ceiling(gain: np.ndarray, cost: np.ndarray) -> float:
    """A budget price past which no option is worth its cost: the top of the price searches."""
    return float(np.max(np.maximum(gain, 0) / np.maximum(cost, 1))) + 1e-12


def multipliers(knap: Knapsack, caps: np.ndarray, deadline: float | None) -> np.ndarray:
    """Multipliers of the caps by coordinate golden-section search on the (convex) dual bound."""
    mu = np.zeros(len(caps))
    if not len(caps):
        return mu
    scale = float(np.max(np.abs(knap.option_gain))) + 1e-12
    # one coordinate: one pass is the whole search; several: coordinate descent needs a few passes and finer steps
    iters = 20 if len(caps) == 1 else 30
    for _ in range(1 if len(caps) == 1 else 3):
        for j in range(len(caps)):
            if deadline is not None and time.perf_counter() > deadline:
                return mu

            def f(x):
                trial = mu.copy()
                trial[j] = x
                return dual(knap, trial, caps)

            mu[j] = _golden_min(f, 0.0, scale, iters)[0]
    return mu


def feasible_incumbent(knap: Knapsack, start, caps: np.ndarray):
    """``start`` repaired to meet the caps (least real gain lost per count freed), then improved by single
    moves that keep budget and caps; None if the caps cannot be met by such moves."""
    cost, gain, counts = knap.option_cost, knap.option_gain, knap.counts
    starts = knap.layer_start.tolist()
    cap = knap.constraints.hi
    choice = list(start)
    used = int(cost[choice].sum())
    total = counts[choice].sum(axis=0) if len(caps) else np.zeros(0, dtype=np.int64)
    while len(caps) and (total > caps).any():
        over = total > caps
        best = None
        for l in range(knap.n_layers):
            cur = choice[l]
            if not (counts[cur][over] > 0).any():
                continue
            for o in range(starts[l], starts[l + 1]):
                freed = int((counts[cur] - counts[o])[over].clip(min=0).sum())
                d = counts[o] - counts[cur]
                if freed <= 0 or used + cost[o] - cost[cur] > cap or ((total + d > caps) & ~over & (d > 0)).any():
                    continue
                loss = float(gain[cur] - gain[o]) / freed
                if best is None or loss < best[0]:
                    best = (loss, l, o)
        if best is None:
            return None
        _, l, o = best
        used += int(cost[o] - cost[choice[l]])
        total = total + counts[o] - counts[choice[l]]
        choice[l] = o
    for _ in range(50):  # improve: best single move that keeps budget and caps
        best = None
        for l in range(knap.n_layers):
            cur = choice[l]
            for o in range(starts[l], starts[l + 1]):
                dg = float(gain[o] - gain[cur])
                if dg <= 0 or used + cost[o] - cost[cur] > cap:
                    continue
                if len(caps) and (total + counts[o] - counts[cur] > caps).any():
                    continue
                if best is None or dg > best[0]:
                    best = (dg, l, o)
        if best is None:
            break
        _, l, o = best
        used += int(cost[o] - cost[choice[l]])
        if len(caps):
            total = total + counts[o] - counts[choice[l]]
        choice[l] = o
    return tuple(choice)


#: tied blocks with more layers than this (an MoE block with its experts) are not turned into frontiers (their points
#: grow past memory) where the Lagrangian method choice (:func:`solve_block_methods`) leaves a block's method open
BIG_BLOCK = 64


class _BlockBound:
    """The Lagrangian bound of tied blocks at a price of the budget: ``value(price)`` is ``price * cap`` plus, per
    block-less layer, its best ``g - price * c`` and, per block, its all-none value plus the largest gain over it of
    one method (each layer at its best option of that method, or none). ``None`` from :meth:`of` when a block's
    layer has no 'none' (its methods then do not nest this way)."""

    @classmethod
    def of(cls, problem: Problem, units: list[list[int]]):
        self = cls()
        cost, gain, method, layer = problem.option_cost, problem.option_gain, problem.option_method, problem.option_layer
        unit_of = np.full(problem.n_layers, -1, dtype=np.int64)
        blocks = [u for u in units if len(u) > 1]
        for b, u in enumerate(blocks):
            unit_of[u] = b
        in_block = unit_of[layer] >= 0
        is_none = method == NONE
        none_of = np.full(problem.n_layers, -1, dtype=np.int64)
        none_of[layer[is_none]] = np.flatnonzero(is_none)
        block_layers = np.flatnonzero(unit_of >= 0)
        if (none_of[block_layers] < 0).any():
            return None
        self.blocks, self.cap = blocks, problem.constraints.hi
        self.option_block = unit_of[layer]  # each option's block (-1: a block-less layer's)
        self.free = np.flatnonzero(~in_block)  # options of block-less layers
        self.free_starts = np.flatnonzero(np.r_[True, layer[self.free][1:] != layer[self.free][:-1]]) if len(self.free) else None
        # options of block layers with a method, grouped by (layer, method): one segment each
        opt = np.flatnonzero(in_block & ~is_none)
        order = np.lexsort((method[opt], layer[opt]))
        self.opt = opt[order]
        lay, met = layer[self.opt], method[self.opt].astype(np.int64)
        self.seg_starts = np.flatnonzero(np.r_[True, (lay[1:] != lay[:-1]) | (met[1:] != met[:-1])]) if len(opt) else np.zeros(0, dtype=np.int64)
        seg_layer, seg_method = lay[self.seg_starts], met[self.seg_starts]
        self.seg_none = none_of[seg_layer]
        self.n_methods = len(METHOD_NAMES)
        self.seg_key = unit_of[seg_layer] * self.n_methods + seg_method  # (block, method)
        self.present = np.zeros(len(blocks) * self.n_methods, dtype=bool)  # the methods some layer of the block takes
        self.present[self.seg_key] = True
        self.present = self.present.reshape(len(blocks), self.n_methods)
        self.block_none = none_of[block_layers]
        self.cost = cost.astype(float)
        self.gain = gain
        return self

    def parts(self, price: float):
        """(bound, per block and method the gain over all-none) at ``price``."""
        val = self.gain - price * self.cost
        total = price * self.cap
        if len(self.free):
            total += float(np.maximum.reduceat(val[self.free], self.free_starts).sum())
        over = np.zeros(len(self.blocks) * self.n_methods)
        if len(self.opt):
            best = np.maximum.reduceat(val[self.opt], self.seg_starts)
            over = np.bincount(self.seg_key, weights=np.maximum(best - val[self.seg_none], 0.0), minlength=len(over))
        over = over.reshape(len(self.blocks), self.n_methods)
        return total + float(val[self.block_none].sum()) + float(over.max(axis=1).sum()), over


def solve_block_methods(problem: Problem, units: list[list[int]], deadline: float | None = None, max_states: int = 400_000):
    """Tied blocks (without method caps) decided by the Lagrangian bound; tried before the blocks' frontiers, which
    blocks of hundreds of layers outgrow.

    At the price minimising the bound B (golden section; any price gives a valid bound), each block's best method is
    the one adding most over all-none. The problem with each block's layers restricted to that method or none is a
    plain knapsack, solved exactly by the fast path: its optimum I is an allocation meeting the tie. An allocation
    whose block b uses method m is worth at most B less (best gain of b over all-none - m's), so where that is below
    I for every method but the best of every block, no allocation meeting the tie beats I: proven. The blocks where
    another method's bound still reaches I have their open methods tried in every combination (at most
    :data:`MAX_METHOD_COMBINATIONS`; one is skipped where B less its blocks' summed losses is below the best found --
    that sum bounds too): every allocation better than I uses open methods only, so the best of them is the optimum.
    Otherwise (or when a block's layer cannot stay as it is) a reason, and the best allocation found as the incumbent."""
    t0 = time.perf_counter()
    bound = _BlockBound.of(problem, units)
    if bound is None:
        return SideResult(None, "a layer of a tied block has no 'none' option, which the Lagrangian method choice needs")
    price, value = _golden_min(lambda p: bound.parts(p)[0], 0.0, _price_ceiling(problem.option_gain, problem.option_cost), 60)
    over = bound.parts(price)[1]
    best = over.argmax(axis=1)
    regret = over.max(axis=1)[:, None] - over  # what a block gives up against B by taking another method
    pre_seconds = 0.0  # until the first knapsack's presolve is done

    def solve_with(methods: np.ndarray):
        """The optimum with each block's layers held to ``methods[b]`` or none: (choice, value, knapsack info) or a reason."""
        nonlocal pre_seconds
        knap = _restricted(problem, bound.option_block, methods)
        pre = mckp.presolve(knap, deadline)
        pre_seconds = pre_seconds or time.perf_counter() - t0
        core, pre = mckp.solve_deepening(knap, pre, deadline=deadline, max_states=max_states)
        if core.choice is None:
            return core.reason, knap.expand(pre.incumbent, problem.n_layers)
        choice = knap.expand(core.choice, problem.n_layers)
        return choice, float(problem.option_gain[list(choice)].sum()), (knap.n_layers, pre.core_layers, core.max_states)

    first = solve_with(best)
    if isinstance(first[0], str):
        return SideResult(None, f"tied blocks, best method each: {first[0]}", bound=value, incumbent=first[1])
    choice, found, info = first
    tol = mckp.REL_TOL * max(1.0, abs(value))
    methods = np.arange(over.shape[1])[None, :]
    # the methods other than the best whose bound still reaches the allocation found ('none' is in every method's set)
    open_ = (value - regret >= found - tol) & (methods != best[:, None]) & bound.present
    undecided = np.flatnonzero(open_.any(axis=1))
    n_combos = 1
    for b in undecided:  # (counted before any is built: dozens of open blocks would make 2**dozens)
        n_combos *= 1 + int(open_[b].sum())
        if n_combos > MAX_METHOD_COMBINATIONS:
            return SideResult(None, f"{len(undecided)} of {len(bound.blocks)} tied blocks could take more than one method "
                              f"within the Lagrangian bound {value:.6g} of the best allocation found ({found:.6g}): "
                              f"more than {MAX_METHOD_COMBINATIONS} combinations", incumbent=choice, bound=value)
    combos = itertools.product(*[[int(best[b])] + np.flatnonzero(open_[b]).tolist() for b in undecided])
    next(combos)  # the best method of every block: solved above
    tried = 1
    for combo in combos:  # each combination of the undecided blocks' open methods, unless its bound is below the best
        if value - float(regret[undecided, list(combo)].sum()) < found - tol:
            continue
        if deadline is not None and time.perf_counter() > deadline:
            return SideResult(None, "the time limit passed while the tied blocks' open methods were tried",
                              incumbent=choice, bound=value)
        trial = best.copy()
        trial[undecided] = combo
        out = solve_with(trial)
        tried += 1
        if isinstance(out[0], str):
            return SideResult(None, f"tied blocks, one combination of methods: {out[0]}", incumbent=choice, bound=value)
        if out[1] > found:
            choice, found, info = out
    n_layers, core_layers, peak = info
    note = (f"tied blocks on the knapsack path: {len(bound.blocks):,} blocks (the largest {max(map(len, bound.blocks), default=1):,} "
            f"layers) held to the methods whose Lagrangian bound ({value:.6g}) reaches the allocation found "
            f"({len(undecided)} blocks with more than one: {tried} combination{'s' if tried != 1 else ''} solved), "
            f"each as a knapsack of {n_layers:,} layers ({core_layers} in the core, DP peak {peak:,} states)")
    return SideResult(choice, note=note, presolve_seconds=pre_seconds)


#: most combinations of the undecided blocks' methods :func:`solve_block_methods` solves before handing over to CBC
MAX_METHOD_COMBINATIONS = 16


def _restricted(problem: Problem, option_block: np.ndarray, methods: np.ndarray) -> Knapsack:
    """The knapsack of ``problem``'s layers (each a choice) with block b's layers held to ``methods[b]`` or none
    (``option_block``: each option's block, -1 outside blocks)."""
    method = problem.option_method
    held = np.append(methods, -1)[option_block]  # (a block-less layer's options index the -1 at the end)
    sel = np.flatnonzero((option_block < 0) | (method == NONE) | (method == held))
    ends = np.cumsum(np.bincount(problem.option_layer[sel], minlength=problem.n_layers))
    return Knapsack(problem.option_cost[sel], problem.option_gain[sel], method[sel].astype(np.int64),
                    np.concatenate(([0], ends)).astype(np.int64), SimpleNamespace(hi=problem.constraints.hi), None,
                    np.zeros((len(sel), 0), dtype=np.int64), origin=sel)


@dataclass(frozen=True)
class SideResult:
    choice: tuple[int, ...] | None  # problem options, one per problem layer; None: hand to CBC
    reason: str = ""
    note: str = ""
    presolve_seconds: float = 0.0
    #: when the DP stopped: an allocation meeting the caps and ties (problem options) and an upper bound on the optimum
    incumbent: tuple[int, ...] | None = None
    bound: float | None = None


def solve_side(problem: Problem, deadline: float | None = None, max_states: int = 400_000) -> SideResult:
    """The cap-only optimum under method caps and/or tied blocks, proven by the knapsack DP (see the module text)."""
    t0 = time.perf_counter()
    capped, caps, weight = _capped(problem)
    lagrangian = SideResult(None)  # what the Lagrangian method choice found before handing over to the frontiers
    if problem.constraints.tie_blocks and not capped and not problem.pairs:
        units = _units(problem)
        lagrangian = solve_block_methods(problem, units, deadline, max_states)
        if lagrangian.choice is not None or max(map(len, units)) > BIG_BLOCK:
            return lagrangian
        # blocks small enough for frontiers: those decide what the Lagrangian method choice left open

    def stopped(reason: str, incumbent=None, bound=None) -> SideResult:
        """No proven answer: the better of the allocations both paths found and the tighter of their bounds."""
        found = [c for c in (incumbent, lagrangian.incumbent) if c is not None]
        bounds = [b for b in (bound, lagrangian.bound) if b is not None]
        return SideResult(None, reason, incumbent=max(found, key=problem.value) if found else None,
                          bound=min(bounds) if bounds else None)

    knap = build_knapsack(problem, capped, weight, deadline)
    if isinstance(knap, str):
        return stopped(knap)
    mu = multipliers(knap, caps, deadline)
    shifted = knap.shifted(mu)
    pre = mckp.presolve(shifted, deadline)
    start = feasible_incumbent(knap, pre.incumbent, caps)
    if start is None:
        return stopped("no single-layer moves meet the method caps from the relaxed allocation")
    value = float(knap.option_gain[list(start)].sum())
    key = None
    if len(caps):
        radix = int(knap.counts.max()) + 1 if knap.counts.size else 1
        key = knap.counts @ (radix ** np.arange(len(caps), dtype=np.int64))
    # dominance in real gains: across keys the shifted gains would let a cap-free option drop a better capped one
    options = mckp.undominated(knap, key=key) if key is not None else None
    pre = mckp.with_incumbent(shifted, pre, start, value=value - float(mu @ caps), options=options)
    presolve_seconds = time.perf_counter() - t0
    counted = dict(counts=knap.counts, caps=caps, mu=mu) if len(caps) else {}
    core, pre = mckp.solve_deepening(shifted, pre, deadline=deadline, max_states=max_states, **counted)
    bound = pre.bound + float(mu @ caps)
    if core.choice is None:  # the best allocation known that meets the caps and ties: a round may have improved ``start``
        return stopped(core.reason, knap.expand(pre.incumbent, problem.n_layers), bound)
    what = " and ".join(w for w, on in (("method caps", len(caps) > 0), ("tied blocks", problem.constraints.tie_blocks),
                                        (f"{len(problem.pairs):,} pair terms", bool(problem.pairs))) if on) \
        or "method caps that cannot bind"
    joined = [u for u, _ in knap.units if len(u) > 1] if knap.units else []
    note = (f"{what} on the knapsack path: {knap.n_layers:,} choices ({len(knap.option_cost):,} options"
            + (", blocks as one choice each" + (" with their pair terms" if problem.pairs else "")
               if problem.constraints.tie_blocks else
               f", {len(joined):,} units of layers joined by pair terms (the largest {max(map(len, joined)):,} layers) as one "
               "choice each among their Pareto points" if joined else "")
            + f"), bound {bound:.6g}" + (f" with cap multipliers {', '.join(f'{x:.3g}' for x in mu)}" if len(caps) else "")
            + f", {pre.core_layers} choices in the core (DP peak {core.max_states:,} states)")
    return SideResult(knap.expand(core.choice, problem.n_layers), note=note, presolve_seconds=presolve_seconds)
