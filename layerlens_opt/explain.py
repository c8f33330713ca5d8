"""Why did this layer get this? The budget's shadow price and each layer's marginal gains.

The LP relaxation is solved with cvxpy — an independent cross-check of the
solver's own bound and shadow price (from the hull greedy of
:mod:`layerlens_opt.solvers.mckp`). cvxpy is optional and slow to import, so
it is loaded here only.
"""

from __future__ import annotations

import numpy as np

from .errors import LayerlensError
from .problem import Problem
from .report import table


def lp_relaxation(problem: Problem) -> tuple[float, float, float]:
    """(LP bound, shadow price of the cap, shadow price of the floor) from cvxpy."""
    try:
        import cvxpy as cp
    except ImportError:
        raise LayerlensError("explain needs cvxpy: pip install 'layerlens-opt[explain]'") from None
    c = problem.constraints
    n = problem.n_options
    x = cp.Variable(n)
    rows = np.repeat(np.arange(problem.n_layers), np.diff(problem.layer_start))
    import scipy.sparse as sp

    A = sp.csr_matrix((np.ones(n), (rows, np.arange(n))), shape=(problem.n_layers, n))
    cost = problem.option_cost.astype(float)
    cap = cost @ x <= c.hi
    floor = cost @ x >= c.lo
    prob = cp.Problem(cp.Maximize(problem.option_gain @ x), [A @ x == 1, x >= 0, x <= 1, cap, floor])
    prob.solve()
    if prob.status not in ("optimal", "optimal_inaccurate"):
        raise LayerlensError(f"the LP relaxation is {prob.status}; the window cannot be met")
    return float(prob.value), float(cap.dual_value), float(floor.dual_value)


def explain(problem: Problem, layer_name: str | None = None) -> str:
    from .solvers import solve
    from .solvers import mckp

    alloc = solve(problem, "auto")
    if not alloc.ok:
        raise LayerlensError(f"nothing to explain: {alloc.status.value} — {alloc.message}")
    bound, price, floor_price = lp_relaxation(problem)
    pre = mckp.presolve(problem)
    agree = abs(bound - pre.bound) <= 1e-6 * max(1.0, abs(bound))
    lines = [
        f"LP relaxation (cvxpy): bound {bound:.6f}; the budget's shadow price {price * 1000:.5f} gain per 1,000 parameters"
        + (f"; the floor's {floor_price * 1000:.5f}" if floor_price > 1e-12 else ""),
        f"solver's own LP (hull greedy): bound {pre.bound:.6f}, price {pre.price * 1000:.5f} per 1,000 — "
        + ("agrees" if agree else "DISAGREES (the floor may bind; see the notes)"),
        f"integer optimum {alloc.objective:.6f} ({alloc.total_params:,} params, gap to the LP bound {(bound - alloc.objective) / max(abs(bound), 1e-12):.1e})",
        "",
        *([f"note: the {len(problem.pairs)} pairwise interaction terms are not in this LP; prices and steps below are for the "
           "separable gains (the integer optimum above includes the pairs)", ""] if problem.pairs else []),
        "A layer moves up a rank when that step's gain per 1,000 parameters beats the price, and keeps a rank",
        "when giving it up would lose more than the price returns. Steps are within the layer's method.",
        "",
    ]
    rows = []
    for l, choice in enumerate(alloc.choice):
        info = problem.layers[l]
        if layer_name and info.name != layer_name:
            continue
        method = problem.method_of(choice)
        same = sorted((int(problem.option_cost[o]), o) for o in problem.options_of(l)
                      if problem.method_of(o) == method or (method == "none"))
        pos = [o for _, o in same].index(choice)
        up = same[pos + 1][1] if pos + 1 < len(same) else None
        down = same[pos - 1][1] if pos > 0 else None

        def ratio(a, b):
            dc = int(problem.option_cost[a] - problem.option_cost[b])
            return 1000 * float(problem.option_gain[a] - problem.option_gain[b]) / dc if dc else None

        r_up = ratio(up, choice) if up is not None else None
        r_down = ratio(choice, down) if down is not None else None
        if r_up is not None and r_up > price * 1000:
            why = "next step beats the price but does not fit the budget with the rest"
        elif r_down is not None and r_down < price * 1000:
            why = "kept for the floor/integrality (its last step is below the price)"
        elif down is None:
            why = "at the bottom: no step up pays the price"
        else:
            why = "at the price: up is not worth it, down would lose more"
        rows.append((info.name, f"{method} r{int(problem.option_rank[choice])}" if method != "none" else "none",
                     round(info.utility, 4),
                     "-" if r_up is None else f"{r_up:.5f}", "-" if r_down is None else f"{r_down:.5f}", why))
    if layer_name and not rows:
        raise LayerlensError(f"no layer named {layer_name!r} in the manifest")
    lines.append(table(("layer", "choice", "utility", "up /1k", "down /1k", "why"), rows, "llrrrl"))
    return "\n".join(lines)
