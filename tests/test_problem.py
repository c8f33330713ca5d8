import math

import numpy as np
import pytest

from layerlens_opt.errors import LayerlensError
from layerlens_opt.manifest import parse_manifest
from layerlens_opt.methods import METHOD_NAMES, default_curve, measured_curve, param_cost
from layerlens_opt.problem import Constraints, ModelOptions, build_problem, compute_utilities

from conftest import layer, manifest


def test_exact_costs_match_design_table():
    assert param_cost("lora", 8, 768, 3072) == 8 * (768 + 3072)
    assert param_cost("adapter", 16, 768, 768) == 2 * 768 * 16 + 16 + 768
    assert param_cost("prefix", 10, 768, 768) == 2 * 10 * 768
    assert param_cost("ia3", 1, 768, 3072) == 3072
    assert param_cost("none", 0, 768, 768) == 0


def test_default_curve_is_concave_increasing_and_measured_curve_wins():
    vals = [default_curve("lora", r) for r in range(0, 65)]
    assert vals[0] == 0 and vals[8] == pytest.approx(0.5)
    diffs = np.diff(vals)
    assert (diffs > 0).all() and (np.diff(diffs) < 1e-12).all()
    pts = {1: 0.3, 4: 0.6}
    assert measured_curve(pts, 2) == pytest.approx(0.4)
    assert measured_curve(pts, 16) == 0.6
    m = parse_manifest(manifest([layer("a", gain_curves={"lora": {"1": 0.9}}), layer("b")]))
    p = build_problem(m, Constraints(10_000), ModelOptions(methods=("lora",), ranks={"lora": (1,)}))
    assert p.option_gain[0] == pytest.approx(1.0 * 0.9)  # utility 1, efficiency 1, measured 0.9
    assert p.option_gain[1] == pytest.approx(1.0 * default_curve("lora", 1))


def test_a_measured_curve_is_the_whole_value_and_the_prior_efficiency_scales_only_default_curves():
    """A probe's curve already is the method's measured value (as a share of the layer's): multiplying it by the catalog's
    prior efficiency (IA3 0.25) would price the measurement twice. A layer without curves keeps the prior."""
    from layerlens_opt.methods import METHODS

    curves = {"ia3": {"1": 0.8}, "lora": {"1": 0.5}}
    m = parse_manifest(manifest([layer("a", kind="mlp", gain_curves=curves), layer("b", kind="mlp")]))
    p = build_problem(m, Constraints(10_000), ModelOptions(methods=("ia3", "lora"), ranks={"lora": (1,)}))
    gains = {(int(p.option_layer[o]), METHOD_NAMES[p.option_method[o]]): (int(p.option_rank[o]), float(p.option_gain[o]))
             for o in range(len(p.option_gain))}
    assert gains[0, "ia3"][1] == pytest.approx(0.8) and gains[0, "lora"][1] == pytest.approx(0.5)
    r = gains[1, "ia3"][0]
    assert gains[1, "ia3"][1] == pytest.approx(METHODS["ia3"].efficiency * default_curve("ia3", r))
    assert gains[1, "lora"][1] == pytest.approx(METHODS["lora"].efficiency * default_curve("lora", 1))


def test_utilities_normalised_once_and_weighted():
    m = parse_manifest(manifest([layer("a", ge=2.0, fi=1e-5, pe=0.1), layer("b", ge=1.0, fi=2e-5, pe=0.2)],
                                metric_weights={"gradient_energy": 2, "fisher": 1, "proxy_eval": 1}))
    u = compute_utilities(m)
    # a: 0.5*1 + 0.25*0.5 + 0.25*0.5 ; b: 0.5*0.5 + 0.25 + 0.25
    assert u == pytest.approx([0.75, 0.75])
    u_rank = compute_utilities(m, normalization="rank")
    assert u_rank == pytest.approx([0.5 * 1 + 0.25 * 0.5 + 0.25 * 0.5, 0.5 * 0.5 + 0.25 + 0.25])
    # predecessor's tiny raw values do not collapse: the largest utility is near 1
    tiny = parse_manifest(manifest([layer("a", ge=3e-9, fi=1e-12, pe=1e-7), layer("b", ge=1e-9, fi=5e-13, pe=5e-8)]))
    assert compute_utilities(tiny).max() == pytest.approx(1.0)


def test_weight_override_must_match_metrics():
    m = parse_manifest(manifest([layer("a"), layer("b")]))
    with pytest.raises(LayerlensError, match="'utility' name no metric"):
        build_problem(m, Constraints(1000), ModelOptions(metric_weights={"utility": 1.0, "gradient_energy": 1, "fisher": 1, "proxy_eval": 1}))


