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
3. **Incumbent.** The LP's integer part, then segments and single moves that
   still fit.
4. **Reduced-cost fixing.** Any allocation containing option o has objective at
   most ``bound + rc(o)`` with ``rc(o) = (g_o - price c_o) - max_o' (g_o' - price c_o')``;
   options with ``bound + rc(o) < incumbent - tol`` cannot be in a better
   allocation and are removed. Usually only a few dozen layers keep two or
   more options: the core.
5. **Core DP.** An exact dynamic program over the core's layers keeping the
   Pareto frontier of (cost, gain) partial states, each pruned with the same
   Lagrangian bound. Its best state is a proven optimum of the cap-only
   problem; if its cost meets the floor it is optimal for the full problem.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np

from layerlens_opt.methods import METHOD_NAMES
from layerlens_opt.problem import Problem

#: relative tolerance below which two objectives count as equal in pruning
REL_TOL = 1e-12


@dataclass(frozen=True)
class Presolve:
    """What the structure tells before any search."""

    options: tuple[tuple[int, ...], ...]  # per layer: undominated options, cost ascending
    bound: float  # LP bound of the cap-only problem
    price: float  # shadow price of the budget cap (gain per parameter)
    lp_choice: tuple[int, ...]  # integer part of the LP solution
    incumbent: tuple[int, ...]  # a feasible allocation for the cap (floor not checked)
    incumbent_value: float
    kept: tuple[tuple[int, ...], ...]  # per layer: options surviving reduced-cost fixing
    seconds: float

    @property
    def core_layers(self) -> int:
        return sum(1 for k in self.kept if len(k) > 1)

    @property
    def kept_options(self) -> int:
        return sum(len(k) for k in self.kept)


def undominated(problem: Problem, per_method: bool = False, key=None) -> tuple[tuple[int, ...], ...]:
    """Per layer, the options not dominated by a cheaper, at-least-as-good one (cost ascending).

    ``per_method``: only an option of the same method dominates — what a
    min-methods constraint needs, since a worse option of another method may
    be the one that adds a method. ``key`` (one integer per option, e.g. the
    capped-method counts an option uses): only an option of the same key or of
    key 0 (using no capped resource) dominates.
    """
    cost = problem.option_cost.tolist()
    gain = problem.option_gain.tolist()
    keys = problem.option_method.tolist() if per_method else (key.tolist() if key is not None else None)
    starts = problem.layer_start.tolist()
    free = key is not None and not per_method
    out = []
    for l in range(problem.n_layers):
        idx = sorted(range(starts[l], starts[l + 1]), key=lambda o: (cost[o], -gain[o]))
        kept = []
        best: dict[int, float] = {}
        for o in idx:
            k = keys[o] if keys is not None else 0
            floor = max(best.get(k, -float("inf")), best.get(0, -float("inf"))) if free else best.get(k, -float("inf"))
            if gain[o] > floor:
                kept.append(o)
                best[k] = max(gain[o], best.get(k, -float("inf")))
        out.append(tuple(kept))
    return tuple(out)


def _hull(opts: tuple[int, ...], cost: list, gain: list) -> list[int]:
    """Upper concave hull of a layer's undominated options, starting at the cheapest."""
    hull: list[int] = []
    for o in opts:
        while len(hull) >= 2:
            a, b = hull[-2], hull[-1]
            # drop b if it lies on or below the segment a -> o
            if (gain[b] - gain[a]) * (cost[o] - cost[a]) <= (gain[o] - gain[a]) * (cost[b] - cost[a]):
                hull.pop()
            else:
                break
        hull.append(o)
    return hull


def lagrangian_bound(problem: Problem, options, price: float, cap: int) -> float:
    """``price * cap + sum_l max_o (g - price c)``: an upper bound for any price >= 0."""
    cost = problem.option_cost
    gain = problem.option_gain
    total = price * cap
    for opts in options:
        idx = np.fromiter(opts, dtype=np.int64, count=len(opts))
        total += float((gain[idx] - price * cost[idx]).max())
    return total


