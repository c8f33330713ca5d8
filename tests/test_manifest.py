import json

import pytest

from layerlens_opt.errors import ManifestError
from layerlens_opt.manifest import load_manifest, parse_manifest

from conftest import layer, manifest


def test_valid_manifest_roundtrip(tmp_path):
    data = manifest([layer("a", gain_curves={"lora": {"1": 0.3, "4": 0.7}}), layer("b", kind="mlp", block=1)],
                    model={"name": "x"}, metadata={"gradient_norms": {"a": 1.0, "b": 2.0}})
    m = parse_manifest(data)
    assert [l.name for l in m.layers] == ["a", "b"]
    assert m.layers[0].gain_curves["lora"] == ((1, 0.3), (4, 0.7))
    assert m.metric_weights == {"gradient_energy": 0.4, "fisher": 0.4, "proxy_eval": 0.2}
    p = tmp_path / "m.json"
    p.write_text(json.dumps(m.to_dict()))
    assert load_manifest(p) == m


@pytest.mark.parametrize(
    "mutate, fragment",
    [
        (lambda d: d.update(extra=1), "unknown top-level key(s) 'extra'"),
        (lambda d: d["layers"][0].update(rnak=2), "layer 'a': unknown field(s) 'rnak'"),
        (lambda d: d["layers"].append(dict(d["layers"][0])), "'a' appears twice"),
        (lambda d: d["layers"][0].update(kind="conv"), "field 'kind' is 'conv'"),
        (lambda d: d["layers"][0].update(in_features=0), "field 'in_features' must be a positive integer, got 0"),
        (lambda d: d["layers"][0].update(out_features=3.5), "field 'out_features' must be a positive integer"),
        (lambda d: d["layers"][0]["metrics"].update(fisher=-1), "field 'metrics.fisher' must be a non-negative finite number, got -1"),
        (lambda d: d["layers"][0]["metrics"].update(fisher=float("nan")), "metrics.fisher"),
        (lambda d: d["layers"][0].update(allowed_methods=["lora", "dora"]), "unknown method 'dora'"),
        (lambda d: d["layers"][0].update(gain_curves={"lora": {"1": 0.5, "2": 0.4}}), "decreases from rank 1"),
        (lambda d: d["layers"][0].update(gain_curves={"lora": {"1": 1.5}}), "fraction in [0, 1]"),
        (lambda d: d["layers"][0].update(gain_curves={"lora": {"x": 0.5}}), "rank 'x' must be a positive integer"),
        (lambda d: d.update(metric_weights={"utility": 0.5, "cost": 0.5}), "weight key(s) 'cost', 'utility' name no metric"),
        (lambda d: d.update(metric_weights={"gradient_energy": 1.0}), "metric(s) 'fisher', 'proxy_eval' have no weight"),
        (lambda d: d.update(schema_version=3), "schema_version is 3"),
        (lambda d: d.pop("layers"), "missing required key 'layers'"),
        (lambda d: d["layers"][0].pop("metrics"), "layer 'a': missing required field 'metrics'"),
        (lambda d: d["layers"][1]["metrics"].pop("fisher"), "layer 'b' field 'metrics' lacks 'fisher'"),
        (lambda d: d.update(metadata={"gradient_norms": {"zz": 1.0}}), "metadata.gradient_norms names layer(s) not in 'layers': 'zz'"),
    ],
)
def test_bad_manifests_name_the_problem(mutate, fragment):
    data = manifest([layer("a"), layer("b")])
    mutate(data)
    with pytest.raises(ManifestError) as exc:
        parse_manifest(data)
    assert fragment in str(exc.value)


def test_unreadable_files(tmp_path):
    with pytest.raises(ManifestError, match="no such file"):
        load_manifest(tmp_path / "missing.json")
    bad = tmp_path / "bad.json"
    bad.write_text("{\n  'a': 1}")
    with pytest.raises(ManifestError, match="not valid JSON at line 2"):
        load_manifest(bad)


# --- the column-at-a-time check accepts exactly what the layer-by-layer parser accepts -------------------------

from hypothesis import given, settings, strategies as st  # noqa: E402

from layerlens_opt import manifest as manifest_module  # noqa: E402

_ODD_VALUES = [0, -1, 1, 3.5, True, False, None, "", "x", "mlp", [], {}, [1], 10**400, float("nan"), float("inf"), -0.0, 2**31, 2**31 + 1,
               ["lora"], ["dora"], {"lora": {"1": 0.5}}, {"lora": {"1": 2.0}}]
_FIELDS = ["name", "kind", "in_features", "out_features", "block", "metrics", "group", "allowed_methods", "gain_curves", "extra"]


def _parse_or_error(data, layer_by_layer=False):
    """The manifest parse_manifest makes of ``data`` (or its error's text); ``layer_by_layer``: with the bulk check off."""
    original = manifest_module._checked_in_bulk
    if layer_by_layer:
        manifest_module._checked_in_bulk = lambda raw, source: None
    try:
        return parse_manifest(data)
    except ManifestError as exc:
        return f"error: {exc}"
    finally:
        manifest_module._checked_in_bulk = original


