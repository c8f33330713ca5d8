"""The training benchmark's tables, fidelity and plot (the training itself is a script, not a CI test)."""

import argparse
import json

import pytest

from layerlens_opt.train_bench import PACKAGES, environment, environment_line, fidelity, main, spearman, summarize


def fake_results():
    out = []
    for task, budget, method, params, accs in [("pairs", 9216, "uniform q,v r=1", 9216, [0.8, 0.9]),
                                               ("pairs", 9216, "ILP (probe, separable)", 9000, [0.7, 0.7]),
                                               ("pairs", 36864, "uniform q,v r=4", 36864, [0.85, 0.87])]:
        for seed, acc in enumerate(accs):
            out.append({"task": task, "budget": budget, "method": method, "seed": seed, "accuracy": acc, "params": params,
                        "seconds": 10.0 + seed})
    return out


def fake_models():
    return [{"task": "pairs", "budget": b, "method": m, "params": 0, "predicted": {"first-order": fo, "probe": pr},
             "profile_seconds": {"first-order": 3.0, "probe": 100.0}}
            for b, m, fo, pr in [(9216, "uniform q,v r=1", 0.1, 0.5), (9216, "ILP (probe, separable)", 0.9, 0.2),
                                 (36864, "uniform q,v r=4", 0.3, 0.9)]]


def test_summarize_means_stds_and_seeds():
    rows = summarize(fake_results())
    assert [(t, b, m, p) for t, b, m, p, *_ in rows] == [("pairs", 9216, "uniform q,v r=1", 9216),
                                                          ("pairs", 9216, "ILP (probe, separable)", 9000),
                                                          ("pairs", 36864, "uniform q,v r=4", 36864)]
    assert rows[0][4] == pytest.approx(0.85) and rows[0][5] == pytest.approx(0.0707, abs=1e-4)
    assert rows[1][5] == 0.0 and rows[1][6] == pytest.approx(10.5) and rows[0][7] == [0.8, 0.9]


def test_fidelity_is_spearman_of_prediction_against_accuracy():
    rows = summarize(fake_results())
    fid = fidelity(rows, fake_models())
    # accuracies 0.85, 0.70, 0.86: probe predictions 0.5, 0.2, 0.9 order them exactly; first-order 0.1, 0.9, 0.3 does not
    assert fid["pairs"]["probe"] == pytest.approx(1.0)
    assert fid["pairs"]["first-order"] == pytest.approx(spearman([0.1, 0.9, 0.3], [0.85, 0.70, 0.86]))
    assert fid["pairs"]["lora-probe"] is None  # not evaluated for every contender: no number
    assert spearman([1, 2], [1, 2]) is None  # too few points


def test_replot_merges_result_folders(tmp_path):
    pytest.importorskip("matplotlib")
    a, b = tmp_path / "a", tmp_path / "b"
    a.mkdir(), b.mkdir()
    results = fake_results()
    (a / "results.json").write_text(json.dumps(results[:4]))
    (b / "results.json").write_text(json.dumps(results[4:]))
    (b / "models.json").write_text(json.dumps(fake_models()))
    main(["--replot", str(a), str(b), "--out", str(tmp_path / "out")])
    md = (tmp_path / "out" / "results.md").read_text()
    assert "| 9,216 | uniform q,v r=1 | 9,216 | 85.0% ± 7.1 | (best uniform) | 10 |" in md
    assert "| 9,216 | ILP (probe, separable) | 9,000 | 70.0% ± 0.0 | -15.0 (-10.0, -20.0) | 10 |" in md
    assert "| pairs | -0.50 | +1.00 |" in md
    assert (tmp_path / "out" / "results.png").read_bytes()[:4] == b"\x89PNG"


def test_the_environment_is_recorded_and_a_replot_names_each_folders(tmp_path):
    env = environment()
    assert set(env["packages"]) == set(PACKAGES) and env["python"].count(".") == 2
    assert env["packages"]["numpy"] and "numpy " + env["packages"]["numpy"] in environment_line(env)
    assert environment_line({"commit": None, "python": "3.11.7", "packages": {"torch": "2.13.0", "peft": None}}) == \
        "commit unknown; Python 3.11.7; torch 2.13.0"
    a, b = tmp_path / "a", tmp_path / "b"
    a.mkdir(), b.mkdir()
    results = fake_results()
    (a / "results.json").write_text(json.dumps(results[:4]))
    (b / "results.json").write_text(json.dumps(results[4:]))
    (b / "environment.json").write_text(json.dumps({"commit": "abc1234", "python": "3.11.7", "packages": {"torch": "2.13.0"}}))
    main(["--replot", str(a), str(b), "--out", str(tmp_path / "out")])
    md = (tmp_path / "out" / "results.md").read_text()
    assert f"{b}: commit abc1234; Python 3.11.7; torch 2.13.0" in md and f"{a}: commit" not in md  # a recorded none


