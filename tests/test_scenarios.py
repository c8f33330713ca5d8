"""On the predecessor's seven scenarios the ILP must pass every metric an allocation controls."""

import pytest

from layerlens_opt.allocation import Status
from layerlens_opt.manifest import load_manifest
from layerlens_opt.metrics import ALLOCATION_METRICS, PASS, verdicts
from layerlens_opt.problem import Constraints, build_problem
from layerlens_opt.solvers import solve

from conftest import SCENARIOS


def test_all_seven_scenarios_ship():
    assert [p.stem for p in SCENARIOS] == sorted([
        "default-uniform", "high-budget-uniform", "early-sensitive", "late-sensitive",
        "lora-cheap", "utility-focused", "random-sensitivity"])


@pytest.mark.parametrize("path", SCENARIOS, ids=lambda p: p.stem)
@pytest.mark.parametrize("solver", ["auto", "cbc"])
def test_ilp_passes_allocation_metrics(path, solver):
    problem = build_problem(load_manifest(path), Constraints(budget=50_000))
    alloc = solve(problem, solver)
    assert alloc.status == Status.OPTIMAL
    checks = verdicts(alloc.metrics, alloc.constraints)
    failing = {k: (alloc.metrics[k], checks[k]) for k in ALLOCATION_METRICS if checks[k] != PASS}
    assert not failing, failing
    assert 0.70 <= alloc.utilization <= 0.90
    assert alloc.metrics["compatibility_rate"] == 1.0
    # the predecessor's failure: utilities must not collapse, and they track the profile. In the two
    # flat scenarios the +-5% sensitivity spread is the same size as the metrics' noise, so the
    # correlations there measure noise (test_uniform_scenarios_are_flat_by_design).
    if "uniform" not in path.stem:
        assert alloc.metrics["utility_gradient_correlation"] >= 0.7
        assert alloc.metrics["utility_fisher_correlation"] >= 0.6


@pytest.mark.parametrize("path", [p for p in SCENARIOS if "uniform" in p.stem], ids=lambda p: p.stem)
def test_uniform_scenarios_are_flat_by_design(path):
    """Flat by construction (+-5%): utility_cv < 0.2 is the honest answer, and the allocation still
    follows the small differences (rank-utility consistency 100%)."""
    problem = build_problem(load_manifest(path), Constraints(budget=50_000))
    alloc = solve(problem, "auto")
    assert alloc.metrics["utility_cv"] < 0.2
    assert alloc.metrics["rank_utility_consistency"] == 1.0
