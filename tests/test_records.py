"""The positional constructors of the frozen dataclass rows build what the generated ``__init__`` builds."""

from dataclasses import FrozenInstanceError, fields

import pytest

from layerlens_opt.allocation import LayerChoice, new_choice
from layerlens_opt.manifest import Layer, _new_layer
from layerlens_opt.problem import LayerInfo, new_info
from layerlens_opt.records import positional

ROWS = [
    (LayerChoice, new_choice, ("l0", "mlp", 3, "lora", 8, 12_288, 0.25, 0.5, 768, 768, None)),
    (LayerChoice, new_choice, ("l1", "attention", None, "none", 0, 0, 0.0, 0.0, None, None, "g")),
    (LayerInfo, new_info, ("l2", "mlp", 1, 16, 32, 0.75, ("none", "lora"), (), (), None)),
    (Layer, _new_layer, ("l3", "attention", 64, 64, {"fisher": 1.0}, 2, None, {}, None)),
    (Layer, _new_layer, ("l4", "mlp", 8, 8, {"fisher": 0.0}, None, ("lora",), {"lora": ((4, 0.5),)}, "g")),
]


@pytest.mark.parametrize("cls,make,values", ROWS)
def test_a_positional_row_equals_the_generated_constructors(cls, make, values):
    fast, slow = make(*values), cls(*values)
    assert type(fast) is cls
    assert fast == slow and repr(fast) == repr(slow)
    if not any(isinstance(v, dict) for v in values):  # (a Layer's metrics dict makes it unhashable either way)
        assert hash(fast) == hash(slow)
    assert [getattr(fast, f.name) for f in fields(cls)] == list(values)
    with pytest.raises(FrozenInstanceError):
        fast.name = "changed"


def test_every_field_must_be_given():
    with pytest.raises(TypeError, match="missing 1 required positional argument: 'group'"):
        new_choice("l0", "mlp", 3, "lora", 8, 12_288, 0.25, 0.5, 768, 768)  # group left out: defaults are not applied
    with pytest.raises(TypeError, match="takes 11 positional arguments but 12 were given"):
        new_choice("l0", "mlp", 3, "lora", 8, 12_288, 0.25, 0.5, 768, 768, None, "extra")


def test_a_class_with_a_post_init_is_refused():
    from dataclasses import dataclass

    @dataclass(frozen=True)
    class Checked:
        x: int

        def __post_init__(self):
            if self.x < 0:
                raise ValueError("negative")

    with pytest.raises(TypeError, match="__post_init__"):
        positional(Checked)


def _rows():
    from layerlens_opt.records import Rows

    cols = {"name": ["a", "b", "c"], "kind": ["mlp", "attention", "mlp"], "block": [0, 1, None], "in_features": [4, 8, 16],
            "out_features": [4, 8, 16], "utility": [0.5, 0.25, 1.0], "methods": [("none",), ("lora",), ("ia3",)],
            "members": [()] * 3, "member_gains": [()] * 3, "group": [None] * 3}
    return Rows(new_info, cols), tuple(LayerInfo(*values) for values in zip(*cols.values()))


def test_rows_read_as_the_tuple_they_stand_for():
    import pickle

    rows, tup = _rows()
    assert len(rows) == 3 and bool(rows)
    assert rows[1:] == tup[1:] and type(rows[1:]) is tuple and rows[::-2] == tup[::-2]  # before any row is kept
    assert rows._rows is None
    assert [rows[i] for i in range(3)] == list(tup) and rows[-1] == tup[-1] and rows[-3] == tup[0]
    assert rows[1:] == tup[1:] and rows[1] is rows[1]  # the kept rows
    for bad in (3, -4):
        with pytest.raises(IndexError):
            rows[bad]
    with pytest.raises(TypeError):
        rows["a"]
    assert rows == tup and tup == rows and rows == _rows()[0] and rows != tup[:2] and rows != list(tup)
    assert hash(rows) == hash(tup) and repr(rows) == repr(tup)
    assert pickle.loads(pickle.dumps(rows)) == tup and type(pickle.loads(pickle.dumps(rows))) is tuple
    assert list(rows) == list(tup) and list(reversed(rows)) == list(reversed(tup)) and tup[1] in rows
    assert rows.column("utility") == [0.5, 0.25, 1.0]


def test_rows_refuse_columns_of_different_lengths():
    from layerlens_opt.records import Rows

    with pytest.raises(ValueError, match=r"different lengths: \[2, 3\]"):
        Rows(lambda a, b: (a, b), {"a": [1, 2, 3], "b": [1, 2]})
    assert len(Rows(lambda: None, {})) == 0 and list(Rows(lambda: None, {})) == []


def test_a_problems_layers_and_an_allocations_rows_equal_those_built_one_by_one():
    """build_problem and make_allocation keep their layers as columns (rows built when read): the same rows the
    per-layer constructors build, with and without tied groups."""
    from pathlib import Path

    from layerlens_opt.allocation import make_allocation, Status
    from layerlens_opt.manifest import load_manifest
    from layerlens_opt.problem import Constraints, build_problem
    from layerlens_opt.records import Rows

    manifest = load_manifest(Path(__file__).resolve().parents[1] / "problems" / "architectures" / "mixtral-8x22b.json")
    for tie in (None, r"layers\.(\d+)\.block_sparse_moe\.experts\.\d+\.(\w+)"):
        problem = build_problem(manifest, Constraints(budget=50_000_000, tie_groups=tie))
        choice = [int(problem.layer_start[l + 1]) - 1 for l in range(problem.n_layers)]
        alloc = make_allocation(problem, choice, solver="test", status=Status.FEASIBLE)
        assert isinstance(problem.layers, Rows) == (tie is None) and isinstance(alloc.layers, Rows)
        infos = [problem.layers[l] for l in range(problem.n_layers)]
        for field in ("name", "kind", "block", "utility", "methods", "in_features"):
            assert list(problem.layer_column(field)) == [getattr(i, field) for i in infos], field
        # the rows one by one, as make_allocation built them before it read columns: a group's members each
        want: list = [None] * len(manifest.layers)
        index = problem.layer_index or range(problem.n_layers)
        for info, i, o, start in zip(infos, index, choice, problem.layer_start.tolist()):
            method, rank, cost, gain = problem.method_of(o), int(problem.option_rank[o]), int(problem.option_cost[o]), float(problem.option_gain[o])
            for (j, m), gains in (zip(info.members, info.member_gains) if info.members else [((i, info), None)]):
                want[j] = LayerChoice(m.name, m.kind, m.block, method, rank, cost // (len(info.members) or 1),
                                      gain if gains is None else float(gains[o - start]), m.utility, m.in_features, m.out_features,
                                      info.group if info.members else None)
        assert alloc.layers[:5] == tuple(want[:5])  # (before the rows are kept)
        assert alloc.layers == tuple(want) and alloc.layers[7] == want[7]
        assert [l.name for l in alloc.layers] == [l.name for l in manifest.layers]
        assert all(type(v) is int for v in alloc.layers.column("params")) and all(type(v) is int for v in alloc.layers.column("rank"))