@settings(max_examples=300, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 4), st.sampled_from(_FIELDS + ["metrics.fisher", "drop"]), st.sampled_from(range(len(_ODD_VALUES)))),
                max_size=3),
       st.sampled_from(["int", "float"]))
def test_bulk_check_accepts_and_builds_what_the_layer_parser_does(edits, metric_type):
    conv = int if metric_type == "int" else float
    layers = [layer(f"l{i}", kind=("attention", "mlp", "block")[i % 3], block=i // 2, ge=conv(i + 1), fi=conv(2 * i), pe=conv(1))
              for i in range(5)]
    layers[1]["group"] = "g"
    layers[3]["group"] = "g"
    data = manifest(layers, metadata={"gradient_norms": {"l0": 1, "l1": 2.5}})
    for i, where, k in edits:
        value = _ODD_VALUES[k]
        target = data["layers"][i]
        if where == "drop":
            target.pop(_FIELDS[k % 6], None)
        elif where == "metrics.fisher":
            if isinstance(target.get("metrics"), dict):
                target["metrics"]["fisher"] = value
        else:
            target[where] = value
    fast = _parse_or_error(data)
    assert fast == _parse_or_error(data, layer_by_layer=True)
    if not isinstance(fast, str):
        assert [type(v) for l in fast.layers for v in l.metrics.values()] == [float] * 15


@settings(max_examples=100, deadline=None)
@given(st.lists(st.tuples(st.sampled_from(["attention", "mlp", "block", "linear", "embedding"]), st.integers(1, 2**31), st.integers(1, 9),
                          st.one_of(st.none(), st.integers(0, 3)), st.one_of(st.none(), st.sampled_from(["g1", "g2"])),
                          st.lists(st.one_of(st.integers(0, 10**6), st.floats(0, 1e300)), min_size=3, max_size=3)),
                min_size=1, max_size=6))
def test_bulk_check_builds_the_layers_the_layer_parser_builds(rows):
    layers = [layer(f"l{i}", kind=k, d_in=a, d_out=b, block=blk, ge=m[0], fi=m[1], pe=m[2], **({"group": g} if g else {}))
              for i, (k, a, b, blk, g, m) in enumerate(rows)]
    if len(rows) > 1:
        layers[-1]["allowed_methods"] = ["lora", "none"]  # parsed by the layer parser inside the bulk path
    data = manifest(layers)
    bulk = manifest_module._checked_in_bulk(data["layers"], "m")
    assert bulk is not None
    slow = _parse_or_error(data, layer_by_layer=True)
    assert parse_manifest(data) == slow and tuple(bulk) == slow.layers
    assert {type(v) for l in bulk for v in l.metrics.values()} == {float}


def test_bulk_check_takes_plain_manifests_and_a_big_integer_metric_is_an_error():
    data = manifest([layer("a", block=0), layer("b", group="g"), layer("c", allowed_methods=["lora"])])
    assert manifest_module._checked_in_bulk(data["layers"], "m") is not None  # the fast path is the one tested above
    data["layers"][1]["metrics"]["fisher"] = 10**400  # finite as an int, not as a float: refused, one short line
    with pytest.raises(ManifestError, match=r"layer 'b' field 'metrics.fisher' must be a non-negative finite number, got 1000+\.\.\.$"):
        parse_manifest(data)
    assert manifest_module._checked_in_bulk(data["layers"], "m") is None


def test_a_plain_manifests_layers_are_columns_read_as_the_layers():
    """A plain manifest (every metric a float, no allowed_methods or gain_curves) keeps its layers as columns: each
    column equals the layer-by-layer parse's field, the rows equal its layers, and the caller's dicts are copied."""
    from layerlens_opt.records import Rows

    data = manifest([layer(f"l{i}", kind=("attention", "mlp")[i % 2], block=i // 2, ge=i + 0.5, fi=2.0 * i, pe=1.0, **({"group": "g"} if i % 3 else {}))
                     for i in range(7)])
    fast, slow = parse_manifest(data), _parse_or_error(data, layer_by_layer=True)
    assert isinstance(fast.layers, Rows) and not isinstance(slow.layers, Rows)
    for field in ("name", "kind", "in_features", "out_features", "metrics", "block", "allowed_methods", "gain_curves", "group"):
        assert list(fast.column(field)) == slow.column(field) == [getattr(l, field) for l in slow.layers], field
    assert fast.metric_names == slow.metric_names == ("gradient_energy", "fisher", "proxy_eval")
    data["layers"][0]["metrics"]["fisher"] = 99.0
    assert fast.layers[0].metrics["fisher"] == 0.0 and fast == slow
    assert fast.layers[1].gain_curves is not fast.layers[2].gain_curves  # each layer its own (empty) dict
