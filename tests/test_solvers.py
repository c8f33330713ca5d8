"""One contract suite for every solver: brute-forced optima on tiny problems and
properties on every shipped problem."""

import json

import pytest

from layerlens_opt.allocation import Status
from layerlens_opt.manifest import load_manifest, parse_manifest
from layerlens_opt.metrics import violations
from layerlens_opt.problem import Constraints, ModelOptions, build_problem
from layerlens_opt.solvers import SOLVERS, SolverOptions, solve

from conftest import ARCHITECTURES, PROFILED, ROOT, SCENARIOS, brute_force, layer, manifest, random_problem

EXACT = ["auto", "cbc", "highs"]
EXACT_VARIANTS = [("auto", True), ("cbc", True), ("cbc", False), ("highs", True), ("highs", False)]


def check_allocation(problem, alloc):
    """Properties every allocation must have: one compatible option per layer, consistent totals."""
    assert len(alloc.layers) == problem.n_layers
    for info, choice, o in zip(problem.layers, alloc.layers, alloc.choice):
        assert choice.name == info.name
        assert choice.method in info.methods
        assert problem.option_layer[o] == problem.layers.index(info)
        assert choice.params == problem.option_cost[o]
    assert alloc.total_params == sum(l.params for l in alloc.layers)
    pairs = problem.value(alloc.choice) - sum(float(problem.option_gain[o]) for o in alloc.choice)
    assert alloc.objective == pytest.approx(sum(l.gain for l in alloc.layers) + pairs)
    assert (pairs == 0.0) or problem.pairs  # only pair terms add to the layers' gains
    assert alloc.metrics["compatibility_rate"] == 1.0


@pytest.mark.parametrize("seed", range(12))
@pytest.mark.parametrize("solver, presolve", EXACT_VARIANTS)
def test_exact_solvers_match_brute_force(solver, presolve, seed):
    problem = random_problem(seed, n_layers=4, zero_gain=seed % 3 == 0)
    best, _ = brute_force(problem)
    alloc = solve(problem, solver, SolverOptions(presolve=presolve))
    if best is None:
        assert alloc.status == Status.INFEASIBLE
        assert alloc.message
        return
    assert alloc.status == Status.OPTIMAL, alloc.message
    check_allocation(problem, alloc)
    assert alloc.objective == pytest.approx(best, rel=1e-9, abs=1e-12)
    assert alloc.gap == 0.0
    assert not alloc.violations


@pytest.mark.parametrize("seed", range(6))
def test_heuristic_never_beats_the_optimum_and_reports_its_violations(seed):
    problem = random_problem(seed, n_layers=5)
    best, _ = brute_force(problem)
    alloc = solve(problem, "heuristic")
    check_allocation(problem, alloc)
    broken = violations([l.to_dict() for l in alloc.layers], alloc.constraints)
    assert (alloc.status == Status.INFEASIBLE) == bool(broken)
    if best is not None and not broken:
        assert alloc.objective <= best + 1e-12


def test_floor_binding_case_is_solved_exactly():
    # zero-utility layers: the cap-only optimum spends too little, the floor forces useless spending
    layers = [layer("useful", d_in=16, d_out=16, ge=1, fi=1, pe=1)] + [
        layer(f"dead{i}", d_in=16, d_out=16, ge=0, fi=0, pe=0) for i in range(3)
    ]
    m = parse_manifest(manifest(layers))
    opts = ModelOptions(methods=("lora", "none"), ranks={"lora": (1, 2)})
    problem = build_problem(m, Constraints(budget=160, min_utilization=0.7, max_utilization=0.9), opts)
    best, _ = brute_force(problem)
    for solver in EXACT:
        alloc = solve(problem, solver)
        assert alloc.status == Status.OPTIMAL
        assert alloc.objective == pytest.approx(best)
        assert alloc.total_params >= problem.constraints.lo
    auto = solve(problem, "auto")
    assert any("floor binds" in n for n in auto.notes)


def test_infeasible_window_between_coarse_costs_is_reported():
    # one layer, costs 0, 64 and 128: a window of [90, 100] holds none of them
    m = parse_manifest(manifest([layer("a", d_in=32, d_out=32)]))
    problem = build_problem(m, Constraints(budget=100, min_utilization=0.9, max_utilization=1.0),
                            ModelOptions(methods=("lora", "none"), ranks={"lora": (1, 2)}))
    for solver in EXACT:
        alloc = solve(problem, solver)
        assert alloc.status == Status.INFEASIBLE
        assert "no choice of one option per layer totals between 90 and 100 parameters" in alloc.message
        assert "multiple of 64" in alloc.message and "nearest total under the cap is 64" in alloc.message


def test_solvers_do_not_mutate_the_problem():
    problem = random_problem(3, n_layers=5)
    before = (problem.option_gain.copy(), problem.option_cost.copy(), problem.constraints)
    for name in SOLVERS:
        solve(problem, name)
    assert (problem.option_gain == before[0]).all() and (problem.option_cost == before[1]).all()
    assert problem.constraints == before[2]


def _shipped(path):
    data = json.loads(path.read_text())
    m = load_manifest(path)
    return build_problem(m, Constraints(budget=data["model"]["suggested_budget"]))


@pytest.mark.parametrize("path", SCENARIOS + ARCHITECTURES + PROFILED, ids=lambda p: p.stem)
def test_properties_on_every_shipped_problem(path):
    problem = _shipped(path)
    exact = solve(problem, "auto")
    assert exact.status == Status.OPTIMAL, exact.message
    check_allocation(problem, exact)
    assert not exact.violations
    c = problem.constraints
    assert c.lo <= exact.total_params <= c.hi
    heur = solve(problem, "heuristic")
    check_allocation(problem, heur)
    assert exact.objective >= heur.objective - 1e-9
    assert (heur.status == Status.INFEASIBLE) == bool(heur.violations)


