"""The training benchmark's tables, fidelity and plot (the training itself is a script, not a CI test)."""

import json

import pytest

from layerlens_opt.train_bench import fidelity, main, spearman, summarize


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
    assert fid["pairs"]["probe masks"] is None  # not evaluated for every contender: no number
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
