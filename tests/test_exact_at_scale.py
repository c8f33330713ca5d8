"""The fast path (LP bound + reduced-cost fixing + core DP) against brute force and CBC, over many seeds."""

from dataclasses import replace

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from layerlens_opt.allocation import Status
from layerlens_opt.generate import synthetic
from layerlens_opt.manifest import parse_manifest
from layerlens_opt.problem import Constraints, build_problem
from layerlens_opt.solvers import SolverOptions, solve
from layerlens_opt.solvers import mckp

from conftest import brute_force, random_problem

SETTINGS = settings(max_examples=int(__import__("os").environ.get("LAYERLENS_EXAMPLES", "60")), deadline=None, suppress_health_check=[HealthCheck.too_slow])


@SETTINGS
@given(seed=st.integers(0, 10**6), n=st.integers(1, 5), zero_gain=st.booleans(),
       lo=st.sampled_from([0.0, 0.5, 0.7, 0.85]), width=st.sampled_from([0.05, 0.2, 0.3]),
       k=st.sampled_from([0, 0, 2, 3]))
def test_fast_path_equals_brute_force(seed, n, zero_gain, lo, width, k):
    problem = random_problem(seed, n_layers=n, zero_gain=zero_gain, lo=lo, hi=min(1.0, lo + width))
    if k:
        problem = problem.with_constraints(replace(problem.constraints, min_methods=k))
    alloc = solve(problem, "auto")
    if k:
        from layerlens_opt.metrics import violations
        import itertools

        best = None
        for combo in itertools.product(*[list(problem.options_of(l)) for l in range(problem.n_layers)]):
            layers = [{"method": problem.method_of(o), "params": int(problem.option_cost[o])} for o in combo]
            if not violations(layers, problem.constraints.to_dict()):
                v = sum(float(problem.option_gain[o]) for o in combo)
                best = v if best is None else max(best, v)
    else:
        best, _ = brute_force(problem)
    if best is None:
        assert alloc.status == Status.INFEASIBLE, alloc
    else:
        assert alloc.status == Status.OPTIMAL, alloc.message
        assert alloc.objective == pytest.approx(best, rel=1e-9, abs=1e-12)
        assert not alloc.violations


@settings(max_examples=12, deadline=None)
@given(seed=st.integers(0, 10**6), n=st.integers(20, 40), zero_gain=st.booleans(), lo=st.sampled_from([0.7, 0.88]))
def test_fast_path_equals_plain_cbc_on_medium_problems(seed, n, zero_gain, lo):
    problem = random_problem(seed, n_layers=n, zero_gain=zero_gain, lo=lo, hi=0.9, ranks=(1, 2, 4, 8))
    a = solve(problem, "auto")
    b = solve(problem, "cbc", SolverOptions(presolve=False))
    assert a.status == b.status
    if a.status == Status.OPTIMAL:
        assert a.objective == pytest.approx(b.objective, rel=1e-9)


@pytest.mark.parametrize("n", [72, 224, 560])
def test_generated_scale_problems_are_proven_optimal(n):
    data = synthetic(n, seed=0)
    problem = build_problem(parse_manifest(data), Constraints(budget=data["model"]["suggested_budget"]))
    alloc = solve(problem, "auto")
    assert alloc.status == Status.OPTIMAL and alloc.solver == "auto"  # no fallback needed
    pre = mckp.presolve(problem)
    assert pre.bound >= alloc.objective - 1e-9  # the LP bound bounds the optimum
    assert pre.incumbent_value <= alloc.objective + 1e-12
    if n <= 224:
        ref = solve(problem, "cbc")
        assert ref.status == Status.OPTIMAL
        assert alloc.objective == pytest.approx(ref.objective, rel=1e-9)


def test_time_limit_on_the_fast_path_reports_feasible_with_gap(monkeypatch):
    """When the core search is stopped, auto must not call the incumbent optimal."""
    data = synthetic(224, seed=0)
    problem = build_problem(parse_manifest(data), Constraints(budget=data["model"]["suggested_budget"]))
    monkeypatch.setattr(mckp, "solve_core", lambda *a, **k: mckp.CoreResult(None, 0, "test stop"))
    alloc = solve(problem, "auto", SolverOptions(time_limit=60))
    assert "test stop" in alloc.notes[-1] and alloc.solver == "auto/cbc"


