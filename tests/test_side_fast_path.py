"""Method caps and tied blocks on the knapsack fast path (solvers/side.py): against brute force on tiny
problems (many seeds, infeasible ones included) and against CBC on medium ones; the fast path must be
the one answering (not a CBC fallback) where it applies."""

import itertools

import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from layerlens_opt.allocation import Status, choice_violations
from layerlens_opt.generate import synthetic
from layerlens_opt.manifest import parse_manifest
from layerlens_opt.metrics import Columns, violations
from layerlens_opt.problem import Constraints, build_problem
from layerlens_opt.solvers import solve

from conftest import random_problem

import numpy as np


def frontiers_only(monkeypatch):
    """Tied blocks by the blocks' frontiers alone (the Lagrangian method choice switched off)."""
    from layerlens_opt.solvers import side

    monkeypatch.setattr(side, "solve_block_methods", lambda *a, **k: side.SideResult(None, "switched off"))


def brute(problem):
    best = None
    for combo in itertools.product(*[list(problem.options_of(l)) for l in range(problem.n_layers)]):
        cols = Columns(method=[problem.method_of(o) for o in combo], rank=np.zeros(len(combo)),
                       params=np.array([int(problem.option_cost[o]) for o in combo]), utility=np.zeros(len(combo)),
                       block=[problem.layers[l].block for l in range(problem.n_layers)], group=[None] * len(combo),
                       kind=["other"] * len(combo))
        if not violations(cols, problem.constraints.to_dict()):
            v = sum(float(problem.option_gain[o]) for o in combo)
            best = v if best is None else max(best, v)
    return best


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(seed=st.integers(0, 10**6), n=st.integers(1, 6), block_size=st.sampled_from([2, 3]),
       lo=st.sampled_from([0.0, 0.5, 0.7]), tie=st.booleans(),
       caps=st.lists(st.tuples(st.sampled_from(["lora", "adapter", "prefix"]), st.integers(0, 4)), max_size=2, unique_by=lambda t: t[0]))
def test_caps_and_tied_blocks_equal_brute_force(seed, n, block_size, lo, tie, caps):
    problem = random_problem(seed, n_layers=n, lo=lo, hi=0.9, block_size=block_size, ranks=(1, 4),
                             tie_blocks=tie, method_caps=tuple(caps))
    assert_brute_force_optimum(problem, solve(problem, "auto"))


def assert_brute_force_optimum(problem, alloc) -> bool:
    """``alloc`` is infeasible where brute force finds nothing, else optimal, within the constraints and at its best
    objective; returns whether the problem is feasible."""
    best = brute(problem)
    if best is None:
        assert alloc.status == Status.INFEASIBLE, alloc
        return False
    assert alloc.status == Status.OPTIMAL, alloc.message
    assert not alloc.violations
    assert alloc.objective == pytest.approx(best, rel=1e-9, abs=1e-12)
    return True


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(seed=st.integers(0, 10**6), n=st.integers(2, 6), block_size=st.sampled_from([2, 3, 6]), lo=st.sampled_from([0.0, 0.7]))
def test_tied_blocks_by_lagrangian_method_choice_alone_equal_brute_force(seed, n, block_size, lo):
    """Every block treated as too large for frontiers (the Lagrangian method choice, the restricted knapsacks, else
    CBC): proven answers equal brute force, and where it leaves a block's method open CBC answers, also equal."""
    from layerlens_opt.solvers import side

    problem = random_problem(seed, n_layers=n, lo=lo, hi=0.9, block_size=block_size, ranks=(1, 4), tie_blocks=True)
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(side, "BIG_BLOCK", 1)
        alloc = solve(problem, "auto")
    if assert_brute_force_optimum(problem, alloc) and alloc.solver == "auto":
        assert "Lagrangian bound" in alloc.notes[-1]


