"""The command line through click's CliRunner: exit codes, JSON schema, one-line errors."""

import json

import pytest
from click.testing import CliRunner

from layerlens_opt.cli import main, parse_count
from layerlens_opt.errors import LayerlensError

from conftest import ROOT, SCENARIOS, layer, manifest

SCENARIO = str(SCENARIOS[0])
ALLOCATION_KEYS = {"schema_version", "solver", "status", "objective", "bound", "gap", "budget", "total_params",
                   "utilization", "seconds", "layers", "metrics"}
LAYER_KEYS = {"name", "method", "rank", "params", "gain", "utility"}


def run(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


def assert_one_line_error(result, code, *fragments):
    assert result.exit_code == code, result.output
    assert "Traceback" not in result.output
    assert result.exception is None or isinstance(result.exception, SystemExit)
    text = result.output.strip()
    for f in fragments:
        assert f in text, text


@pytest.mark.parametrize("text, value", [("50000", 50000), ("50k", 50000), ("1.2M", 1200000), ("5e4", 50000), ("50_000", 50000)])
def test_budget_parsing(text, value):
    assert parse_count(text) == value


@pytest.mark.parametrize("text", ["-5", "0", "abc", "1.5"])
def test_budget_parsing_rejects(text):
    with pytest.raises(LayerlensError):
        parse_count(text)


def test_solve_prints_table_and_summary():
    r = run("solve", SCENARIO, "--budget", "50k")
    assert r.exit_code == 0, r.output
    for word in ("layer", "method", "rank", "params", "utility", "gain", "objective", "bound", "gap", "utilization", "status        optimal"):
        assert word in r.output


def test_solve_cuts_a_long_table_to_its_ends_unless_asked_for_every_row(generated72):
    """Past --max-rows layers the table shows its first and last 10 rows and how many are not shown; by default
    (1,000) a 72-layer model is shown whole, and --max-rows 0 shows every layer of any model."""
    path, budget = generated72
    whole = run("solve", path, "--budget", budget)
    cut = run("solve", path, "--budget", budget, "--max-rows", "30")
    every = run("solve", path, "--budget", budget, "--max-rows", "0")
    assert whole.exit_code == cut.exit_code == every.exit_code == 0, cut.output
    rows = whole.output.split("\n\n")[0].splitlines()
    n = len(rows) - 2  # less the header and its rule
    assert n == 72 and every.output.split("\n\n")[0] == whole.output.split("\n\n")[0]
    shown = cut.output.split("\n\n")[0].splitlines()
    assert shown[:2] == rows[:2]  # (the widths of these rows happen to be the whole table's)
    assert shown[2:12] == rows[2:12] and shown[13:] == rows[-10:]
    assert shown[12] == f"... {n - 20} more layers (all {n}: --max-rows 0, --json or --output)"

    def summary(result):  # (less the timings)
        return [line for line in result.output.split("\n\n", 1)[1].splitlines() if not line.startswith("seconds")]

    assert summary(cut) == summary(whole)


def test_compare_cuts_a_long_table_to_its_ends_and_counts_the_layers_that_differ(generated72):
    path, budget = generated72
    whole = run("compare", path, "--budget", budget)
    cut = run("compare", path, "--budget", budget, "--max-rows", "30")
    assert whole.exit_code == cut.exit_code == 0, cut.output
    # cells, not padding: the cut table's widths are those of the rows it shows
    rows = [" ".join(r.split()) for r in whole.output.split("\n\n")[0].splitlines()]
    shown = [" ".join(r.split()) for r in cut.output.split("\n\n")[0].splitlines()]
    differ = sum(1 for r in rows[2:] if r.endswith("*"))
    assert len(rows) == 74 and 0 < differ < 72  # (the exact answer and the heuristic differ on some layers only)
    assert shown[2:12] == rows[2:12] and shown[13:] == rows[-10:]
    assert shown[12] == f"... 52 more layers ({differ} of all 72 differ; every row: --max-rows 0 or --json)"
    assert cut.output.split("\n\n", 1)[1] == whole.output.split("\n\n", 1)[1]  # the metrics and the difference
    assert run("compare", path, "--budget", budget, "--max-rows", "0").output == whole.output


def test_a_command_turns_the_collector_off_only_while_it_runs(monkeypatch):
    import gc

    from layerlens_opt import cliparse

    seen = []
    real = cliparse.build_from_options
    monkeypatch.setattr("layerlens_opt.cli._build", lambda kw: (real(kw), seen.append(gc.isenabled()))[0])
    assert gc.isenabled()
    assert run("solve", SCENARIO, "--budget", "50k").exit_code == 0
    assert run("solve", SCENARIO, "--budget", "-1").exit_code != 0  # an error path turns it back on too
    assert seen == [False] and gc.isenabled()
    gc.disable()  # a caller that had it off finds it off
    try:
        assert run("solve", SCENARIO, "--budget", "50k").exit_code == 0 and not gc.isenabled()
    finally:
        gc.enable()


def test_a_command_that_fails_after_turning_the_collector_off_turns_it_back_on(monkeypatch):
    import gc

    from layerlens_opt.errors import LayerlensError

    def failing(*a, **k):
        raise LayerlensError("forced failure after the build")

    monkeypatch.setattr("layerlens_opt.cli._solve", failing)
    before = gc.get_threshold()
    r = run("solve", SCENARIO, "--budget", "50k")
    assert r.exit_code != 0 and "forced failure" in r.output
    assert gc.isenabled() and gc.get_threshold() == before


def test_building_a_problem_from_the_library_leaves_the_collector_alone():
    import gc

    from layerlens_opt import cliparse

    kw = dict(manifest=SCENARIO, methods="lora,adapter,ia3,prefix", ranks=(), weights=None, method_cap=(), budget=50_000, min_utilization=0.7,
              max_utilization=0.9, min_methods=0, tie_blocks=False, normalization="max", max_rank=None, shrink=0.0)
    problem, _ = cliparse.build_from_options(kw)
    assert problem.n_layers > 0 and gc.isenabled()


@pytest.mark.parametrize("solver", ["auto", "cbc", "highs", "heuristic"])
def test_solve_json_matches_schema(solver, tmp_path):
    out = tmp_path / "alloc.json"
    r = run("solve", SCENARIO, "--budget", "50000", "--solver", solver, "--json", "-o", out)
    assert r.exit_code == 0, r.output
    data = json.loads(r.output)
    assert data == json.loads(out.read_text())
    assert ALLOCATION_KEYS <= set(data)
    assert data["schema_version"] == 1
    assert data["status"] in ("optimal", "feasible")
    assert set(data["seconds"]) >= {"build", "solve"}
    for l in data["layers"]:
        assert LAYER_KEYS <= set(l)
    assert sum(l["params"] for l in data["layers"]) == data["total_params"]
    assert data["utilization"] == pytest.approx(data["total_params"] / 50000)


def test_export_lp_and_mps(tmp_path):
    lp, mps = tmp_path / "m.lp", tmp_path / "m.mps"
    r = run("solve", SCENARIO, "--budget", "50k", "--export-lp", lp, "--export-mps", mps)
    assert r.exit_code == 0, r.output
    assert lp.read_text().startswith("\\*") and "budget_max" in lp.read_text()
    assert "ROWS" in mps.read_text()


def test_compare_shows_both_and_the_difference():
    r = run("compare", SCENARIO, "--budget", "50k")
    assert r.exit_code == 0, r.output
    assert "heuristic" in r.output and "auto" in r.output
    assert "objective difference: auto - heuristic = +" in r.output
    assert "rank_utility_consistency" in r.output
    assert "heuristic violates" in r.output


def test_compare_reports_heuristic_violations(tmp_manifest):
    # tied blocks: the heuristic ignores them and mixes methods inside a block
    layers = [layer(f"b0.{s}", kind="attention" if s != "mlp" else "mlp", block=0, ge=g, fi=g, pe=g)
              for s, g in (("value", 3.0), ("o", 2.0), ("mlp", 0.2))]
    path = tmp_manifest(manifest(layers))
    r = run("compare", path, "--budget", "600", "--tie-blocks", "--json")
    data = json.loads(r.output)
    assert data["exact"]["status"] == "optimal"
    if data["heuristic"]["status"] == "infeasible":
        assert "block 0 mixes methods" in data["heuristic"]["message"]


def test_validate_pass_and_fail(tmp_path):
    out = tmp_path / "a.json"
    assert run("solve", SCENARIO, "--budget", "50k", "--json", "-o", out).exit_code == 0
    r = run("validate", out, "--manifest", SCENARIO)
    assert r.exit_code == 0, r.output
    assert "budget_utilization" in r.output and "PASS" in r.output
    data = json.loads(out.read_text())
    data["layers"][0]["params"] += 10 * data["budget"]  # break the budget by hand
    out.write_text(json.dumps(data))
    r = run("validate", out)
    assert r.exit_code == 5
    assert "FAIL" in r.output


def test_validate_rejects_a_manifest():
    r = run("validate", SCENARIO)
    assert_one_line_error(r, 1, "looks like a manifest")


def test_infeasible_exit_code_and_reason():
    r = run("solve", SCENARIO, "--budget", "100M")
    assert r.exit_code == 3
    assert "largest possible allocation uses" in r.output and "lower --min-utilization" in r.output
    r = run("solve", SCENARIO, "--budget", "100M", "--json")
    assert r.exit_code == 3
    assert json.loads(r.stdout)["status"] == "infeasible"


@pytest.mark.parametrize("args, code, fragments", [
    (["solve", "missing.json", "--budget", "5"], 2, ["does not exist"]),
    (["solve", "{SCEN}", "--budget", "-5"], 2, ["must be positive"]),
    (["solve", "{SCEN}", "--budget", "0"], 2, ["must be positive"]),
    (["solve", "{SCEN}", "--budget", "50k", "--methods", "lora,dora"], 1, ["unknown method 'dora'"]),
    (["solve", "{SCEN}", "--budget", "50k", "--solver", "gurobi"], 1, ["unknown solver 'gurobi'", "auto, cbc, highs, heuristic"]),
    (["solve", "{SCEN}", "--budget", "50k", "--min-utilization", "0.95"], 1, ["window is empty"]),
    (["solve", "{SCEN}", "--budget", "50k", "--weights", "utility=1"], 1, ["'utility' name no metric"]),
    (["solve", "{SCEN}", "--budget", "50k", "--ranks", "lora=1,x"], 1, ["--ranks"]),
    (["solve", "{SCEN}", "--budget", "50k", "--method-cap", "dora=2"], 1, ["unknown method 'dora'"]),
    (["solve", "{SCEN}", "--budget", "50k", "-o", "/nonexistent/dir/a.json"], 1, ["folder /nonexistent/dir does not exist"]),
])
def test_bad_options_give_one_line_errors(args, code, fragments):
    r = run(*[a.replace("{SCEN}", SCENARIO) for a in args])
    assert_one_line_error(r, code, *fragments)


@pytest.mark.parametrize("content, fragment", [
    ("{ not json", "not valid JSON at line 1"),
    (json.dumps(manifest([layer("a", typo=1)])), "layer 'a': unknown field(s) 'typo'"),
    (json.dumps(manifest([layer("a"), layer("a")])), "'a' appears twice"),
    (json.dumps(manifest([layer("a", allowed_methods=["lora", "qlora"])])), "unknown method 'qlora'"),
    (json.dumps(manifest([layer("a", in_features=-4)])), "field 'in_features' must be a positive integer, got -4"),
])
def test_bad_manifests_give_one_line_errors(tmp_path, content, fragment):
    p = tmp_path / "m.json"
    p.write_text(content)
    r = run("solve", p, "--budget", "1000")
    assert_one_line_error(r, 1, fragment)
    assert len(r.output.strip().splitlines()) == 1


def test_solve_path_never_imports_torch_or_pulp():
    import subprocess
    import sys

    code = ("import sys; from click.testing import CliRunner; from layerlens_opt.cli import main; "
            f"r = CliRunner().invoke(main, ['solve', {SCENARIO!r}, '--budget', '50k']); assert r.exit_code == 0, r.output; "
            "print(sorted(m for m in ('torch', 'pulp', 'transformers', 'cvxpy', 'matplotlib') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


@pytest.mark.parametrize("field, value, fragment", [
    ("params", "12k", "field 'params' must be a non-negative integer"),
    ("rank", -1, "field 'rank' must be a non-negative integer"),
    ("method", "dora", "unknown method 'dora'"),
])
def test_validate_rejects_hand_edited_allocations(tmp_path, field, value, fragment):
    out = tmp_path / "a.json"
    assert run("solve", SCENARIO, "--budget", "50k", "--json", "-o", out).exit_code == 0
    data = json.loads(out.read_text())
    data["layers"][0][field] = value
    out.write_text(json.dumps(data))
    assert_one_line_error(run("validate", out), 1, fragment)


def test_export_peft_into_a_file_path_is_a_clear_error(tmp_path):
    out = tmp_path / "a.json"
    assert run("solve", SCENARIO, "--budget", "50k", "--methods", "lora,none", "--json", "-o", out).exit_code == 0
    target = tmp_path / "not-a-folder"
    target.write_text("x")
    assert_one_line_error(run("export", out, "--format", "peft", "-o", target), 1, "is a file; --format peft writes a folder")
    r = run("export", out, "--format", "peft", "-o", tmp_path / "adapter")
    assert r.exit_code == 0 and (tmp_path / "adapter" / "adapter_config.json").exists()


def test_export_peft_of_a_mixed_allocation_says_first_what_it_drops(tmp_path):
    out = tmp_path / "a.json"
    assert run("solve", SCENARIO, "--budget", "50k", "--min-methods", 2, "--method-cap", "prefix=2", "--json", "-o", out).exit_code == 0
    counts = {}
    for layer in json.loads(out.read_text())["layers"]:
        counts[layer["method"]] = counts.get(layer["method"], 0) + 1
    others = sum(n for m, n in counts.items() if m not in ("lora", "none"))
    assert others and counts.get("lora")
    r = run("export", out, "--format", "peft", "-o", tmp_path / "adapter")
    assert r.exit_code == 0, r.output
    first = r.output.splitlines()[0]
    assert first.startswith(f"warning: the peft config drops {others} of {others + counts['lora']} adapted layers")
    assert "LoraConfig.from_pretrained" in r.output


def test_methods_imply_none_unless_excluded():
    minilm = ROOT / "problems" / "profiled" / "minilm-vader-pairs.json"
    r = run("solve", minilm, "--budget", 9216, "--methods", "lora", "--json")
    assert r.exit_code == 0, r.output
    assert {l["method"] for l in json.loads(r.output)["layers"]} == {"lora", "none"}
    r = run("solve", minilm, "--budget", 9216, "--methods", "lora,-none", "--json")
    assert r.exit_code == 3  # every layer must take LoRA: 41,472 parameters do not fit