def test_warm_started_cbc_does_not_stop_short_of_the_optimum():
    """Regression: with its default cutoff increment, warm-started CBC returned 3.6590982 as
    'optimal' on this instance; the optimum (auto, HiGHS) is 3.6591055."""
    problem = random_problem(22, n_layers=22, zero_gain=False, lo=0.7, hi=0.9, ranks=(1, 2, 4, 8))
    plain = solve(problem, "cbc", SolverOptions(presolve=False, warm_start=True))
    assert plain.warm_start
    assert plain.objective == pytest.approx(solve(problem, "auto").objective, rel=1e-12)
    assert plain.objective == pytest.approx(solve(problem, "highs", SolverOptions(presolve=False)).objective, rel=1e-12)


def test_min_methods_may_need_an_option_another_method_dominates():
    """Regression: reaching 2 methods needed LoRA r1, which prefix r1 dominates (same cost, more
    gain); global dominance pruning had removed it and the DP returned 0.3148 instead of 0.3669."""
    import itertools

    from layerlens_opt.metrics import violations

    problem = random_problem(1, n_layers=3, zero_gain=False, lo=0.5, hi=0.7)
    problem = problem.with_constraints(replace(problem.constraints, min_methods=2))
    best = max(
        sum(float(problem.option_gain[o]) for o in combo)
        for combo in itertools.product(*[list(problem.options_of(l)) for l in range(problem.n_layers)])
        if not violations([{"method": problem.method_of(o), "params": int(problem.option_cost[o])} for o in combo],
                          problem.constraints.to_dict())
    )
    assert solve(problem, "auto").objective == pytest.approx(best, rel=1e-12)


def test_time_limited_cbc_reports_its_own_best_bound():
    """A CBC run stopped by its time limit reports CBC's best bound (parsed from its log), not the looser LP bound."""
    from conftest import ROOT
    from layerlens_opt.manifest import load_manifest

    m = load_manifest(ROOT / "problems" / "architectures" / "llama3-70b.json")
    problem = build_problem(m, Constraints(budget=m.model["suggested_budget"]))
    exact = solve(problem, "auto")
    lp_bound = mckp.presolve(problem).bound
    alloc = solve(problem, "cbc", SolverOptions(time_limit=2, presolve=False))
    if alloc.status == Status.OPTIMAL:  # a fast machine may finish; then there is nothing to check
        return
    assert alloc.status == Status.FEASIBLE
    assert exact.objective - 1e-9 <= alloc.bound <= lp_bound + 1e-9
    assert alloc.bound < lp_bound  # CBC's bound is the tighter one here


def test_time_limit_spent_before_cbc_reports_the_presolve_incumbent(monkeypatch):
    """When the core search stops at the time limit and too little time is left to build a CBC
    model, auto answers with the presolve's incumbent (feasible, with its LP gap) instead of
    overrunning the limit in PuLP and CBC."""
    from layerlens_opt.allocation import choice_violations
    from layerlens_opt.solvers import exact, ilp

    data = synthetic(300, seed=4)
    problem = build_problem(parse_manifest(data), Constraints(budget=data["model"]["suggested_budget"]))
    exact_alloc = solve(problem, "cbc", SolverOptions(presolve=False))
    monkeypatch.setattr(mckp, "solve_core", lambda *a, **k: mckp.CoreResult(None, 1, "the time limit stopped the core search"))

    def no_cbc(*a, **k):
        raise AssertionError("CBC must not be started once the time limit is spent")

    monkeypatch.setattr(ilp, "solve_ilp", no_cbc)
    monkeypatch.setattr(exact, "BUILD_SECONDS_PER_VARIABLE", 1e6)  # as if building the model took forever
    alloc = solve(problem, "auto", SolverOptions(time_limit=30))
    assert alloc.status == Status.FEASIBLE and alloc.layers
    assert not choice_violations(problem, alloc.choice)
    assert alloc.bound >= exact_alloc.objective - 1e-9 >= alloc.objective - 1e-9
    assert any("best allocation found so far" in n for n in alloc.notes)


