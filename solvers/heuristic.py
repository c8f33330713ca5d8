"""The predecessor's threshold heuristic, reproduced honestly (with its two bugs fixed).

1. **Method by thresholds.** The methods offered, ordered from cheapest/least
   expressive to richest (none, ia3, prefix, adapter, lora), split the utility
   range at its quantiles: the lowest-utility layers get "none", the highest
   LoRA. (The predecessor put its thresholds outside the utility range and ran
   the mapping the wrong way; quantiles sit inside the range by construction.)
   A layer that does not accept its method takes the next cheaper one it
   accepts, else the next richer.
2. **Budget-aware rank.** Each adapted layer's share of the target
   (the middle of the utilization window) is proportional to its utility; its
   rank is the largest candidate whose cost fits the share.
3. **Scale and trim.** Shares are scaled until the total nears the target;
   then ranks are trimmed greedily from the lowest-utility layers (down to
   none) while the total is above the cap, and grown from the highest-utility
   layers while it is below the floor.

Where it breaks constraints: it never searches combinations, so when rank
steps are coarse relative to the window (few, wide layers), when every
adapted layer is already at its largest rank below the floor, or when side
constraints (method caps, tied blocks, min methods) are set — it ignores those —
its allocation can leave the window or break them. The allocation then says so
(status ``infeasible`` with the violations listed): it is a baseline and a warm
start, not a guarantee.
"""

from __future__ import annotations

import time

import numpy as np

from layerlens_opt.allocation import Allocation, Status, choice_violations, make_allocation
from layerlens_opt.methods import METHOD_NAMES, param_cost
from layerlens_opt.problem import Problem


def heuristic_choice(problem: Problem) -> tuple[int, ...]:
    """One option per layer chosen by the threshold heuristic."""
    c = problem.constraints
    n = problem.n_layers
    utility = np.array([info.utility for info in problem.layers])
    offered = [m for m in METHOD_NAMES if any(m in info.methods for info in problem.layers)]
    if len(offered) > 1:
        thresholds = np.quantile(utility, [i / len(offered) for i in range(1, len(offered))])
        level = np.searchsorted(thresholds, utility, side="right")
    else:
        level = np.zeros(n, dtype=int)

    # per layer: method -> [(rank, option)] ascending
    table: list[dict[str, list[tuple[int, int]]]] = []
    for l in range(n):
        by_method: dict[str, list[tuple[int, int]]] = {}
        for o in problem.options_of(l):
            by_method.setdefault(problem.method_of(o), []).append((int(problem.option_rank[o]), o))
        for entries in by_method.values():
            entries.sort()
        table.append(by_method)

    methods = []
    for l in range(n):
        want = int(level[l])
        order = list(range(want, -1, -1)) + list(range(want + 1, len(offered)))
        methods.append(next(offered[i] for i in order if offered[i] in table[l]))

    target = 0.5 * (c.lo + c.hi)
    adapted = [l for l in range(n) if methods[l] != "none"]
    weight = sum(utility[l] for l in adapted) or 1.0
    pos = [0] * n  # index into table[l][methods[l]]

    def total() -> int:
        return sum(int(problem.option_cost[table[l][methods[l]][pos[l]][1]]) for l in range(n))

    def ranks_for(scale: float) -> None:
        for l in adapted:
            info = problem.layers[l]
            share = scale * target * utility[l] / weight
            entries = table[l][methods[l]]
            fit = [i for i, (r, _) in enumerate(entries) if param_cost(methods[l], r, info.in_features, info.out_features) <= share]
            pos[l] = fit[-1] if fit else 0

    scale = 1.0
    for _ in range(20):
        ranks_for(scale)
        t = total()
        if t == 0 or c.lo <= t <= c.hi:
            break
        scale *= target / t

    # trim from the lowest utility while above the cap (a layer at its smallest rank drops to none)
    by_utility = sorted(adapted, key=lambda l: utility[l])
    t = total()
    changed = True
    while t > c.hi and changed:
        changed = False
        for l in by_utility:
            if t <= c.hi:
                break
            entries = table[l][methods[l]]
            if pos[l] > 0:
                t -= int(problem.option_cost[entries[pos[l]][1]] - problem.option_cost[entries[pos[l] - 1][1]])
                pos[l] -= 1
                changed = True
            elif methods[l] != "none" and "none" in table[l]:
                t -= int(problem.option_cost[entries[0][1]])
                methods[l], pos[l] = "none", 0
                changed = True
    # grow from the highest utility while below the floor
    changed = True
    while t < c.lo and changed:
        changed = False
        for l in reversed(by_utility):
            if t >= c.lo:
                break
            entries = table[l][methods[l]]
            if pos[l] + 1 < len(entries):
                step = int(problem.option_cost[entries[pos[l] + 1][1]] - problem.option_cost[entries[pos[l]][1]])
                if t + step <= c.hi:
                    pos[l] += 1
                    t += step
                    changed = True
    return tuple(table[l][methods[l]][pos[l]][1] for l in range(n))


def solve_heuristic(problem: Problem, options=None) -> Allocation:
    """Run the heuristic; status is feasible, or infeasible with the constraints it broke."""
    t0 = time.perf_counter()
    choice = heuristic_choice(problem)
    seconds = {"build": 0.0, "solve": time.perf_counter() - t0}
    broken = choice_violations(problem, choice)
    return make_allocation(
        problem, choice, solver="heuristic", status=Status.INFEASIBLE if broken else Status.FEASIBLE, seconds=seconds,
        message=("the heuristic's allocation breaks: " + "; ".join(broken)) if broken else "",
    )