@pytest.mark.parametrize("path", SCENARIOS + ARCHITECTURES[:3], ids=lambda p: p.stem)
def test_cbc_agrees_with_auto_on_shipped_problems(path):
    problem = _shipped(path)
    a = solve(problem, "auto")
    b = solve(problem, "cbc")
    assert b.status == Status.OPTIMAL
    assert b.objective == pytest.approx(a.objective, rel=1e-9)


def _side_problem(**side):
    layers = [layer(f"b{b}.{sub}", kind="attention" if sub != "mlp" else "mlp", d_in=16, d_out=16, block=b,
                    ge=1 + b + 0.3 * i, fi=1 + b, pe=1 + i)
              for b in range(2) for i, sub in enumerate(("value", "o", "mlp"))]
    m = parse_manifest(manifest(layers))
    return build_problem(m, Constraints(budget=400, **side), ModelOptions(ranks={k: (1, 2) for k in ("lora", "adapter", "prefix")}))


@pytest.mark.parametrize("side", [dict(min_methods=3), dict(method_caps=(("lora", 2),)), dict(tie_blocks=True),
                                  dict(min_methods=2, method_caps=(("lora", 1),), tie_blocks=True),
                                  dict(min_methods=2, method_caps=(("adapter", 1),), tie_blocks=True)])  # infeasible
@pytest.mark.parametrize("solver", EXACT)
def test_side_constraints_hold_and_match_brute_force(solver, side):
    problem = _side_problem(**side)
    alloc = solve(problem, solver)
    # brute force with the side constraints applied as a filter
    import itertools

    best = None
    for combo in itertools.product(*[list(problem.options_of(l)) for l in range(problem.n_layers)]):
        layers = [{"method": problem.method_of(o), "params": int(problem.option_cost[o]), "block": problem.layers[l].block}
                  for l, o in enumerate(combo)]
        if violations(layers, problem.constraints.to_dict()):
            continue
        value = sum(float(problem.option_gain[o]) for o in combo)
        best = value if best is None else max(best, value)
    if best is None:
        assert alloc.status == Status.INFEASIBLE and "tied blocks" in alloc.message
        return
    assert alloc.status == Status.OPTIMAL, alloc.message
    assert not alloc.violations
    assert alloc.objective == pytest.approx(best, rel=1e-9)


def test_min_methods_above_offered_is_explained():
    problem = _side_problem(min_methods=4)
    alloc = solve(problem, "auto")
    assert alloc.status == Status.INFEASIBLE
    assert "--min-methods 4" in alloc.message and "(3: adapter, lora, prefix)" in alloc.message


def test_status_table_never_calls_a_limited_answer_optimal():
    import pulp

    from layerlens_opt.solvers.ilp import _status_table

    table = _status_table()
    assert table[pulp.LpStatusOptimal, pulp.LpSolutionOptimal] == Status.OPTIMAL
    # what CBC reports when its time limit stops it holding a solution
    assert table[pulp.LpStatusOptimal, pulp.LpSolutionIntegerFeasible] == Status.FEASIBLE
    assert table[pulp.LpStatusNotSolved, pulp.LpSolutionNoSolutionFound] == Status.ERROR
    assert table[pulp.LpStatusInfeasible, pulp.LpSolutionNoSolutionFound] == Status.INFEASIBLE
    assert Status.OPTIMAL not in [v for (st, sol), v in table.items() if sol != pulp.LpSolutionOptimal]


def test_cbc_stopped_early_reports_feasible_with_gap(monkeypatch):
    """CBC stopped by a node limit says status 'Optimal' in PuLP; we must say feasible."""
    import pulp

    from layerlens_opt.generate import synthetic
    from layerlens_opt.solvers import ilp

    data = synthetic(140, seed=1)
    problem = build_problem(parse_manifest(data), Constraints(budget=data["model"]["suggested_budget"]))
    monkeypatch.setattr(ilp, "_backend", lambda name, options, warm, log_path=None, preprocess=True, work=None: pulp.PULP_CBC_CMD(msg=False, maxNodes=1, gapRel=0, cuts=False, warmStart=warm, logPath=log_path, keepFiles=False))
    alloc = solve(problem, "cbc", SolverOptions(presolve=False, warm_start=True))
    exact = solve(problem, "auto")
    assert alloc.status in (Status.FEASIBLE, Status.OPTIMAL)
    if alloc.objective < exact.objective - 1e-9:  # not optimal, so it must not claim to be
        assert alloc.status == Status.FEASIBLE
        assert alloc.gap > 0 and alloc.bound >= exact.objective - 1e-9
    assert alloc.status == Status.FEASIBLE, "the node limit was expected to stop CBC before a proof"


def test_a_time_limited_cbc_never_answers_worse_than_its_start():
    """LLaMA-3-70B's near-ties: CBC stopped by its limit once returned an answer below the optimal start it was given."""
    import json

    from layerlens_opt.manifest import load_manifest
    from layerlens_opt.solvers import mckp
    from layerlens_opt.solvers.ilp import solve_ilp

    path = ROOT / "problems" / "architectures" / "llama3-70b.json"
    problem = build_problem(load_manifest(path), Constraints(budget=json.loads(path.read_text())["model"]["suggested_budget"]))
    best = solve(problem, "auto")
    assert best.status == Status.OPTIMAL
    pre = mckp.with_incumbent(problem, mckp.presolve(problem), best.choice)
    alloc = solve_ilp(problem, SolverOptions(time_limit=3), "cbc", pre)
    assert alloc.objective >= best.objective - 1e-12 * abs(best.objective)
    assert alloc.status in (Status.OPTIMAL, Status.FEASIBLE) and not alloc.violations
