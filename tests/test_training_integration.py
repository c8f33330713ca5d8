"""Export to peft, apply() for every method, and the picture/explanation commands."""

import json

import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from click.testing import CliRunner  # noqa: E402

from layerlens_opt.inject import apply, trainable_parameters  # noqa: E402
from layerlens_opt.cli import main  # noqa: E402
from layerlens_opt.export import lora_config, to_csv, to_markdown  # noqa: E402
from layerlens_opt.manifest import parse_manifest  # noqa: E402
from layerlens_opt.problem import Constraints, ModelOptions, build_problem  # noqa: E402
from layerlens_opt.solvers import solve  # noqa: E402

from conftest import SCENARIOS, layer, manifest  # noqa: E402


def tiny_bert(layers=12):
    """A BERT built from a config in code (no weights downloaded): 12 layers, so layer.1 vs layer.11 matters."""
    cfg = transformers.BertConfig(vocab_size=50, hidden_size=16, num_hidden_layers=layers, num_attention_heads=2,
                                  intermediate_size=32, max_position_embeddings=16)
    torch.manual_seed(0)
    return transformers.BertModel(cfg, add_pooling_layer=False)


def bert_manifest(model):
    from layerlens_opt.naming import infer

    layers = []
    for i, (name, mod) in enumerate((n, m) for n, m in model.named_modules() if isinstance(m, torch.nn.Linear)):
        kind, _, block = infer(name)
        s = 1.0 + (i * 7919 % 13) / 13
        layers.append(layer(name, kind=kind, d_in=mod.in_features, d_out=mod.out_features, block=block, ge=s, fi=s * s, pe=s))
    return parse_manifest(manifest(layers))


def alloc_for(model, budget, methods):
    problem = build_problem(bert_manifest(model), Constraints(budget=budget), ModelOptions(methods=methods))
    a = solve(problem, "auto")
    assert a.ok, a.message
    return a.to_dict()


def plan(layers):
    """A schema-v1 allocation object around hand-written layers (params filled in for LoRA on 32x32 where absent)."""
    layers = [{"params": l["rank"] * 64, **l} for l in layers]
    total = sum(l["params"] for l in layers)
    return {"schema_version": 1, "solver": "hand", "status": "feasible", "budget": total, "total_params": total,
            "utilization": 1.0, "layers": layers}


def test_peft_export_matches_allocation_exactly(tmp_path):
    from peft import LoraConfig, get_peft_model

    model = tiny_bert()
    alloc = alloc_for(model, 3000, ("lora", "none"))
    lora = {l["name"]: l["rank"] for l in alloc["layers"] if l["method"] == "lora"}
    assert len(set(lora.values())) > 1, "want several ranks so rank_pattern is exercised"
    (tmp_path / "a.json").write_text(json.dumps(alloc))
    r = CliRunner().invoke(main, ["export", str(tmp_path / "a.json"), "--format", "peft", "-o", str(tmp_path / "adapter")])
    assert r.exit_code == 0, r.output
    cfg = LoraConfig.from_pretrained(str(tmp_path / "adapter"))
    peft_model = get_peft_model(model, cfg)
    got = {}
    for name, module in peft_model.named_modules():
        if hasattr(module, "lora_A") and isinstance(getattr(module, "r", None), dict) and "default" in module.r:
            got[name.removeprefix("base_model.model.")] = module.r["default"]
            assert module.lora_alpha["default"] == 2 * module.r["default"]
    assert got == lora
    trainable = sum(p.numel() for p in peft_model.parameters() if p.requires_grad)
    assert trainable == alloc["total_params"]


def test_rank_pattern_keys_are_anchored():
    import re

    alloc = plan([{"name": "encoder.layer.1.attention.self.query", "method": "lora", "rank": 4},
                  {"name": "encoder.layer.11.attention.self.query", "method": "lora", "rank": 2}])
    cfg = lora_config(alloc)
    for key, rank in cfg["rank_pattern"].items():
        matched = [n for n in ("encoder.layer.1.attention.self.query", "encoder.layer.11.attention.self.query",
                               "base_model.model.encoder.layer.1.attention.self.query")
                   if re.match(rf"(.*\.)?({key})$", n)]
        assert len({m.removeprefix("base_model.model.") for m in matched}) == 1


@pytest.mark.parametrize("methods", [("lora", "adapter", "prefix", "ia3", "none"), ("adapter", "none"), ("prefix", "ia3", "none")])
def test_apply_trainable_count_equals_allocation(methods):
    model = tiny_bert(layers=3)
    alloc = alloc_for(model, 4000, methods)
    used = {l["method"] for l in alloc["layers"]} - {"none"}
    assert used, alloc
    added = apply(model, alloc)
    assert added == trainable_parameters(model) == alloc["total_params"]
    ids = torch.randint(0, 50, (2, 6))
    mask = torch.ones(2, 6, dtype=torch.long)
    mask[1, 4:] = 0
    out = model(input_ids=ids, attention_mask=mask).last_hidden_state
    assert torch.isfinite(out).all()
    out.pow(2).mean().backward()
    grads = [p.grad for p in model.parameters() if p.requires_grad]
    assert grads and all(g is not None for g in grads)
    assert all(p.grad is None for p in model.parameters() if not p.requires_grad)


