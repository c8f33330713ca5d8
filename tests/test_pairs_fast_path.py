"""Pair terms on the knapsack fast path (solvers/side.py): each unit of layers joined by pairs is one choice among
its Pareto points, priced with its pair terms. Brute force agrees on tiny manifests with "either" and "both" pairs of
both signs, under method caps, tied blocks, tied groups and min-methods; CBC agrees on mid-sized ones; and the fast
path (not a CBC fallback) is the one answering where it applies."""

import itertools
import random

import pytest

from layerlens_opt.allocation import Status, choice_violations
from layerlens_opt.manifest import parse_manifest
from layerlens_opt.problem import Constraints, ModelOptions, build_problem
from layerlens_opt.solvers import SolverOptions, solve

METHODS = ["lora", "ia3", "adapter", "none"]
GROUPS = r"b(\d+)\.e\d+\.(\w+)"  # two experts of one role in one block tie


def _manifest(rng, n_blocks, per_block, cross: bool, experts: bool):
    layers, names = [], []
    for b in range(n_blocks):
        for r in range(per_block):
            shape = {"kind": rng.choice(["attention", "mlp"]), "block": b, "in_features": rng.choice([4, 8, 12]),
                     "out_features": rng.choice([4, 8, 12]), "allowed_methods": rng.sample(METHODS[:3], rng.randint(1, 3)) + ["none"]}
            for e in range(2 if experts and r == 0 else 1):  # experts of one role share shape and methods
                name = f"b{b}.e{e}.r{r}" if experts and r == 0 else f"b{b}.r{r}"
                names.append((b, name))
                layers.append({"name": name, **shape, "metrics": {"m": rng.random()}})
    pairs = []
    for (ba, a), (bb, b) in itertools.combinations(names, 2):
        if (ba == bb or cross) and rng.random() < 0.6:
            pairs.append({"layers": [a, b], "value": rng.uniform(-0.5, 0.5), "when": rng.choice(["either", "both"])})
    return {"schema_version": 2, "layers": layers, "metric_weights": {"m": 1}, "interactions": {"metric": "m", "pairs": pairs}}


def _brute(problem):
    best = None
    for choice in itertools.product(*[list(problem.options_of(l)) for l in range(problem.n_layers)]):
        if not choice_violations(problem, choice):
            v = problem.value(choice)
            best = v if best is None or v > best else best
    return best


def _problem(seed):
    rng = random.Random(seed)
    experts = rng.random() < 0.3
    per_block = rng.randint(1, 5)  # up to 5 layers of one block, or two blocks of up to 3
    data = _manifest(rng, 1 if per_block > 3 else rng.randint(1, 2), per_block, cross=rng.random() < 0.2, experts=experts)
    opts = ModelOptions(methods=tuple(METHODS), ranks={"lora": (1, 2), "adapter": (1,)})
    top = build_problem(parse_manifest(data), Constraints(budget=10**6), opts).cost_range()[1]
    side = {}
    if rng.random() < 0.4:
        side["method_caps"] = ((rng.choice(METHODS[:3]), rng.randint(0, 2)),)
    if rng.random() < 0.4:
        side["tie_blocks"] = True
    if rng.random() < 0.2:
        side["min_methods"] = 2
    if experts:
        side["tie_groups"] = GROUPS
    c = Constraints(budget=max(1, int(top * rng.uniform(0.2, 1.1))), min_utilization=rng.choice([0.0, 0.0, 0.5]),
                    max_utilization=1.0, **side)
    return build_problem(parse_manifest(data), c, opts)


@pytest.mark.parametrize("seed", range(120))
def test_pairs_with_side_constraints_equal_brute_force(seed):
    problem = _problem(seed)
    best = _brute(problem)
    alloc = solve(problem, "auto")
    if best is None:
        assert alloc.status == Status.INFEASIBLE, alloc.message
        return
    assert alloc.status == Status.OPTIMAL, alloc.message
    assert not alloc.violations
    assert alloc.objective == pytest.approx(best, abs=1e-9)
    assert alloc.objective == pytest.approx(problem.value(alloc.choice), abs=1e-12)
    c = problem.constraints
    block = problem.layer_column("block")
    inside = all(block[p.i] == block[p.j] for p in problem.pairs)
    if problem.pairs and not c.min_methods and (inside or not c.tie_blocks) and problem.cost(alloc.choice) >= c.lo \
            and alloc.solver == "auto/cbc":
        # CBC only where the floor binds (checked on the knapsack path's own answer): never for the pairs themselves
        assert any("floor binds" in n for n in alloc.notes), alloc.notes