@pytest.mark.parametrize("n, seed", [(72, 1), (224, 3), (560, 0)])
def test_tied_blocks_by_method_choice_match_the_block_frontiers_and_cbc(n, seed):
    """On generated models the Lagrangian method choice proves the same optimum as the blocks' frontiers (and CBC)."""
    data = synthetic(n, seed=seed)
    problem = build_problem(parse_manifest(data), Constraints(budget=data["model"]["suggested_budget"], tie_blocks=True))
    lagrange = solve(problem, "auto")
    assert lagrange.solver == "auto" and lagrange.status == Status.OPTIMAL and not lagrange.violations
    assert "Lagrangian bound" in lagrange.notes[-1]
    with pytest.MonkeyPatch.context() as mp:
        frontiers_only(mp)
        frontiers = solve(problem, "auto")
    assert frontiers.solver == "auto" and "blocks as one choice each" in frontiers.notes[-1]
    assert lagrange.objective == pytest.approx(frontiers.objective, rel=1e-9)
    if n <= 224:
        assert lagrange.objective == pytest.approx(solve(problem, "cbc").objective, rel=1e-9)


@pytest.mark.parametrize("side", [dict(method_caps=(("lora", 56),)), dict(method_caps=(("adapter", 6), ("prefix", 3))),
                                  dict(tie_blocks=True), dict(tie_blocks=True, method_caps=(("adapter", 4),))])
def test_fast_path_answers_and_matches_cbc_at_224_layers(side):
    data = synthetic(224, seed=3)
    problem = build_problem(parse_manifest(data), Constraints(budget=data["model"]["suggested_budget"], **side))
    fast, cbc = solve(problem, "auto"), solve(problem, "cbc")
    assert fast.solver == "auto" and fast.status == Status.OPTIMAL, fast.notes
    assert "knapsack path" in fast.notes[-1]
    assert cbc.status == Status.OPTIMAL
    assert fast.objective == pytest.approx(cbc.objective, rel=1e-9)
    assert not fast.violations


def test_two_binding_caps_are_proven_with_small_frontiers_by_deepening():
    # the incumbent repaired to meet two binding caps is poor (here 0.09 below the optimum, a gap 30x the optimum's):
    # one counted DP against it keeps ~14,000 states; run against targets near the bound, as the plain path is,
    # a few hundred suffice
    from layerlens_opt.solvers import side

    data = synthetic(120, seed=1)
    problem = build_problem(parse_manifest(data), Constraints(budget=data["model"]["suggested_budget"],
                                                              method_caps=(("adapter", 4), ("lora", 30))))
    result = side.solve_side(problem, max_states=2_000)
    assert result.choice is not None, result.reason
    cbc = solve(problem, "cbc")
    assert cbc.status == Status.OPTIMAL
    assert problem.value(result.choice) == pytest.approx(cbc.objective, rel=1e-9)
    counts = [problem.method_of(o) for o in result.choice]
    assert counts.count("adapter") <= 4 and counts.count("lora") <= 30


def test_a_stopped_deepening_hands_over_the_best_allocation_its_rounds_found(monkeypatch):
    """The first round (a target near the bound) misses it but finds an allocation better than the repaired start;
    when the next round stops (forced here), that allocation, not the start, is what CBC is given and auto keeps."""
    from layerlens_opt.solvers import mckp, side

    real = mckp.solve_core

    def problem_of(seed):
        data = synthetic(120, seed=seed)
        return build_problem(parse_manifest(data), Constraints(budget=data["model"]["suggested_budget"],
                                                               method_caps=(("adapter", 4), ("lora", 30))))

    def first_round_improves(problem):
        seen = []

        def record(knap, pre, **kw):
            result = real(knap, pre, **kw)
            seen.append((pre.incumbent, pre.incumbent_value, result.value))
            return result

        monkeypatch.setattr(mckp, "solve_core", record)
        side.solve_side(problem)
        _, start_value, found = seen[0]
        return found > start_value + 1e-6

    # a problem whose first round improves on the start (which ones do depends on the last bits of the
    # floating-point sums, so the first of a few seeds that does is taken)
    problem = next((p for p in map(problem_of, range(1, 13)) if first_round_improves(p)), None)
    assert problem is not None, "no seed's first deepening round improved on the start"
    rounds = []

    def first_round_only(knap, pre, **kw):
        if rounds:
            return mckp.CoreResult(None, 1, "the state limit stopped it (forced)")
        result = real(knap, pre, **kw)
        rounds.append((pre.incumbent, pre.incumbent_value, result.value))
        return result

    monkeypatch.setattr(mckp, "solve_core", first_round_only)
    result = side.solve_side(problem)
    assert result.choice is None and "(forced)" in result.reason
    start, start_value, found = rounds[0]  # (no tied blocks: the knapsack's options are the problem's)
    assert found > start_value + 1e-6
    assert problem.value(result.incumbent) == pytest.approx(problem.value(start) + (found - start_value), rel=1e-9)
    assert result.bound >= problem.value(result.incumbent)