def test_a_stopped_deepening_hands_cbc_the_best_allocation_its_rounds_found(monkeypatch):
    """A deepening round misses its target but beats the presolve's incumbent; when the next round stops (forced)
    and no time is left for CBC, that better allocation is the answer, not the presolve's."""
    from layerlens_opt.solvers import exact

    data = synthetic(224, seed=1)
    problem = build_problem(parse_manifest(data), Constraints(budget=data["model"]["suggested_budget"]))
    pre = mckp.presolve(problem)
    real, better = mckp.solve_core, []

    def until_one_improves(core_pre, **kw):
        if better:
            return mckp.CoreResult(None, 1, "the time limit stopped the core search")
        result = real(problem, core_pre, **kw)
        if result.value > core_pre.incumbent_value + 1e-9:
            better.append(result.value)
        return result

    monkeypatch.setattr(mckp, "solve_core", lambda p, core_pre, **kw: until_one_improves(core_pre, **kw))
    monkeypatch.setattr(exact, "BUILD_SECONDS_PER_VARIABLE", 1e6)  # no time to build a CBC model
    alloc = solve(problem, "auto", SolverOptions(time_limit=30))
    assert better and better[0] > pre.incumbent_value + 1e-9
    assert alloc.status == Status.FEASIBLE and alloc.objective == pytest.approx(better[0], rel=1e-12)
    assert alloc.bound == pytest.approx(pre.bound) and not alloc.violations


def test_without_a_time_limit_the_fallback_still_runs_cbc(monkeypatch):
    data = synthetic(300, seed=4)
    problem = build_problem(parse_manifest(data), Constraints(budget=data["model"]["suggested_budget"]))
    monkeypatch.setattr(mckp, "solve_core", lambda *a, **k: mckp.CoreResult(None, 1, "the core's frontier grew past 1 states"))
    alloc = solve(problem, "auto")
    assert alloc.status == Status.OPTIMAL and alloc.solver == "auto/cbc"


def test_core_memory_bound_hands_over_to_cbc(monkeypatch):
    """The DP's backtracking memory is bounded: past the bound auto says so and CBC answers exactly."""
    data = synthetic(300, seed=4)
    problem = build_problem(parse_manifest(data), Constraints(budget=data["model"]["suggested_budget"]))
    free = solve(problem, "auto")
    monkeypatch.setattr(mckp, "MAX_STORED_STATES", 1)
    bounded = solve(problem, "auto")
    assert bounded.solver == "auto/cbc" and any("for backtracking" in n for n in bounded.notes)
    assert bounded.status == Status.OPTIMAL and abs(bounded.objective - free.objective) <= 1e-9 * max(1.0, abs(free.objective))



def test_presolve_takes_the_cut_segment_whole_when_that_is_better():
    """Two small layers fill the cap's first 6 of 10; the third layer's one step (cost 10, gain 10) is cut by the
    cap. The LP's integer part plus what still fits is worth 6.5; taking the cut step whole and undoing the
    other two (the least steep first) is worth 10, the optimum, which no single move reaches from 6.5."""
    problem = random_problem(1, n_layers=3, methods=("lora", "none"), ranks=(1,))
    assert problem.layer_start.tolist() == [0, 2, 4, 6] and problem.option_method.tolist() == [0, 4] * 3  # lora, none
    problem = replace(problem, option_cost=np.array([3, 0, 3, 0, 10, 0], dtype=np.int64),
                      option_gain=np.array([3.3, 0.0, 3.2, 0.0, 10.0, 0.0]),
                      constraints=Constraints(budget=10, min_utilization=0.0, max_utilization=1.0))
    pre = mckp.presolve(problem)
    assert pre.incumbent == (1, 3, 4) and pre.incumbent_value == pytest.approx(10.0)
    assert pre.incumbent_value == pytest.approx(brute_force(problem)[0])


