"""Objective against budget: the exact solver and the heuristic over a sweep of budgets (``frontier``)."""

from __future__ import annotations

from typing import Callable, Iterable

from .methods import DEFAULT_WINDOW
from .problem import Constraints, ModelOptions, build_problem


def frontier_points(manifest, budgets: Iterable[int], options: ModelOptions | None = None, window=DEFAULT_WINDOW,
                    progress: Callable[[list[int]], Iterable[int]] | None = None, time_limit: float | None = None) -> list[dict]:
    """One point per budget: the exact (``auto``) and heuristic objectives, statuses and parameters.

    ``progress`` wraps the list of budgets for display (e.g. a progress bar); ``time_limit``: seconds for each budget's
    exact solve."""
    from .solvers import SolverOptions, solve

    budgets = list(budgets)
    options = options or ModelOptions()
    points = []
    for b in progress(budgets) if progress else budgets:
        problem = build_problem(manifest, Constraints(budget=b, min_utilization=window[0], max_utilization=window[1]), options)
        exact, heur = solve(problem, "auto", SolverOptions(time_limit=time_limit)), solve(problem, "heuristic")
        points.append({"budget": b, "exact": exact.objective, "exact_status": exact.status.value,
                       "exact_params": exact.total_params, "heuristic": heur.objective,
                       "heuristic_status": heur.status.value, "heuristic_params": heur.total_params})
    return points