def presolve(problem: Problem, deadline: float | None = None) -> Presolve:
    """Dominance, LP bound, incumbent and reduced-cost fixing for the cap-only problem.

    Past ``deadline`` (``time.perf_counter()`` seconds) the incumbent is not improved by single moves."""
    t0 = time.perf_counter()
    cap = problem.constraints.hi
    cost = problem.option_cost.tolist()
    gain = problem.option_gain.tolist()
    options = undominated(problem)

    choice = [opts[0] for opts in options]
    used = sum(cost[o] for o in choice)
    segments = []
    for l, opts in enumerate(options):
        hull = _hull(opts, cost, gain)
        for k in range(1, len(hull)):
            dc = cost[hull[k]] - cost[hull[k - 1]]
            dg = gain[hull[k]] - gain[hull[k - 1]]
            segments.append((-dg / dc, l, k, dc, hull[k], hull[k - 1]))
    segments.sort()
    price = 0.0
    rest = []
    for i, (neg_slope, l, k, dc, to, frm) in enumerate(segments):
        if used + dc <= cap:
            choice[l] = to
            used += dc
        else:
            price = -neg_slope
            rest = segments[i:]
            break
    lp_choice = tuple(choice)
    bound = lagrangian_bound(problem, options, price, cap)

    # incumbent: later segments that still fit, then the best single moves
    for neg_slope, l, k, dc, to, frm in rest:
        if choice[l] == frm and used + dc <= cap:
            choice[l] = to
            used += dc
    for _ in range(8):
        if deadline is not None and time.perf_counter() > deadline:
            break
        slack = cap - used
        best_gain, best_move = 0.0, None
        for l, opts in enumerate(options):
            cur = choice[l]
            for o in opts:
                dc = cost[o] - cost[cur]
                dg = gain[o] - gain[cur]
                if dc <= slack and dg > best_gain:
                    best_gain, best_move = dg, (l, o, dc)
        if best_move is None:
            break
        l, o, dc = best_move
        choice[l] = o
        used += dc
    incumbent = tuple(choice)
    value = float(sum(gain[o] for o in incumbent))
    return Presolve(
        options=options,
        bound=bound,
        price=price,
        lp_choice=lp_choice,
        incumbent=incumbent,
        incumbent_value=value,
        kept=fix(problem, options, bound, price, value),
        seconds=time.perf_counter() - t0,
    )


def fix(problem: Problem, options, bound: float, price: float, value: float) -> tuple[tuple[int, ...], ...]:
    """Reduced-cost fixing: per layer, the options that can still be in an allocation worth >= ``value``."""
    cost = problem.option_cost
    gain = problem.option_gain
    tol = REL_TOL * max(1.0, abs(bound))
    kept = []
    for opts in options:
        idx = np.fromiter(opts, dtype=np.int64, count=len(opts))
        reduced = gain[idx] - price * cost[idx]
        keep = bound + (reduced - reduced.max()) >= value - tol
        kept.append(tuple(int(o) for o in idx[keep]))
    return tuple(kept)


def with_incumbent(problem: Problem, pre: Presolve, choice, per_method: bool = False, key=None,
                   value: float | None = None, options=None) -> Presolve:
    """The presolve re-fixed against another incumbent (e.g. one that meets side constraints).

    The LP bound and price of ``pre`` stay valid (a relaxation); with
    ``per_method`` the options are re-pruned by same-method dominance only, with ``key``
    by same-key dominance (see :func:`undominated`), unless ``options`` gives them. ``value`` is
    the target the fixing and the DP prune against (default: the choice's gain in ``problem``).
    """
    from dataclasses import replace

    if options is None:
        options = undominated(problem, per_method=per_method, key=key) if (per_method or key is not None) else pre.options
    if value is None:
        value = float(sum(float(problem.option_gain[o]) for o in choice))
    return replace(pre, options=options, incumbent=tuple(choice), incumbent_value=value,
                   kept=fix(problem, options, pre.bound, pre.price, value))


