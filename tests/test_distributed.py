"""Data-parallel profiling: 2 gloo processes under torchrun write the manifest one process writes (within 1e-5 relative)."""

import json
import os
import random
import shutil
import subprocess
import sys

import pytest

torch = pytest.importorskip("torch")

from conftest import ROOT  # noqa: E402

TESTS = ROOT / "tests"


@pytest.fixture
def data_file(tmp_path):
    rng = random.Random(1)
    words = ["".join(rng.choice("abcdefghij") for _ in range(rng.randint(3, 8))) for _ in range(300)]
    p = tmp_path / "data.jsonl"
    p.write_text("".join(json.dumps({"text": w, "label": int("a" in w) + int("b" in w)}) + "\n" for w in words))
    return p


def _profile(args, out, processes, expect=0):
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(TESTS), os.environ.get("PYTHONPATH", "")]), "OMP_NUM_THREADS": "1"}
    if processes == 1:
        cmd = [sys.executable, "-m", "layerlens_opt.profiling"]
    else:
        torchrun = shutil.which("torchrun")
        if torchrun is None:
            pytest.skip("torchrun is not on PATH")
        cmd = [torchrun, "--nproc_per_node", str(processes), "--master_port", str(29500 + random.randrange(400)), "-m", "layerlens_opt.profiling"]
    r = subprocess.run(cmd + args + ["-o", str(out), "--quiet"], cwd=TESTS, env=env, capture_output=True, text=True, timeout=600)
    assert r.returncode == expect, r.stderr[-3000:]
    return (json.loads(out.read_text()) if expect == 0 else None), r


def _numbers(manifest):
    """Every per-layer number of a manifest, keyed by where it sits."""
    out = {}
    for layer in manifest["layers"]:
        for k, v in layer["metrics"].items():
            out[layer["name"], "metric", k] = v
        for m, curve in layer.get("gain_curves", {}).items():
            for r, v in curve.items():
                out[layer["name"], "curve", m, r] = v
    for pair in (manifest.get("interactions") or {}).get("pairs", []):
        out[tuple(pair["layers"]), "pair"] = pair["value"]
    for key in ("gradient_norms", "fisher_traces"):
        for name, v in (manifest.get("metadata") or {}).get(key, {}).items():
            out[name, key] = v
    return out


@pytest.mark.slow
@pytest.mark.parametrize("model, signal, extra", [
    # 20 steps learn too little to be trusted (profile refuses, exit 6): what is compared here is the arithmetic
    ("tiny", "probe", ["--probe-steps", "20", "--held-out", "120", "--probe-lr", "0.01", "--allow-untrusted"]),
    # the probe trains in train mode: the ranks must draw the dropout masks one process draws
    ("tiny_dropout", "probe", ["--probe-steps", "20", "--held-out", "120", "--probe-lr", "0.01", "--allow-untrusted"]),
    ("tiny", "first-order", ["--batches", "4"]),
])
def test_two_gloo_processes_write_the_one_process_manifest(tmp_path, data_file, model, signal, extra):
    args = ["--model", f"tiny_models:{model}", "--data", str(data_file), "-S", signal, "--batch-size", "16", *extra]
    one, _ = _profile(args, tmp_path / "one.json", 1)
    two, run = _profile(args, tmp_path / "two.json", 2)
    assert two["model"]["processes"] == 2 and "processes" not in one["model"]
    a, b = _numbers(one), _numbers(two)
    assert a.keys() == b.keys() and len(a) > 20
    if signal == "probe":
        # probe numbers are differences of held-out losses (and ratios of them): compare them in units of that
        # loss, since float32 forward passes of different batch shapes agree to ~1e-7 of it, not of the difference
        loss = one["model"]["probe"]["held_out_loss"]
        drop = {l["name"]: l["metrics"]["probe_loss_drop"] for l in one["layers"]}
        rel = {k: abs(a[k] - b[k]) * (drop[k[0]] if k[1] == "curve" else 1.0) / loss for k in a}
    else:  # sums of gradients: relative to themselves; proxy_eval is a held-out loss drop: in units of that loss
        loss = one["model"]["held_out_loss"]
        rel = {k: abs(a[k] - b[k]) / (loss if k[-1] == "proxy_eval" else max(abs(a[k]), 1e-12)) for k in a}
    worst = max(rel, key=rel.get)
    assert rel[worst] < 1e-5, f"largest relative difference {rel[worst]:.2e} at {worst}: {a[worst]!r} vs {b[worst]!r}"
    assert run.stdout.count("wrote") == 1  # rank 0 writes, once


