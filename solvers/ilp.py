"""The integer program through PuLP: one model builder, CBC and HiGHS backends, LP/MPS export.

``build_model`` is the only place the model is written down; ``solve_cbc``,
``solve_highs`` and ``export_model`` all call it, so the file a user inspects
is the model that was solved. Variables are named by index — ``x_12_3`` is
option 3 of layer 12 — never by layer name (PuLP rewrites ``-+[] ->/`` to
``_``, and two layers could collide).

PuLP is imported inside the functions: importing it costs a quarter of a
second, which the fast path of :mod:`layerlens_opt.solvers.exact` never pays.
"""

from __future__ import annotations

import os
import re
import time
from dataclasses import replace
from typing import TYPE_CHECKING

import numpy as np

from layerlens_opt.allocation import Allocation, Status, choice_violations, make_allocation
from layerlens_opt.methods import METHOD_NAMES
from layerlens_opt.problem import Problem

from . import mckp
from .options import SolverOptions

if TYPE_CHECKING:  # pragma: no cover
    import pulp


def build_model(problem: Problem, keep=None, *, floor: bool = True, name: str = "layerlens", order=()):
    """The PuLP model of ``problem``: ``(LpProblem, {option index: variable})``.

    ``keep`` (a set of option indices) restricts the model to those options (the
    presolved model); ``floor=False`` leaves out the utilization floor; ``order``: pairs of
    aligned option lists from :func:`exchange_order`, each becoming rows "the first layer takes
    one of its t costliest options at least as often as the second" (symmetry breaking).
    """
    import pulp

    c = problem.constraints
    prob = pulp.LpProblem(name, pulp.LpMaximize)
    starts = problem.layer_start.tolist()
    gain = problem.option_gain.tolist()
    cost = problem.option_cost.tolist()
    method = problem.option_method.tolist()
    x: dict[int, pulp.LpVariable] = {}
    for l in range(problem.n_layers):
        for o in range(starts[l], starts[l + 1]):
            if keep is None or o in keep:
                x[o] = prob.add_variable(f"x_{l}_{o - starts[l]}", cat=pulp.LpBinary)
    prob.setObjective(pulp.LpAffineExpression([(v, gain[o]) for o, v in x.items() if gain[o] != 0]))
    for l in range(problem.n_layers):
        terms = [(x[o], 1) for o in range(starts[l], starts[l + 1]) if o in x]
        prob.addConstraint(pulp.LpConstraint(pulp.LpAffineExpression(terms), pulp.LpConstraintEQ, f"one_{l}", 1))
    spend = [(v, cost[o]) for o, v in x.items() if cost[o] != 0]
    prob.addConstraint(pulp.LpConstraint(pulp.LpAffineExpression(spend), pulp.LpConstraintLE, "budget_max", c.hi))
    if floor:
        prob.addConstraint(pulp.LpConstraint(pulp.LpAffineExpression(spend), pulp.LpConstraintGE, "budget_min", c.lo))
    for k, (a, b) in enumerate(order):
        for t in range(1, len(a)):
            # implied (not written) when the second layer has none of its t costliest options or the first has only those
            high_b = [(x[o], -1) for o in b[t:] if o in x]
            if high_b and any(o in x for o in a[:t]):
                terms = [(x[o], 1) for o in a[t:] if o in x] + high_b
                prob.addConstraint(pulp.LpConstraint(pulp.LpAffineExpression(terms), pulp.LpConstraintGE, f"order_{k}_{t}", 0))

    by_method: dict[int, list] = {}
    for o, v in x.items():
        by_method.setdefault(method[o], []).append((o, v))
    size = problem.n_members
    weight = {o: size[l] for l in range(problem.n_layers) for o in range(starts[l], starts[l + 1])} if c.method_caps else {}
    none = METHOD_NAMES.index("none")
    for m_name, cap in c.method_caps:
        m = METHOD_NAMES.index(m_name)
        terms = [(v, weight[o]) for o, v in by_method.get(m, [])]  # a tied group counts as its layers
        prob.addConstraint(pulp.LpConstraint(pulp.LpAffineExpression(terms), pulp.LpConstraintLE, f"cap_{m}", cap))
    if c.min_methods:
        used = []
        for m, vars_m in sorted(by_method.items()):
            if m == none:
                continue
            y = prob.add_variable(f"y_{m}", cat=pulp.LpBinary)
            used.append((y, 1))
            prob.addConstraint(
                pulp.LpConstraint(pulp.LpAffineExpression([(y, 1)] + [(v, -1) for _, v in vars_m]), pulp.LpConstraintLE, f"uses_{m}", 0)
            )
        prob.addConstraint(pulp.LpConstraint(pulp.LpAffineExpression(used), pulp.LpConstraintGE, "min_methods", c.min_methods))
    if problem.pairs:
        # "layer l is adapted" = sum of its non-none options; w_k is the pair's indicator, defined exactly
        # (either: w = a_i OR a_j; both: w = a_i AND a_j) so the file shows the term whatever its sign
        adapted = {}
        for l in {p.i for p in problem.pairs} | {p.j for p in problem.pairs}:
            adapted[l] = [(x[o], 1) for o in range(starts[l], starts[l + 1]) if o in x and method[o] != none]
        objective = list(prob.objective.items()) if prob.objective is not None else []
        for k, p in enumerate(problem.pairs):
            w = prob.add_variable(f"w_{k}", lowBound=0, upBound=1)
            objective.append((w, p.value))
            ai, aj = adapted[p.i], adapted[p.j]
            if p.when == "either":
                rows = [(ai + aj + [(w, -1)], pulp.LpConstraintGE, 0), (ai + [(w, -1)], pulp.LpConstraintLE, 0),
                        (aj + [(w, -1)], pulp.LpConstraintLE, 0)]
            else:
                rows = [(ai + [(w, -1)], pulp.LpConstraintGE, 0), (aj + [(w, -1)], pulp.LpConstraintGE, 0),
                        (ai + aj + [(w, -1)], pulp.LpConstraintLE, 1)]
            for r, (terms, sense, rhs) in enumerate(rows):
                prob.addConstraint(pulp.LpConstraint(pulp.LpAffineExpression(terms), sense, f"pair_{k}_{r}", rhs))
        prob.setObjective(pulp.LpAffineExpression(objective))
    if c.tie_blocks:
        blocks: dict[int, list[int]] = {}
        for l, info in enumerate(problem.layers):
            if info.block is not None:
                blocks.setdefault(info.block, []).append(l)
        for b, members in sorted(blocks.items()):
            if len(members) < 2:
                continue
            z = {}
            for l in members:
                for o in range(starts[l], starts[l + 1]):
                    if o in x and method[o] != none:
                        z.setdefault(method[o], {}).setdefault(l, []).append(x[o])
            if len(z) < 2:
                continue
            zs = {m: prob.add_variable(f"z_{b}_{m}", cat=pulp.LpBinary) for m in sorted(z)}
            prob.addConstraint(
                pulp.LpConstraint(pulp.LpAffineExpression([(v, 1) for v in zs.values()]), pulp.LpConstraintLE, f"tie_{b}", 1)
            )
            for m, per_layer in sorted(z.items()):
                for l, vars_l in sorted(per_layer.items()):
                    terms = [(v, 1) for v in vars_l] + [(zs[m], -1)]
                    prob.addConstraint(
                        pulp.LpConstraint(pulp.LpAffineExpression(terms), pulp.LpConstraintLE, f"tie_{b}_{l}_{m}", 0)
                    )
    return prob, x


