"""One model builder: the exported LP/MPS is the solved model, readable by other solvers."""

import highspy
import pulp
import pytest

from layerlens_opt.manifest import parse_manifest
from layerlens_opt.problem import Constraints, ModelOptions, build_problem
from layerlens_opt.solvers import solve
from layerlens_opt.solvers.ilp import build_model, export_model

from conftest import SCENARIOS, layer, manifest, random_problem
from layerlens_opt.manifest import load_manifest


@pytest.mark.parametrize("side", [{}, dict(min_methods=2, tie_blocks=True, method_caps=(("prefix", 3),))])
def test_lp_file_read_by_highs_gives_the_same_optimum(tmp_path, side):
    problem = build_problem(load_manifest(SCENARIOS[0]), Constraints(budget=50_000, **side))
    path = tmp_path / "model.lp"
    export_model(problem, str(path), "lp")
    h = highspy.Highs()
    h.setOptionValue("output_flag", False)
    h.setOptionValue("mip_rel_gap", 0.0)
    h.readModel(str(path))
    h.run()
    assert h.getModelStatus() == highspy.HighsModelStatus.kOptimal
    assert h.getInfo().objective_function_value == pytest.approx(solve(problem, "auto").objective, rel=1e-9)


def test_mps_file_read_by_pulp_gives_the_same_optimum(tmp_path):
    problem = random_problem(7, n_layers=6)
    path = tmp_path / "model.mps"
    export_model(problem, str(path), "mps")
    _, prob = pulp.LpProblem.fromMPS(str(path), sense=pulp.LpMaximize)
    prob.solve(pulp.PULP_CBC_CMD(msg=False))
    assert pulp.value(prob.objective) == pytest.approx(solve(problem, "auto").objective, rel=1e-9)


def test_variables_named_by_index_not_layer_name():
    m = parse_manifest(manifest([layer("a-b/c [0]"), layer("a_b_c__0_")]))
    problem = build_problem(m, Constraints(budget=1000), ModelOptions(methods=("lora", "none"), ranks={"lora": (1,)}))
    prob, x = build_model(problem)
    names = sorted(v.name for v in prob.variables())
    assert names == ["x_0_0", "x_0_1", "x_1_0", "x_1_1"]


GOLDEN = """\\* golden *\\
Maximize
OBJ: 0.5 x_0_1 + 0.25 x_1_1
Subject To
budget_max: 16 x_0_1 + 16 x_1_1 <= 27
budget_min: 16 x_0_1 + 16 x_1_1 >= 21
one_0: x_0_0 + x_0_1 = 1
one_1: x_1_0 + x_1_1 = 1
Binaries
x_0_0
x_0_1
x_1_0
x_1_1
End
"""


def test_golden_lp_file(tmp_path):
    # lora rank 1 on an 8x8 layer: 16 params, measured capture 0.5; utilities 1 and 0.5; window [21, 27]
    data = manifest([layer("a", d_in=8, d_out=8, ge=2, fi=2, pe=2, gain_curves={"lora": {"1": 0.5}}),
                     layer("b", d_in=8, d_out=8, ge=1, fi=1, pe=1, gain_curves={"lora": {"1": 0.5}})])
    problem = build_problem(parse_manifest(data), Constraints(budget=30),
                            ModelOptions(methods=("lora", "none"), ranks={"lora": (1,)}))
    prob, _ = build_model(problem, name="golden")
    path = tmp_path / "g.lp"
    prob.writeLP(str(path))
    assert path.read_text() == GOLDEN