def test_the_fast_path_answers_pairs_inside_blocks():
    rng = random.Random(5)
    data = _manifest(rng, 3, 3, cross=False, experts=False)
    problem = build_problem(parse_manifest(data), Constraints(budget=60, min_utilization=0.0, max_utilization=1.0),
                            ModelOptions(methods=tuple(METHODS), ranks={"lora": (1, 2), "adapter": (1,)}))
    assert problem.pairs
    alloc = solve(problem, "auto")
    assert alloc.solver == "auto" and alloc.status == Status.OPTIMAL
    assert "pair terms on the knapsack path" in alloc.notes[-1] and "joined by pair terms" in alloc.notes[-1]
    assert alloc.objective == pytest.approx(_brute(problem), abs=1e-9)


def test_pairs_across_tied_blocks_go_to_cbc_and_say_why():
    rng = random.Random(1)
    data = _manifest(rng, 2, 2, cross=True, experts=False)
    data["interactions"]["pairs"].append({"layers": ["b0.r0", "b1.r1"], "value": 0.3, "when": "both"})
    data["interactions"]["pairs"] = list({tuple(sorted(p["layers"])): p for p in data["interactions"]["pairs"]}.values())
    problem = build_problem(parse_manifest(data), Constraints(budget=40, min_utilization=0.0, max_utilization=1.0, tie_blocks=True),
                            ModelOptions(methods=tuple(METHODS), ranks={"lora": (1,), "adapter": (1,)}))
    alloc = solve(problem, "auto")
    assert alloc.solver == "auto/cbc" and any("not in one tied block" in n for n in alloc.notes), alloc.notes
    assert alloc.objective == pytest.approx(_brute(problem), abs=1e-9)


def _probe_shaped(blocks: int, seed: int = 0):
    """A synthetic decoder with every in-block pair of layers as a term (what the probe writes)."""
    from layerlens_opt.bench import synthetic_with_pairs

    return synthetic_with_pairs(blocks * 7, seed=seed, every_layer=True)


@pytest.mark.parametrize("blocks, seed", [(6, 0), (12, 1)])
def test_probe_shaped_pairs_match_cbc(blocks, seed):
    data = _probe_shaped(blocks, seed)
    problem = build_problem(parse_manifest(data), Constraints(budget=data["model"]["suggested_budget"]))
    fast = solve(problem, "auto")
    cbc = solve(problem, "cbc", SolverOptions(time_limit=120))
    assert fast.solver == "auto" and fast.status == Status.OPTIMAL, fast.notes
    assert cbc.status == Status.OPTIMAL
    assert fast.objective == pytest.approx(cbc.objective, rel=1e-7, abs=1e-9)


def test_time_limit_while_pair_units_are_built_is_honoured(monkeypatch):
    from layerlens_opt.solvers import side

    data = _probe_shaped(12)
    problem = build_problem(parse_manifest(data), Constraints(budget=data["model"]["suggested_budget"]))
    original = side.build_knapsack
    monkeypatch.setattr(side, "build_knapsack", lambda p, c, w, deadline=None: original(p, c, w, deadline=0.0))
    alloc = solve(problem, "auto", SolverOptions(time_limit=20))
    assert any("time limit passed while the tied blocks' and pair units' frontiers" in n for n in alloc.notes), alloc.notes
    assert alloc.status in (Status.OPTIMAL, Status.FEASIBLE) and not alloc.violations


def test_a_block_with_too_many_open_layers_goes_to_cbc_and_says_why():
    rng = random.Random(3)
    layers = [{"name": f"l{i}", "kind": "attention", "block": 0, "in_features": 4, "out_features": 4,
               "metrics": {"m": rng.random()}, "allowed_methods": ["lora", "none"]} for i in range(26)]
    pairs = [{"layers": [f"l{a}", f"l{b}"], "value": rng.uniform(-0.2, 0.1), "when": "either"}
             for a, b in itertools.combinations(range(26), 2)]
    data = {"schema_version": 2, "layers": layers, "metric_weights": {"m": 1}, "interactions": {"metric": "m", "pairs": pairs}}
    problem = build_problem(parse_manifest(data), Constraints(budget=100, min_utilization=0.0, max_utilization=1.0),
                            ModelOptions(ranks={"lora": (1,)}))
    alloc = solve(problem, "auto")
    assert alloc.solver == "auto/cbc" and alloc.status == Status.OPTIMAL
    assert any("keep more than 24 of its layers open" in n for n in alloc.notes), alloc.notes
