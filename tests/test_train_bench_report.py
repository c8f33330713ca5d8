"""The training benchmark's table and plot (the training itself is a script, not a CI test)."""

import json

import pytest

from layerlens_opt.train_bench import main, summarize


def fake_results():
    out = []
    for budget, method, params, accs in [(9216, "uniform", 9216, [0.8, 0.9]), (9216, "ILP", 9000, [0.7, 0.7]),
                                         (36864, "uniform", 36864, [0.85, 0.87])]:
        for seed, acc in enumerate(accs):
            out.append({"budget": budget, "method": method, "seed": seed, "accuracy": acc, "params": params, "seconds": 10.0 + seed})
    return out


def test_summarize_means_and_stds():
    rows = summarize(fake_results())
    assert [(b, m, p) for b, m, p, *_ in rows] == [(9216, "uniform", 9216), (9216, "ILP", 9000), (36864, "uniform", 36864)]
    assert rows[0][3] == pytest.approx(0.85) and rows[0][4] == pytest.approx(0.0707, abs=1e-4)
    assert rows[1][4] == 0.0 and rows[1][5] == pytest.approx(10.5)


def test_replot_merges_result_files(tmp_path):
    pytest.importorskip("matplotlib")
    a, b = tmp_path / "a.json", tmp_path / "b.json"
    results = fake_results()
    a.write_text(json.dumps(results[:4]))
    b.write_text(json.dumps(results[4:]))
    main(["--replot", str(a), str(b), "--out", str(tmp_path / "out")])
    md = (tmp_path / "out" / "results.md").read_text()
    assert "| 9,216 | uniform | 9,216 | 85.0% ± 7.1 | 10 |" in md
    assert "| 36,864 | uniform | 36,864 | 86.0% ± 1.4 | 10 |" in md
    assert (tmp_path / "out" / "results.png").read_bytes()[:4] == b"\x89PNG"
