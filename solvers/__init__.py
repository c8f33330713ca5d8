"""Solvers: each takes a :class:`~layerlens_opt.problem.Problem` and returns a new
:class:`~layerlens_opt.allocation.Allocation`; none writes into its input.

The registry maps a name to ``module:function`` and imports lazily, so asking
for the heuristic never loads PuLP.
"""

from __future__ import annotations

from importlib import import_module
from typing import Callable

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
    return None


def solve(problem: Problem, solver: str = "auto", options: SolverOptions | None = None) -> Allocation:
    """Solve ``problem`` with the named solver; infeasibility found up front is explained without a search."""
    fn = get_solver(solver)
    reason = precheck(problem)
    if reason:
        return make_allocation(problem, None, solver=solver, status=Status.INFEASIBLE, message=reason)
    return fn(problem, options or SolverOptions())


__all__ = ["SOLVERS", "SolverOptions", "get_solver", "precheck", "solve"]