@SETTINGS
@given(seed=st.integers(0, 10**6), n=st.integers(1, 8), lo=st.sampled_from([0.0, 0.7]))
def test_presolve_incumbent_fits_and_is_no_worse_than_the_lp_integer_part(seed, n, lo):
    problem = random_problem(seed, n_layers=n, lo=lo, hi=1.0)
    pre = mckp.presolve(problem)
    assert all(problem.option_layer[o] == l for l, o in enumerate(pre.incumbent))
    assert int(problem.option_cost[list(pre.incumbent)].sum()) <= problem.constraints.hi
    assert pre.incumbent_value == pytest.approx(problem.value(pre.incumbent), rel=1e-12)
    if int(problem.option_cost[list(pre.lp_choice)].sum()) <= problem.constraints.hi:
        assert pre.incumbent_value >= problem.value(pre.lp_choice) - 1e-12
    best, _ = brute_force(replace(problem, constraints=replace(problem.constraints, min_utilization=0.0)))
    assert pre.incumbent_value <= best + 1e-12 <= pre.bound + 1e-9


@SETTINGS
@given(seed=st.integers(0, 10**6), n=st.integers(2, 6), shift=st.sampled_from([-0.2, -0.01, 0.0, 0.01, 0.2]))
def test_core_dp_against_a_target_keeps_every_allocation_worth_it(seed, n, shift):
    """The DP against a target T (options fixed against T) finds the cap-only optimum when it is worth T,
    and answers below T otherwise: what the deepening's proof rests on."""
    problem = random_problem(seed, n_layers=n, lo=0.0, hi=1.0)
    best, _ = brute_force(problem)
    pre = mckp.presolve(problem)
    # the cheapest allocation as the incumbent, so that the answer cannot be the presolve's (often optimal) one
    pre = mckp.with_incumbent(problem, pre, tuple(opts[0] for opts in pre.options), options=pre.options)
    target = best + shift * max(abs(best), 1e-3) if shift else best
    trial = replace(pre, kept=mckp.fix(problem, pre.options, pre.bound, pre.price, target))
    core = mckp.solve_core(problem, trial, target=target)
    assert core.choice is not None
    if target <= best:
        assert core.value == pytest.approx(best, rel=1e-9, abs=1e-12)
        assert problem.value(core.choice) == pytest.approx(best, rel=1e-9, abs=1e-12)
    else:
        assert core.value < target
    assert sum(int(problem.option_cost[o]) for o in core.choice) <= problem.constraints.hi


@SETTINGS
@given(seed=st.integers(0, 10**6), n=st.integers(2, 7))
def test_deepening_from_a_poor_incumbent_proves_the_optimum(seed, n):
    """Started from the cheapest allocation (far from the bound), the deepening rounds improve the
    incumbent and end at the brute-force optimum."""
    problem = random_problem(seed, n_layers=n, lo=0.0, hi=1.0)
    best, _ = brute_force(problem)
    pre = mckp.presolve(problem)
    cheapest = tuple(opts[0] for opts in pre.options)
    poor = mckp.with_incumbent(problem, pre, cheapest, options=pre.options)
    core, proven = mckp.solve_deepening(problem, poor)
    assert core.value == pytest.approx(best, rel=1e-9, abs=1e-12)
    assert problem.value(core.choice) == pytest.approx(best, rel=1e-9, abs=1e-12)
    assert proven.incumbent_value >= poor.incumbent_value


def test_deepening_proves_a_problem_whose_incumbent_is_far_from_the_optimum():
    """A generated problem whose incumbent is 6x further from the LP bound than the optimum: the first rounds
    (targets above the optimum) fail, a later one proves the optimum, which equals CBC's."""
    data = synthetic(224, seed=0)
    problem = build_problem(parse_manifest(data), Constraints(budget=data["model"]["suggested_budget"]))
    ref = solve(problem, "cbc")
    assert ref.status == Status.OPTIMAL
    pre = mckp.presolve(problem)
    true_gap = pre.bound - ref.objective
    assert true_gap > 0
    poor = mckp.with_incumbent(problem, pre, pre.incumbent, value=pre.bound - 6 * true_gap, options=pre.options)
    rounds = []
    original = mckp.solve_core

    def counting(*args, **kw):
        result = original(*args, **kw)
        rounds.append((kw.get("target"), result.value))
        return result

    import unittest.mock

    with unittest.mock.patch.object(mckp, "solve_core", counting):
        core, _ = mckp.solve_deepening(problem, poor)
    assert len(rounds) >= 3 and all(value < target for target, value in rounds[:2])  # the first two targets lie above the optimum
    assert core.value == pytest.approx(ref.objective, rel=1e-9)


