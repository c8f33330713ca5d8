"""`explain`: the exact LP of the budget window (against HiGHS), its cvxpy cross-check, and its table at scale."""

import json
from pathlib import Path
import sys

import numpy as np
import pytest
from click.testing import CliRunner

from layerlens_opt.cli import main
from layerlens_opt.solvers import mckp

from conftest import ROOT, brute_force, layer, manifest, random_problem

SCENARIO = ROOT / "problems" / "scenarios" / "early-sensitive.json"


def _highs_lp(problem):
    """(status, optimum, marginals of cap and floor) of the window's LP relaxation from scipy's HiGHS."""
    linprog = pytest.importorskip("scipy.optimize").linprog
    n, c = problem.n_options, problem.option_cost.astype(float)
    rows = np.repeat(np.arange(problem.n_layers), np.diff(problem.layer_start))
    a_eq = np.zeros((problem.n_layers, n))
    a_eq[rows, np.arange(n)] = 1.0
    res = linprog(-problem.option_gain, A_ub=np.vstack([c, -c]), b_ub=[problem.constraints.hi, -problem.constraints.lo],
                  A_eq=a_eq, b_eq=np.ones(problem.n_layers), bounds=(0, 1), method="highs")
    return res.status, (-res.fun if res.status == 0 else None), (None if res.status else -res.ineqlin.marginals)


SEEDS = range(120)


def _windowed(seed):
    """A random problem whose window is loose, tight or out of reach, some with layers of zero gain."""
    lo, hi = [(0.7, 0.9), (0.95, 1.0), (0.99, 1.0), (0.3, 0.5)][seed % 4]
    return random_problem(seed, n_layers=4, lo=lo, hi=hi, zero_gain=seed % 3 == 0)


@pytest.mark.parametrize("seed", SEEDS)
def test_window_lp_is_the_lp_optimum_with_its_prices(seed):
    """Against HiGHS: the same optimum (or both infeasible), its primal equal to its dual, the floor's shadow price
    where the floor binds."""
    problem = _windowed(seed)
    lp = mckp.window_lp(problem)
    status, optimum, prices = _highs_lp(problem)
    if lp is None:
        assert status == 2  # infeasible
        assert brute_force(problem)[0] is None
        return
    assert status == 0
    assert lp.bound == pytest.approx(optimum, rel=1e-9, abs=1e-12)
    assert lp.primal == pytest.approx(lp.bound, rel=1e-9, abs=1e-12)
    assert problem.constraints.lo <= lp.cost <= problem.constraints.hi
    assert min(lp.cap_price, lp.floor_price) == 0.0  # only one side of the window binds
    if lp.cap_price > 0:
        assert lp.cost == problem.constraints.hi
    if lp.floor_price > 0:
        assert lp.cost == problem.constraints.lo
        assert lp.floor_price == pytest.approx(prices[1], rel=1e-6)
    best, _ = brute_force(problem)
    assert best is None or best <= lp.bound + 1e-9


def test_window_lp_finds_a_binding_floor_with_a_price():
    """Some of those problems need the floor's shadow price (a costlier, worse option filling the floor)."""
    lps = [mckp.window_lp(_windowed(seed)) for seed in SEEDS]
    assert any(lp is not None and lp.floor_price > 0 for lp in lps)


def test_window_lp_agrees_with_the_presolve_where_the_cap_binds():
    from layerlens_opt.generate import synthetic
    from layerlens_opt.manifest import parse_manifest
    from layerlens_opt.problem import Constraints, build_problem

    data = synthetic(300, seed=4)
    problem = build_problem(parse_manifest(data), Constraints(budget=data["model"]["suggested_budget"]))
    lp, pre = mckp.window_lp(problem), mckp.presolve(problem)
    assert lp.cap_price == pre.price > 0 and lp.floor_price == 0.0
    assert lp.bound == pytest.approx(pre.bound, rel=1e-12)


