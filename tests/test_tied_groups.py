"""Tied groups: layers of one group take the same method and rank, solved as one choice."""

import itertools
import json
import random

import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from layerlens_opt.allocation import Allocation, Status, choice_violations
from layerlens_opt.errors import LayerlensError
from layerlens_opt.export import lora_config
from layerlens_opt.integrity import integrity_failures
from layerlens_opt.manifest import ManifestError, parse_manifest
from layerlens_opt.problem import Constraints, ModelOptions, build_problem
from layerlens_opt.solvers import SolverOptions, solve

from conftest import layer, manifest


@pytest.fixture
def run_cli():
    from click.testing import CliRunner

    from layerlens_opt.cli import main

    return lambda args: CliRunner().invoke(main, [str(a) for a in args])

SETTINGS = settings(max_examples=int(__import__("os").environ.get("LAYERLENS_EXAMPLES", "60")), deadline=None,
                    suppress_health_check=[HealthCheck.too_slow])
MOE = r"layers\.(\d+)\.mlp\.experts\.\d+\.(\w+)"


def moe_manifest(blocks=2, experts=3, seed=0, shapes=None):
    rng = random.Random(seed)
    layers = []
    for b in range(blocks):
        layers.append(layer(f"model.layers.{b}.self_attn.v_proj", "attention", 16, 16, block=b, ge=rng.random() + 0.05))
        for e in range(experts):
            for p in ("up", "down"):
                d_in, d_out = shapes(b, e, p) if shapes else ((16, 32) if p == "up" else (32, 16))
                layers.append(layer(f"model.layers.{b}.mlp.experts.{e}.{p}", "mlp", d_in, d_out, block=b,
                                    ge=rng.random() + 0.05, fi=rng.random(), pe=rng.random()))
    return parse_manifest(manifest(layers))


def brute_force_tied(ungrouped, groups):
    """Best objective over the ungrouped problem's choices in which every group's layers share method and rank."""
    best = None
    options = [list(ungrouped.options_of(l)) for l in range(ungrouped.n_layers)]
    c = ungrouped.constraints
    for combo in itertools.product(*options):
        if any(len({(ungrouped.method_of(combo[i]), int(ungrouped.option_rank[combo[i]])) for i in g}) > 1 for g in groups):
            continue
        cost = sum(int(ungrouped.option_cost[o]) for o in combo)
        if c.lo <= cost <= c.hi and not choice_violations(ungrouped, combo):
            value = ungrouped.value(combo)
            best = value if best is None else max(best, value)
    return best


@SETTINGS
@given(seed=st.integers(0, 10**6), frac=st.floats(0.1, 1.1), caps=st.booleans())
def test_tied_groups_equal_brute_force_with_equality_constraints(seed, frac, caps):
    """Exact: the grouped problem's optimum is the best ungrouped allocation whose groups agree (and infeasible alike)."""
    m = moe_manifest(blocks=1, experts=2, seed=seed)
    opts = ModelOptions(methods=("lora", "none"), ranks={"lora": (1, 2)})
    top = build_problem(m, Constraints(10**9), opts).cost_range()[1]
    budget = max(1, int(top * frac))
    method_caps = (("lora", 3),) if caps else ()
    ungrouped = build_problem(m, Constraints(budget, 0.5, 1.0, method_caps=method_caps), opts)
    grouped = build_problem(m, Constraints(budget, 0.5, 1.0, method_caps=method_caps, tie_groups=MOE), opts)
    assert grouped.n_layers == 3  # v_proj alone, one group of ups, one of downs
    names = [l.name for l in m.layers]
    groups = [[names.index(f"model.layers.0.mlp.experts.{e}.{p}") for e in range(2)] for p in ("up", "down")]
    expected = brute_force_tied(ungrouped, groups)
    for solver in ("auto", "cbc"):
        alloc = solve(grouped, solver)
        if expected is None:
            assert alloc.status == Status.INFEASIBLE
            continue
        assert alloc.status == Status.OPTIMAL
        assert alloc.objective == pytest.approx(expected, rel=1e-9, abs=1e-12)
        assert [l.name for l in alloc.layers] == names  # every layer listed, in manifest order
        for g in groups:
            assert len({(alloc.layers[i].method, alloc.layers[i].rank) for i in g}) == 1
        assert not alloc.violations


