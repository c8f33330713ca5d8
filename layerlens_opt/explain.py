"""Why did this layer get this? The budget's shadow price and each layer's marginal gains.

The prices come from the exact LP relaxation of the budget window (:func:`layerlens_opt.solvers.mckp.window_lp`:
the hull greedy, with the duality certificate that its fractional solution's objective equals its Lagrangian bound).
cvxpy solves the same LP from scratch as an independent cross-check where that is quick (up to
:data:`CROSS_CHECK_MAX_OPTIONS` options; its interior-point solver took about a minute at 800,000 and answered
"inaccurate"), or whenever asked. cvxpy is optional and slow to import, so it is loaded here only.
"""

from __future__ import annotations

import warnings

import numpy as np

from .errors import LayerlensError
from .problem import Problem
from .report import cut_rows, table, with_gap_line

#: past this many options (the LP's variables) the cvxpy cross-check runs only when asked
CROSS_CHECK_MAX_OPTIONS = 50_000


def lp_relaxation(problem: Problem) -> tuple[float, float, float, str]:
    """(LP bound, shadow price of the cap, shadow price of the floor, cvxpy's status) from cvxpy."""
    try:
        import cvxpy as cp
    except ImportError:
        raise LayerlensError("the cvxpy cross-check needs cvxpy: pip install 'layerlens-opt[explain]' "
                             "(or leave out --cross-check)") from None
    import scipy.sparse as sp

    c = problem.constraints
    n = problem.n_options
    x = cp.Variable(n)
    rows = np.repeat(np.arange(problem.n_layers), np.diff(problem.layer_start))
    A = sp.csr_matrix((np.ones(n), (rows, np.arange(n))), shape=(problem.n_layers, n))
    cost = problem.option_cost.astype(float)
    cap = cost @ x <= c.hi
    floor = cost @ x >= c.lo
    prob = cp.Problem(cp.Maximize(problem.option_gain @ x), [A @ x == 1, x >= 0, x <= 1, cap, floor])
    with warnings.catch_warnings():  # an inaccurate answer is reported in the status, not as a raw warning
        warnings.simplefilter("ignore", UserWarning)
        prob.solve()
    if prob.status not in ("optimal", "optimal_inaccurate"):
        raise LayerlensError(f"the LP relaxation is {prob.status}; the window cannot be met")
    return float(prob.value), float(cap.dual_value), float(floor.dual_value), prob.status


def _per_1k(value: float) -> str:
    return f"{value * 1000:.5f}"


def _cross_check(problem: Problem, bound: float, cross_check: bool | None) -> str:
    """The line comparing cvxpy's LP with the solver's own, or saying why it did not run."""
    n = problem.n_options
    if cross_check is False:
        return "cross-check (cvxpy): not run (--no-cross-check)"
    if cross_check is None:
        if n > CROSS_CHECK_MAX_OPTIONS:
            return (f"cross-check (cvxpy): skipped, {n:,} options is past {CROSS_CHECK_MAX_OPTIONS:,} "
                    "(slow; --cross-check runs it)")
        try:
            import cvxpy  # noqa: F401
        except ImportError:
            return "cross-check (cvxpy): not installed (pip install 'layerlens-opt[explain]')"
    c_bound, c_price, c_floor, status = lp_relaxation(problem)
    agree = abs(c_bound - bound) <= 1e-6 * max(1.0, abs(bound))
    return (f"cross-check (cvxpy, status {status}): bound {c_bound:.6f}, price {_per_1k(c_price)} per 1,000"
            + (f", the floor's {_per_1k(c_floor)}" if round(c_floor * 1000, 5) > 0 else "") + " — "
            + ("agrees" if agree else f"DISAGREES by {c_bound - bound:+.2e}"))


def _row(problem: Problem, l: int, choice: int, price: float) -> tuple:
    """One layer's row: its choice, the gains per 1,000 parameters of one step up and down, and why."""
    info = problem.layers[l]
    method = problem.method_of(choice)
    same = sorted((int(problem.option_cost[o]), o) for o in problem.options_of(l)
                  if problem.method_of(o) == method or (method == "none"))
    pos = [o for _, o in same].index(choice)
    up = same[pos + 1][1] if pos + 1 < len(same) else None
    down = same[pos - 1][1] if pos > 0 else None

    def ratio(a, b):
        dc = int(problem.option_cost[a] - problem.option_cost[b])
        return float(problem.option_gain[a] - problem.option_gain[b]) / dc if dc else None

    r_up = ratio(up, choice) if up is not None else None
    r_down = ratio(choice, down) if down is not None else None
    if r_up is not None and r_up > price:
        why = "next step beats the price but does not fit the budget with the rest"
    elif r_down is not None and r_down < price:
        why = "kept for the floor/integrality (its last step is below the price)"
    elif down is None:
        why = "at the bottom: no step up pays the price"
    else:
        why = "at the price: up is not worth it, down would lose more"
    return (info.name, f"{method} r{int(problem.option_rank[choice])}" if method != "none" else "none",
            round(info.utility, 4), "-" if r_up is None else _per_1k(r_up), "-" if r_down is None else _per_1k(r_down), why)