def exchange_order(problem: Problem, options) -> list[tuple[list[int], list[int]]]:
    """Symmetry breaking for near-identical layers, from an exchange argument.

    ``options``: per layer its undominated options, cost ascending (the presolve's). Two layers
    whose options have the same costs and methods, position by position, and where the first's
    gain minus the second's never falls from one position to the next: if the first takes
    position i and the second a costlier position j, swapping them changes the objective by
    (g_a[j] - g_b[j]) - (g_a[i] - g_b[i]) >= 0 and leaves the total cost and the methods used as
    they are. So some optimal allocation gives the first layer a position at least the second's,
    for every such pair along a chain at once (sort the chain's positions: each adjacent swap is one
    of these), and that allocation is worth at least any incumbent, so reduced-cost fixing keeps its
    options. Layers of one shape whose gains are utility times one curve (the generated and profiled
    manifests) form such chains in order of utility. Returns (first's options, second's options)
    per linked pair, aligned by position."""
    cost, gain, method = problem.option_cost, problem.option_gain, problem.option_method
    classes: dict[tuple, list[int]] = {}
    for l, opts in enumerate(options):
        if len(opts) > 1:
            idx = list(opts)
            classes.setdefault((tuple(cost[idx].tolist()), tuple(method[idx].tolist())), []).append(l)
    links = []
    for layers in classes.values():
        layers.sort(key=lambda l: (-float(gain[options[l][-1]]), l))
        for a, b in zip(layers, layers[1:]):
            d = gain[list(options[a])] - gain[list(options[b])]
            if (np.diff(d) >= 0).all():
                links.append((list(options[a]), list(options[b])))
    return links