def test_time_limit_passing_while_tied_blocks_are_built_hands_over_to_cbc(monkeypatch):
    """Building the blocks' frontiers checks the deadline: past it, auto says so and CBC answers (within its own
    minimum second) instead of the build running on."""
    from layerlens_opt.solvers import SolverOptions, side

    data = synthetic(224, seed=3)
    problem = build_problem(parse_manifest(data), Constraints(budget=data["model"]["suggested_budget"], tie_blocks=True))
    frontiers_only(monkeypatch)
    calls = []
    original = side.build_knapsack

    def late(problem, capped, weight, deadline=None):
        calls.append(deadline)
        return original(problem, capped, weight, deadline=0.0)  # a deadline long past

    monkeypatch.setattr(side, "build_knapsack", late)
    alloc = solve(problem, "auto", SolverOptions(time_limit=30))
    assert calls and calls[0] is not None  # the command's deadline reaches the build
    assert alloc.solver.startswith("auto/cbc") and any("time limit passed while the tied blocks" in n for n in alloc.notes)
    assert alloc.status in (Status.OPTIMAL, Status.FEASIBLE) and not alloc.violations


def test_a_tied_block_too_large_for_memory_hands_over_to_cbc_early(monkeypatch):
    """A block's frontier is bounded in entries (an MoE block of 776 layers held 1.8 GB and took 68 s before the bound):
    past it auto says so and CBC answers, with the same optimum the knapsack path proves without the bound."""
    from layerlens_opt.solvers import side

    data = synthetic(72, seed=5)
    problem = build_problem(parse_manifest(data), Constraints(budget=data["model"]["suggested_budget"], tie_blocks=True))
    frontiers_only(monkeypatch)
    proven = solve(problem, "auto")
    assert proven.solver == "auto" and proven.status == Status.OPTIMAL
    monkeypatch.setattr(side, "MAX_BLOCK_ENTRIES", 40)
    alloc = solve(problem, "auto")
    assert alloc.solver.startswith("auto/cbc"), alloc.notes
    assert any("more Pareto points than the knapsack path holds" in n for n in alloc.notes), alloc.notes
    assert alloc.status == Status.OPTIMAL and alloc.objective == pytest.approx(proven.objective, rel=1e-7)


# --- vectorized dominance and Pareto filters against their definitions, option by option -----------------------

def _undominated_reference(problem, keys, free):
    """The definition: per layer, options by cost (then gain descending, then number); one stays when its gain beats
    every earlier option of its key (and, when ``free``, every earlier option of key 0)."""
    out = []
    for l in range(problem.n_layers):
        idx = sorted(problem.options_of(l), key=lambda o: (int(problem.option_cost[o]), -float(problem.option_gain[o]), o))
        kept = []
        for i, o in enumerate(idx):
            before = [q for q in idx[:i] if keys[q] == keys[o] or (free and keys[q] == 0)]
            if all(problem.option_gain[o] > problem.option_gain[q] for q in before):
                kept.append(o)
        out.append(tuple(kept))
    return tuple(out)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.integers(0, 10**6), st.integers(1, 9), st.integers(1, 4), st.booleans())