def pareto(c: np.ndarray, g: np.ndarray, key: np.ndarray | None, *rest: np.ndarray):
    """The (cost, gain) states no cheaper-or-equal state of the same ``key`` beats (``key`` None: one
    frontier), sorted by key then cost; ``rest`` are arrays carried along. Returns (c, g, key, *rest)."""
    order = np.lexsort((-g, c)) if key is None else np.lexsort((-g, c, key))
    c, g = c[order], g[order]
    key = None if key is None else key[order]
    keep = np.ones(len(g), dtype=bool)
    if key is None:
        run = np.maximum.accumulate(g)
        keep[1:] = g[1:] > run[:-1]
    else:
        starts = np.flatnonzero(np.r_[True, key[1:] != key[:-1]])
        for a, b in zip(starts, np.r_[starts[1:], len(g)]):
            run = np.maximum.accumulate(g[a:b])
            keep[a + 1 : b] = g[a + 1 : b] > run[:-1]
    return (c[keep], g[keep], None if key is None else key[keep], *(r[order][keep] for r in rest))


@dataclass(frozen=True)
class CoreResult:
    choice: tuple[int, ...] | None  # None: the state limit or the time limit stopped the DP
    max_states: int
    reason: str = ""


#: states the core DP keeps for backtracking, summed over its layers (8 bytes each: about 200 MB)
MAX_STORED_STATES = 25_000_000