def _find(problem: Problem, name: str) -> int | None:
    """The problem layer of a manifest layer's name: itself, or the tied group it is a member of."""
    for l, info in enumerate(problem.layers):
        if info.name == name or any(member.name == name for _, member in info.members):
            return l
    return None


def _side(problem: Problem) -> str:
    c = problem.constraints
    parts = [f"--method-cap {','.join(f'{m}={k}' for m, k in c.method_caps)}" if c.method_caps else "",
             "--tie-blocks" if c.tie_blocks else "", f"--min-methods {c.min_methods}" if c.min_methods else ""]
    parts = [p for p in parts if p]
    return " and ".join(parts) + (" are" if len(parts) > 1 else " is")


def explain(problem: Problem, layer_name: str | None = None, *, cross_check: bool | None = None,
            max_rows: int = 0, alloc=None) -> str:
    """The LP's prices, the integer optimum, and one row per layer (``layer_name``: that layer, or its tied group, only; past
    ``max_rows`` layers, 0 for no limit, the first and last :data:`~layerlens_opt.report.TABLE_ENDS` rows).
    ``cross_check``: solve the LP with cvxpy too (None: where it has at most :data:`CROSS_CHECK_MAX_OPTIONS`
    options and cvxpy is installed). ``alloc``: the problem's allocation where the caller solved it already (``auto``,
    e.g. under a time limit)."""
    from .solvers import mckp, solve

    asked = _find(problem, layer_name) if layer_name else None
    if layer_name and asked is None:
        raise LayerlensError(f"no layer named {layer_name!r} in the manifest")
    alloc = alloc if alloc is not None else solve(problem, "auto")
    if not alloc.ok:
        raise LayerlensError(f"nothing to explain: {alloc.status.value} — {alloc.message}")
    lp = mckp.window_lp(problem)  # (an allocation in the window exists, so its LP is feasible)
    if abs(lp.primal - lp.bound) > 1e-9 * max(1.0, abs(lp.bound)):  # the certificate failed: never print its prices
        raise LayerlensError(f"internal error: the LP's primal {lp.primal!r} and dual {lp.bound!r} differ; "
                             "please report this manifest")
    price = lp.cap_price - lp.floor_price  # the net price of a parameter; negative only where the floor binds
    lines = [
        f"LP relaxation: bound {lp.bound:.6f}; the budget's shadow price {_per_1k(lp.cap_price)} gain per 1,000 parameters"
        + (f"; the floor's {_per_1k(lp.floor_price)} (the floor binds)" if lp.floor_price > 0 else ""),
        _cross_check(problem, lp.bound, cross_check),
        ("integer optimum" if alloc.status.value == "optimal" else f"best allocation found (status {alloc.status.value}: "
         f"{alloc.message})") + f" {alloc.objective:.6f} ({alloc.total_params:,} params, gap to the LP bound "
        f"{(lp.bound - alloc.objective) / max(abs(lp.bound), 1e-12):.1e})",
        "",
        *([f"note: the {len(problem.pairs)} pairwise interaction terms are not in this LP; prices and steps below are for the "
           "separable gains (the integer optimum above includes the pairs)", ""] if problem.pairs else []),
        *([f"note: {_side(problem)} not in this LP: its bound and the prices below are those of the budget window alone "
           "(the integer optimum above meets them)", ""] if problem.constraints.has_side_constraints else []),
        "A layer moves up a rank when that step's gain per 1,000 parameters beats the price, and keeps a rank",
        "when giving it up would lose more than the price returns. Steps are within the layer's method.",
        "",
    ]
    if asked is not None and problem.layers[asked].name != layer_name:
        group = problem.layers[asked]
        lines.append(f"{layer_name} is one of the {len(group.members)} layers of tied group {group.name!r}, which take one choice:")
    layers = [asked] if asked is not None else list(range(problem.n_layers))
    shown, hidden = cut_rows(layers, max_rows)
    rows = [_row(problem, l, alloc.choice[l], price) for l in shown]
    text = table(("layer", "choice", "utility", "up /1k", "down /1k", "why"), rows, "llrrrl")
    if hidden:
        text = with_gap_line(text, f"... {hidden:,} more layers (all {len(layers):,}: --max-rows 0 or --layer NAME)")
    lines.append(text)
    return "\n".join(lines)