def test_moe_groups_fast_path_agrees_with_cbc_and_shrinks_the_problem():
    m = moe_manifest(blocks=6, experts=16, seed=3)
    c = Constraints(60_000, tie_groups=MOE)
    grouped = build_problem(m, c)
    assert grouped.n_layers == 6 * 3 and len(m.layers) == 6 * 33
    fast, cbc = solve(grouped, "auto"), solve(grouped, "cbc", SolverOptions(presolve=False))
    assert fast.solver == "auto" and fast.status == cbc.status == Status.OPTIMAL
    assert fast.objective == pytest.approx(cbc.objective, rel=1e-9)
    assert len(fast.layers) == len(m.layers) and sum(l.params for l in fast.layers) == fast.total_params
    assert any("tied groups" in n for n in grouped.notes)


def test_manifest_group_field_ties_layers_and_round_trips():
    m = moe_manifest(blocks=1, experts=2)
    data = m.to_dict()
    for l in data["layers"]:
        if ".experts." in l["name"]:
            l["group"] = "experts-" + l["name"].rsplit(".", 1)[1]
    tied = parse_manifest(data)
    assert parse_manifest(tied.to_dict()).to_dict() == tied.to_dict()
    p = build_problem(tied, Constraints(2_000))
    assert p.n_layers == 3
    alloc = solve(p, "auto")
    assert {l.group for l in alloc.layers} == {None, "experts-up", "experts-down"}


def test_group_field_must_be_a_non_empty_string():
    data = moe_manifest(blocks=1, experts=1).to_dict()
    data["layers"][0]["group"] = ""
    with pytest.raises(ManifestError, match="field 'group' must be a non-empty string"):
        parse_manifest(data)


def test_group_of_different_shapes_is_a_clear_error():
    m = moe_manifest(blocks=1, experts=2, shapes=lambda b, e, p: (16, 32 + 8 * e) if p == "up" else (32, 16))
    with pytest.raises(LayerlensError, match=r"tied group '0/up': layer 'model.layers.0.mlp.experts.1.up' is 16x40 .* one shape"):
        build_problem(m, Constraints(2_000, tie_groups=MOE))


def test_group_of_different_methods_allowed_is_a_clear_error():
    data = moe_manifest(blocks=1, experts=2).to_dict()
    data["layers"][1]["allowed_methods"] = ["lora", "none"]
    with pytest.raises(LayerlensError, match="must accept the same methods"):
        build_problem(parse_manifest(data), Constraints(2_000, tie_groups=MOE))


def test_bad_tie_groups_regex_is_one_line(tmp_path, run_cli):
    path = tmp_path / "m.json"
    path.write_text(json.dumps(moe_manifest(blocks=1, experts=2).to_dict()))
    result = run_cli(["solve", str(path), "--budget", "2000", "--tie-groups", "layers\\.(\\d+"])
    assert result.exit_code == 1 and "--tie-groups" in result.output and "Traceback" not in result.output


@pytest.mark.parametrize("regex, says", [
    ("", "--tie-groups is empty"),
    (r"layers\.(\d+)\.moe\.(\w+)", "ties no layers: no layer name matches it"),  # a typo: 'moe' for 'mlp'
    (r"layers\.(\d+)\.mlp\.experts\.(\d+)\.(\w+)", "ties no layers: 12 of 14 layer names match it but no two"),  # one group per expert
])
def test_a_tie_groups_regex_that_ties_nothing_is_a_clear_error_and_writes_nothing(tmp_path, run_cli, regex, says):
    """As peft refuses target modules that match nothing: a regex that ties no two layers is a mistake, never a silent untied solve."""
    path = tmp_path / "m.json"
    path.write_text(json.dumps(moe_manifest(blocks=2, experts=3).to_dict()))
    out = tmp_path / "a.json"
    result = run_cli(["solve", str(path), "--budget", "3000", "--tie-groups", regex, "-o", str(out)])
    assert result.exit_code == 1 and says in result.output and "Traceback" not in result.output, result.output
    assert len(result.output.strip().splitlines()) == 1 and not out.exists()
    # the same regex that ties experts per block and projection is accepted
    assert run_cli(["solve", str(path), "--budget", "3000", "--tie-groups", MOE]).exit_code == 0