def test_deepening_with_an_incumbent_past_the_bound_runs_one_round():
    """Rounding can put the incumbent's value a hair above the LP bound: the deepening then runs one round (the
    targets would otherwise climb above the bound, round after round)."""
    problem = random_problem(3, n_layers=5, lo=0.0, hi=1.0)
    pre = mckp.presolve(problem)
    past = mckp.with_incumbent(problem, pre, pre.incumbent, value=pre.bound + 1e-9 * max(1.0, abs(pre.bound)), options=pre.options)
    rounds = []
    original = mckp.solve_core

    def counting(*args, **kw):
        rounds.append(kw.get("target"))
        return original(*args, **kw)

    import unittest.mock

    with unittest.mock.patch.object(mckp, "solve_core", counting):
        core, _ = mckp.solve_deepening(problem, past)
    assert rounds == [None] and core.choice == pre.incumbent


@SETTINGS
@given(seed=st.integers(0, 10**6), n=st.integers(1, 9), zero_gain=st.booleans())
def test_presolve_matrix_is_the_one_built_from_the_undominated_options(seed, n, zero_gain):
    """The presolve takes its layer x option matrix straight from the dominance pass (compacted), not from the
    option tuples: the same numbers, pads and column order as building it from the tuples."""
    problem = random_problem(seed, n_layers=n, zero_gain=zero_gain, ranks=(1, 2, 4, 8))
    fast, ref = mckp._undominated_padded(problem), mckp._Padded.of(problem, mckp.undominated(problem))
    for name in ("idx", "valid", "cost", "gain"):
        a, b = getattr(fast, name), getattr(ref, name)
        assert a.dtype == b.dtype and np.array_equal(a, b), name
    assert fast.rows(fast.valid) == mckp.undominated(problem)


@SETTINGS
@given(seed=st.integers(0, 10**6), n=st.integers(1, 30), width=st.integers(1, 9), steps=st.integers(1, 4))
def test_hull_points_are_each_rows_upper_concave_hull(seed, n, width, steps):
    """The monotone chain run on all rows at once gives each row's upper hull (collinear points dropped), checked
    point by point: a point is on it iff it lies strictly above the chord between every cheaper and every costlier
    point. Small integer gains (exact in floats) make collinear triples common."""
    rng = np.random.default_rng(seed)
    counts = rng.integers(1, width + 1, n)
    valid = np.arange(width)[None, :] < counts[:, None]
    cost = np.where(valid, np.cumsum(rng.integers(1, 6, (n, width)), axis=1), mckp._Padded.PAD_COST)
    gain = np.where(valid, np.cumsum(rng.integers(1, steps + 1, (n, width)), axis=1).astype(float), -np.inf)
    points, count = mckp._hull_points(cost, gain, valid)
    for r in range(n):
        c, g = cost[r, : counts[r]].tolist(), gain[r, : counts[r]].tolist()
        on = [j for j in range(len(c))
              if all((g[j] - g[a]) * (c[b] - c[a]) > (g[b] - g[a]) * (c[j] - c[a]) for a in range(j) for b in range(j + 1, len(c)))]
        assert points[r, : count[r]].tolist() == on


