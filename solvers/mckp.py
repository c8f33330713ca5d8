"""The multiple-choice knapsack structure behind an allocation, exploited exactly.

Pure Python + numpy (no LP library is imported), so ``solve`` stays fast to start.

1. **Dominance.** Per layer, sort options by cost; an option costlier and no
   better than a cheaper one is dropped. Valid for the problem with only the
   budget cap; the utilization *floor* can make a costlier, worse option
   necessary, so callers check the floor on the answer (and fall back to the
   full ILP where it binds).
2. **LP relaxation.** The LP of a multiple-choice knapsack is solved greedily on
   each layer's upper concave hull: take hull segments in decreasing slope
   (gain per parameter) until the cap is reached. The slope of the segment cut
   by the cap is the budget's shadow price ``price``; the bound is the
   Lagrangian ``price * cap + sum_l max_o (gain - price * cost)``.
3. **Incumbent.** The better of the LP's integer part and that part with the
   segment the cap cuts taken whole (the least steep segments of other layers
   undone to pay for it), each then filled with segments that still fit; then
   the best single moves.
4. **Reduced-cost fixing.** Any allocation containing option o has objective at
   most ``bound + rc(o)`` with ``rc(o) = (g_o - price c_o) - max_o' (g_o' - price c_o')``;
   options with ``bound + rc(o) < incumbent - tol`` cannot be in a better
   allocation and are removed. Usually only a few dozen layers keep two or
   more options: the core.
5. **Core DP.** An exact dynamic program over the core's layers keeping the
   Pareto frontier of (cost, gain) partial states, each pruned with the same
   Lagrangian bound and, at checkpoints, with the LP bound of the layers still
   to come given the capacity a state leaves them. Layers whose alternatives
   lose the most come first, near ties last. Its best state is a proven
   optimum of the cap-only problem; if its cost meets the floor it is optimal
   for the full problem.
6. **Deepening.** With a poor incumbent the DP runs first against targets
   just below the LP bound (every allocation worth the target survives, so an
   answer reaching it is optimal), each miss improving the incumbent and
   doubling the target's distance below the bound.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field, replace
from typing import Callable, Sequence

import numpy as np

from layerlens_opt.methods import METHOD_NAMES
from layerlens_opt.problem import Problem
from layerlens_opt.records import TupleLike

#: relative tolerance below which two objectives count as equal in pruning
REL_TOL = 1e-12


@dataclass(frozen=True)
class Presolve:
    """What the structure tells before any search."""

    options: Sequence[tuple[int, ...]]  # per layer: undominated options, cost ascending (a tuple, or a Kept)
    bound: float  # LP bound of the cap-only problem
    price: float  # shadow price of the budget cap (gain per parameter)
    lp_choice: tuple[int, ...]  # integer part of the LP solution
    incumbent: tuple[int, ...]  # a feasible allocation for the cap (floor not checked)
    incumbent_value: float
    kept: Sequence[tuple[int, ...]]  # per layer: options surviving reduced-cost fixing (a tuple, or a Kept)
    seconds: float
    padded: "_Padded | None" = field(default=None, repr=False, compare=False)  # ``options`` as a layer x option matrix

    @property
    def core_layers(self) -> int:
        if isinstance(self.kept, Kept):
            return int(np.count_nonzero(self.kept.counts > 1))
        return sum(1 for k in self.kept if len(k) > 1)

    @property
    def kept_options(self) -> int:
        if isinstance(self.kept, Kept):
            return int(self.kept.counts.sum())
        return sum(len(k) for k in self.kept)


def undominated(problem: Problem, per_method: bool = False, key=None) -> tuple[tuple[int, ...], ...]:
    """Per layer, the options not dominated by a cheaper, at-least-as-good one (cost ascending).

    ``per_method``: only an option of the same method dominates — what a
    min-methods constraint needs, since a worse option of another method may
    be the one that adds a method. ``key`` (one integer per option, e.g. the
    capped-method counts an option uses): only an option of the same key or of
    key 0 (using no capped resource) dominates.
    """
    if not per_method and key is None:
        return _undominated_plain(problem)
    keys = problem.option_method.astype(np.int64) if per_method else np.asarray(key, dtype=np.int64)
    cost, gain = problem.option_cost, problem.option_gain
    layer = np.repeat(np.arange(problem.n_layers), np.diff(problem.layer_start))
    opt = np.arange(len(cost))
    order = np.lexsort((opt, -gain, cost, layer))  # per layer: cost ascending, then gain descending, then option number
    k, g, lay = keys[order], gain[order], layer[order]
    # the best gain before each option among its layer's options of the same key (an option with a worse or equal gain
    # than one before it is dominated: that one costs no more)
    by_key = np.lexsort((np.arange(len(order)), k, lay))
    floor = np.empty(len(order))
    floor[by_key] = _prior_max(_segments(lay[by_key], k[by_key]), g[by_key])
    if key is not None and not per_method:  # options using no capped resource (key 0) dominate every key
        floor = np.maximum(floor, _prior_max(_segments(lay), np.where(k == 0, g, -np.inf)))
    kept = order[g > floor]
    return _per_layer(kept, np.bincount(layer[kept], minlength=problem.n_layers))


def _per_layer(flat: np.ndarray, counts: np.ndarray) -> tuple[tuple[int, ...], ...]:
    """``flat`` cut into consecutive tuples of ``counts`` items: the options kept per layer. The layers keeping
    k options are cut into k-tuples at once (zip over one list, not a Python slice per layer: 50,000 layers)."""
    ends = np.cumsum(counts)
    out = np.empty(len(counts), dtype=object)
    for k in np.unique(counts).tolist():
        at = np.flatnonzero(counts == k)
        values = flat[((ends[at] - k)[:, None] + np.arange(k)).ravel()].tolist()
        tuples = zip(*[iter(values)] * k) if k else (() for _ in at)
        out[at] = np.fromiter(tuples, dtype=object, count=len(at))
    return tuple(out.tolist())


def _segments(*labels: np.ndarray) -> np.ndarray:
    """Segment numbers (0, 1, ...) of positions already grouped by ``labels``: a new segment where any label changes."""
    change = np.zeros(len(labels[0]), dtype=bool)
    for a in labels:
        change[1:] |= a[1:] != a[:-1]
    return np.cumsum(change)


def _prior_max(seg: np.ndarray, values: np.ndarray) -> np.ndarray:
    """For each position, the largest of ``values`` at earlier positions of its segment (-inf where none); ``seg``
    non-decreasing. Exact: values are replaced by their ranks, offset per segment, and one running maximum taken."""
    out = np.full(len(values), -np.inf)
    if len(values) < 2:
        return out
    uniq, rank = np.unique(values, return_inverse=True)
    span = len(uniq) + 1
    base = seg.astype(np.int64) * span
    run = np.maximum.accumulate(base + rank.reshape(-1) + 1)
    prior = run[:-1]
    same = prior > base[1:]  # the running maximum so far comes from this segment
    out[1:][same] = uniq[prior[same] - base[1:][same] - 1]
    return out


class _Padded:
    """A layer x option view of some options per layer, in a given order: ``idx`` their numbers (pads: 0),
    ``cost`` and ``gain`` (pads: a huge cost, -inf gain) and ``valid`` (False on pads)."""

    PAD_COST = np.iinfo(np.int64).max // 4

    def __init__(self, problem: Problem, idx: np.ndarray, valid: np.ndarray, cost_gain: tuple | None = None):
        """``cost_gain``: the (cost, gain) matrices when the caller already has them (padded as above)."""
        self.problem = problem
        self._reduced: tuple[float, np.ndarray] | None = None
        self.idx, self.valid = np.where(valid, idx, 0), valid
        if cost_gain is not None:
            self.cost, self.gain = cost_gain
        else:
            self.cost = np.where(valid, problem.option_cost[self.idx], self.PAD_COST)
            self.gain = np.where(valid, problem.option_gain[self.idx], -np.inf)

    @classmethod
    def of(cls, problem: Problem, options) -> "_Padded":
        counts = np.fromiter((len(o) for o in options), dtype=np.int64, count=len(options))
        valid = np.arange(int(counts.max()) if len(counts) else 0)[None, :] < counts[:, None]
        idx = np.zeros(valid.shape, dtype=np.int64)
        idx[valid] = np.fromiter((o for opts in options for o in opts), dtype=np.int64, count=int(counts.sum()))
        return cls(problem, idx, valid)

    @classmethod
    def every(cls, problem: Problem) -> "_Padded":
        starts = problem.layer_start
        counts = np.diff(starts)
        cols = np.arange(int(counts.max()) if len(counts) else 0)[None, :]
        return cls(problem, starts[:-1, None] + cols, cols < counts[:, None])

    def by_cost(self) -> "_Padded":
        """Each row sorted by cost, then gain descending, then option number (pads last).

        One stable sort by cost (a sixth of a three-key lexsort's time) gives that order wherever no two options of
        a row cost the same (pads, which cost the same, keep their column order either way); the rows where two
        options do are sorted again on all three keys."""
        order = np.argsort(self.cost, axis=1, kind="stable")
        idx, valid, cost, gain = (np.take_along_axis(a, order, axis=1) for a in (self.idx, self.valid, self.cost, self.gain))
        tie = ((cost[:, 1:] == cost[:, :-1]) & valid[:, 1:]).any(axis=1)
        if tie.any():
            rows = np.flatnonzero(tie)
            again = np.lexsort((idx[rows], -gain[rows], cost[rows]), axis=-1)
            for a in (idx, valid, cost, gain):
                a[rows] = np.take_along_axis(a[rows], again, axis=1)
        return _Padded(self.problem, idx, valid, (cost, gain))

    def undominated(self) -> "_Padded":
        """:meth:`by_cost`, valid only on the options no cheaper-or-equal option beats."""
        m = self.by_cost()
        valid = m.valid & np.concatenate((np.ones((len(m.gain), 1), dtype=bool),
                                          m.gain[:, 1:] > np.maximum.accumulate(m.gain, axis=1)[:, :-1]), axis=1)
        return _Padded(self.problem, m.idx, valid, (np.where(valid, m.cost, self.PAD_COST), np.where(valid, m.gain, -np.inf)))

    def compact(self) -> "_Padded":
        """The valid entries of each row moved to its front (in order), the columns no row needs dropped:
        what :meth:`of` builds from the rows' option tuples."""
        counts = self.valid.sum(axis=1)
        width = int(counts.max()) if len(counts) else 0
        valid = np.arange(width)[None, :] < counts[:, None]
        out = []
        for a, pad in ((self.idx, 0), (self.cost, self.PAD_COST), (self.gain, -np.inf)):
            b = np.full(valid.shape, pad, dtype=a.dtype)
            b[valid] = a[self.valid]  # both masks read row by row: each row's entries in order, moved to its front
            out.append(b)
        idx, cost, gain = out
        return _Padded(self.problem, idx, valid, (cost, gain))

    def rows(self, mask: np.ndarray) -> tuple[tuple[int, ...], ...]:
        """Per layer, the options where ``mask`` holds, in column order."""
        return _per_layer(self.idx[mask], mask.sum(axis=1))

    def reduced_costs(self, price: float) -> np.ndarray:
        """Each option's reduced cost ``rc(o)`` at ``price``: its ``gain - price * cost`` less its row's largest (the
        fixing's test; kept for the last price asked: every deepening round fixes at the presolve's price)."""
        if self._reduced is None or self._reduced[0] != price:
            reduced = self.gain - price * self.cost
            self._reduced = (price, reduced - reduced.max(axis=1)[:, None])
        return self._reduced[1]

    def kept(self, mask: np.ndarray) -> "Kept":
        """:meth:`rows` as a :class:`Kept`: the tuples built only when read."""
        return Kept(self, mask)


class Kept(TupleLike):
    """Some options of each layer, as a mask over a :class:`_Padded` matrix: reads as the tuple of per-layer option
    tuples it stands for (length, indexing, iteration, ``==`` with such a tuple, hash, pickling as that tuple), built
    on first use; the search reads the arrays instead (:attr:`counts`, :meth:`first`, :meth:`arrays`): a 50,000-layer
    presolve and each deepening round made 50,000 tuples of which the core DP reads a thousand."""

    __slots__ = ("padded", "mask", "_counts", "_tuples")

    def __init__(self, padded: "_Padded", mask: np.ndarray):
        self.padded, self.mask = padded, mask  # ``mask`` within ``padded.valid``; each row's in column order
        self._counts: np.ndarray | None = None
        self._tuples: tuple[tuple[int, ...], ...] | None = None

    @property
    def counts(self) -> np.ndarray:
        """How many options each layer keeps."""
        if self._counts is None:
            self._counts = self.mask.sum(axis=1)
        return self._counts

    def first(self) -> np.ndarray:
        """Each layer's first kept option (a layer keeping none: its first column's)."""
        return self.padded.idx[np.arange(len(self.mask)), np.argmax(self.mask, axis=1)]

    def arrays(self, layers) -> list[np.ndarray]:
        """The kept options of each of ``layers``, as int64 arrays."""
        idx, mask = self.padded.idx, self.mask
        return [idx[l][mask[l]] for l in layers]

    def tuples(self) -> tuple[tuple[int, ...], ...]:
        if self._tuples is None:
            self._tuples = _per_layer(self.padded.idx[self.mask], self.counts)
        return self._tuples

    def __len__(self) -> int:
        return len(self.mask)

    def __getitem__(self, l):
        if self._tuples is not None or isinstance(l, slice):
            return self.tuples()[l]
        return tuple(self.padded.idx[l][self.mask[l]].tolist())

    def as_tuple(self) -> tuple[tuple[int, ...], ...]:
        return self.tuples()


def _undominated_plain(problem: Problem) -> tuple[tuple[int, ...], ...]:
    """:func:`undominated` without keys, all layers at once."""
    m = _Padded.every(problem).undominated()
    return m.rows(m.valid)


def _undominated_padded(problem: Problem) -> _Padded:
    """:func:`undominated` without keys as the padded matrix of :meth:`_Padded.of` (not built from tuples)."""
    return _Padded.every(problem).undominated().compact()


def _hull_points(cost: np.ndarray, gain: np.ndarray, valid: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per row of undominated options (valid entries first, cost strictly ascending), the columns of its upper
    concave hull: row r's are ``points[r, :count[r]]``, cost ascending.

    Andrew's monotone chain, run on every row at once: each column is pushed onto its row's stack after the
    points it leaves on or below the hull are popped (a point on or below the segment from the one before it
    to the new column). The pops run only over the rows still popping."""
    n, width = valid.shape
    c, g = cost.astype(float).ravel(), gain.ravel()
    base = np.arange(n, dtype=np.int64) * width
    stack = np.zeros(n * width, dtype=np.int64)  # flat positions of hull points: row r's k-th at r * width + k
    count = np.zeros(n, dtype=np.int64)
    for j in range(width):
        rows = np.flatnonzero(valid[:, j])
        live = rows
        while len(live):
            top = count[live]
            two = top >= 2
            if not two.all():
                live, top = live[two], top[two]
                if not len(live):
                    break
            at = base[live] + top
            b, a, o = stack[at - 1], stack[at - 2], base[live] + j
            ca, ga = c[a], g[a]
            pop = (g[b] - ga) * (c[o] - ca) <= (g[o] - ga) * (c[b] - ca)  # (only options: no pad's -inf here)
            live = live[pop]
            count[live] -= 1
        stack[base[rows] + count[rows]] = base[rows] + j
        count[rows] += 1
    return stack.reshape(n, width) - base[:, None], count


def _hull_segments(m: _Padded):
    """The segments of each row's upper concave hull (rows of undominated options, cost ascending), in the order
    the LP fills them: slope descending, ties by row, then position. Returns (row, from column, to column,
    cost step, gain step, slope) per segment and each row's first hull column."""
    points, count = _hull_points(m.cost, m.gain, m.valid)
    width = points.shape[1]
    seg_row, k = np.nonzero(np.arange(max(width - 1, 0))[None, :] < (count - 1)[:, None])  # rows ascending, hull order
    frm_col, to_col = points[seg_row, k], points[seg_row, k + 1]
    dc = m.cost[seg_row, to_col] - m.cost[seg_row, frm_col]
    dg = m.gain[seg_row, to_col] - m.gain[seg_row, frm_col]
    slope = dg / dc
    order = _descending(slope)  # the segments come row by row, each row's in hull order
    return (seg_row[order], frm_col[order], to_col[order], dc[order], dg[order], slope[order]), points[:, 0]


def _descending(values: np.ndarray) -> np.ndarray:
    """The order of ``values`` largest first, equal values in their original order: a stable sort's answer, from
    an unstable sort (several times faster on floats) whose runs of equal values are then put in order."""
    order = np.argsort(-values)
    ranked = values[order]
    tie = ranked[1:] == ranked[:-1]
    if tie.any():
        run = np.cumsum(np.concatenate(([True], ~tie)))  # run number of each sorted position
        inside = np.flatnonzero(np.concatenate((tie, [False])) | np.concatenate(([False], tie)))
        order[inside] = order[inside][np.lexsort((order[inside], run[inside]))]
    return order


def presolve(problem: Problem, deadline: float | None = None) -> Presolve:
    """Dominance, LP bound, incumbent and reduced-cost fixing for the cap-only problem.

    Vectorized over a layer x option matrix. Past ``deadline`` (``time.perf_counter()`` seconds) the
    incumbent is not improved by single moves."""
    t0 = time.perf_counter()
    cap = problem.constraints.hi
    m = _undominated_padded(problem)
    options = m.kept(m.valid)
    n, width = m.valid.shape
    rows = np.arange(n)

    # hull segments, taken greedily by decreasing slope until the cap
    (seg_layer, frm_col, to_col, dc, _, slope), first_col = _hull_segments(m)
    used0 = int(m.cost[rows, first_col].sum())
    reach = used0 + np.cumsum(dc)
    over = np.flatnonzero(reach > cap)
    stop = int(over[0]) if len(over) else len(dc)
    price = float(slope[stop]) if len(over) else 0.0
    choice_col = first_col.copy()
    np.maximum.at(choice_col, seg_layer[:stop], to_col[:stop])  # a layer's taken segments: the last one's end
    lp_choice = tuple(m.idx[rows, choice_col].tolist())
    reduced = m.gain - price * m.cost
    bound = sum(reduced.max(axis=1).tolist(), price * cap)

    # incumbents: the LP's integer part filled with later segments that still fit; and (when the cap cuts a
    # segment) that segment taken whole, paid for by undoing the least steep segments of other layers, then
    # filled the same way. The better of the two is improved by the best single moves.
    taken = choice_col
    used = int(reach[stop - 1]) if stop else used0
    choice_col, used = _filled(taken.copy(), used, cap, seg_layer[stop:], frm_col[stop:], to_col[stop:], dc[stop:])
    if len(over):
        whole = _split_taken(taken, used0, cap, (seg_layer, frm_col, to_col, dc), stop)
        if whole is not None and float(m.gain[rows, whole[0]].sum()) > float(m.gain[rows, choice_col].sum()):
            choice_col, used = whole
    for _ in range(8):
        if deadline is not None and time.perf_counter() > deadline:
            break
        dcost = m.cost - m.cost[rows, choice_col][:, None]
        dgain = np.where(dcost <= cap - used, m.gain - m.gain[rows, choice_col][:, None], -np.inf)
        best = int(np.argmax(dgain))  # the first best move in layer order, options cost ascending
        l, j = divmod(best, width)
        if not dgain[l, j] > 0.0:
            break
        choice_col[l] = j
        used += int(dcost[l, j])
    incumbent = tuple(m.idx[rows, choice_col].tolist())
    value = float(sum(problem.option_gain[list(incumbent)].tolist()))
    return Presolve(
        options=options,
        bound=bound,
        price=price,
        lp_choice=lp_choice,
        incumbent=incumbent,
        incumbent_value=value,
        kept=fix(problem, options, bound, price, value, m),
        seconds=time.perf_counter() - t0,
        padded=m,
    )


@dataclass(frozen=True)
class WindowLP:
    """The LP relaxation of the whole budget window (floor and cap), separable gains only."""

    bound: float  # the LP optimum, as its Lagrangian dual: an upper bound on every allocation in the window
    cap_price: float  # shadow price of the cap, gain per parameter (>= 0)
    floor_price: float  # shadow price of the floor (>= 0; positive only where the floor binds)
    cost: float  # parameters the LP solution uses
    primal: float  # its objective summed from its points: equal to ``bound`` (the certificate of optimality)


def window_lp(problem: Problem) -> WindowLP | None:
    """The LP relaxation of the window problem, exactly: each layer's options on their upper concave hull (dominated
    options too: where the floor binds, the LP may need a costlier, worse one), its segments taken in decreasing slope
    -- the gaining ones up to the cap, then, if the floor is not reached, the losing ones up to the floor. None where
    no fractional choice lands in the window."""
    lo, hi = problem.constraints.lo, problem.constraints.hi
    every = _Padded.every(problem)
    s = every.by_cost()  # of options of equal cost only the best (the first) is a hull point
    m = _Padded(problem, s.idx, s.valid & np.concatenate((np.ones((problem.n_layers, 1), dtype=bool),
                                                           s.cost[:, 1:] != s.cost[:, :-1]), axis=1))
    (_, _, _, dc, dg, slope), first = _hull_segments(m)
    rows = np.arange(problem.n_layers)
    base_cost, base_gain = int(m.cost[rows, first].sum()), sum(m.gain[rows, first].tolist())
    reach = base_cost + np.concatenate(([0], np.cumsum(dc)))  # cost after taking the first k segments
    if base_cost > hi or reach[-1] < lo:
        return None
    gaining = int(np.count_nonzero(slope > 0))  # they come first (slope descending)
    cap_price = floor_price = 0.0
    if reach[gaining] > hi:  # the cap cuts a gaining segment
        k = int(np.flatnonzero(reach[1:] > hi)[0])
        cap_price, target = float(slope[k]), hi
    elif reach[gaining] < lo:  # the floor needs losing segments too
        k = int(np.flatnonzero(reach[1:] >= lo)[0])
        floor_price, target = max(0.0, -float(slope[k])), lo  # (a segment of no loss fills it: no price)
    else:  # every gaining segment fits in the window
        k, target = gaining, int(reach[gaining])
    primal = base_gain + sum(dg[:k].tolist())
    if k < len(dc):
        primal += float(dg[k]) * (target - int(reach[k])) / float(dc[k])
    price = cap_price - floor_price  # the Lagrangian: sum_l max_o (g - price c) + cap_price hi - floor_price lo
    reduced = np.where(every.valid, every.gain - price * every.cost.astype(float), -np.inf)
    bound = sum(reduced.max(axis=1).tolist(), cap_price * hi - floor_price * lo)
    return WindowLP(bound=bound, cap_price=cap_price, floor_price=floor_price, cost=float(target), primal=primal)


def _filled(cols: np.ndarray, used: int, cap: int, seg_layer, frm_col, to_col, dc) -> tuple[np.ndarray, int]:
    """``cols`` (a column per layer, costing ``used``) with the given hull segments taken in order where the
    layer stands at the segment's start and its cost still fits under ``cap``."""
    fits = np.flatnonzero(dc <= cap - used)  # (the room only shrinks: no other segment can ever fit)
    cur = cols.tolist()
    for l, to, frm, d in zip(seg_layer[fits].tolist(), to_col[fits].tolist(), frm_col[fits].tolist(), dc[fits].tolist()):
        if cur[l] == frm and used + d <= cap:
            cur[l] = to
            used += d
    return np.array(cur, dtype=np.int64), used


def _split_taken(taken: np.ndarray, used0: int, cap: int, segments, stop: int):
    """The LP's integer part (``taken``) with the segment the cap cuts (number ``stop``) taken whole, the least
    steep taken segments of the other layers undone until the cost fits, then later segments that fit. None
    if undoing every other layer's segments does not make room."""
    seg_layer, frm_col, to_col, dc = segments
    split = seg_layer[stop]
    cols = taken.copy()
    cols[split] = to_col[stop]
    used = used0 + int(dc[: stop + 1].sum())
    back = np.flatnonzero(seg_layer[:stop] != split)[::-1]  # taken segments of other layers, least steep first
    freed = np.cumsum(dc[back])
    n_undo = int(np.searchsorted(freed, used - cap))  # the fewest that free enough (a layer's later segments first)
    if n_undo >= len(back):
        return None
    undo = back[: n_undo + 1]
    # undoing a layer's segments from its last one back leaves it at the start of the earliest one undone
    np.minimum.at(cols, seg_layer[undo], frm_col[undo])
    used -= int(freed[n_undo])
    rest = slice(stop + 1, None)
    return _filled(cols, used, cap, seg_layer[rest], frm_col[rest], to_col[rest], dc[rest])


def fix(problem: Problem, options, bound: float, price: float, value: float, padded: _Padded | None = None) -> tuple[tuple[int, ...], ...]:
    """Reduced-cost fixing: per layer, the options that can still be in an allocation worth >= ``value``."""
    m = padded or _Padded.of(problem, options)
    tol = REL_TOL * max(1.0, abs(bound))
    keep = m.valid & (bound + m.reduced_costs(price) >= value - tol)
    return m.kept(keep)


def with_incumbent(problem: Problem, pre: Presolve, choice, per_method: bool = False, key=None,
                   value: float | None = None, options=None) -> Presolve:
    """The presolve re-fixed against another incumbent (e.g. one that meets side constraints).

    The LP bound and price of ``pre`` stay valid (a relaxation); with
    ``per_method`` the options are re-pruned by same-method dominance only, with ``key``
    by same-key dominance (see :func:`undominated`), unless ``options`` gives them. ``value`` is
    the target the fixing and the DP prune against (default: the choice's gain in ``problem``).
    """
    if options is None:
        options = undominated(problem, per_method=per_method, key=key) if (per_method or key is not None) else pre.options
    padded = pre.padded if options is pre.options else None
    if value is None:
        value = float(sum(problem.option_gain[list(choice)].tolist()))
    return replace(pre, options=options, incumbent=tuple(choice), incumbent_value=value,
                   kept=fix(problem, options, pre.bound, pre.price, value, padded), padded=padded)


#: up to this many keys :func:`pareto` takes a running maximum per key, above it one ranked pass over all
PARETO_LOOP_KEYS = 32


def pareto(c: np.ndarray, g: np.ndarray, key: np.ndarray | None, *rest: np.ndarray):
    """The (cost, gain) states no cheaper-or-equal state of the same ``key`` beats (``key`` None: one
    frontier), sorted by key then cost; ``rest`` are arrays carried along. Returns (c, g, key, *rest)."""
    c, g, key, take = _pareto_kept(c, g, key)
    return (c, g, key, *(r[take] for r in rest))


def _pareto_kept(c: np.ndarray, g: np.ndarray, key: np.ndarray | None):
    """:func:`pareto`'s states and, instead of carried arrays, their positions in the input (``take``)."""
    # sorted by key and cost only (stable: equal pairs keep their order); of a (key, cost) pair the running
    # maximum keeps the first of the best gains among others, and only the last kept of each pair stays --
    # the state a sort on gain descending as well would keep
    if key is None:
        order = np.argsort(c, kind="stable")
    elif len(c) and int(key.max()) < (2**62) // (int(c.max()) + 1) and int(key.min()) >= 0 and int(c.min()) >= 0:
        order = np.argsort(key * (int(c.max()) + 1) + c, kind="stable")
    else:
        order = np.lexsort((c, key))
    c, g = c[order], g[order]
    key = None if key is None else key[order]
    keep = np.ones(len(g), dtype=bool)
    if key is None:
        run = np.maximum.accumulate(g)
        keep[1:] = g[1:] > run[:-1]
    else:
        starts = np.flatnonzero(np.r_[True, key[1:] != key[:-1]])
        if len(starts) <= PARETO_LOOP_KEYS:  # a few keys: one running maximum each
            for a, b in zip(starts, np.r_[starts[1:], len(g)]):
                keep[a + 1 : b] = g[a + 1 : b] > np.maximum.accumulate(g[a:b])[:-1]
        else:  # many (the capped DP's count vectors): one pass over all
            keep = g > _prior_max(_segments(key), g)
    # positions, not a mask: gathering at a scattered mask is several times slower than at an index array
    kept = np.flatnonzero(keep)
    c = c[kept]
    last = np.ones(len(kept), dtype=bool)  # of kept states with the same (key, cost), only the last stays
    np.not_equal(c[:-1], c[1:], out=last[:-1])
    if key is not None:
        key = key[kept]
        last[:-1] |= key[:-1] != key[1:]
    kept = kept[last]
    return c[last], g[kept], None if key is None else key[last], order[kept]


@dataclass(frozen=True)
class CoreResult:
    choice: tuple[int, ...] | None  # None: the state limit or the time limit stopped the DP
    max_states: int
    reason: str = ""
    value: float | None = None  # the objective the DP's answer reaches (in the gains it was given)


#: states the core DP keeps for backtracking, summed over its layers (5 bytes each: about 125 MB)
MAX_STORED_STATES = 25_000_000
#: how many times the core DP evaluates the state-dependent LP bound, at most (it costs one pass over the core's segments)
LP_BOUND_CHECKS = 256
#: the last steps of the core DP, where near ties multiply the frontier, check the LP bound after every layer
LP_BOUND_TAIL = 256


def _core_order(reduced: list[np.ndarray]) -> np.ndarray:
    """The order the core DP takes its layers in: the largest loss of a layer's second-best option first.

    Layers whose alternatives cost a lot of the gap prune the frontier at once; the near ties,
    which multiply it, come last, when the state-dependent bound is tightest."""
    second = np.array([float(np.partition(r, len(r) - 2)[len(r) - 2]) if len(r) > 1 else -np.inf for r in reduced])
    best = np.array([float(r.max()) for r in reduced])
    return np.argsort(second - best, kind="stable")


class _SuffixBound:
    """LP bounds of the layers after step k of the DP, as a function of the capacity left to them.

    Each layer's kept options give an upper concave hull; the LP of a set of layers fills their hull
    segments in decreasing slope. One global sort, then per checkpoint a masked cumulative sum."""

    def __init__(self, problem: Problem, opt_idx: list[np.ndarray]):
        m = _Padded.of(problem, opt_idx).undominated()
        (self.pos, _, _, self.dc, self.dg, _), first = _hull_segments(m)
        rows = np.arange(len(opt_idx))
        # suffix sums: what the layers from k on cost and gain at their cheapest hull points
        self.base_cost = np.concatenate((np.cumsum(m.cost[rows, first][::-1])[::-1], [0]))
        self.base_gain = np.concatenate((np.cumsum(m.gain[rows, first][::-1])[::-1], [0.0]))

    def keep(self, k: int, c: np.ndarray, g: np.ndarray, cap: int, target: float) -> np.ndarray:
        """Which states after step k (cost c, gain g) can still reach ``target`` under ``cap``."""
        m = self.pos > k
        bc = np.concatenate(([0], np.cumsum(self.dc[m]))) + self.base_cost[k + 1]
        bg = np.concatenate(([0.0], np.cumsum(self.dg[m]))) + self.base_gain[k + 1]
        left = cap - c
        return (left >= bc[0]) & (g + np.interp(left, bc, bg) >= target)


#: up to this many (state, option) pairs :func:`_extend` forms them as one matrix instead of a loop over the options
#: (most DP steps: 50,000 layers' DP 2-5% faster, 10,000 layers' 5-10%; above it the loop, which skips the states
#: the cap cuts, is as fast)
EXTEND_MATRIX = 20_000


def _extend_matrix(s_cost, s_gain, s_reduced, cost_j, gain_j, reduced_j, threshold, cap):
    """:func:`_extend` on an options x states matrix: the same candidates in the same order (option by option,
    states ascending), without a Python loop over the options."""
    ok = (s_cost[None, :] <= (cap - cost_j)[:, None]) & (s_reduced[None, :] >= (threshold - reduced_j)[:, None])
    flat = np.flatnonzero(ok)
    pick, parent = np.divmod(flat, len(s_cost))
    c, g, _, take = _pareto_kept(s_cost[parent] + cost_j[pick], s_gain[parent] + gain_j[pick], None)
    return c, g, parent[take], pick[take].astype(np.int16)


def _extend(s_cost, s_gain, s_reduced, cost_j, gain_j, reduced_j, threshold, cap):
    """The plain DP step: each state plus each option that keeps it under ``cap`` and its reduced value at
    least ``threshold``, Pareto-filtered. The frontier is sorted by cost, so each option's candidates are
    too and one stable sort merges them. Returns (cost, gain, parent, pick)."""
    if len(s_cost) * len(cost_j) <= EXTEND_MATRIX:
        return _extend_matrix(s_cost, s_gain, s_reduced, cost_j, gain_j, reduced_j, threshold, cap)
    fits = np.searchsorted(s_cost, cap - cost_j, side="right")  # frontier costs ascend: the cap keeps a prefix
    cs, gs, states = [], [], []
    for j in range(len(cost_j)):
        n = int(fits[j])
        ok = s_reduced[:n] >= threshold - reduced_j[j]
        if ok.all():  # the first n states (as a count: no index array to build)
            cs.append(s_cost[:n] + cost_j[j])
            gs.append(s_gain[:n] + gain_j[j])
            states.append(n)
        else:
            idx = np.flatnonzero(ok)
            cs.append(s_cost[idx] + cost_j[j])
            gs.append(s_gain[idx] + gain_j[j])
            states.append(idx)
    c, g, _, take = _pareto_kept(np.concatenate(cs), np.concatenate(gs), None)
    # which option and which state each kept candidate came from: its run, and its place in that run
    sizes = [len(a) for a in cs]
    ends = np.cumsum(sizes)
    pick = np.searchsorted(ends, take, side="right")
    if all(isinstance(s, int) for s in states):
        parent = take - (ends - sizes)[pick]
    else:
        parent = np.concatenate([np.arange(s) if isinstance(s, int) else s for s in states])[take]
    return c, g, parent, pick.astype(np.int16)


def solve_core(problem: Problem, pre: Presolve, *, min_methods: int = 0, max_states: int = 400_000,
               deadline: float | None = None, max_stored: int | None = None,
               counts: np.ndarray | None = None, caps=None, mu=None, target: float | None = None,
               stop: Callable[[], bool] | None = None) -> CoreResult:
    """Exact DP over the core layers; proves the cap-only optimum (with at least
    ``min_methods`` distinct methods besides none, when asked; with per-option
    resource ``counts`` (options x k) used at most ``caps`` (k), when given).

    States are Pareto-optimal (cost, gain) pairs of the core layers processed so
    far — one frontier per set of methods used, when ``min_methods`` is set, one per
    vector of counts used, when ``counts`` is — pruned by the Lagrangian bound and, at
    checkpoints, by the LP bound of the layers still to come, against ``target`` (default:
    the incumbent's value): every allocation worth at least ``target`` survives, so an
    answer whose ``value`` reaches it is optimal. With counts, ``problem``'s gains are the
    real gains minus ``mu`` per unit of count (a Lagrangian relaxation of the caps: ``pre``
    was computed on them and its ``incumbent_value`` is the real incumbent's value minus
    ``mu . caps``), and the answer is the state of highest real gain. Stops (choice None)
    when the frontier exceeds ``max_states``, the states kept for backtracking exceed
    ``max_stored`` (memory) or the deadline passes, and with reason :data:`STOPPED` when ``stop``
    (asked once per layer) says so.
    """
    max_stored = MAX_STORED_STATES if max_stored is None else max_stored
    kept = pre.kept
    if not isinstance(kept, Kept):  # per-layer tuples (e.g. a caller's): as the mask fixing makes
        m = _Padded.of(problem, kept)
        kept = m.kept(m.valid)
    sizes = kept.counts  # read as arrays (the layers' tuples are never built)
    if not sizes.all():  # a layer with no option left: nothing reaches the target (it lies above the bound)
        return CoreResult(pre.incumbent, 1, value=pre.incumbent_value)
    choice = kept.first().tolist()
    fixed, free = np.flatnonzero(sizes == 1).tolist(), np.flatnonzero(sizes > 1).tolist()
    opt_idx = kept.arrays(free)
    cost, gain, price = problem.option_cost, problem.option_gain, pre.price
    # the frontiers' key: none, the set of methods used (bitmask, OR), or the capped counts used (mixed radix, +)
    key_inc, combine, base_key, room = None, None, 0, None
    if counts is not None:
        caps, mu = np.asarray(caps, dtype=np.int64), np.asarray(mu, dtype=float)
        limits = caps - (counts[[choice[l] for l in fixed]].sum(axis=0) if fixed else 0)
        if (limits < 0).any():  # no allocation better than the incumbent fits the caps with the fixed layers
            return CoreResult(pre.incumbent, 1, value=pre.incumbent_value)
        radix = limits + 1  # a state is extended only within the caps, so no digit carries
        if float(np.prod(radix.astype(float))) > 2.0**62:
            return CoreResult(None, 1, "the caps' count space does not fit the DP's keys")
        pos = np.concatenate(([1], np.cumprod(radix)[:-1])).astype(np.int64)

        def digits(key):
            return (key[:, None] // pos[None, :]) % radix[None, :]

        key_inc, combine = counts @ pos, np.add
        room = lambda idx: limits[None, :] - counts[idx]  # noqa: E731  (options x caps: the counts a state may hold)
        opt_idx = [idx[(counts[idx] <= limits).all(axis=1)] for idx in opt_idx]
        if any(len(idx) == 0 for idx in opt_idx):  # a core layer has no option left within the caps
            return CoreResult(pre.incumbent, 1, value=pre.incumbent_value)
    elif min_methods:
        none = METHOD_NAMES.index("none")
        key_inc = np.where(problem.option_method == none, 0, 1 << problem.option_method.astype(np.int64))
        combine = np.bitwise_or
        for l in fixed:
            base_key |= int(key_inc[choice[l]])
    reduced = [gain[idx] - price * cost[idx] for idx in opt_idx]
    order = _core_order(reduced)
    free, opt_idx, reduced = [free[i] for i in order], [opt_idx[i] for i in order], [reduced[i] for i in order]
    fixed_choice = [choice[l] for l in fixed]
    fixed_cost = int(cost[fixed_choice].sum())  # (``problem`` may be side.py's knapsack: arrays only)
    fixed_gain = sum(gain[fixed_choice].tolist())  # summed in layer order, as the objective is
    cap = problem.constraints.hi - fixed_cost
    goal = (pre.incumbent_value if target is None else target) - fixed_gain
    tol = REL_TOL * max(1.0, abs(pre.bound))

    # best reduced value of each free layer, and suffix sums for the Lagrangian bound
    best_reduced = np.array([float(r.max()) for r in reduced])
    suffix = np.concatenate((np.cumsum(best_reduced[::-1])[::-1], [0.0]))
    bound = _SuffixBound(problem, opt_idx) if len(free) > 1 else None
    every = max(1, -(-len(free) // LP_BOUND_CHECKS))

    s_cost, s_gain = np.zeros(1, dtype=np.int64), np.zeros(1)
    s_key = np.full(1, base_key, dtype=np.int64) if key_inc is not None else None
    s_digits = np.zeros((1, len(caps)), dtype=np.int64) if counts is not None else None
    parents: list[np.ndarray] = []
    picks: list[np.ndarray] = []
    peak = stored = 1
    for k, idx in enumerate(opt_idx):
        if deadline is not None and time.perf_counter() > deadline:
            return CoreResult(None, peak, "the time limit stopped the core search")
        if stop is not None and stop():
            return CoreResult(None, peak, STOPPED)
        threshold = goal - tol - price * cap - suffix[k + 1]  # on reduced values g - price c
        if key_inc is None:
            c, g, parent, pick = _extend(s_cost, s_gain, s_gain - price * s_cost, cost[idx], gain[idx], reduced[k], threshold, cap)
            key = None
        else:
            # options x states: each option's candidates come in the frontier's (key, cost) order, so the
            # Pareto filter's stable sort merges sorted runs
            c = cost[idx][:, None] + s_cost[None, :]
            g = gain[idx][:, None] + s_gain[None, :]
            ok = (c <= cap) & (g - price * c >= threshold)
            if room is not None:
                left = room(idx)
                for i in range(left.shape[1]):
                    ok &= left[:, i, None] >= s_digits[None, :, i]
            flat = np.flatnonzero(ok)
            pick, parent = np.divmod(flat, len(s_cost))
            key = combine(s_key[parent], key_inc[idx][pick])
            # Pareto filter (within each key): keep a state only if it beats every cheaper one
            c, g, key, parent, pick = pareto(c.ravel()[flat], g.ravel()[flat], key, parent, pick.astype(np.int16))
        if bound is not None and k + 1 < len(free) and ((k + 1) % every == 0 or k + LP_BOUND_TAIL >= len(free)) and len(c):
            ok = bound.keep(k, c, g, cap, goal - tol)
            c, g, parent, pick = c[ok], g[ok], parent[ok], pick[ok]
            key = None if key is None else key[ok]
        if len(c) == 0:  # nothing reaches the target: the incumbent is the best known
            return CoreResult(pre.incumbent, peak, value=pre.incumbent_value)
        peak = max(peak, len(c))
        if len(c) > max_states:
            return CoreResult(None, peak, f"the core's frontier grew past {max_states:,} states")
        stored += len(c)
        if stored > max_stored:
            return CoreResult(None, peak, f"the core search would keep more than {max_stored:,} states "
                              f"(about {5 * max_stored // 10**6:,} MB) for backtracking")
        s_cost, s_gain, s_key = c, g, key
        if room is not None:
            s_digits = digits(key)
        parents.append(parent.astype(np.int32))
        picks.append(pick)

    if counts is not None:
        real = s_gain + digits(s_key) @ mu  # the multipliers given back: real gains (less the fixed part)
        state = int(np.argmax(real))
        # in the frame of ``pre`` (real value less mu . caps): the fixed layers' real gains are their shifted gains
        # plus mu . (caps - limits)
        value = float(real[state]) + fixed_gain - float(limits @ mu)
    elif min_methods:
        used = np.array([bin(int(m)).count("1") for m in s_key])
        eligible = np.flatnonzero(used >= min_methods)
        if len(eligible) == 0:  # the incumbent met it, so only rounding can land here
            return CoreResult(pre.incumbent, peak, value=pre.incumbent_value)
        state = int(eligible[np.argmax(s_gain[eligible])])
        value = float(s_gain[state]) + fixed_gain
    else:
        state = int(np.argmax(s_gain))
        value = float(s_gain[state]) + fixed_gain
    for k in range(len(free) - 1, -1, -1):
        choice[free[k]] = int(opt_idx[k][picks[k][state]])
        state = int(parents[k][state])
    if value is not None and value < pre.incumbent_value:  # the target was above what exists: the incumbent is still the best known
        return CoreResult(pre.incumbent, peak, value=pre.incumbent_value)
    return CoreResult(tuple(choice), peak, value=value)


#: the reason of a core search its caller stopped (``stop``)
STOPPED = "stopped by its caller"

#: the first deepening target lies this fraction of the presolve's gap below the LP bound (the presolve's incumbent
#: can be 10x further from the bound than the optimum: 50,000 generated layers)
DEEPENING_START = 16
#: how much further the next target falls after a round that found nothing better than the incumbent (after one that
#: did, twice as far)
DEEPENING_MISS_STEP = 4


def solve_deepening(problem: Problem, pre: Presolve, *, deadline: float | None = None,
                    max_states: int = 400_000, counts: np.ndarray | None = None, caps=None,
                    mu=None, miss_step: float | None = None, start: float | None = None,
                    watch=None) -> tuple[CoreResult, Presolve]:
    """The core DP run against targets that start near the LP bound and fall to the incumbent.

    A DP against target T keeps every allocation worth at least T, so an answer reaching T is
    optimal; otherwise its answer, when better, becomes the incumbent (and fixes more options)
    and the target falls twice as far below the bound, else four times as far (:data:`DEEPENING_MISS_STEP`; where that
    round outgrows the DP's state or memory bound, it is run again twice as far instead). Each round first fixes options against
    its target (reduced-cost fixing), so early rounds run on small cores. With a poor incumbent this proves the
    optimum with far smaller frontiers than one DP against the incumbent; the last round is that DP.
    ``counts``, ``caps``, ``mu``: the counted DP of method caps (see :func:`solve_core`); targets and
    values are then in ``pre``'s frame, real value less ``mu . caps``. ``miss_step``: the factor after a
    fruitless round (default :data:`DEEPENING_MISS_STEP`; the benchmark compares it with 2). ``start``: the first
    target lies gap / ``start`` below the bound (default :data:`DEEPENING_START`). ``watch`` (see :mod:`race`): told
    ``watch.round()`` before each round and asked ``watch.stop()`` once per DP layer; when it says stop, the
    answer is ``CoreResult(None, ..., STOPPED)``.
    Returns the answer and the presolve it was proven against (options fixed against the last round's target)."""
    tol = REL_TOL * max(1.0, abs(pre.bound))
    delta = max(0.0, pre.bound - pre.incumbent_value) / (DEEPENING_START if start is None else start)  # an incumbent past the bound (rounding): one round
    miss_step = DEEPENING_MISS_STEP if miss_step is None else miss_step
    peak = 0
    skipped_from = None  # the step before a fourfold one: a round that outgrows the DP's bounds there steps twofold
    while True:
        target = pre.bound - delta
        last = target <= pre.incumbent_value + tol
        # reduced-cost fixing against the target: only options that can be in an allocation worth it stay
        trial = pre if last else replace(pre, kept=fix(problem, pre.options, pre.bound, pre.price, target, pre.padded))
        if watch is not None:
            watch.round()
        core = solve_core(problem, trial, deadline=deadline, max_states=max_states, target=None if last else target,
                          counts=counts, caps=caps, mu=mu, stop=None if watch is None else watch.stop)
        peak = max(peak, core.max_states)
        if core.reason == STOPPED:
            return core, trial
        timed_out = deadline is not None and time.perf_counter() > deadline
        if core.choice is None and skipped_from is not None and not timed_out:
            delta, skipped_from = 2 * skipped_from, None  # the far target's frontier outgrew the limits: a nearer one
            continue
        if core.choice is None or last or core.value >= target - tol:
            return CoreResult(core.choice, peak, core.reason, core.value), trial
        skipped_from = None
        if core.value > pre.incumbent_value:
            pre = with_incumbent(problem, pre, core.choice, options=pre.options,
                                 value=None if counts is None else core.value)
            delta *= 2
        else:  # nothing better than the incumbent came within reach: the optimum likely lies well below
            skipped_from = delta if miss_step > 2 else None
            delta *= miss_step


def methods_used(problem: Problem, choice) -> set[str]:
    return {problem.method_of(o) for o in choice} - {"none"}


def repair_min_methods(problem: Problem, choice, k: int):
    """Make ``choice`` use at least ``k`` methods under the cap by the cheapest single-layer switches;
    None if no such switch sequence is found (the caller then uses the ILP)."""
    choice = list(choice)
    cost, gain = problem.option_cost, problem.option_gain
    used = problem.cost(choice)
    cap = problem.constraints.hi
    while len(methods_used(problem, choice)) < k:
        present = methods_used(problem, choice)
        counts = {m: sum(1 for o in choice if problem.method_of(o) == m) for m in present}
        best = None
        for l in range(problem.n_layers):
            cur = choice[l]
            m_cur = problem.method_of(cur)
            if m_cur != "none" and counts[m_cur] == 1:
                continue  # switching it would lose a method
            for o in problem.options_of(l):
                if problem.method_of(o) in present or problem.method_of(o) == "none":
                    continue
                dc = int(cost[o] - cost[cur])
                if used + dc <= cap:
                    loss = float(gain[cur] - gain[o])
                    if best is None or loss < best[0]:
                        best = (loss, l, o, dc)
        if best is None:
            return None
        _, l, o, dc = best
        choice[l] = o
        used += dc
    return tuple(choice)