def solve_core(problem: Problem, pre: Presolve, *, min_methods: int = 0, max_states: int = 400_000,
               deadline: float | None = None, max_stored: int | None = None,
               counts: np.ndarray | None = None, caps=None, mu=None) -> CoreResult:
    """Exact DP over the core layers; proves the cap-only optimum (with at least
    ``min_methods`` distinct methods besides none, when asked; with per-option
    resource ``counts`` (options x k) used at most ``caps`` (k), when given).

    States are Pareto-optimal (cost, gain) pairs of the core layers processed so
    far — one frontier per set of methods used, when ``min_methods`` is set, one per
    vector of counts used, when ``counts`` is — pruned by the Lagrangian bound against
    the incumbent. With counts, ``problem``'s gains are the real gains minus ``mu`` per
    unit of count (a Lagrangian relaxation of the caps: ``pre`` was computed on them and
    its ``incumbent_value`` is the real incumbent's value minus ``mu . caps``), and the
    answer is the state of highest real gain. Stops (choice None) when the frontier
    exceeds ``max_states``, the states kept for backtracking exceed ``max_stored``
    (memory) or the deadline passes.
    """
    max_stored = MAX_STORED_STATES if max_stored is None else max_stored
    cost, gain, price = problem.option_cost, problem.option_gain, pre.price
    choice = [k[0] for k in pre.kept]
    fixed = [l for l, k in enumerate(pre.kept) if len(k) == 1]
    free = [l for l, k in enumerate(pre.kept) if len(k) > 1]
    opt_idx = [np.array(pre.kept[l], dtype=np.int64) for l in free]
    # the frontiers' key: none, the set of methods used (bitmask, OR), or the capped counts used (mixed radix, +)
    key_inc, combine, base_key, valid = None, None, 0, None
    if counts is not None:
        caps, mu = np.asarray(caps, dtype=np.int64), np.asarray(mu, dtype=float)
        limits = caps - (counts[[choice[l] for l in fixed]].sum(axis=0) if fixed else 0)
        if (limits < 0).any():  # no allocation better than the incumbent fits the caps with the fixed layers
            return CoreResult(pre.incumbent, 1)
        radix = 2 * (limits + 1)  # a digit holds a sum of two values <= limit: no carry
        if float(np.prod(radix.astype(float))) > 2.0**62:
            return CoreResult(None, 1, "the caps' count space does not fit the DP's keys")
        pos = np.concatenate(([1], np.cumprod(radix)[:-1])).astype(np.int64)

        def digits(key):
            return (key[:, None] // pos[None, :]) % radix[None, :]

        key_inc, combine = counts @ pos, np.add
        valid = lambda key: (digits(key) <= limits).all(axis=1)  # noqa: E731
        opt_idx = [idx[(counts[idx] <= limits).all(axis=1)] for idx in opt_idx]
    elif min_methods:
        none = METHOD_NAMES.index("none")
        key_inc = np.where(problem.option_method == none, 0, 1 << problem.option_method.astype(np.int64))
        combine = np.bitwise_or
        for l in fixed:
            base_key |= int(key_inc[choice[l]])
    fixed_cost = sum(int(cost[choice[l]]) for l in fixed)
    fixed_gain = sum(float(gain[choice[l]]) for l in fixed)
    cap = problem.constraints.hi - fixed_cost
    target = pre.incumbent_value - fixed_gain
    tol = REL_TOL * max(1.0, abs(pre.bound))

    # best reduced value of each free layer, and suffix sums for the bound
    best_reduced = np.array([float((gain[i] - price * cost[i]).max()) for i in opt_idx])
    suffix = np.concatenate((np.cumsum(best_reduced[::-1])[::-1], [0.0]))

    s_cost, s_gain = np.zeros(1, dtype=np.int64), np.zeros(1)
    s_key = np.full(1, base_key, dtype=np.int64) if key_inc is not None else None
    parents: list[np.ndarray] = []
    picks: list[np.ndarray] = []
    peak = stored = 1
    for k, idx in enumerate(opt_idx):
        if deadline is not None and time.perf_counter() > deadline:
            return CoreResult(None, peak, "the time limit stopped the core search")
        n_opt = len(idx)
        c = (s_cost[:, None] + cost[idx][None, :]).ravel()
        g = (s_gain[:, None] + gain[idx][None, :]).ravel()
        parent = np.repeat(np.arange(len(s_cost)), n_opt)
        pick = np.tile(np.arange(n_opt), len(s_cost))
        key = combine(s_key[:, None], key_inc[idx][None, :]).ravel() if key_inc is not None else None
        ok = (c <= cap) & (g + price * (cap - c) + suffix[k + 1] >= target - tol)
        if valid is not None:
            ok &= valid(key)
        # Pareto filter (within each key): keep a state only if it beats every cheaper one
        c, g, key, parent, pick = pareto(c[ok], g[ok], key[ok] if key is not None else None, parent[ok], pick[ok])
        if len(c) == 0:  # only possible through rounding; the incumbent is optimal
            return CoreResult(pre.incumbent, peak)
        peak = max(peak, len(c))
        if len(c) > max_states:
            return CoreResult(None, peak, f"the core's frontier grew past {max_states:,} states")
        stored += len(c)
        if stored > max_stored:
            return CoreResult(None, peak, f"the core search would keep more than {max_stored:,} states "
                              f"(about {8 * max_stored // 10**6:,} MB) for backtracking")
        s_cost, s_gain, s_key = c, g, key
        parents.append(parent.astype(np.int32))
        picks.append(pick.astype(np.int32))

    if counts is not None:
        state = int(np.argmax(s_gain + digits(s_key) @ mu))  # the multipliers given back: real gains (less the fixed part)
    elif min_methods:
        used = np.array([bin(int(m)).count("1") for m in s_key])
        eligible = np.flatnonzero(used >= min_methods)
        if len(eligible) == 0:  # the incumbent met it, so only rounding can land here
            return CoreResult(pre.incumbent, peak)
        state = int(eligible[np.argmax(s_gain[eligible])])
    else:
        state = int(np.argmax(s_gain))
    for k in range(len(free) - 1, -1, -1):
        choice[free[k]] = int(opt_idx[k][picks[k][state]])
        state = int(parents[k][state])
    return CoreResult(tuple(choice), peak)


def methods_used(problem: Problem, choice) -> set[str]:
    return {problem.method_of(o) for o in choice} - {"none"}


def repair_min_methods(problem: Problem, choice, k: int):
    """Make ``choice`` use at least ``k`` methods under the cap by the cheapest single-layer switches;
    None if no such switch sequence is found (the caller then uses the ILP)."""
    choice = list(choice)
    cost, gain = problem.option_cost, problem.option_gain
    used = sum(int(cost[o]) for o in choice)
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