def ordered_start(problem: Problem, choice, links, keep) -> tuple[int, ...]:
    """``choice`` with each chain of ``links`` (consecutive pairs sharing a layer) given its chosen positions
    sorted, costliest first, so that it meets the ordering rows; a chain whose layers hold options outside their
    lists, or whose sorted options are not all in ``keep``, is left as it was. Never worth less than ``choice``
    (each adjacent swap is an exchange of :func:`exchange_order`)."""
    out = list(choice)
    layer_of = problem.option_layer
    chains: list[list[list[int]]] = []
    for a, b in links:
        if chains and int(layer_of[chains[-1][-1][0]]) == int(layer_of[a[0]]):
            chains[-1].append(b)
        else:
            chains.append([a, b])
    for chain in chains:
        layers = [int(layer_of[opts[0]]) for opts in chain]
        if any(out[l] not in opts for l, opts in zip(layers, chain)):
            continue
        positions = sorted((opts.index(out[l]) for l, opts in zip(layers, chain)), reverse=True)
        picked = [opts[p] for opts, p in zip(chain, positions)]
        if all(o in keep for o in picked):
            for l, o in zip(layers, picked):
                out[l] = o
    return tuple(out) if problem.value(out) >= problem.value(choice) else tuple(choice)


def export_model(problem: Problem, path: str, fmt: str = "lp") -> None:
    """Write the full, unreduced model as an LP or MPS file."""
    prob, _ = build_model(problem)
    if fmt == "lp":
        prob.writeLP(path)
    elif fmt == "mps":
        prob.writeMPS(path)
    else:
        raise ValueError(f"unknown model format {fmt!r}; use 'lp' or 'mps'")


def _status_table():
    """(PuLP status, PuLP sol_status) -> our status. Anything not listed is an error.

    Read both: a CBC run stopped by its time limit with a solution reports status
    "Optimal" but sol_status "Solution Found"; CBC proving infeasibility in its
    presolve reports status "Infeasible" with sol_status "No Solution Found".
    """
    import pulp

    return {
        (pulp.LpStatusOptimal, pulp.LpSolutionOptimal): Status.OPTIMAL,
        (pulp.LpStatusOptimal, pulp.LpSolutionIntegerFeasible): Status.FEASIBLE,
        (pulp.LpStatusInfeasible, pulp.LpSolutionInfeasible): Status.INFEASIBLE,
        (pulp.LpStatusInfeasible, pulp.LpSolutionNoSolutionFound): Status.INFEASIBLE,
        (pulp.LpStatusNotSolved, pulp.LpSolutionNoSolutionFound): Status.ERROR,
    }


#: below this many variables CBC runs without its Cgl preprocessing: CBC 2.10's preprocessing reduced a
#: 7-variable model to nothing and called a wrong answer optimal (tests/test_tied_groups.py found it);
#: small models do not need it
PREPROCESS_MIN_VARIABLES = 5_000


def _kill_solver_children() -> None:
    """Kill and reap this process's CBC children (Linux: found through /proc; elsewhere nothing is done)."""
    import signal

    me = os.getpid()
    try:
        pids = [int(p) for p in os.listdir("/proc") if p.isdigit()]
    except OSError:
        return
    for pid in pids:
        try:
            with open(f"/proc/{pid}/stat") as f:
                ppid = int(f.read().rsplit(")", 1)[1].split()[1])
            if ppid != me:
                continue
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                if b"cbc" not in f.read().lower():
                    continue
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
        except (OSError, ValueError, IndexError, ChildProcessError):
            continue