def test_all_zero_metric_is_an_error_unless_weight_zero():
    m = parse_manifest(manifest([layer("a", fi=0.0), layer("b", fi=0.0)]))
    with pytest.raises(LayerlensError, match="'fisher' is zero on every layer"):
        compute_utilities(m)
    u = compute_utilities(m, {"gradient_energy": 1, "fisher": 0, "proxy_eval": 1})
    assert u == pytest.approx([1.0, 1.0])


def test_compatibility_and_rank_caps():
    m = parse_manifest(manifest([
        layer("mlp", kind="mlp", d_in=4, d_out=16),
        layer("lin", kind="linear", d_in=32, d_out=32),
        layer("emb", kind="embedding"),
        layer("custom", kind="linear", allowed_methods=["prefix", "none"]),
    ]))
    p = build_problem(m, Constraints(10_000), ModelOptions(methods=("lora", "adapter", "prefix", "ia3", "none")))
    methods = {info.name: info.methods for info in p.layers}
    assert methods["mlp"] == ("none", "ia3", "adapter", "lora")
    assert methods["lin"] == ("none", "ia3", "lora")
    assert methods["emb"] == ("none",)
    assert methods["custom"] == ("none", "prefix")
    lora_ranks = [int(p.option_rank[o]) for o in p.options_of(0) if p.method_of(o) == "lora"]
    assert max(lora_ranks) == 4  # capped at min(d_in, d_out)


def test_prefix_offered_on_value_projection_only():
    layers = []
    for b in range(2):
        for sub in ("query", "key", "value"):
            layers.append(layer(f"enc.{b}.attention.self.{sub}", kind="attention", block=b))
        layers.append(layer(f"enc.{b}.attention.output.dense", kind="attention", block=b))
    p = build_problem(parse_manifest(manifest(layers)), Constraints(100_000))
    with_prefix = [info.name for info in p.layers if "prefix" in info.methods]
    assert with_prefix == ["enc.0.attention.self.value", "enc.1.attention.self.value"]
    assert any("prefix offered on 2 of 8 attention layers" in n for n in p.notes)


@pytest.mark.parametrize("q,k,v", [("q_linear", "k_linear", "v_linear"), ("q_proj", "k_proj", "V_PROJ"), ("to_q", "to_k", "to_v")])
def test_value_projection_found_by_the_profilers_naming_rules(q, k, v):
    """The problem builder and the profiler read names through one rule table (layerlens_opt.naming)."""
    from layerlens_opt.naming import infer

    names = [f"blocks.0.attn.{s}" for s in (q, k, v)]
    p = build_problem(parse_manifest(manifest([layer(n, kind="attention", block=0) for n in names])), Constraints(100_000))
    assert [info.name for info in p.layers if "prefix" in info.methods] == [names[2]]
    assert [infer(n)[1] for n in names] == ["q", "k", "v"]


def test_layer_with_no_acceptable_method_is_named():
    m = parse_manifest(manifest([layer("emb", kind="embedding"), layer("b")]))
    with pytest.raises(LayerlensError, match="layer 'emb' \\(kind embedding\\) can take none of the methods lora"):
        build_problem(m, Constraints(1000), ModelOptions(methods=("lora",)))


@pytest.mark.parametrize("kwargs, fragment", [
    (dict(budget=0), "budget must be a positive"),
    (dict(budget=-3), "budget must be a positive"),
    (dict(budget=10, min_utilization=0.9, max_utilization=0.7), "window is empty"),
    (dict(budget=10, method_caps=(("dora", 1),)), "unknown method 'dora'"),
])
def test_constraint_errors(kwargs, fragment):
    with pytest.raises(LayerlensError, match=fragment):
        Constraints(**kwargs)


def test_window_problem_explains_with_numbers():
    m = parse_manifest(manifest([layer("a", d_in=8, d_out=8)]))
    p = build_problem(m, Constraints(budget=1_000_000), ModelOptions(methods=("lora", "none"), ranks={"lora": (1, 2)}))
    reason = p.window_problem()
    assert "largest possible allocation uses 32 parameters" in reason and "lower --min-utilization" in reason
    assert p.constraints.lo == math.ceil(0.7 * 1_000_000)


def test_problem_arrays_are_read_only():
    p = build_problem(parse_manifest(manifest([layer("a"), layer("b")])), Constraints(1000))
    with pytest.raises(ValueError):
        p.option_gain[0] = 5.0


