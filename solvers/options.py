"""Options every solver accepts."""

from __future__ import annotations

from dataclasses import dataclass

from layerlens_opt.errors import LayerlensError


@dataclass(frozen=True)
class SolverOptions:
    """``time_limit`` in seconds (None: none), ``threads`` for CBC/HiGHS (and ``auto``: 1 keeps its core search in
    one process, see :mod:`race`), ``warm_start``
    passes a feasible starting allocation to CBC, ``presolve`` reduces the model by
    the knapsack structure before an LP solver sees it."""

    time_limit: float | None = None
    threads: int | None = None
    warm_start: bool = True
    presolve: bool = True

    def __post_init__(self) -> None:
        if self.time_limit is not None and self.time_limit <= 0:
            raise LayerlensError(f"time limit must be positive seconds, got {self.time_limit}")
        if self.threads is not None and self.threads < 1:
            raise LayerlensError(f"threads must be >= 1, got {self.threads}")