def _backend(name: str, options: SolverOptions, warm: bool, log_path: str | None = None, preprocess: bool = True,
             work: str | None = None):
    import warnings

    import pulp

    if name == "cbc":
        with warnings.catch_warnings():  # PuLP 3.3 warns that PuLP 4 drops the bundled CBC; we pin < 4
            warnings.simplefilter("ignore", DeprecationWarning)
            solver = pulp.PULP_CBC_CMD(
                msg=False, timeLimit=options.time_limit, threads=options.threads, warmStart=warm, gapRel=0, gapAbs=0,
                logPath=log_path,
                # CBC derives a cutoff increment and prunes nodes that cannot beat the incumbent by
                # that much: warm-started, it then called an answer 7e-6 below the optimum "optimal"
                options=["increment 0"] + ([] if preprocess else ["preprocess off"]),
            )
            if work:
                solver.tmpDir = work
            return solver
    if name == "highs":
        try:
            import highspy  # noqa: F401
        except ImportError:
            from layerlens_opt.errors import LayerlensError

            raise LayerlensError("--solver highs needs highspy: pip install 'layerlens-opt[highs]'") from None
        return pulp.HiGHS(msg=False, timeLimit=options.time_limit, threads=options.threads, gapRel=0, gapAbs=0)
    raise ValueError(name)


#: the most option variables handed to PuLP: its objects take ~2-3 KB per variable, so this keeps the
#: model build of CBC/HiGHS around 1-2 GB on a 24 GB machine instead of exhausting it
MAX_LP_VARIABLES = 400_000