def test_keyed_dominance_matches_its_definition(seed, n_layers, n_keys, ties):
    from layerlens_opt.solvers import mckp

    p = random_problem(seed, n_layers=n_layers, ranks=(1, 2, 4, 8))
    rng = np.random.default_rng(seed)
    if ties:  # equal gains and costs across options, so the tie rules matter
        p = p.__class__(**{**p.__dict__, "option_gain": np.round(p.option_gain, 1), "option_cost": (p.option_cost // 500) * 500})
    key = rng.integers(0, n_keys, len(p.option_cost))
    assert mckp.undominated(p, key=key) == _undominated_reference(p, key, free=True)
    assert mckp.undominated(p, per_method=True) == _undominated_reference(p, p.option_method, free=False)


@settings(max_examples=60, deadline=None)
@given(st.integers(0, 10**6), st.integers(1, 200), st.sampled_from([1, 3, 5, 40, 100]))
def test_keyed_pareto_matches_its_definition(seed, n, n_keys):  # few keys: a loop over them; many: one ranked pass
    from layerlens_opt.solvers import mckp

    rng = np.random.default_rng(seed)
    c, g = rng.integers(0, 8, n), np.round(rng.uniform(0, 3, n), 1)
    key, tag = rng.integers(0, n_keys, n), np.arange(n)
    oc, og, ok, otag = mckp.pareto(c, g, key, tag)
    # kept: per key, by cost ascending then gain descending (stable), the states whose gain beats every earlier one's
    order = sorted(range(n), key=lambda i: (key[i], c[i], -g[i]))
    want = [i for j, i in enumerate(order) if all(g[i] > g[q] for q in order[:j] if key[q] == key[i])]
    assert otag.tolist() == want and oc.tolist() == c[want].tolist() and ok.tolist() == key[want].tolist()


def test_cbc_cut_short_by_its_time_limit_never_calls_a_feasible_problem_infeasible():
    """With a 1 s limit on 2,000 layers and two caps, CBC's preprocessing is cut short and says 'infeasible'
    (PuLP reads a proof); the problem is feasible (the knapsack path meets both caps), so that is an error, not a proof."""
    from layerlens_opt.solvers import SolverOptions

    data = synthetic(2000, seed=0)
    problem = build_problem(parse_manifest(data), Constraints(budget=data["model"]["suggested_budget"],
                                                              method_caps=(("adapter", 6), ("lora", 500))))
    alloc = solve(problem, "cbc", SolverOptions(time_limit=1.0))
    assert alloc.status != Status.INFEASIBLE, alloc.message
    if not alloc.ok:
        assert "not a proof" in alloc.message


def test_auto_keeps_the_knapsack_paths_allocation_when_its_dp_stops_and_cbc_finds_nothing(monkeypatch):
    from layerlens_opt.allocation import make_allocation
    from layerlens_opt.solvers import SolverOptions, exact, mckp

    data = synthetic(224, seed=1)
    problem = build_problem(parse_manifest(data), Constraints(budget=data["model"]["suggested_budget"], tie_blocks=True,
                                                              method_caps=(("adapter", 3),)))
    best = solve(problem, "auto")
    assert best.status == Status.OPTIMAL
    monkeypatch.setattr(mckp, "solve_core", lambda *a, **k: mckp.CoreResult(None, 1, "the state limit stopped it (forced)"))
    monkeypatch.setattr(exact, "_fallback", lambda problem, *a, **k: make_allocation(
        problem, None, solver="auto/cbc", status=Status.ERROR, message="cbc stopped without an allocation (forced)"))
    alloc = solve(problem, "auto", SolverOptions(time_limit=30))
    assert alloc.status == Status.FEASIBLE and not alloc.violations
    assert alloc.objective <= best.objective + 1e-9 and alloc.bound >= best.objective - 1e-9  # a true bound
    assert any("knapsack path's allocation" in n and "(forced)" in n for n in alloc.notes)


def test_cbc_takes_over_from_the_knapsack_paths_allocation(monkeypatch):
    """Where the caps/ties DP stops, CBC starts from the knapsack path's allocation (it meets the caps and ties;
    the heuristic's does not) and the answer is still the optimum."""
    from layerlens_opt.solvers import mckp

    data = synthetic(72, seed=2)
    problem = build_problem(parse_manifest(data), Constraints(budget=data["model"]["suggested_budget"], tie_blocks=True,
                                                              method_caps=(("adapter", 2),)))
    best = solve(problem, "auto")
    monkeypatch.setattr(mckp, "solve_core", lambda *a, **k: mckp.CoreResult(None, 1, "the state limit stopped it (forced)"))
    alloc = solve(problem, "auto")
    assert alloc.solver == "auto/cbc" and alloc.warm_start and "warm start: the knapsack path's allocation, which meets the side constraints" in alloc.notes
    assert alloc.status == Status.OPTIMAL and abs(alloc.objective - best.objective) < 1e-9


def test_tied_moe_blocks_of_hundreds_of_layers_are_proven_and_match_cbc():
    """Blocks of 121 layers (an attention projection and 60 experts x 2 projections): past what the blocks' frontiers
    take, the Lagrangian method choice proves the optimum CBC finds."""
    from layerlens_opt.solvers import side

    from test_tied_groups import moe_manifest

    m = moe_manifest(blocks=3, experts=60, seed=4)
    assert max(map(len, side._units(build_problem(m, Constraints(10**9, tie_blocks=True))))) > side.BIG_BLOCK
    top = build_problem(m, Constraints(10**9)).cost_range()[1]
    for share in (0.05, 0.3):
        problem = build_problem(m, Constraints(int(top * share), 0.0, 0.9, tie_blocks=True))
        fast, cbc = solve(problem, "auto"), solve(problem, "cbc")
        assert fast.solver == "auto" and fast.status == Status.OPTIMAL, fast.notes
        assert "Lagrangian bound" in fast.notes[-1] and not fast.violations
        assert cbc.status == Status.OPTIMAL and fast.objective == pytest.approx(cbc.objective, rel=1e-9)


def test_many_tied_blocks_left_open_hand_over_without_building_their_combinations(monkeypatch):
    """Every block's methods made equal in the bound (all 32 blocks open: 2**32 and more combinations): the count is
    taken before any combination is built, the blocks' frontiers answer, and the answer is the optimum."""
    from layerlens_opt.solvers import side

    data = synthetic(224, seed=3)
    problem = build_problem(parse_manifest(data), Constraints(budget=data["model"]["suggested_budget"], tie_blocks=True))
    original = side._BlockBound.parts

    def level(self, price):
        total, over = original(self, price)
        return total, np.where(self.present, over.max(axis=1, keepdims=True), 0.0)

    monkeypatch.setattr(side._BlockBound, "parts", level)
    result = side.solve_block_methods(problem, side._units(problem))
    assert result.choice is None and "more than 16 combinations" in result.reason and result.incumbent is not None
    alloc = solve(problem, "auto")
    assert alloc.solver == "auto" and "blocks as one choice each" in alloc.notes[-1]
    assert alloc.objective == pytest.approx(solve(problem, "cbc").objective, rel=1e-9)


@pytest.mark.parametrize("n, seed", [(72, 7), (120, 2)])
def test_stopped_frontiers_hand_over_the_better_of_both_paths_allocations(monkeypatch, n, seed):
    """Tied blocks small enough for frontiers: when the Lagrangian method choice stops and so do the frontiers
    (every DP stopped, forced), the allocation handed over is the better of the two paths' (72 layers seed 7: the
    Lagrangian one, 120 seed 2: the frontiers'), and the bound the tighter of theirs."""
    from layerlens_opt.solvers import mckp, side

    data = synthetic(n, seed=seed)
    problem = build_problem(parse_manifest(data), Constraints(budget=data["model"]["suggested_budget"], tie_blocks=True))
    monkeypatch.setattr(mckp, "solve_core", lambda *a, **k: mckp.CoreResult(None, 1, "the state limit stopped it (forced)"))
    lagrangian = side.solve_block_methods(problem, side._units(problem))
    with pytest.MonkeyPatch.context() as mp:
        frontiers_only(mp)
        frontier = side.solve_side(problem)
    both = side.solve_side(problem)
    assert lagrangian.choice is None and frontier.choice is None and both.choice is None and "(forced)" in both.reason
    values = problem.value(lagrangian.incumbent), problem.value(frontier.incumbent)
    assert values[0] != pytest.approx(values[1], rel=1e-9)  # the case is one where the paths differ
    assert problem.value(both.incumbent) == max(values)
    assert both.bound == min(lagrangian.bound, frontier.bound) and both.bound >= max(values)
    assert not choice_violations(problem, both.incumbent)