@SETTINGS
@given(seed=st.integers(0, 10**6), n=st.integers(1, 40), width=st.integers(1, 8), spread=st.integers(1, 20))
def test_by_cost_sorts_each_row_by_cost_then_gain_descending_then_option(seed, n, width, spread):
    """The sort by cost alone, with the rows where two options cost the same sorted again, is the three-key sort
    (cost, gain descending, option number) of every row; few distinct costs and gains make ties common."""
    rng = np.random.default_rng(seed)
    counts = rng.integers(1, width + 1, n)
    valid = np.arange(width)[None, :] < counts[:, None]
    idx = rng.permuted(np.tile(np.arange(width), (n, 1)), axis=1) + 100 * np.arange(n)[:, None]
    m = mckp._Padded.__new__(mckp._Padded)
    m.problem, m.valid, m.idx = None, valid, np.where(valid, idx, 0)
    m.cost = np.where(valid, rng.integers(0, spread, (n, width)), mckp._Padded.PAD_COST)
    m.gain = np.where(valid, rng.integers(0, 3, (n, width)) / 2.0, -np.inf)
    out = m.by_cost()
    order = np.lexsort((m.idx, -m.gain, m.cost), axis=-1)
    for name in ("idx", "valid", "cost", "gain"):
        assert np.array_equal(getattr(out, name), np.take_along_axis(getattr(m, name), order, axis=1)), name


@SETTINGS
@given(seed=st.integers(0, 10**6), states=st.integers(1, 60), options=st.integers(1, 8), spread=st.integers(1, 50),
       tight=st.floats(0, 1))
def test_dp_step_as_a_matrix_equals_the_loop_over_options(seed, states, options, spread, tight):
    """The DP step's two ways of forming (state, option) candidates give the same frontier, parents and picks
    (equal costs and gains frequent, the cap and the threshold cutting some candidates)."""
    rng = np.random.default_rng(seed)
    s_cost = np.sort(rng.integers(0, spread * 4, states))
    s_gain = np.sort(rng.integers(0, spread, states) / 4.0)
    cost_j, gain_j = rng.integers(0, spread, options), rng.integers(0, spread, options) / 4.0
    price = 0.05
    s_reduced, reduced_j = s_gain - price * s_cost, gain_j - price * cost_j
    cap = int(tight * (s_cost.max() + cost_j.max())) + 1
    threshold = float(np.quantile(s_reduced, tight)) + float(np.median(reduced_j)) * tight
    matrix = mckp._extend_matrix(s_cost, s_gain, s_reduced, cost_j, gain_j, reduced_j, threshold, cap)
    assert len(s_cost) * len(cost_j) <= mckp.EXTEND_MATRIX  # (so _extend itself took the matrix: compare the loop)
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(mckp, "EXTEND_MATRIX", 0)
        loop = mckp._extend(s_cost, s_gain, s_reduced, cost_j, gain_j, reduced_j, threshold, cap)
    for a, b in zip(loop, matrix):
        assert a.dtype == b.dtype and np.array_equal(a, b)


@SETTINGS
@given(seed=st.integers(0, 10**6), n=st.integers(0, 60), ties=st.integers(1, 30))
def test_descending_is_a_stable_sort_largest_first(seed, n, ties):
    values = np.random.default_rng(seed).integers(0, ties, n) / 7.0
    assert np.array_equal(mckp._descending(values), np.argsort(-values, kind="stable"))


@SETTINGS
@given(seed=st.integers(0, 10**6), n=st.integers(0, 40), width=st.integers(0, 6), density=st.floats(0, 1))
def test_padded_rows_are_the_masked_entries_of_each_row(seed, n, width, density):
    """The per-layer option tuples cut from a padded matrix (rows grouped by how many entries they keep)."""
    rng = np.random.default_rng(seed)
    padded = mckp._Padded.__new__(mckp._Padded)
    padded.idx = rng.integers(0, 1000, (n, width))
    mask = rng.random((n, width)) < density
    rows = padded.rows(mask)
    assert rows == tuple(tuple(int(v) for v, keep in zip(r, m) if keep) for r, m in zip(padded.idx, mask))
    assert all(type(row) is tuple and all(type(v) is int for v in row) for row in rows)


