"""Solvers: each takes a :class:`~layerlens_opt.problem.Problem` and returns a new
:class:`~layerlens_opt.allocation.Allocation`; none writes into its input.

The registry maps a name to ``module:function`` and imports lazily, so asking
for the heuristic never loads PuLP.
"""

from __future__ import annotations

from importlib import import_module
from typing import Callable

import math

import numpy as np

from layerlens_opt.allocation import Allocation, Status, make_allocation
from layerlens_opt.errors import LayerlensError
from layerlens_opt.methods import METHOD_NAMES
from layerlens_opt.problem import Problem

from .options import SolverOptions

SOLVERS: dict[str, str] = {
    "auto": "layerlens_opt.solvers.exact:solve_auto",
    "cbc": "layerlens_opt.solvers.ilp:solve_cbc",
    "highs": "layerlens_opt.solvers.ilp:solve_highs",
    "heuristic": "layerlens_opt.solvers.heuristic:solve_heuristic",
}


def get_solver(name: str) -> Callable[[Problem, SolverOptions], Allocation]:
    """The solver function registered under ``name``; an unknown name lists the valid ones."""
    if name not in SOLVERS:
        raise LayerlensError(f"unknown solver {name!r}; valid solvers are {', '.join(SOLVERS)}")
    module, func = SOLVERS[name].split(":")
    return getattr(import_module(module), func)


def precheck(problem: Problem) -> str | None:
    """A reason the problem is infeasible that needs no search, or None."""
    reason = problem.window_problem()
    if reason:
        return reason
    c = problem.constraints
    # the methods some layer offers are those of its options (one bincount, not a set per layer)
    present = np.flatnonzero(np.bincount(problem.option_method, minlength=len(METHOD_NAMES))).tolist()
    offered = sorted({METHOD_NAMES[m] for m in present} - {"none"})
    if c.min_methods > len(offered):
        return (
            f"--min-methods {c.min_methods} asks for more distinct methods than are offered "
            f"({len(offered)}: {', '.join(offered) or 'none'}); lower it or add methods"
        )
    return unreachable_window(problem)


#: the reachable-totals check runs where its bit operations stay below this (about a second)
REACH_WORK = 500_000_000


def unreachable_window(problem: Problem) -> str | None:
    """Why no combination of one option per layer totals inside the window (an exact subset-sum over the options'
    costs, as bitsets, in units of their gcd), or None -- also where the check would cost more than about a second.
    A narrow window (--min-utilization 0.9 --max-utilization 0.9) is proven infeasible here, not by a search."""
    c = problem.constraints
    cost, starts = problem.option_cost, problem.layer_start
    if c.lo <= 0 or not len(cost):
        return None
    g = math.gcd(*{int(x) for x in np.unique(cost)} | {0}) or 1
    lo, hi = -(-c.lo // g), c.hi // g  # totals are multiples of g
    distinct = [np.unique(cost[starts[l]:starts[l + 1]] // g) for l in range(problem.n_layers)]
    if sum(len(d) for d in distinct) * (hi // 64 + 1) > REACH_WORK:
        return _unreachable(problem, g, None) if lo > hi else None
    mask = (1 << (hi + 1)) - 1
    # from which layer on every layer can stay at cost 0: a total in the window there is a feasible allocation
    free_from = problem.n_layers
    while free_from > 0 and distinct[free_from - 1][0] == 0:
        free_from -= 1
    reach = 1  # bit t: some choice of the layers so far totals t * g
    for l, d in enumerate(distinct):
        step = 0
        for x in d.tolist():
            step |= reach << x
        reach = step & mask
        if l + 1 >= free_from and reach >> lo:
            return None
    if reach >> lo:
        return None
    below = reach.bit_length() - 1
    return _unreachable(problem, g, below * g)


def _unreachable(problem: Problem, g: int, below: int | None) -> str:
    c = problem.constraints
    nearest = (f"; the nearest total under the cap is {below:,} ({below / c.budget:.2%} of the budget): "
               f"--min-utilization {math.floor(below / c.budget * 1e4) / 1e4:g} reaches it" if below else "")
    return (f"no choice of one option per layer totals between {c.lo:,} and {c.hi:,} parameters "
            f"({c.min_utilization:.0%}-{c.max_utilization:.0%} of {c.budget:,}; every total is a multiple of {g:,})"
            f"{nearest}; widen the window or change the budget")


def solve(problem: Problem, solver: str = "auto", options: SolverOptions | None = None) -> Allocation:
    """Solve ``problem`` with the named solver; infeasibility found up front is explained without a search."""
    fn = get_solver(solver)
    reason = precheck(problem)
    if reason:
        return make_allocation(problem, None, solver=solver, status=Status.INFEASIBLE, message=reason)
    return fn(problem, options or SolverOptions())


__all__ = ["SOLVERS", "SolverOptions", "get_solver", "precheck", "solve"]