def test_param_groups_give_each_method_its_own_rate():
    from layerlens_opt.inject import param_groups
    from layerlens_opt.methods import METHODS

    model = tiny_bert(layers=3)
    alloc = alloc_for(model, 4000, ("lora", "adapter", "prefix", "ia3", "none"))
    apply(model, alloc)
    head = torch.nn.Linear(16, 2)
    whole = torch.nn.ModuleDict({"encoder": model, "head": head})
    groups = param_groups(whole, 1e-3, {"ia3": 0.5})
    by = {g["method"]: g for g in groups}
    used = {l["method"] for l in alloc["layers"]} - {"none"}
    assert set(by) == used | {"other"}
    for method in used:
        assert by[method]["lr"] == (0.5 if method == "ia3" else METHODS[method].lr)
    assert by["other"]["lr"] == 1e-3 and {id(p) for p in by["other"]["params"]} == {id(p) for p in head.parameters()}
    grouped = [id(p) for g in groups for p in g["params"]]
    assert len(grouped) == len(set(grouped)) == sum(1 for p in whole.parameters() if p.requires_grad)
    torch.optim.AdamW(groups)  # what the benchmark and the probe build from them


def test_apply_starts_at_the_base_model_for_lora_adapter_ia3():
    """LoRA (B=0), adapters (up=0) and IA3 (l=1) leave the model's function unchanged at initialisation."""
    model = tiny_bert(layers=2).eval()  # no dropout
    ids = torch.randint(0, 50, (2, 5))
    before = model(input_ids=ids).last_hidden_state
    alloc = alloc_for(model, 3000, ("lora", "adapter", "ia3", "none"))
    apply(model, alloc)
    after = model(input_ids=ids).last_hidden_state
    assert torch.allclose(before, after, atol=1e-6)


def test_apply_under_a_wrapper_prefix_and_unknown_layer():
    from layerlens_opt.errors import LayerlensError

    wrapper = torch.nn.Module()
    wrapper.encoder = tiny_bert(layers=2)
    alloc = alloc_for(wrapper.encoder, 2000, ("lora", "none"))
    assert apply(wrapper, alloc) == alloc["total_params"]
    with pytest.raises(LayerlensError, match="not a module of this model"):
        apply(tiny_bert(layers=2), plan([{"name": "nope.query", "method": "lora", "rank": 1}]))


def test_csv_and_markdown(tmp_path):
    problem = build_problem(parse_manifest(json.loads(SCENARIOS[0].read_text())), Constraints(budget=50_000))
    alloc = solve(problem, "auto")
    csv_text = to_csv(alloc)
    assert csv_text.splitlines()[0] == "name,kind,block,method,rank,params,utility,gain"
    assert len(csv_text.splitlines()) == 13
    md = to_markdown(alloc)
    assert md.startswith("| name |") and f"{alloc.total_params:,}" in md


def test_plot_and_frontier_write_images(tmp_path):
    pytest.importorskip("matplotlib")
    runner = CliRunner()
    a = tmp_path / "a.json"
    assert runner.invoke(main, ["solve", str(SCENARIOS[0]), "--budget", "50k", "--json", "-o", str(a)]).exit_code == 0
    r = runner.invoke(main, ["plot", str(a), "-o", str(tmp_path / "a.png")])
    assert r.exit_code == 0, r.output
    assert (tmp_path / "a.png").read_bytes()[:4] == b"\x89PNG"
    r = runner.invoke(main, ["frontier", str(SCENARIOS[0]), "--budgets", "20k:100k:5", "-o", str(tmp_path / "f.png"), "--json"])
    assert r.exit_code == 0, r.output
    points = json.loads(r.stdout)
    assert [p["budget"] for p in points] == [20000, 40000, 60000, 80000, 100000]
    assert all(p["exact"] >= p["heuristic"] - 1e-9 for p in points if p["heuristic"] is not None)
    objectives = [p["exact"] for p in points]
    assert objectives == sorted(objectives)  # more budget never hurts the exact solver here
    assert (tmp_path / "f.png").exists()


def test_explain_cross_checks_the_lp_with_cvxpy():
    pytest.importorskip("cvxpy")
    from layerlens_opt.explain import lp_relaxation
    from layerlens_opt.solvers import mckp

    problem = build_problem(parse_manifest(json.loads(SCENARIOS[2].read_text())), Constraints(budget=50_000))
    bound, price, _, status = lp_relaxation(problem)
    assert status == "optimal"
    pre = mckp.presolve(problem)
    assert bound == pytest.approx(pre.bound, rel=1e-6)
    assert price == pytest.approx(pre.price, rel=1e-4)
    r = CliRunner().invoke(main, ["explain", str(SCENARIOS[2]), "--budget", "50k", "--layer", "encoder.layer.0"])
    assert r.exit_code == 0, r.output
    assert "agrees" in r.output and "encoder.layer.0" in r.output


def test_public_api_five_lines():
    """The README's Python example: solve, apply to a model, and a peft LoraConfig in memory."""
    import layerlens_opt as ll

    model = tiny_bert(2)
    problem = ll.build_problem(bert_manifest(model), ll.Constraints(budget=2000), ll.ModelOptions(methods=("lora", "none")))
    allocation = ll.solve(problem)
    added = ll.apply(model, allocation)
    assert added == allocation.total_params == trainable_parameters(model)
    config = ll.to_peft_config(allocation)
    assert type(config).__name__ == "LoraConfig"
    assert set(config.target_modules) == {l.name for l in allocation.layers if l.method == "lora"}


def test_apply_refuses_an_allocation_for_another_shape():
    model = tiny_bert(2)
    data = plan([{"name": "encoder.layer.0.attention.self.query", "method": "lora", "rank": 1, "params": 99}])
    with pytest.raises(Exception, match="costs 32"):
        apply(model, data)
    data = plan([{"name": "encoder.layer.0.attention.self.query", "method": "lora", "rank": 64, "params": 64 * 32}])
    with pytest.raises(Exception, match="at most 16"):
        apply(model, data)
    data = dict(plan([{"name": "encoder.layer.0.attention.self.query", "method": "lora", "rank": 1, "params": 32}]), total_params=33)
    with pytest.raises(Exception, match="total_params is 33 but its layers add up to 32"):
        apply(model, data)