def test_cli_tie_groups_writes_every_layer_and_validate_catches_a_broken_group(tmp_path, run_cli):
    path = tmp_path / "m.json"
    path.write_text(json.dumps(moe_manifest(blocks=2, experts=3).to_dict()))
    out = tmp_path / "a.json"
    result = run_cli(["solve", str(path), "--budget", "3000", "--methods", "lora", "--tie-groups", MOE, "-o", str(out)])
    assert result.exit_code == 0, result.output
    data = json.loads(out.read_text())
    assert len(data["layers"]) == 14 and data["constraints"]["tie_groups"] == MOE
    assert run_cli(["validate", str(out), "--manifest", str(path)]).exit_code == 0
    # break one member's rank (params kept consistent, group fields removed): only the group check can see it
    ups = [l for l in data["layers"] if l["name"].endswith(".up") and l["method"] == "lora"]
    assert ups, "the budget was chosen so that some expert group gets LoRA"
    victim = ups[0]
    victim["rank"] += 1
    victim["params"] = victim["rank"] * (victim["in_features"] + victim["out_features"])
    data["total_params"] = sum(l["params"] for l in data["layers"])
    data["utilization"] = data["total_params"] / data["budget"]
    for l in data["layers"]:
        l.pop("group", None)
    out.write_text(json.dumps(data))
    failures = integrity_failures(Allocation.from_dict(data), parse_manifest(json.loads(path.read_text())))
    assert any("mixes lora" in f for f in failures)
    result = run_cli(["validate", str(out), "--manifest", str(path)])
    assert result.exit_code == 5 and "tied group" in result.output


def test_export_writes_one_rank_pattern_key_per_group():
    from peft.utils.other import get_pattern_key

    m = moe_manifest(blocks=2, experts=4, seed=1)
    alloc = solve(build_problem(m, Constraints(6_000, 0.5, 1.0, tie_groups=MOE), ModelOptions(methods=("lora", "none"))), "auto")
    config = lora_config(alloc)
    lora = [l for l in alloc.layers if l.method == "lora"]
    grouped = {l.group for l in lora if l.group}
    assert grouped, "some group was expected to take LoRA"
    singles = [l for l in lora if not l.group]
    assert len(config["rank_pattern"]) == len(grouped) + len(singles)
    for l in lora:  # peft's own matcher finds the right rank for every module
        key = get_pattern_key(list(config["rank_pattern"]), "base_model.model." + l.name)
        assert config["rank_pattern"][key] == l.rank


def test_tie_blocks_with_a_group_across_blocks_is_refused():
    m = moe_manifest(blocks=2, experts=2)
    with pytest.raises(LayerlensError, match="spans blocks"):
        build_problem(m, Constraints(2_000, tie_blocks=True, tie_groups=r"experts\.\d+\.(\w+)"))


def test_cbc_preprocessing_fault_is_caught(monkeypatch):
    """CBC 2.10's preprocessing reduced this 7-variable model to nothing and called a worse answer optimal;
    small models run without it, and a larger one whose answer is worse than its start is solved again."""
    from layerlens_opt.solvers import ilp

    # the model that showed the fault, as it was: without the symmetry rows (with them CBC happens to answer right)
    monkeypatch.setattr(ilp, "exchange_order", lambda problem, options: [])
    m = moe_manifest(blocks=1, experts=2, seed=0)
    opts = ModelOptions(methods=("lora", "none"), ranks={"lora": (1, 2)})
    budget = int(build_problem(m, Constraints(10**9), opts).cost_range()[1] * 0.4375)
    grouped = build_problem(m, Constraints(budget, 0.5, 1.0, tie_groups=MOE), opts)
    best = solve(grouped, "auto").objective
    assert solve(grouped, "cbc").objective == pytest.approx(best, rel=1e-12)
    monkeypatch.setattr(ilp, "PREPROCESS_MIN_VARIABLES", 0)  # as if the model were large: preprocessing on
    calls = []
    real = ilp._backend
    monkeypatch.setattr(ilp, "_backend", lambda *a, **k: calls.append(k.get("preprocess")) or real(*a, **k))
    assert solve(grouped, "cbc").objective == pytest.approx(best, rel=1e-12)
    assert calls == [True, False], "the faulty answer must be detected and solved again without preprocessing"
