"""``train_bench --model DIR --data FILE``: the budget-frontier benchmark on a user's own model (tiny decoders and a tiny
classifier built in code; a few training steps, so the numbers are not the point: the flow, the contenders, the
counts and the score are)."""

import json
import subprocess
import sys

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

from layerlens_opt import own_bench  # noqa: E402
from layerlens_opt.train_bench import layers_of, main, uniform_baselines  # noqa: E402

from conftest import ROOT  # noqa: E402


@pytest.fixture(autouse=True)
def tests_on_path(monkeypatch):
    monkeypatch.syspath_prepend(str(ROOT / "tests"))


def _write(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


@pytest.fixture
def decoders(lm_dir):
    return lm_dir  # conftest's tiny decoders and their 300 prompt/completion rows


def _bench(tmp_path, *args):
    out = tmp_path / "out"
    main(["--out", str(out), "--seeds", "2", "--steps", "5", "--workers", "1", "--quiet", *map(str, args)])
    return out, json.loads((out / "results.json").read_text()), json.loads((out / "models.json").read_text())


@pytest.mark.parametrize("arch", ["llama", "gpt2"])
def test_the_frontier_on_a_causal_lm_trains_every_contender_at_exact_counts(decoders, tmp_path, arch):
    out, results, models = _bench(tmp_path, "--model", decoders / arch, "--data", decoders / "sft.jsonl")
    folder = out / "sft"
    dims = own_bench.dims_of(folder / "first-order.json")
    assert not any("lm_head" in n or "wte" in n or "embed" in n for n in dims)
    budgets = own_bench.default_budgets(dims)
    assert sorted({r["budget"] for r in results}) == budgets
    labels = {r["method"] for r in results}
    assert any(label.startswith("uniform") for label in labels) and "ILP (probe)" in labels
    # every run trained exactly the parameters its allocation counts, inside the budget; the score is a fraction
    planned = {(m["budget"], m["method"]): m["params"] for m in models}
    for r in results:
        assert r["params"] == planned[r["budget"], r["method"]] <= r["budget"]
        assert 0.0 <= r["accuracy"] <= 1.0
    assert sorted({r["seed"] for r in results}) == [0, 1]
    # prefix is not offered on a decoder: no uniform prefix baseline, no prefix layer in any allocation
    assert not any("prefix" in label for label in labels)
    assert not any(":prefix" in a for m in models for a in m["allocation"])
    text = (out / "results.md").read_text()
    assert "next-token accuracy over the target tokens" in text and "### sft" in text
    # the test split is never profiled: the profiles name the training split
    assert json.loads((folder / "probe.json").read_text())["model"]["profiled_on"] == "train.jsonl"
    train, test = ((folder / f"{split}.jsonl").read_text().splitlines() for split in ("train", "test"))
    data = (decoders / "sft.jsonl").read_text().splitlines()
    assert len(test) == 60 and sorted(train + test) == sorted(data)  # every row in exactly one split


def test_gpt2_fused_qkv_stands_in_for_q_k_and_v(decoders):
    dims = {f"transformer.h.{b}.{p}": (32, 32) for b in (0, 1) for p in ("attn.c_attn", "attn.c_proj", "mlp.c_fc", "mlp.c_proj")}
    assert layers_of(dims, "q,v") == layers_of(dims, "v") == ["transformer.h.0.attn.c_attn", "transformer.h.1.attn.c_attn"]
    assert layers_of(dims, "o") == ["transformer.h.0.attn.c_proj", "transformer.h.1.attn.c_proj"]
    assert layers_of(dims, "ffn_out") == ["transformer.h.0.mlp.c_proj", "transformer.h.1.mlp.c_proj"]
    assert layers_of(dims, "k,v,ffn_out") == ["transformer.h.0.attn.c_attn", "transformer.h.0.mlp.c_proj",
                                              "transformer.h.1.attn.c_attn", "transformer.h.1.mlp.c_proj"]
    assert not any(label.startswith("uniform prefix") for label, _ in uniform_baselines(dims, methods={"lora", "ia3", "adapter"}))


def test_the_frontier_on_a_classifier_factory_scores_test_accuracy(tmp_path):
    import random

    rng = random.Random(0)
    words = ["".join(rng.choice("abcdefghij") for _ in range(rng.randint(3, 8))) for _ in range(300)]
    data = _write(tmp_path / "words.jsonl", [{"text": w, "label": int("a" in w)} for w in words])
    out, results, _ = _bench(tmp_path, "--model", "tiny_models:tiny", "--data", data, "--budgets", "300,1200")
    assert sorted({r["budget"] for r in results}) == [300, 1200]
    assert all(0.0 <= r["accuracy"] <= 1.0 for r in results)
    assert "score: test accuracy" in (out / "results.md").read_text()


def test_bad_own_inputs_are_one_line_errors(tmp_path):
    few = _write(tmp_path / "few.jsonl", [{"text": "a b"}] * 5)
    cmd = [sys.executable, "-m", "layerlens_opt.train_bench", "--out", str(tmp_path / "o"), "--quiet"]
    r = subprocess.run(cmd + ["--model", "tiny_models:tiny_llama", "--data", str(few)], capture_output=True, text=True, cwd=ROOT / "tests")
    assert r.returncode == 1 and r.stderr.strip().count("\n") == 0, r.stderr
    assert "5 rows; the benchmark needs at least 10" in r.stderr and "Traceback" not in r.stderr
    r = subprocess.run(cmd + ["--model", "tiny_models:tiny_llama"], capture_output=True, text=True, cwd=ROOT / "tests")
    assert r.returncode == 2 and "--model and --data go together" in r.stderr
    r = subprocess.run(cmd + ["--model", "x", "--data", str(few), "--anchors"], capture_output=True, text=True, cwd=ROOT / "tests")
    assert r.returncode == 2 and "MiniLM only" in r.stderr
    r = subprocess.run(cmd + ["--budgets", "9k"], capture_output=True, text=True, cwd=ROOT / "tests")
    assert r.returncode == 2 and "--budgets" in r.stderr and "positive whole numbers" in r.stderr and "Traceback" not in r.stderr
