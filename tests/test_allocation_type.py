"""One allocation type end to end: Allocation.from_dict / load_allocation are the one reading-side schema
check; what they return round-trips to the same JSON, and every consumer takes the typed object."""

import copy
import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import layerlens_opt as ll
from layerlens_opt.allocation import Allocation, LayerChoice, load_allocation
from layerlens_opt.errors import AllocationError
from layerlens_opt.manifest import load_manifest
from layerlens_opt.problem import Constraints, ModelOptions, build_problem
from layerlens_opt.solvers import solve

from conftest import ROOT

SHIPPED = sorted((ROOT / "problems" / "scenarios").glob("*.json")) + [ROOT / "problems" / "profiled" / "minilm-pairs-probe.json", ROOT / "problems" / "profiled" / "minilm-pairs-lora-probe.json"]


@settings(max_examples=25, deadline=None)
@given(st.sampled_from(SHIPPED), st.integers(2_000, 400_000), st.sampled_from(["auto", "heuristic"]),
       st.sampled_from([("lora", "none"), ("lora", "adapter", "prefix", "none"), ("lora", "adapter", "prefix", "ia3", "none")]))
def test_from_dict_is_the_inverse_of_to_dict(path, budget, solver, methods):
    problem = build_problem(load_manifest(path), Constraints(budget=budget), ModelOptions(methods=methods))
    alloc = solve(problem, solver)
    data = json.loads(alloc.to_json())
    back = Allocation.from_dict(data)
    assert back.to_dict() == data
    assert back.layers == alloc.layers and back.status == alloc.status and back.constraints == alloc.constraints
    assert back.violations == alloc.violations and back.method_counts() == alloc.method_counts()


def test_from_dict_leaves_the_callers_dict_alone_and_load_returns_the_type(tmp_path):
    problem = build_problem(load_manifest(SHIPPED[0]), Constraints(budget=50_000))
    data = solve(problem).to_dict()
    for layer in data["layers"]:
        del layer["kind"], layer["utility"]  # optional fields: filled on the object, not in the caller's dict
    del data["constraints"]["min_utilization"]
    before = copy.deepcopy(data)
    alloc = Allocation.from_dict(data)
    assert data == before
    assert all(l.kind == "other" and l.utility == 0.0 for l in alloc.layers)
    assert alloc.window[0] == data["utilization_window"][0]
    path = tmp_path / "a.json"
    path.write_text(json.dumps(solve(problem).to_dict()))
    loaded = ll.load_allocation(path)
    assert isinstance(loaded, Allocation) and isinstance(loaded.layers[0], LayerChoice)
    assert loaded.layers == solve(problem).layers


@pytest.mark.parametrize("edit, fragment", [
    (lambda d: d.pop("total_params"), "missing required key 'total_params'"),
    (lambda d: d.update(warm_start="yes"), "'warm_start' must be true, false or null"),
    (lambda d: d["seconds"].update(solve=float("nan")), "seconds.solve must be a finite number"),
    (lambda d: d["layers"][2].update(rank=-1), "field 'rank' must be a non-negative integer"),
    (lambda d: d["layers"][0].update(method="dora"), "unknown method 'dora'"),
    (lambda d: d.update(status="great"), "'status' is 'great'"),
    (lambda d: d["layers"][1].update(utility=10**400), "field 'utility' must be a non-negative finite number"),  # no float: not an OverflowError
])
def test_from_dict_names_the_field(edit, fragment, tmp_path):
    problem = build_problem(load_manifest(SHIPPED[0]), Constraints(budget=50_000))
    data = solve(problem).to_dict()
    edit(data)
    with pytest.raises(AllocationError, match="^where: .*" + fragment.replace("(", r"\(").replace(")", r"\)").replace("'", ".")):
        Allocation.from_dict(data, "where")
    path = tmp_path / "bad.json"
    path.write_text(json.dumps(data, allow_nan=True))
    with pytest.raises(AllocationError, match=str(path)):
        load_allocation(path)


