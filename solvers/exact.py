"""The default solver: exact through the knapsack structure, CBC where the structure is broken.

``solve_auto`` runs :func:`mckp.presolve` and the core DP (its deepening raced on two cores where
:func:`race.can_race`). The answer is a proven
optimum of the whole problem when its cost meets the utilization floor. A
``min_methods`` constraint stays on the fast path: the DP then keeps one
frontier per set of methods used (at most 2^4), against an incumbent repaired
to use enough methods; so do method caps, tied blocks and pair terms (:mod:`side`:
layers joined by pairs are one choice among their Pareto points, priced with their
pairs). It hands the problem to CBC (and says so in the notes) for min-methods
combined with caps, tied blocks or pairs, pairs that cross tied blocks, a block of
pairs too large to enumerate, when the floor binds, or when the core search hits
its limits.
"""

from __future__ import annotations

import time

from layerlens_opt.allocation import Allocation, Status, choice_violations, make_allocation
from layerlens_opt.problem import Problem

from . import mckp
from .options import SolverOptions
from .race import solve_deepening_raced


def solve_auto(problem: Problem, options: SolverOptions) -> Allocation:
    c = problem.constraints
    t0 = time.perf_counter()
    deadline = None if options.time_limit is None else t0 + options.time_limit
    if c.method_caps or c.tie_blocks or problem.pairs:
        if c.min_methods:
            if problem.pairs:
                return _fallback(problem, options, t0, f"min-methods together with {len(problem.pairs)} pairwise interaction "
                                 "terms is not on the knapsack path, so CBC solved the full ILP with them")
            return _fallback(problem, options, t0, "min-methods together with method caps / tied blocks is not on the knapsack "
                             "path, so CBC solved the full ILP")
        return _side(problem, options, t0, deadline)
    pre = base = mckp.presolve(problem, deadline)
    core, pre, raced = solve_deepening_raced(problem, pre, deadline=deadline, threads=options.threads)
    if c.min_methods and core.choice is not None and len(mckp.methods_used(problem, core.choice)) < c.min_methods:
        start = mckp.repair_min_methods(problem, core.choice, c.min_methods)
        if start is None:
            core = mckp.CoreResult(None, core.max_states, f"no single-layer switches reach {c.min_methods} methods")
        else:
            pre = mckp.with_incumbent(problem, pre, start, per_method=True)
            core = mckp.solve_core(problem, pre, min_methods=c.min_methods, deadline=deadline)
    if core.choice is None:
        if pre.incumbent_value > base.incumbent_value:  # a deepening round found a better allocation: CBC starts from it
            base = mckp.with_incumbent(problem, base, pre.incumbent, options=base.options)
        return _fallback(problem, options, t0, f"{core.reason}; CBC solved the problem instead", base)
    floor = _below_floor(problem, core.choice, "the cap")
    if floor:
        return _fallback(problem, options, t0, floor, base)
    seconds = {"build": pre.seconds, "solve": time.perf_counter() - t0 - pre.seconds}
    notes = [
        f"knapsack presolve: LP bound {pre.bound:.6g}, shadow price {pre.price * 1000:.4g} gain per 1k params, "
        f"{pre.kept_options:,} of {problem.n_options:,} options kept, {pre.core_layers} layers in the core "
        f"(DP peak {core.max_states:,} states{'; two deepening schedules raced on 2 processes' if raced else ''})"
    ]
    return make_allocation(problem, core.choice, solver="auto", status=Status.OPTIMAL, seconds=seconds, notes=notes)


#: the share of --time-limit the caps/ties knapsack path may use before CBC takes over
SIDE_SHARE = 0.5


def _side(problem: Problem, options: SolverOptions, t0: float, deadline: float | None) -> Allocation:
    """Method caps / tied blocks / pair terms on the knapsack path (:mod:`side`); CBC where it cannot prove the answer."""
    from .side import solve_side

    # the knapsack path may take half of the time limit: where its DP cannot finish (two binding caps can
    # overflow the counted frontiers) CBC, started from its allocation, gets the other half
    side_deadline = None if deadline is None else t0 + SIDE_SHARE * (deadline - t0)
    result = solve_side(problem, side_deadline)
    if result.choice is None:
        alloc = _fallback(problem, options, t0, f"{_what(problem)}: {result.reason}; CBC solved the full ILP",
                          start=result.incumbent)
        return _kept_incumbent(problem, alloc, result, t0) or alloc
    floor = _below_floor(problem, result.choice, "the cap and the side constraints")
    if floor:
        return _fallback(problem, options, t0, floor)
    broken = choice_violations(problem, result.choice)
    if broken:  # a guard: the construction meets every constraint by design
        return _fallback(problem, options, t0, f"the knapsack path's answer breaks a constraint ({broken[0]}); CBC solved the full ILP")
    seconds = {"build": result.presolve_seconds, "solve": time.perf_counter() - t0 - result.presolve_seconds}
    return make_allocation(problem, result.choice, solver="auto", status=Status.OPTIMAL, seconds=seconds, notes=[result.note])