@SETTINGS
@given(seed=st.integers(0, 10**6), n=st.integers(0, 40), width=st.integers(1, 6), density=st.floats(0, 1))
def test_kept_reads_as_the_tuples_of_the_masked_entries(seed, n, width, density):
    """A Kept (the presolve's and fixing's options per layer) reads as the tuples :meth:`_Padded.rows` builds, and
    its arrays (counts, first option, a layer's options) are those tuples' lengths, heads and entries."""
    import pickle

    rng = np.random.default_rng(seed)
    padded = mckp._Padded.__new__(mckp._Padded)
    padded.idx = rng.integers(0, 1000, (n, width))
    mask = rng.random((n, width)) < density
    want = padded.rows(mask)
    for kept in (padded.kept(mask), padded.kept(mask)):  # the second read after its tuples are built
        assert [kept[l] for l in range(n)] == list(want) and len(kept) == n and kept[1:] == want[1:]
        assert kept.counts.tolist() == [len(t) for t in want]
        assert [int(f) for f, t in zip(kept.first(), want) if t] == [t[0] for t in want if t]
        assert [a.tolist() for a in kept.arrays(range(n))] == [list(t) for t in want]
        assert kept == want and want == kept and hash(kept) == hash(want) and repr(kept) == repr(want)
        kept.tuples()
    assert pickle.loads(pickle.dumps(padded.kept(mask))) == want and type(pickle.loads(pickle.dumps(padded.kept(mask)))) is tuple


@SETTINGS
@given(seed=st.integers(0, 10**6), n=st.integers(1, 12), prices=st.lists(st.floats(0.0, 1e-3), min_size=1, max_size=4))
def test_fixing_at_any_price_sequence_equals_the_reduced_cost_test(seed, n, prices):
    """The padded matrix keeps its reduced costs for the last price asked: fixing at a sequence of prices (repeats
    included) keeps what the reduced-cost test computed afresh keeps."""
    problem = random_problem(seed, n_layers=n, ranks=(1, 2, 4, 8))
    pre = mckp.presolve(problem)
    m = pre.padded
    for price in prices + prices[:1]:
        reduced = m.gain - price * m.cost
        for value in (pre.incumbent_value, pre.bound):
            want = m.valid & (pre.bound + (reduced - reduced.max(axis=1)[:, None]) >= value - mckp.REL_TOL * max(1.0, abs(pre.bound)))
            assert np.array_equal(mckp.fix(problem, pre.options, pre.bound, price, value, m).mask, want)


@SETTINGS
@given(seed=st.integers(0, 10**6), n=st.integers(2, 12), shift=st.floats(0.0, 1.0))
def test_core_dp_reads_kept_arrays_as_it_reads_tuples(seed, n, shift):
    """The core DP given the presolve's Kept (arrays) and the same options as plain tuples: the same answer."""
    problem = random_problem(seed, n_layers=n, ranks=(1, 2, 4, 8))
    pre = mckp.presolve(problem)
    target = pre.bound - shift * max(0.0, pre.bound - pre.incumbent_value)
    trial = replace(pre, kept=mckp.fix(problem, pre.options, pre.bound, pre.price, target, pre.padded))
    assert isinstance(trial.kept, mckp.Kept) and isinstance(pre.options, mckp.Kept)
    plain = replace(trial, kept=tuple(trial.kept))
    assert trial.core_layers == plain.core_layers and trial.kept_options == plain.kept_options
    assert mckp.solve_core(problem, trial, target=target) == mckp.solve_core(problem, plain, target=target)