def _run(problem: Problem, backend: str, options: SolverOptions, keep=None, floor=True, start=None, deadline=None,
         preprocess: bool = True, order=()):
    """Build, solve, read back. Returns (status, choice or None, bound or None, build s, solve s, warm used).

    With a ``deadline`` (``time.perf_counter()`` seconds) the solver gets what is left of it after
    the build (at least 1 s: CBC needs that to return its incumbent)."""
    import pulp

    n_vars = problem.n_options if keep is None else len(keep)
    if n_vars > MAX_LP_VARIABLES:
        return Status.ERROR, None, None, 0.0, 0.0, False, (
            f"the integer program would have {n_vars:,} option variables, more than {backend} through PuLP can build within "
            f"this machine's memory (limit {MAX_LP_VARIABLES:,}); offer fewer ranks (--ranks, --max-rank) or drop the side "
            "constraints and interaction terms that send the problem to an LP solver"
        )
    t0 = time.perf_counter()
    prob, x = build_model(problem, keep, floor=floor, order=order)
    warm = False
    if start is not None and options.warm_start and backend == "cbc":
        chosen = set(start)
        for o, v in x.items():
            v.setInitialValue(1 if o in chosen else 0)
        warm = True
    t1 = time.perf_counter()
    if deadline is not None:
        options = replace(options, time_limit=max(1.0, deadline - t1))
    log_path = work = None
    if backend == "cbc":
        import tempfile

        work = tempfile.mkdtemp(prefix="layerlens-cbc-")  # CBC's model, solution and log files: removed whatever happens
        log_path = os.path.join(work, "cbc.log")
    small = n_vars < PREPROCESS_MIN_VARIABLES
    try:
        prob.solve(_backend(backend, options, warm, log_path, preprocess=preprocess and not small, work=work))
    except pulp.PulpSolverError as exc:
        if backend == "cbc" and preprocess and small:
            # CBC without preprocessing stops on an infeasible model without a solution file; with it, it says so
            try:
                prob.solve(_backend(backend, options, warm, log_path, preprocess=True, work=work))
            except pulp.PulpSolverError as again:
                exc = again
            else:
                exc = None
        if exc is not None:
            return Status.ERROR, None, None, t1 - t0, time.perf_counter() - t1, warm, f"{backend} failed: {exc}"
    except BaseException:  # Ctrl-C, or SIGTERM (the CLI turns it into SystemExit): CBC must not outlive us
        if backend == "cbc":
            _kill_solver_children()
        raise
    finally:
        cbc_bound = _cbc_bound(log_path) if log_path and os.path.exists(log_path) else None
        if work:
            import shutil

            shutil.rmtree(work, ignore_errors=True)
    t2 = time.perf_counter()
    status = _status_table().get((prob.status, prob.sol_status), Status.ERROR)
    if status == Status.INFEASIBLE and backend == "cbc" and options.time_limit is not None and t2 - t1 >= options.time_limit:
        # CBC cut short by its time limit inside its preprocessing prints "Pre-processing says infeasible" and PuLP
        # reads that as infeasible: not a proof (seen with a 1 s limit on 2,000 layers with two caps, which are feasible)
        return Status.ERROR, None, None, t1 - t0, t2 - t1, warm, (
            f"{backend} stopped at its time limit ({options.time_limit:.1f} s) without an allocation; its preprocessing, cut "
            "short, said 'infeasible', which is not a proof; give it more time (--time-limit)")
    bound = cbc_bound if status == Status.FEASIBLE else None
    if backend == "highs" and status in (Status.OPTIMAL, Status.FEASIBLE):
        try:
            bound = -float(prob.solverModel.getInfo().mip_dual_bound)  # HiGHS minimised -objective
        except Exception:  # pragma: no cover - informational only
            bound = None
    choice = None
    if status in (Status.OPTIMAL, Status.FEASIBLE):
        choice = []
        starts = problem.layer_start.tolist()
        for l in range(problem.n_layers):
            vals = [(v.value() or 0.0, o) for o in range(starts[l], starts[l + 1]) if (v := x.get(o)) is not None]
            choice.append(max(vals)[1])
    if start is not None and choice is not None:
        start_value = problem.value(start)
        if start_value > problem.value(choice) + 1e-9 * max(1.0, abs(start_value)):  # worse than the feasible start it was given
            if status == Status.FEASIBLE and warm:
                # stopped by its limit (seen on LLaMA-3-70B): the start is the better allocation, so it is the answer
                # (the bound is CBC's still)
                choice = list(start)
            elif backend == "cbc" and preprocess and not small:
                # called optimal: a preprocessing fault; solve again without it
                return _run(problem, backend, options, keep, floor, start, deadline, preprocess=False, order=order)
    message = "" if choice is not None or status == Status.INFEASIBLE else f"{backend} stopped without an allocation (PuLP: {pulp.LpSolution[prob.sol_status]})"
    return status, choice, bound, t1 - t0, t2 - t1, warm, message


_CBC_BOUND = re.compile(r"best possible (-?[\d.]+(?:e[-+]?\d+)?)")


def _cbc_bound(log_path: str) -> float | None:
    """CBC's own best bound from its log (it minimises minus our objective, so the sign flips), or None."""
    try:
        with open(log_path, encoding="utf-8", errors="replace") as f:
            found = _CBC_BOUND.findall(f.read())
    except OSError:
        return None
    return -float(found[-1]) if found else None