def minilm_like_dims():
    """MiniLM's 36 adaptable layers by name, with their (in, out) shapes (hidden 384, FFN 1536, 6 blocks)."""
    dims = {}
    for i in range(6):
        p = f"encoder.layer.{i}."
        for n in ("attention.self.query", "attention.self.key", "attention.self.value", "attention.output.dense"):
            dims[p + n] = (384, 384)
        dims[p + "intermediate.dense"] = (384, 1536)
        dims[p + "output.dense"] = (1536, 384)
    return dims


def test_uniform_baselines_cost_what_each_method_costs_and_fit_the_window():
    from layerlens_opt.train_bench import BUDGETS, uniform_baselines

    dims = minilm_like_dims()
    cost = {label: plan["total_params"] for label, plan in uniform_baselines(dims)}
    assert cost["uniform IA3 v"] == 2304 and cost["uniform IA3 ffn_out"] == 2304
    assert cost["uniform IA3 q,k,v,o"] == 9216 and cost["uniform IA3 all linear"] == 20736
    assert cost["uniform IA3 k,v,ffn_out (peft default)"] == 6912
    assert cost["uniform LoRA q,v r=1"] == 9216 and cost["uniform LoRA all linear r=1"] == 41472
    assert cost["uniform prefix p=2"] == 9216  # 2 positions x (key + value) x 384, on 6 blocks
    assert cost["uniform adapter attn out r=1"] == 6 * (2 * 384 + 1 + 384) and cost["uniform adapter ffn out r=4"] == 20760
    fitting = {b: dict(uniform_baselines(dims, b)) for b in BUDGETS}
    for b, plans in fitting.items():
        assert plans and all(0.9 * b <= p["total_params"] <= b for p in plans.values())
    assert set(fitting[2304]) == {"uniform IA3 v", "uniform IA3 ffn_out"}
    assert set(fitting[20736]) == {"uniform IA3 all linear"}  # adapters at width 4 cost 20,760: 24 over
    assert {"uniform LoRA all linear r=1", "uniform adapter attn out r=8", "uniform prefix p=9"} <= set(fitting[41472])


def test_goal_table_averages_paired_differences_per_cell():
    from layerlens_opt.train_bench import goal_table, versus_best_uniform

    results = []
    for task, budget, method, accs in [("pairs", 100, "uniform a", [0.50, 0.60]), ("pairs", 100, "uniform b", [0.70, 0.50]),
                                       ("pairs", 100, "ILP (probe)", [0.72, 0.56]), ("frequency", 100, "uniform a", [0.40, 0.40]),
                                       ("frequency", 100, "ILP (probe)", [0.38, 0.40])]:
        for seed, acc in enumerate(accs):
            results.append({"task": task, "budget": budget, "method": method, "seed": seed, "accuracy": acc, "params": 1, "seconds": 1})
    diffs = versus_best_uniform(summarize(results))
    # pairs: best uniform is b (mean 0.60 > 0.55); ILP - b per seed: +2, +6 -> +4; frequency: -2, 0 -> -1
    assert diffs == {("pairs", 100, "ILP (probe)"): pytest.approx(4.0), ("frequency", 100, "ILP (probe)"): pytest.approx(-1.0)}
    md = "\n".join(goal_table(summarize(results)))
    assert "| ILP (probe) | 2 | +1.50 | -1.00 (frequency 100) | -1.00 |" in md


def test_the_cost_table_says_under_what_threads_its_seconds_were_spent():
    """A profile alone on 2 threads next to runs trained two at a time with one thread each is not a fair comparison:
    the report says so; equal conditions say nothing more; records without the fields say they were not recorded."""
    from layerlens_opt.train_bench import cost_conditions

    runs = [{"threads": 1, "at_once": 2}, {"threads": 1, "at_once": 2}]
    line = cost_conditions(runs, [{"profile_threads": [2]}])
    assert line.startswith("Profiles: 2 threads. Training runs: 1 thread(s) each, up to 2 at a time.") and "Not thread for thread" in line
    fair = cost_conditions([{"threads": 2, "at_once": 1}], [{"profile_threads": [2]}])
    assert fair == "Profiles: 2 threads. Training runs: 2 thread(s) each, up to 1 at a time."
    assert cost_conditions([{"seconds": 3}], [{}]) == "Profiles: threads not recorded. Training runs: threads not recorded."