@SETTINGS
@given(seed=st.integers(0, 10**6), n=st.integers(3, 8), from_cheapest=st.booleans(), miss_step=st.sampled_from([None, 2]))
def test_deepening_steps_twice_as_far_after_a_better_allocation_and_four_times_after_none(seed, n, from_cheapest, miss_step):
    """The deepening's schedule: after a round whose answer beats the incumbent the target falls twice as far
    below the bound, after one that finds nothing better four times as far (``miss_step``, the benchmark's
    comparison: 2); the answer is the optimum."""
    import unittest.mock

    problem = random_problem(seed, n_layers=n, lo=0.0, hi=1.0)
    best, _ = brute_force(problem)
    pre = mckp.presolve(problem)
    poor = mckp.with_incumbent(problem, pre, tuple(opts[0] for opts in pre.options), options=pre.options) if from_cheapest else pre
    rounds = []  # (target, the incumbent's value going in, the round's answer)
    original = mckp.solve_core

    def recording(problem_, trial, **kw):
        result = original(problem_, trial, **kw)
        rounds.append((kw.get("target"), trial.incumbent_value, result.value))
        return result

    with unittest.mock.patch.object(mckp, "solve_core", recording):
        core, _ = mckp.solve_deepening(problem, poor, miss_step=miss_step)
    assert core.value == pytest.approx(best, rel=1e-9, abs=1e-12)
    steps = [(poor.bound - t, incumbent, value) for t, incumbent, value in rounds if t is not None]
    miss = mckp.DEEPENING_MISS_STEP if miss_step is None else miss_step
    for (d0, incumbent, value), (d1, _, _) in zip(steps, steps[1:]):
        assert d1 / d0 == pytest.approx(2.0 if value > incumbent else miss, rel=1e-9)


def test_a_fourfold_step_whose_round_outgrows_the_dp_is_taken_twofold_instead():
    """Where the round after a fruitless one stops at the DP's limits, the deepening runs that round again at twice
    the fruitless round's distance from the bound (not four times), and still proves the optimum."""
    import unittest.mock

    original = mckp.solve_core
    for seed in range(200):
        problem = random_problem(seed, n_layers=6, lo=0.0, hi=1.0)
        poor = mckp.presolve(problem)  # (its incumbent is often the optimum: the first rounds find nothing better)
        rounds = []  # (distance of the target below the bound or None for the last round, incumbent in, answer)

        def recording(problem_, trial, refuse_after_fruitless=False, **kw):
            target = kw.get("target")
            fruitless = bool(rounds) and rounds[-1][0] is not None and rounds[-1][2] is not None and rounds[-1][2] <= rounds[-1][1]
            if refuse_after_fruitless and fruitless and not any(r[3] for r in rounds):
                rounds.append((None if target is None else poor.bound - target, trial.incumbent_value, None, True))
                return mckp.CoreResult(None, 10**6, "the core's frontier grew past 400,000 states")
            result = original(problem_, trial, **kw)
            rounds.append((None if target is None else poor.bound - target, trial.incumbent_value, result.value, False))
            return result

        with unittest.mock.patch.object(mckp, "solve_core", recording):
            mckp.solve_deepening(problem, poor)
        if not any(r[0] is not None and r[2] <= r[1] for r in rounds[:-1]):
            continue  # no fruitless round followed by another here
        rounds.clear()
        with unittest.mock.patch.object(mckp, "solve_core", lambda *a, **kw: recording(*a, refuse_after_fruitless=True, **kw)):
            core, _ = mckp.solve_deepening(problem, poor)
        refused = next(k for k, r in enumerate(rounds) if r[3])
        fruitless_distance = rounds[refused - 1][0]
        for k, factor in ((refused, mckp.DEEPENING_MISS_STEP), (refused + 1, 2)):
            distance, incumbent = rounds[k][0], rounds[k][1]
            if distance is None:  # the round against the incumbent: the step reached it
                assert factor * fruitless_distance >= poor.bound - incumbent - 1e-9
            else:
                assert distance == pytest.approx(factor * fruitless_distance, rel=1e-9)
        best, _ = brute_force(problem)
        assert core.choice is not None and core.value == pytest.approx(best, rel=1e-9, abs=1e-12)
        return
    pytest.fail("no seed gave a fruitless deepening round followed by another")


def test_the_deepening_benchmark_compares_both_schedules_on_the_same_optima():
    from layerlens_opt.bench import deepening_schedules

    text = deepening_schedules(repeats=1, sizes=(300, 700), seeds=(1, 2), moe=False)
    rows = [line for line in text.splitlines() if line.startswith("synthetic")]
    assert len(rows) == 4 and all(line.rstrip().endswith("yes") for line in rows)
    assert text.splitlines()[-1].startswith("all")
