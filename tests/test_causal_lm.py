"""Causal language models: tiny LLaMA-style (grouped-query attention, biases), Qwen2 and GPT-2 (fused c_attn, Conv1D)
built from configs in code and saved as Hugging Face folders, profiled on text / SFT / chat data with next-token loss,
solved, exported to peft and applied with exact counts."""

import json
import math

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

from click.testing import CliRunner  # noqa: E402

from layerlens_opt.cli import main  # noqa: E402

from conftest import ARCHS, ROOT  # noqa: E402  (ARCHS: the tiny decoders of conftest's lm_dir fixture)


@pytest.fixture(autouse=True)
def tests_on_path(monkeypatch):
    monkeypatch.syspath_prepend(str(ROOT / "tests"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")


def run(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


def _write(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path



def _profile(lm_dir, arch, data, out, *extra):
    r = run("profile", "--model", lm_dir / arch, "--data", lm_dir / data, "-o", out, "--probe-steps", 30, "-q", *extra)
    assert r.exit_code == 0, r.output
    return json.loads(out.read_text())


# ----------------------------------------------------------------------------- the architectures found right


@pytest.mark.parametrize("arch", ["llama", "qwen2"])
def test_llama_and_qwen2_layers_have_their_real_grouped_query_shapes_and_blocks(lm_dir, tmp_path, arch):
    m = _profile(lm_dir, arch, "text.jsonl", tmp_path / "m.json")
    assert m["model"]["objective"] == "causal-lm" and m["model"]["data_format"] == "text"
    layers = {l["name"]: l for l in m["layers"]}
    projections = ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj", "mlp.gate_proj", "mlp.up_proj",
                   "mlp.down_proj")
    # no lm_head (tied to the embeddings on qwen2, a Linear all the same), no embeddings
    assert sorted(layers) == sorted(f"model.layers.{b}.{p}" for b in (0, 1) for p in projections)
    q, k, v = (layers[f"model.layers.0.self_attn.{p}_proj"] for p in "qkv")
    assert (q["in_features"], q["out_features"]) == (32, 32)
    assert (k["out_features"], v["out_features"]) == (16, 16)  # 2 key/value heads of 8 against 4 query heads
    assert layers["model.layers.1.mlp.down_proj"]["in_features"] == 48
    assert {l["block"] for l in m["layers"]} == {0, 1}
    assert {layers[f"model.layers.0.{p}"]["kind"] for p in projections[:4]} == {"attention"}
    assert {layers[f"model.layers.0.{p}"]["kind"] for p in projections[4:]} == {"mlp"}
    for l in m["layers"]:  # prefix cannot be trained on a decoder's attention: not offered, and the manifest says so
        assert "prefix" not in l["allowed_methods"] and {"lora", "ia3", "adapter"} <= set(l["allowed_methods"])
    assert m["metadata"]["gain_sources"]["prefix"].startswith("not offered")


def test_gpt2_fused_attention_in_conv1d_orientation(lm_dir, tmp_path):
    m = _profile(lm_dir, "gpt2", "text.jsonl", tmp_path / "m.json")
    layers = {l["name"]: l for l in m["layers"]}
    assert sorted(layers) == sorted(f"transformer.h.{b}.{p}" for b in (0, 1) for p in ("attn.c_attn", "attn.c_proj", "mlp.c_fc", "mlp.c_proj"))
    c_attn = layers["transformer.h.0.attn.c_attn"]
    assert (c_attn["in_features"], c_attn["out_features"]) == (32, 96)  # Conv1D stores (in, out): read the right way round
    assert (layers["transformer.h.1.mlp.c_proj"]["in_features"], layers["transformer.h.1.mlp.c_proj"]["out_features"]) == (128, 32)
    assert {l["block"] for l in m["layers"]} == {0, 1}


# ----------------------------------------------------------------------------- profile -> solve -> peft / apply, exact counts


@pytest.mark.parametrize("arch", ARCHS)
def test_profile_solve_export_peft_and_apply_with_exact_counts(lm_dir, tmp_path, arch):
    import peft
    from transformers import AutoModelForCausalLM

    from layerlens_opt.inject import apply

    manifest = tmp_path / "m.json"
    _profile(lm_dir, arch, "text.jsonl", manifest)
    lora = tmp_path / "lora.json"
    r = run("solve", manifest, "--budget", 1500, "--methods", "lora", "--json", "-o", lora)
    assert r.exit_code == 0, r.output
    alloc = json.loads(lora.read_text())
    assert alloc["status"] == "optimal" and alloc["total_params"] > 0
    r = run("export", lora, "--format", "peft", "-o", tmp_path / "peft")
    assert r.exit_code == 0, r.output
    model = AutoModelForCausalLM.from_pretrained(lm_dir / arch)
    peft_model = peft.get_peft_model(model, peft.LoraConfig.from_pretrained(str(tmp_path / "peft")))
    assert sum(p.numel() for p in peft_model.parameters() if p.requires_grad) == alloc["total_params"]

    mixed = tmp_path / "mixed.json"  # every measured method on offer: apply trains the whole allocation
    r = run("solve", manifest, "--budget", 1500, "--json", "-o", mixed)
    assert r.exit_code == 0, r.output
    alloc = json.loads(mixed.read_text())
    model = AutoModelForCausalLM.from_pretrained(lm_dir / arch)
    assert apply(model, mixed) == alloc["total_params"]
    assert sum(p.numel() for p in model.parameters() if p.requires_grad) == alloc["total_params"]
    ids = torch.randint(5, 20, (2, 9))
    out = model(input_ids=ids, labels=ids)
    out.loss.backward()
    grads = [p.grad for p in model.parameters() if p.requires_grad]
    assert torch.isfinite(out.loss) and grads and all(g is not None and torch.isfinite(g).all() for g in grads)
    assert any(float(g.abs().sum()) > 0 for g in grads)


def test_apply_refuses_prefix_on_a_decoder_clearly(lm_dir):
    from transformers import AutoModelForCausalLM

    from layerlens_opt.errors import LayerlensError
    from layerlens_opt.inject import inject

    model = AutoModelForCausalLM.from_pretrained(lm_dir / "llama")
    with pytest.raises(LayerlensError, match="prefix needs BERT-family self-attention"):
        inject(model, [("model.layers.0.self_attn.q_proj", "prefix", 2, None)])


# ----------------------------------------------------------------------------- the objective and the data formats


def _examples(lm_dir, data, max_length=256):
    from transformers import AutoTokenizer

    from layerlens_opt.profiling.causal_lm import load_rows

    return load_rows(lm_dir / data, AutoTokenizer.from_pretrained(lm_dir / "llama"), max_length)


def test_sft_rows_are_learned_on_the_completion_only(lm_dir):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from layerlens_opt.profiling.causal_lm import CausalLM

    examples, fmt = _examples(lm_dir, "sft.jsonl")
    assert fmt == "prompt-completion"
    tok = AutoTokenizer.from_pretrained(lm_dir / "llama")
    seq, targets = examples[0]
    row = json.loads((lm_dir / "sft.jsonl").read_text().splitlines()[0])
    n_prompt = len(tok(row["prompt"])["input_ids"])
    assert not any(targets[:n_prompt]) and all(targets[n_prompt:])
    assert seq[-1] == tok.eos_token_id  # the completion ends the sequence: learned too
    model = CausalLM(AutoModelForCausalLM.from_pretrained(lm_dir / "llama"), tok.pad_token_id)
    whole = [(s, [True] * len(s)) for s, _ in examples[:8]]
    with torch.no_grad():
        masked, n_masked = model.loss_sum(examples[:8], precise=True)
        full, n_full = model.loss_sum(whole, precise=True)
    assert n_masked == model.count(examples[:8]) < n_full == model.count(whole)
    assert abs(float(masked) / n_masked - float(full) / n_full) > 1e-3


def test_the_loss_ignores_padding(lm_dir):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from layerlens_opt.profiling.causal_lm import CausalLM

    examples, _ = _examples(lm_dir, "text.jsonl")
    tok = AutoTokenizer.from_pretrained(lm_dir / "llama")
    model = CausalLM(AutoModelForCausalLM.from_pretrained(lm_dir / "llama"), tok.pad_token_id).eval()
    long = examples[0]
    short = (examples[1][0][:6], examples[1][1][:6])
    with torch.no_grad():
        alone, n = model.loss_sum([short], precise=True)
        padded, _ = model.loss_sum([short, long], precise=True)
        other, _ = model.loss_sum([long], precise=True)
    assert float(padded) == pytest.approx(float(alone) + float(other), rel=1e-5)
    assert n == len(short[0]) - 1


def test_chat_rows_learn_assistant_turns_only(lm_dir, tmp_path):
    from transformers import AutoTokenizer

    from layerlens_opt.errors import LayerlensError
    from layerlens_opt.profiling.causal_lm import load_rows

    examples, fmt = _examples(lm_dir, "chat.jsonl")
    assert fmt == "messages"
    tok = AutoTokenizer.from_pretrained(lm_dir / "llama")
    seq, targets = examples[0]
    row = json.loads((lm_dir / "chat.jsonl").read_text().splitlines()[0])
    user = tok.apply_chat_template(row["messages"][:1], tokenize=True)
    user = list(user["input_ids"] if hasattr(user, "keys") else user)
    assert seq[: len(user)] == user and not any(targets[: len(user)]) and all(targets[len(user):])
    tok.chat_template = None
    with pytest.raises(LayerlensError, match="chat template"):
        load_rows(lm_dir / "chat.jsonl", tok, 256)


def test_sft_and_chat_profile_end_to_end(lm_dir, tmp_path):
    for data, fmt in (("sft.jsonl", "prompt-completion"), ("chat.jsonl", "messages")):
        m = _profile(lm_dir, "gpt2", data, tmp_path / f"{fmt}.json")
        assert m["model"]["data_format"] == fmt and m["model"]["probe"]["held_out_examples"] == 100


def test_a_row_of_the_wrong_format_names_the_formats_expected(lm_dir, tmp_path):
    bad = _write(tmp_path / "bad.jsonl", [{"text": "the cat runs"}, {"question": "what"}])
    r = run("profile", "--model", lm_dir / "llama", "--data", bad, "-o", tmp_path / "m.json", "-q")
    assert r.exit_code == 1 and r.output.count("\n") == 1, r.output
    assert "line 2" in r.output and "'question'" in r.output and '"prompt"' in r.output and '"messages"' in r.output
    assert not (tmp_path / "m.json").exists()
    mixed = _write(tmp_path / "mixed.jsonl", [{"text": "the cat runs"}, {"prompt": "the", "completion": "cat"}])
    r = run("profile", "--model", lm_dir / "llama", "--data", mixed, "-o", tmp_path / "m.json", "-q")
    assert r.exit_code == 1 and "one format" in r.output, r.output


def test_the_objective_can_be_forced_and_a_classifier_refuses_causal_options(lm_dir, tmp_path):
    r = run("profile", "--model", "tiny_models:tiny", "--data", lm_dir / "text.jsonl", "-o", tmp_path / "m.json", "-q",
            "--objective", "causal-lm")
    assert r.exit_code == 1 and "causal" in r.output, r.output
    labelled = _write(tmp_path / "l.jsonl", [{"text": "a b", "label": i % 2} for i in range(200)])
    r = run("profile", "--model", "tiny_models:tiny", "--data", labelled, "-o", tmp_path / "m.json", "-q", "--dtype", "bfloat16")
    assert r.exit_code == 1 and "--dtype bfloat16 is for causal language models" in r.output, r.output


def test_every_signal_and_half_precision_work_on_a_causal_lm(lm_dir, tmp_path):
    m = _profile(lm_dir, "llama", "text.jsonl", tmp_path / "fo.json", "--signal", "first-order")
    assert m["model"]["objective"] == "causal-lm" and len(m["layers"]) == 14
    assert all(_finite_non_negative(l["metrics"]["fisher"]) for l in m["layers"]) and any(l["metrics"]["fisher"] > 0 for l in m["layers"])
    m = _profile(lm_dir, "gpt2", "sft.jsonl", tmp_path / "lp.json", "--signal", "lora-probe", "--dtype", "bfloat16",
                 "--max-length", 12)
    assert m["model"]["dtype"] == "bfloat16" and m["model"]["max_length"] == 12
    assert m["model"]["probe"]["held_out_examples"] == 100  # a fifth of 300, at least 100
    assert all(l["allowed_methods"] == ["lora", "none"] for l in m["layers"])


def _finite_non_negative(x):
    return isinstance(x, float) and math.isfinite(x) and x >= 0


def test_a_factory_may_return_a_causal_lm_with_its_tokenizer(lm_dir, tmp_path, monkeypatch):
    factory = tmp_path / "my_lm.py"
    factory.write_text("from transformers import AutoModelForCausalLM, AutoTokenizer\n"
                       f"def make():\n    d = {str(lm_dir / 'llama')!r}\n"
                       "    return AutoModelForCausalLM.from_pretrained(d), AutoTokenizer.from_pretrained(d)\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    r = run("profile", "--model", "my_lm:make", "--data", lm_dir / "sft.jsonl", "-o", tmp_path / "m.json", "-q", "--probe-steps", 10)
    assert r.exit_code == 0, r.output
    m = json.loads((tmp_path / "m.json").read_text())
    assert m["model"]["objective"] == "causal-lm" and len(m["layers"]) == 14


def test_an_untrusted_lora_probe_is_refused_and_says_so_when_allowed(lm_dir, tmp_path):
    out = tmp_path / "m.json"
    args = ("profile", "--model", lm_dir / "llama", "--data", lm_dir / "text.jsonl", "-o", out, "-q", "--signal", "lora-probe",
            "--probe-steps", 1, "--probe-lr", "1e-6")
    r = run(*args)
    assert r.exit_code == 6 and "learned too little to trust" in r.stderr and not out.exists(), r.output
    r = run(*args, "--allow-untrusted")
    assert r.exit_code == 0, r.output
    probe = json.loads(out.read_text())["model"]["probe"]
    assert probe["trusted"] is False and "learned too little" in probe["warning"]
    assert "warning: the probe learned too little" in r.output  # on the console too