def test_the_cost_mode_prices_the_profile_in_training_runs_of_each_kind(tmp_path, monkeypatch):
    """--cost times the default profile and one training run alone, one after the other, and divides: the profile's
    wall time against the run's training steps and against the whole run (load, train, score)."""
    pytest.importorskip("torch")
    import time as _time

    from layerlens_opt import profile_cost, train_bench
    monkeypatch.setattr(train_bench, "_minilm_dims", lambda: {f"encoder.layer.{i}.attention.self.{p}": (384, 384)
                                                               for i in range(6) for p in ("query", "key", "value")})
    clock = [0.0]
    monkeypatch.setattr(_time, "perf_counter", lambda: clock[0])
    seen = {}

    def probe(model, data, config):  # 30 s of profiling, as the probe would record it
        seen["config"] = config
        clock[0] += 30.0
        return {"model": {"probe": {"steps": 100, "max_steps": config.max_steps, "held_out_passes": 12, "trusted": True,
                                    "seconds_training": 25.0, "seconds_measuring": 2.0}}}

    def train(job):  # 24 s of training steps inside 28 s of loading, training and scoring
        seen["job"] = job
        clock[0] += 28.0
        return {"seconds": 24.0, "accuracy": 0.9}

    args = argparse.Namespace(out=tmp_path, device="cpu", quiet=True, lr=2e-3, probe_steps=120, steps=300, batch_size=32, threads=1)
    rows = profile_cost.main(args, ["emotion"], probe=probe, train=train)
    assert rows[0]["profile_seconds"] == 30.0 and rows[0]["run_training_seconds"] == 24.0 and rows[0]["run_whole_seconds"] == 28.0
    assert seen["config"].max_steps == 120 and seen["job"]["steps"] == 300
    assert seen["job"]["allocation"]["total_params"] == 9216  # uniform LoRA q,v r=1 on MiniLM's shapes
    md = (tmp_path / "cost.md").read_text()
    assert "| emotion | 30.0 | 100 of 120 | 12 | yes | 24.0 | 28.0 | 1.25 | 1.07 |" in md
    assert json.loads((tmp_path / "cost.json").read_text())["rows"] == rows


def test_the_benchmark_makes_each_missing_profile_and_records_its_threads(tmp_path, monkeypatch):
    """gain_models profiles what its folder lacks (a cached probe made with another step cap counts as lacking) and
    records each profile's wall time and threads."""
    torch = pytest.importorskip("torch")
    from layerlens_opt.profiling import method_probe, probe, profiler
    from layerlens_opt.train_bench import gain_models

    made = []

    def fake(stem):
        def run(model, data, config):
            made.append((stem, getattr(config, "max_steps", None)))
            p = {"steps": 10, "max_steps": getattr(config, "max_steps", None), "held_out_loss": 0.5, "held_out_loss_without_adapters": 0.7,
                 "trusted": True, "held_out_passes": 3, "seconds_by_phase": {"gradient": 1.0, "pairs": 2.0}}
            return {"model": {"seconds": 9.0, "probe": p}}
        return run

    monkeypatch.setattr(method_probe, "method_probe", fake("probe"))
    monkeypatch.setattr(probe, "probe", fake("lora-probe"))
    monkeypatch.setattr(profiler, "profile", fake("first-order"))
    args = argparse.Namespace(device="cpu", quiet=True, lr=2e-3, fidelity_tasks=[], probe_steps=100)
    models = gain_models("emotion", tmp_path, args)
    assert sorted(s for s, _ in made) == ["first-order", "lora-probe", "probe"] and ("probe", 100) in made
    assert models["threads"] == [torch.get_num_threads()]
    assert models["seconds"]["probe default"] == 7.0  # the whole probe less its pair terms
    made.clear()
    gain_models("emotion", tmp_path, args)
    assert made == []  # all cached
    args.probe_steps = 200
    gain_models("emotion", tmp_path, args)
    assert made == [("probe", 200)]  # another cap: the probe is made again, the others are kept


def test_a_gain_model_that_measured_every_layer_at_zero_has_no_answer_and_no_prediction(tmp_path, capsys):
    """On the current code the LoRA-only probe of emotion gives no layer a positive value; its contender drops out of the
    frontier (said on stderr) instead of stopping the benchmark, and the fidelity table leaves its prediction out."""
    from pathlib import Path

    from layerlens_opt.errors import ManifestError
    from layerlens_opt.train_bench import predicted, solved

    shipped = Path(__file__).resolve().parent.parent / "problems" / "profiled" / "minilm-pairs-lora-probe.json"
    assert solved(shipped, 9216, "auto", interactions=False, methods=("lora", "none")) is not None
    data = json.loads(shipped.read_text())
    for layer in data["layers"]:
        layer["metrics"]["probe_loss_drop"] = 0.0
    zero = tmp_path / "lora-probe.json"
    zero.write_text(json.dumps(data))
    assert solved(zero, 9216, "auto", interactions=False, methods=("lora", "none")) is None
    assert "no auto allocation at 9216 on lora-probe.json: metric 'probe_loss_drop' is zero on every layer" in capsys.readouterr().err
    assert predicted(zero, {"total_params": 9216, "layers": []}, False) is None
    assert predicted(shipped, {"total_params": 9216, "layers": []}, False) == 0.0
    broken = tmp_path / "broken.json"
    broken.write_text("{")
    with pytest.raises(ManifestError):  # a file that is not a manifest is still an error, not a missing contender
        solved(broken, 9216, "auto")