@pytest.mark.slow
def test_two_processes_refuse_an_untrusted_probe_once_and_write_nothing(tmp_path):
    """Labels that are noise: no adapter can beat the label prior, every rank holds the same verdict, rank 0 says it
    once, both ranks leave with exit 6 and the output is never created."""
    rng = random.Random(5)
    data = tmp_path / "noise.jsonl"
    data.write_text("".join(json.dumps({"text": "".join(rng.choice("abcdefghij") for _ in range(5)), "label": rng.randint(0, 1)}) + "\n"
                            for _ in range(300)))
    out = tmp_path / "m.json"
    args = ["--model", "tiny_models:tiny", "--data", str(data), "-S", "probe", "--batch-size", "16", "--probe-steps", "20",
            "--held-out", "120"]
    # torchrun itself turns a rank's non-zero exit into its own exit 1 and a ChildFailedError report (its
    # traceback, not ours): what is ours is each rank's exit code in that report and the one line before it
    _, r = _profile(args, out, 2, expect=1)
    assert r.stderr.count("Error: the probe learned too little to trust") == 1, r.stderr[-3000:]
    assert r.stderr.count("exitcode  : 6") == 2, r.stderr[-3000:]
    assert r.stderr.index("Error: the probe") < r.stderr.index("Traceback")
    assert not out.exists() and "wrote" not in r.stdout


@pytest.mark.slow
@pytest.mark.parametrize("signal, extra", [("probe", ["--probe-steps", "20"]), ("first-order", ["--batches", "4"])])
def test_a_causal_lm_profiled_by_two_processes_matches_one(tmp_path, signal, extra):
    """Ranks hold different numbers of target tokens (prompt/completion rows): each divides by the whole batch's count."""
    sys.path.insert(0, str(TESTS))
    from tiny_models import lm_rows

    data = tmp_path / "sft.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in lm_rows("sft", 240, seed=3)))
    args = ["--model", "tiny_models:tiny_llama", "--data", str(data), "-S", signal, "--batch-size", "16", *extra]
    one, _ = _profile(args, tmp_path / "one.json", 1)
    two, _ = _profile(args, tmp_path / "two.json", 2)
    assert one["model"]["objective"] == two["model"]["objective"] == "causal-lm"
    a, b = _numbers(one), _numbers(two)
    assert a.keys() == b.keys() and len(a) > 20
    loss = one["model"]["probe"]["held_out_loss"] if signal == "probe" else one["model"]["held_out_loss"]
    scale = {k: loss if signal == "probe" or k[-1] == "proxy_eval" else max(abs(a[k]), 1e-12) for k in a}
    worst = max(a, key=lambda k: abs(a[k] - b[k]) / scale[k])
    assert abs(a[worst] - b[worst]) / scale[worst] < 1e-5, (worst, a[worst], b[worst])


def test_batch_smaller_than_the_processes_is_refused(monkeypatch, data_file, tmp_path):
    from layerlens_opt.errors import LayerlensError
    from layerlens_opt.profiling import dist, profile_manifest

    monkeypatch.setattr(dist, "init_from_env", lambda device: None)
    monkeypatch.setattr(dist, "world", lambda: (0, 4))
    with pytest.raises(LayerlensError, match="smaller than the 4 processes"):
        profile_manifest("tiny_models:tiny", str(data_file), "first-order", batch_size=2)


def test_the_whole_batch_is_known_only_inside_a_rank_share():
    """Inside ``one_process_dropout`` a text encoder pads a rank's share as the whole batch (dist.whole_batch);
    outside, and after an error inside, a batch is itself."""
    import torch.nn.functional as F

    from layerlens_opt.profiling import dist

    batch, share = ["a", "bbbb", "cc", "d"], ["cc", "d"]
    own = F.dropout
    assert dist.whole_batch(share) == share
    with dist.one_process_dropout(torch.nn.Linear(2, 2), batch, [2, 3]):
        assert dist.whole_batch(share) == batch
    assert dist.whole_batch(share) == share and F.dropout is own
    with pytest.raises(RuntimeError), dist.one_process_dropout(torch.nn.Linear(2, 2), batch, [2, 3]):
        raise RuntimeError("a failing step")
    assert dist.whole_batch(share) == share and F.dropout is own


def test_bench_manifest_differences_are_per_metric_scale_and_in_held_out_loss_units():
    """The profiling benchmark's two columns: each metric's difference over its largest magnitude (1 where that
    is 0), and the loss drops' difference in units of the held-out loss; manifests of different layers refused."""
    from layerlens_opt.bench import manifest_differences

    base = {"a": {"grad": 4.0, "probe_loss_drop": 0.02, "zero": 0.0}, "b": {"grad": -8.0, "probe_loss_drop": 0.01, "zero": 0.0}}
    other = {"a": {"grad": 4.0, "probe_loss_drop": 0.0200003, "zero": 0.0}, "b": {"grad": -7.9992, "probe_loss_drop": 0.01, "zero": 2e-9}}
    worst, in_loss = manifest_differences(base, other, "probe_loss_drop", 3.0)
    assert worst == pytest.approx(1e-4)  # grad of b: 8e-4 over the largest |grad| 8 (the drop: 3e-7 / 0.02 = 1.5e-5)
    assert in_loss == pytest.approx(1e-7)  # 3e-7 over the held-out loss 3
    assert manifest_differences(base, base, "probe_loss_drop", 3.0) == (0.0, 0.0)
    assert manifest_differences(base, {**other, "b": {**other["b"], "zero": 2e-3}}, "probe_loss_drop", 3.0)[0] == pytest.approx(2e-3)
    with pytest.raises(ValueError, match="different layers"):
        manifest_differences(base, {"a": other["a"]}, "probe_loss_drop", 3.0)
