"""Pairwise interaction terms: schema, scaling, and exact solutions (brute force agrees)."""

import itertools
import json
import random
import sys

import pytest
from click.testing import CliRunner

from layerlens_opt.allocation import choice_violations
from layerlens_opt.cli import main
from layerlens_opt.errors import ManifestError
from layerlens_opt.manifest import load_manifest, parse_manifest
from layerlens_opt.problem import Constraints, ModelOptions, build_problem
from layerlens_opt.solvers import solve
from layerlens_opt.solvers.options import SolverOptions

from conftest import ROOT


def _manifest(n, pairs, seed=0, version=2):
    rng = random.Random(seed)
    layers = [{"name": f"l{i}", "kind": "attention", "in_features": 8, "out_features": 8, "block": 0,
               "metrics": {"m": rng.random()}, "allowed_methods": ["lora", "none"]} for i in range(n)]
    data = {"schema_version": version, "layers": layers, "metric_weights": {"m": 1}}
    if pairs is not None:
        data["interactions"] = {"metric": "m", "pairs": pairs}
    return data


def _brute_force(problem):
    best = None
    for choice in itertools.product(*[list(problem.options_of(l)) for l in range(problem.n_layers)]):
        if not choice_violations(problem, choice):
            value = problem.value(choice)
            best = value if best is None or value > best else best
    return best


@pytest.mark.parametrize("seed", range(40))
def test_interactions_solved_exactly(seed):
    rng = random.Random(seed)
    n = rng.randint(2, 5)
    pairs = [{"layers": [f"l{a}", f"l{b}"], "value": rng.uniform(-0.6, 0.6), "when": rng.choice(["either", "both"])}
             for a, b in itertools.combinations(range(n), 2) if rng.random() < 0.7]
    manifest = parse_manifest(_manifest(n, pairs, seed))
    lo = rng.choice([0.0, 0.0, 0.5])
    problem = build_problem(manifest, Constraints(budget=rng.choice([32, 64, 100]), min_utilization=lo, max_utilization=1.0),
                            ModelOptions(ranks={"lora": (1, 2, 4)}))
    best = _brute_force(problem)
    for solver, opts in [("auto", SolverOptions()), ("cbc", SolverOptions()), ("cbc", SolverOptions(warm_start=False)),
                         ("highs", SolverOptions())]:
        alloc = solve(problem, solver, opts)
        if best is None:
            assert alloc.status.value == "infeasible", (solver, alloc.message)
            continue
        assert alloc.status.value == "optimal", (solver, alloc.message)
        assert alloc.objective == pytest.approx(best, abs=1e-7), solver
        assert alloc.objective == pytest.approx(problem.value(alloc.choice))


def test_either_and_both_values_by_hand():
    pairs = [{"layers": ["l0", "l1"], "value": 0.5, "when": "either"}, {"layers": ["l1", "l2"], "value": -0.25, "when": "both"}]
    manifest = parse_manifest(_manifest(3, pairs))
    problem = build_problem(manifest, Constraints(budget=1000, min_utilization=0, max_utilization=1),
                            ModelOptions(ranks={"lora": (1,)}))
    top = max(l.metrics["m"] for l in manifest.layers)  # values are in metric units, scaled like the metric
    none = [problem.options_of(l)[0] for l in range(3)]
    lora = [problem.options_of(l)[1] for l in range(3)]
    gains = sum(float(problem.option_gain[o]) for o in lora)
    assert problem.value(none) == 0
    assert problem.value([lora[0], none[1], none[2]]) == pytest.approx(float(problem.option_gain[lora[0]]) + 0.5 / top)
    assert problem.value(lora) == pytest.approx(gains + 0.5 / top - 0.25 / top)
    off = build_problem(manifest, problem.constraints, ModelOptions(ranks={"lora": (1,)}, interactions=False))
    assert off.pairs == () and off.value(lora) == pytest.approx(gains)
    half = build_problem(manifest, problem.constraints, ModelOptions(ranks={"lora": (1,)}, shrink=0.5))
    assert half.pairs[0].value == pytest.approx(0.25 / top)


@pytest.mark.parametrize("edit, fragment", [
    (lambda d: d.update(schema_version=1), "needs schema_version 2"),
    (lambda d: d["interactions"].update(metric="other"), "is not a metric"),
    (lambda d: d["interactions"]["pairs"].append({"layers": ["l0", "zz"], "value": 1}), "names 'zz'"),
    (lambda d: d["interactions"]["pairs"].append({"layers": ["l0", "l0"], "value": 1}), "twice"),
    (lambda d: d["interactions"]["pairs"].append({"layers": ["l1", "l0"], "value": 1}), "appears twice"),
    (lambda d: d["interactions"]["pairs"].append({"layers": ["l0", "l2"], "value": float("nan")}), "finite"),
    (lambda d: d["interactions"]["pairs"].append({"layers": ["l0", "l2"], "value": 1, "when": "sometimes"}), "when"),
    (lambda d: d["interactions"]["pairs"].append({"layers": ["l0"], "value": 1}), "two layer names"),
    (lambda d: d.update(interactions=[]), "must be an object"),
])
def test_bad_interactions_name_the_problem(edit, fragment):
    data = _manifest(3, [{"layers": ["l0", "l1"], "value": 0.1}])
    edit(data)
    with pytest.raises(ManifestError, match=fragment):
        parse_manifest(data)


def test_version_1_manifests_still_solve_unchanged():
    path = ROOT / "problems" / "scenarios" / "early-sensitive.json"
    assert json.loads(path.read_text())["schema_version"] == 1
    manifest = load_manifest(path)
    assert manifest.interactions == ()
    r = CliRunner().invoke(main, ["solve", str(path), "--budget", "50000", "--json"])
    assert r.exit_code == 0 and json.loads(r.output)["status"] == "optimal"
    assert json.loads(r.output)["solver"] == "auto"


def test_rank_normalization_refuses_interactions():
    manifest = parse_manifest(_manifest(3, [{"layers": ["l0", "l1"], "value": 0.1}]))
    with pytest.raises(Exception, match="--normalization max or --no-interactions"):
        build_problem(manifest, Constraints(budget=100), ModelOptions(normalization="rank"))


def test_solve_path_does_not_import_torch(tmp_path):
    import subprocess

    path = tmp_path / "m.json"
    path.write_text(json.dumps(_manifest(4, [{"layers": ["l0", "l1"], "value": -0.1}])))
    code = ("import sys; from layerlens_opt.cli import main; sys.argv=['x','solve',%r,'--budget','100','--min-utilization','0'];\n"
            "try: main()\nexcept SystemExit: pass\nassert 'torch' not in sys.modules, 'torch imported'" % str(path))
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