def test_shrink_pulls_utilities_toward_their_mean():
    m = parse_manifest(manifest([layer("a", ge=4, fi=4, pe=4), layer("b", ge=1, fi=1, pe=1)]))
    u0 = [info.utility for info in build_problem(m, Constraints(1000)).layers]
    u1 = [info.utility for info in build_problem(m, Constraints(1000), ModelOptions(shrink=0.5)).layers]
    assert u0 == pytest.approx([1.0, 0.25])
    assert u1 == pytest.approx([0.5 * 1.0 + 0.5 * 0.625, 0.5 * 0.25 + 0.5 * 0.625])
    with pytest.raises(LayerlensError, match="shrink must be in"):
        ModelOptions(shrink=1.5)


def test_rank_utility_consistency_matches_the_pairwise_definition():
    import numpy as np

    from layerlens_opt.metrics import consistency

    rng = np.random.default_rng(0)
    for _ in range(200):
        n = int(rng.integers(1, 25))
        u = rng.integers(0, 5, n).astype(float)  # ties on purpose
        r = rng.choice([0, 1, 2, 4, 8], n).astype(float)
        pairs = [(i, j) for i in range(n) for j in range(n) if u[i] > u[j]]
        expected = sum(r[i] >= r[j] for i, j in pairs) / len(pairs) if pairs else None
        assert consistency(u, r) == (None if expected is None else pytest.approx(expected))


def test_average_ranks_match_their_definition_ties_included():
    """1-based rank: 1 + the values below, plus half of the other copies of the same value (what Spearman's
    correlation and the rank normalization use); -0.0 and 0.0 are one value."""
    from layerlens_opt.metrics import average_ranks

    rng = np.random.default_rng(1)
    for trial in range(300):
        n = int(rng.integers(0, 30))
        v = rng.integers(-3, 3, n).astype(float) if trial % 2 else rng.normal(size=n)
        if n > 1 and trial % 5 == 0:
            v[0], v[-1] = -0.0, 0.0
        expected = [1 + sum(w < x for w in v) + (sum(w == x for w in v) - 1) / 2 for x in v]
        assert average_ranks(v).tolist() == expected


def test_pearson_of_numbers_near_the_float_limit_is_their_correlation_not_a_nan_or_zero():
    """Gradient norms of 1e300 overflowed corrcoef's products: the correlation came out -0.0 (with a RuntimeWarning)
    instead of the one of the same numbers scaled down; a correlation that is not finite is None, never NaN."""
    import warnings

    from layerlens_opt.metrics import pearson

    rng = np.random.default_rng(3)
    u, g = rng.random(12), rng.random(12) + 0.5
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no overflow on the way
        for scale in (1e300, 1e-300, -1e300):
            assert pearson(u, g * scale) == pytest.approx(np.sign(scale) * pearson(u, g), rel=1e-12)
        assert pearson(u * 1e305, g * 1e305) == pytest.approx(pearson(u, g), rel=1e-12)
    assert pearson(u, [1.0] * 12) is None and pearson([1.0], [2.0]) is None


def test_role_read_from_a_names_tail_equals_the_rules_on_the_whole_name():
    """role() looks a name up by its last three parts (cached); the rules on the whole name must agree, on every
    layer of the shipped problems and on names made to sit at the edges (short, dotted, underscored, look-behinds)."""
    import json
    from pathlib import Path

    from layerlens_opt.naming import RULES, role

    def scan(name):
        return next((r for pat, _kind, r in RULES if pat.search(name)), "")

    root = Path(__file__).resolve().parent.parent / "problems"
    names = {layer["name"] for path in root.glob("*/*.json") for layer in json.loads(path.read_text()).get("layers", [])}
    names |= {"q", "v", "x.q", "a.b.q", "a.b.c.q", "a_q", "a.b_v", "attention.output.dense", "x.attention.output.dense",
              "y.x.attention.output.dense", "xattention.output.dense", "a.output.dense", "a.b.output.dense", "to_out.0",
              "a.to_out.0", "a.b.c.to_out.0", "mlp.c_proj", "a.mlp.c_proj", "attn.c_proj", "b.attn.c_proj", "self_attn.c_proj",
              "a.b.self_attn.dense", "a.b.mlp.fc_in", "Q_PROJ", "a.b.c.d.e.Wqkv", "a..q", ".q", "q.", "",
              "h.3.to_out.0", "3.q", "1.2.q", "a.1.2.3", "a.1.2.v", "x.12.attention.output.dense", "x.attention.7.dense"}
    assert len(names) > 100
    for name in sorted(names):
        assert role(name) == scan(name), name
