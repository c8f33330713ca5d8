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