def solve_ilp(problem: Problem, options: SolverOptions, backend: str = "cbc", pre: "mckp.Presolve | None" = None,
              deadline: float | None = None, start: tuple[int, ...] | None = None) -> Allocation:
    """Solve with CBC or HiGHS. With ``options.presolve`` and no side constraints, the model
    is first reduced by the knapsack presolve (dominance + reduced-cost fixing), warm
    started from its incumbent, and re-solved in full only if the utilization floor binds.
    """
    from .heuristic import heuristic_choice

    notes: list[str] = []
    c = problem.constraints
    if deadline is None and options.time_limit is not None:
        deadline = time.perf_counter() + options.time_limit
    if problem.pairs:
        # the knapsack presolve's dominance, bound and fixing assume separable gains
        lp_bound, seconds = None, {}
        notes.append(f"{len(problem.pairs)} pairwise interaction terms in the model (variables w_k); no knapsack presolve")
    else:
        pre = pre or mckp.presolve(problem, deadline)  # auto's fallback hands over the presolve it already ran
        # the cap-only LP bound is a relaxation of every variant (floor, side constraints)
        lp_bound = pre.bound
        seconds = {"presolve": pre.seconds}
    if problem.pairs:
        pass
    elif options.presolve and not c.has_side_constraints:
        keep = {o for opts in pre.kept for o in opts}
        notes.append(
            f"presolve: {problem.n_options:,} options -> {len(keep):,} after dominance and reduced-cost fixing "
            f"({pre.core_layers} layers left free); LP bound {pre.bound:.6g}"
        )
        order = exchange_order(problem, pre.options)
        presolved_start = ordered_start(problem, pre.incumbent, order, keep)  # (``start``, the caller's, is for the full model)
        if order:
            notes.append(f"symmetry: ordering rows over {len(order):,} pairs of layers with the same options whose gains differ "
                         "in step (the costlier choice to the layer whose gains grow faster)")
        status, choice, bound, tb, ts, warm, message = _run(problem, backend, options, keep, floor=False, start=presolved_start,
                                                            deadline=deadline, order=order)
        seconds.update(build=tb, solve=ts)
        if warm:
            notes.append(f"warm start: the presolve incumbent (objective {problem.value(presolved_start):.6g}"
                         + (", its choices sorted along the ordering rows)" if presolved_start != pre.incumbent else ")"))
        if choice is None or problem.cost(choice) >= c.lo:
            return _finish(problem, backend, status, choice, bound, lp_bound, seconds, message, notes, warm)
        notes.append(
            f"the {c.min_utilization:.0%} utilization floor binds (the best allocation under the cap uses "
            f"{problem.cost(choice) / c.budget:.1%}); solved the full model"
        )
    elif options.presolve:
        notes.append("side constraints break the knapsack structure the presolve relies on: solved the full model")

    given, start, origin = start, None, "the heuristic's allocation"
    if options.warm_start and given is not None and not problem.pairs and not choice_violations(problem, given):
        start = given  # the caller's allocation that meets every constraint (auto: the knapsack path's)
        origin = "the knapsack path's allocation, which meets the side constraints"
    elif options.warm_start and problem.pairs:
        # seen here: CBC 2.10 given a start on a model with pair terms returned that start as "optimal"
        # although better allocations existed (brute force disagreed); without a start it is exact
        notes.append("warm start not used: CBC mishandles starts on models with pair terms")
    elif options.warm_start:
        h = heuristic_choice(problem)
        if not choice_violations(problem, h):
            start = h
        else:
            notes.append("warm start not used: the heuristic's allocation breaks a constraint")
    status, choice, bound, tb, ts, warm, message = _run(problem, backend, options, None, floor=True, start=start, deadline=deadline)
    seconds["build"] = seconds.get("build", 0.0) + tb
    seconds["solve"] = seconds.get("solve", 0.0) + ts
    if warm:
        notes.append(f"warm start: {origin}")
    return _finish(problem, backend, status, choice, bound, lp_bound, seconds, message, notes, warm)


def _finish(problem, backend, status, choice, bound, lp_bound, seconds, message, notes, warm) -> Allocation:
    if status == Status.OPTIMAL:
        bound = None  # make_allocation sets bound = objective for a proven optimum
    elif status == Status.FEASIBLE:
        bounds = [b for b in (bound, lp_bound) if b is not None]
        bound = min(bounds) if bounds else None
        message = message or f"{backend} stopped at a limit before proving optimality; the gap is reported"
    elif status == Status.INFEASIBLE:
        c = problem.constraints
        message = message or (
            f"{backend} proved that no allocation meets every constraint: total in [{c.lo:,}, {c.hi:,}] "
            f"({c.min_utilization:.0%}-{c.max_utilization:.0%} of {c.budget:,})"
            + (", the method caps, tied blocks and min-methods" if c.has_side_constraints else "")
            + "; the options' costs are too coarse for this window — widen the window, change the budget or relax the side constraints"
        )
    return make_allocation(
        problem, choice, solver=backend, status=status, bound=bound, seconds=seconds,
        message=message, notes=notes, warm_start=warm,
    )


def solve_cbc(problem: Problem, options: SolverOptions) -> Allocation:
    return solve_ilp(problem, options, "cbc")


def solve_highs(problem: Problem, options: SolverOptions) -> Allocation:
    return solve_ilp(problem, options, "highs")