def run(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


def test_explain_cuts_a_long_table_to_its_ends_and_explains_one_layer_whole(generated72):
    path, budget = generated72
    whole = run("explain", path, "--budget", budget, "--no-cross-check")
    cut = run("explain", path, "--budget", budget, "--no-cross-check", "--max-rows", "30")
    assert whole.exit_code == cut.exit_code == 0, cut.output
    table = [" ".join(line.split()) for line in whole.output.split("\n\n")[-1].splitlines()]
    shown = [" ".join(line.split()) for line in cut.output.split("\n\n")[-1].splitlines()]
    assert len(table) == 2 + 72
    assert shown[2:12] == table[2:12] and shown[13:] == table[-10:]
    assert shown[12] == "... 52 more layers (all 72: --max-rows 0 or --layer NAME)"
    assert "cross-check (cvxpy): not run (--no-cross-check)" in whole.output
    name = table[40].split()[0]
    one = run("explain", path, "--budget", budget, "--no-cross-check", "--max-rows", "30", "--layer", name)
    assert one.exit_code == 0 and [" ".join(l.split()) for l in one.output.split("\n\n")[-1].splitlines()][2:] == [table[40]]


def test_explain_skips_the_cross_check_past_its_size_unless_asked(generated72, monkeypatch):
    pytest.importorskip("cvxpy")
    from layerlens_opt import explain

    path, budget = generated72
    monkeypatch.setattr(explain, "CROSS_CHECK_MAX_OPTIONS", 100)
    skipped = run("explain", path, "--budget", budget)
    assert skipped.exit_code == 0, skipped.output
    assert "cross-check (cvxpy): skipped" in skipped.output and "--cross-check runs it" in skipped.output
    asked = run("explain", path, "--budget", budget, "--cross-check", "--max-rows", "30")
    assert asked.exit_code == 0, asked.output
    assert "cross-check (cvxpy, status optimal" in asked.output and "agrees" in asked.output
    assert asked.output.split("\n")[0] == skipped.output.split("\n")[0]  # the prices do not depend on cvxpy


def test_explain_runs_without_cvxpy_and_says_so(monkeypatch):
    monkeypatch.setitem(sys.modules, "cvxpy", None)  # import cvxpy raises ImportError
    r = run("explain", SCENARIO, "--budget", "50k")
    assert r.exit_code == 0, r.output
    assert "cross-check (cvxpy): not installed" in r.output and "encoder.layer.0" in r.output
    asked = run("explain", SCENARIO, "--budget", "50k", "--cross-check")
    assert asked.exit_code == 1
    assert asked.exception is None or isinstance(asked.exception, SystemExit)
    assert "the cvxpy cross-check needs cvxpy" in asked.output and "Traceback" not in asked.output


def test_explain_an_unknown_layer_is_a_clear_error():
    r = run("explain", SCENARIO, "--budget", "50k", "--layer", "encoder.layer.99")
    assert r.exit_code == 1 and "no layer named 'encoder.layer.99'" in r.output


def test_explain_a_tied_layer_shows_its_group(tmp_path):
    layers = [layer(f"model.layers.{b}.mlp.experts.{e}.up_proj", "mlp", 16, 16, block=b, ge=0.1 + 0.2 * e + b)
              for b in range(2) for e in range(3)]
    path = tmp_path / "moe.json"
    path.write_text(json.dumps(manifest(layers)))
    ties = ["--tie-groups", r"layers\.(\d+)\.mlp\.experts\.\d+\.(\w+)", "--no-cross-check"]
    whole = run("explain", path, "--budget", "2k", *ties)
    one = run("explain", path, "--budget", "2k", *ties, "--layer", "model.layers.1.mlp.experts.2.up_proj")
    assert whole.exit_code == one.exit_code == 0, one.output
    rows = whole.output.split("\n\n")[-1].splitlines()[2:]
    assert len(rows) == 2  # one row per group
    assert "model.layers.1.mlp.experts.2.up_proj is one of the 3 layers of tied group" in one.output
    group_row = [" ".join(r.split()) for r in rows if r.startswith("group 1/up_proj")]
    assert [" ".join(one.output.split("\n\n")[-1].splitlines()[-1].split())] == group_row


def test_explain_says_when_side_constraints_are_not_in_its_lp():
    from click.testing import CliRunner

    from layerlens_opt.cli import main

    path = str(Path(__file__).resolve().parent.parent / "problems" / "scenarios" / "early-sensitive.json")
    r = CliRunner().invoke(main, ["explain", path, "--budget", "50k", "--method-cap", "adapter=0", "--tie-blocks"])
    assert r.exit_code == 0, r.output
    assert "note: --method-cap adapter=0 and --tie-blocks are not in this LP" in r.output
    plain = CliRunner().invoke(main, ["explain", path, "--budget", "50k"])
    assert "not in this LP" not in plain.output