def _what(problem: Problem) -> str:
    c = problem.constraints
    return " / ".join(w for w, on in (("method caps", c.method_caps), ("tied blocks", c.tie_blocks),
                                       ("pair terms", problem.pairs)) if on)


def _below_floor(problem: Problem, choice, under: str) -> str | None:
    """Why CBC takes over when the best allocation under ``under`` misses the utilization floor; None if it meets it."""
    c, used = problem.constraints, problem.cost(choice)
    if used >= c.lo:
        return None
    return (f"the best allocation under {under} uses {used / c.budget:.1%} of the budget, below the "
            f"{c.min_utilization:.0%} floor, so the floor binds; CBC solved the full ILP")


def _unproven(problem: Problem, choice, bound: float, seconds: dict, note: str, stopped_by: str) -> Allocation:
    """A feasible allocation reported with an upper bound (and so its gap) where the search stopped before a proof."""
    return make_allocation(problem, choice, solver="auto", status=Status.FEASIBLE, bound=bound, seconds=seconds,
                           notes=[note], message=f"{stopped_by} before a proof; the gap is reported")


def _kept_incumbent(problem: Problem, alloc: Allocation, result, t0: float) -> Allocation | None:
    """The knapsack path's own allocation (it meets the caps and ties) with its Lagrangian bound, where its DP
    stopped and CBC then found nothing better (or nothing); None where CBC's answer stands."""
    start = result.incumbent
    if start is None or choice_violations(problem, start):  # e.g. below the utilization floor
        return None
    value = problem.value(start)
    if alloc.ok and alloc.objective is not None and alloc.objective >= value - 1e-9 * max(1.0, abs(value)):
        return None
    bound = result.bound if alloc.bound is None or not alloc.ok else min(result.bound, alloc.bound)
    why = alloc.message or alloc.status.value
    return _unproven(problem, start, max(bound, value), {"solve": time.perf_counter() - t0},
                     f"auto: {_what(problem)}: {result.reason}; CBC found no better allocation ({why}), so the "
                     "knapsack path's allocation that meets them is reported with its Lagrangian bound", "the search stopped")


#: seconds per LP variable that building the model through PuLP, writing its MPS file and starting CBC take
#: (measured here: build + MPS write about 14 us per variable at 96k variables; the rest leaves room for CBC's read)
BUILD_SECONDS_PER_VARIABLE = 5e-5


def _fallback(problem: Problem, options: SolverOptions, t0: float, why: str, pre: mckp.Presolve | None = None,
              start: tuple[int, ...] | None = None) -> Allocation:
    """CBC on the problem, within what is left of the time limit, with ``why`` in the notes.

    When too little of the time limit is left to build the model and start CBC, the presolve's
    incumbent is the answer (status feasible, with the LP bound and its gap) if it meets every
    constraint; the time limit is then honoured instead of overrun by the build."""
    from .ilp import solve_ilp

    deadline = None
    if options.time_limit is not None:
        deadline = t0 + options.time_limit
        left = deadline - time.perf_counter()
        n_vars = pre.kept_options if pre is not None and not problem.constraints.has_side_constraints else problem.n_options
        if pre is not None and left < 1.0 + BUILD_SECONDS_PER_VARIABLE * n_vars and not choice_violations(problem, pre.incumbent):
            note = (f"auto: {why.split(';')[0]}; the time limit left {max(left, 0.0):.1f} s, too little to build and run CBC "
                    f"on {n_vars:,} variables, so the best allocation found so far (the presolve's incumbent or a better one of "
                    "the core search's) is reported with its LP bound")
            return _unproven(problem, pre.incumbent, pre.bound, {"build": pre.seconds, "solve": time.perf_counter() - t0 - pre.seconds},
                             note, "the time limit stopped the search")
    alloc = solve_ilp(problem, options, "cbc", pre, deadline=deadline, start=start)
    return alloc.replace(solver=f"auto/{alloc.solver}", notes=alloc.notes + (f"auto: {why}",))