def test_consumers_take_the_typed_object(tmp_path):
    from layerlens_opt.export import lora_config, others_than_lora, to_csv, to_markdown
    from layerlens_opt.integrity import integrity_failures, validate_allocation
    from layerlens_opt.report import allocation_table, compare_text, summary

    problem = build_problem(load_manifest(SHIPPED[0]), Constraints(budget=50_000))
    exact, heur = solve(problem), solve(problem, "heuristic")
    assert integrity_failures(exact) == []
    failures, metrics, checks = validate_allocation(exact)
    assert failures == [] and metrics["budget_utilization"] == exact.utilization
    assert exact.layers[0].name in allocation_table(exact) and "status        optimal" in summary(exact)
    assert "objective difference" in compare_text(exact, heur)
    assert to_csv(exact).count("\n") == len(exact.layers) + 1 and f"{exact.total_params:,}" in to_markdown(exact)
    lora = [l for l in exact.layers if l.method == "lora"]
    if lora:
        assert lora_config(exact)["target_modules"] == [l.name for l in lora]
    assert sum(others_than_lora(exact).values()) == sum(1 for l in exact.layers if l.method not in ("lora", "none"))


@pytest.mark.parametrize("path", SHIPPED[:4])
def test_the_allocation_table_is_the_generic_table_of_its_cells(path):
    """allocation_table writes its columns without per-cell dispatch; the text is table()'s, cell for cell,
    also for a loaded file's integer utility, integer gain and missing gain."""
    from layerlens_opt.report import allocation_table, table

    alloc = solve(build_problem(load_manifest(path), Constraints(budget=80_000)), "heuristic")
    data = alloc.to_dict()
    data["layers"][0]["utility"], data["layers"][1]["gain"], data["layers"][2]["gain"] = 12345, None, 7
    for a in (alloc, Allocation.from_dict(data)):
        rows = [(l.name, l.kind, l.method, l.rank, l.params, round(l.utility, 4), None if l.gain is None else round(l.gain, 5)) for l in a.layers]
        assert allocation_table(a) == table(("layer", "kind", "method", "rank", "params", "utility", "gain"), rows, "lllrrrr")


def test_a_table_pads_short_rows_and_drops_cells_past_its_headers():
    from layerlens_opt.report import table

    text = table(("name", "n", "note"), [("a", 1), ("bb", 22, "x", "ignored"), ()])
    assert text.split("\n") == ["name   n  note", "----  --  ----", "a      1", "bb    22  x", ""]
    assert table(("a", "b"), []).splitlines() == ["a  b", "-  -"]


def test_columns_read_from_layer_objects_equal_those_read_from_their_dicts():
    """Columns.of reads LayerChoice objects attribute by attribute and dicts (a loaded file) key by key: the same
    columns, tied groups and blocks included."""
    from layerlens_opt.metrics import Columns

    manifest = load_manifest(ROOT / "problems" / "architectures" / "mixtral-8x22b.json")
    problem = build_problem(manifest, Constraints(budget=50_000_000, tie_groups=r"layers\.(\d+)\.block_sparse_moe\.experts\.\d+\.(\w+)"))
    alloc = solve(problem, "auto")
    assert any(l.group for l in alloc.layers) and any(l.block is not None for l in alloc.layers)
    a, b = Columns.of(alloc.layers), Columns.of(alloc.to_dict()["layers"])
    for field in ("method", "block", "group", "kind"):
        assert list(getattr(a, field)) == list(getattr(b, field)), field
    for field in ("rank", "params", "utility"):
        assert getattr(a, field).tolist() == getattr(b, field).tolist() and getattr(a, field).dtype == getattr(b, field).dtype, field


@pytest.mark.parametrize("tie", [None, r"layers\.(\d+)\.block_sparse_moe\.experts\.\d+\.(\w+)"])
def test_allocation_columns_are_those_of_its_layers(tie):
    """make_allocation builds the columns from the solver's arrays when no layer is tied (from the layers
    otherwise): the same columns, types and metrics as reading them back from the allocation's layers."""
    from layerlens_opt.metrics import Columns, compute_metrics

    manifest = load_manifest(ROOT / "problems" / "architectures" / "mixtral-8x22b.json")
    problem = build_problem(manifest, Constraints(budget=50_000_000, tie_groups=tie))
    alloc = solve(problem, "auto")
    a, b = alloc.columns, Columns.of(alloc.layers)
    for field in ("method", "block", "group", "kind"):
        assert list(getattr(a, field)) == list(getattr(b, field)), field
        assert [type(v) for v in getattr(a, field)] == [type(v) for v in getattr(b, field)], field
    for field in ("rank", "params", "utility"):
        assert getattr(a, field).tolist() == getattr(b, field).tolist() and getattr(a, field).dtype == getattr(b, field).dtype, field
    allowed = [problem.layers[i].methods for i in range(problem.n_layers)] if tie is None else None
    if allowed is not None:
        assert alloc.metrics == compute_metrics(alloc.layers, alloc.constraints, problem.gradient_norms, problem.fisher_traces, allowed)
