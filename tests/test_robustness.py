"""Nothing lost, nothing silently wrong: bad input gets one line and a non-zero exit; outputs are atomic and never clobber inputs.

The fuzz tests (hypothesis) assert, over manifests, allocation files and CLI values:
exit code in {0, 1, 2, 3, 4, 5}, no traceback, inputs unchanged, any output absent or complete and valid.
"""

import copy
import hashlib
import json
import os
import subprocess
import sys

import pytest
from click.testing import CliRunner
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from layerlens_opt.cli import main

from conftest import ROOT

SCENARIO = ROOT / "problems" / "scenarios" / "early-sensitive.json"
PROFILED = ROOT / "problems" / "profiled"
EXIT_CODES = {0, 1, 2, 3, 4, 5}


def run(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


def assert_clean(r, codes=EXIT_CODES):
    """A handled outcome: a known exit code and no exception other than SystemExit (no traceback)."""
    assert r.exit_code in codes, r.output
    assert r.exception is None or isinstance(r.exception, SystemExit), repr(r.exception)
    assert "Traceback" not in r.output


def digest(path):
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture
def manifest(tmp_path):
    p = tmp_path / "m.json"
    p.write_bytes(SCENARIO.read_bytes())
    return p


@pytest.fixture
def allocation(tmp_path, manifest):
    p = tmp_path / "a.json"
    assert run("solve", manifest, "--budget", "50k", "-o", p).exit_code == 0
    return p


# ----------------------------------------------------------------------------- the reproductions


def test_readme_weights_and_caps_examples_work(manifest):
    r = run("solve", manifest, "--budget", 50000, "--weights", "gradient_energy=0.5,fisher=0.3,proxy_eval=0.2")
    assert r.exit_code == 0, r.output
    r = run("solve", manifest, "--budget", 50000, "--method-cap", "lora=5,adapter=3", "--json")
    assert r.exit_code == 0, r.output
    layers = json.loads(r.output)["layers"]
    assert sum(l["method"] == "lora" for l in layers) <= 5 and sum(l["method"] == "adapter" for l in layers) <= 3


@pytest.mark.parametrize("args, fragment", [
    (["--budget", "1e400"], "too large"),
    (["--budget", "50k", "--weights", "gradient_energy=nan,fisher=1,proxy_eval=1"], "finite number"),
    (["--budget", "50k", "--weights", "gradient_energy=inf,fisher=1,proxy_eval=1"], "finite number"),
    (["--budget", "50k", "--weights", "gradient_energy=-1,fisher=1,proxy_eval=1"], "finite number"),
    (["--budget", "50k", "--ranks", "ia3=4"], "ia3 has no rank"),
    (["--budget", "1"], "holds no whole number"),
    (["--budget", "50k", "--shrink", "nan"], "finite"),
    (["--budget", "50k", "--method-cap", "lora=x"], "whole number"),
])
def test_bad_solve_values_get_one_line(manifest, args, fragment):
    r = run("solve", manifest, *args)
    assert_clean(r, {1, 2})
    assert r.exit_code != 0 and fragment in r.output


def test_huge_weights_do_not_overflow(manifest):
    r = run("solve", manifest, "--budget", "50k", "--json", "--weights", "gradient_energy=1e12,fisher=1e12,proxy_eval=1e12")
    assert r.exit_code == 0
    assert json.loads(r.output)["objective"] > 0
    data = json.loads(manifest.read_text())
    data["metric_weights"] = {"gradient_energy": 1e308, "fisher": 1e308, "proxy_eval": 1e308}
    manifest.write_text(json.dumps(data))
    r = run("solve", manifest, "--budget", "50k", "--json")
    assert r.exit_code == 0 and json.loads(r.output)["objective"] > 0


@pytest.mark.parametrize("edit, fragment", [
    (lambda d: d["layers"][0].update(in_features=10**30), "largest dimension"),
    (lambda d: d.update(metadata={"gradient_norms": {d["layers"][0]["name"]: float("nan")}}), "metadata.gradient_norms."),
])
def test_bad_manifests_get_one_line(manifest, edit, fragment):
    data = json.loads(manifest.read_text())
    edit(data)
    manifest.write_text(json.dumps(data))
    r = run("solve", manifest, "--budget", "50k")
    assert_clean(r, {1})
    assert fragment in r.output


def test_deeply_nested_files_get_one_line(tmp_path):
    deep = tmp_path / "deep.json"
    deep.write_text("[" * 100_000 + "]" * 100_000)
    assert_clean(r := run("solve", deep, "--budget", "50k"), {1})
    assert "nested too deeply" in r.output
    assert_clean(r := run("validate", deep), {1})


def test_output_never_overwrites_an_input(manifest):
    before = digest(manifest)
    for flag in ("-o", "--export-lp", "--export-mps"):
        r = run("solve", manifest, "--budget", "50k", flag, manifest)
        assert_clean(r, {1})
        assert "input of this command" in r.output
    assert digest(manifest) == before


def test_failed_solve_leaves_an_earlier_allocation_alone(manifest, allocation):
    before = digest(allocation)
    r = run("solve", manifest, "--budget", "60", "-o", allocation)  # infeasible
    assert r.exit_code == 3
    assert "not written" in r.output
    assert digest(allocation) == before


def test_concurrent_writers_leave_one_complete_file(manifest, tmp_path):
    out = tmp_path / "shared.json"
    cmd = [sys.executable, "-m", "layerlens_opt.cli", "solve", str(manifest), "--budget", "50k", "-o", str(out)]
    env = dict(os.environ)
    for _ in range(3):
        procs = [subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env) for _ in range(6)]
        assert all(p.wait() == 0 for p in procs)
        assert json.loads(out.read_text())["status"] == "optimal"
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".shared.json.")]  # no temp files left behind


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only folders")
def test_read_only_folder_is_a_clear_error(manifest, tmp_path):  # pragma: no cover - CI runs as root here
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o500)
    r = run("solve", manifest, "--budget", "50k", "-o", ro / "a.json")
    assert_clean(r, {1})


def test_write_failure_keeps_the_old_file(tmp_path, monkeypatch):
    from layerlens_opt.errors import LayerlensError
    from layerlens_opt.io import write_atomic

    target = tmp_path / "x.json"
    target.write_text("old")

    def fail(tmp):
        raise OSError(28, "No space left on device")

    with pytest.raises(LayerlensError, match="No space left"):
        write_atomic(target, fail)
    assert target.read_text() == "old" and os.listdir(tmp_path) == ["x.json"]


@pytest.mark.parametrize("name, fragment", [("a_noext", "must end in"), ("a.bmpx", "must end in"), ("missing/a.png", "does not exist")])
def test_plot_paths(allocation, tmp_path, name, fragment):
    pytest.importorskip("matplotlib")
    r = run("plot", allocation, "-o", tmp_path / name)
    assert_clean(r, {1})
    assert fragment in r.output


def test_a_thousands_separator_in_budgets_is_refused_not_split(manifest):
    # --budget 50,000 is one budget; in --budgets the same text would silently be the list [50, 0]
    r = run("frontier", manifest, "--budgets", "50,500")
    assert_clean(r, {1})
    assert "ambiguous" in r.output and "50500" in r.output
    r = run("frontier", manifest, "--budgets", "50, 500", "--min-utilization", "0", "--json")
    assert r.exit_code in (0, 3), r.output
    assert "ambiguous" not in r.output


def test_frontier_bad_points(manifest):
    for spec, fragment in (("10k:50k:x", "whole number"), ("10k:50k:1000000000", "POINTS be 2 to 200")):
        r = run("frontier", manifest, "--budgets", spec)
        assert_clean(r, {1})
        assert fragment in r.output


def test_export_alpha_ratio_nan_is_refused(allocation, tmp_path):
    r = run("export", allocation, "-o", tmp_path / "peft", "--alpha-ratio", "nan")
    assert_clean(r, {2})
    assert not (tmp_path / "peft").exists()


def test_explain_at_none_says_so():
    pytest.importorskip("cvxpy")
    r = run("explain", SCENARIO, "--budget", "20k")
    assert r.exit_code == 0
    none_rows = [line for line in r.output.splitlines() if " none " in line]
    assert none_rows and not any("down would lose more" in line for line in none_rows)


def test_all_none_manifest_message(tmp_path):
    data = json.loads(SCENARIO.read_text())
    for layer in data["layers"]:
        layer["allowed_methods"] = ["none"]
    p = tmp_path / "none.json"
    p.write_text(json.dumps(data))
    r = run("solve", p, "--budget", "50k")
    assert r.exit_code == 3 and "every option is 'none'" in r.output and "lower the budget to 0" not in r.output


# ----------------------------------------------------------------------------- validate recomputes


def _edited(allocation, tmp_path, edit, name="edited.json"):
    data = json.loads(allocation.read_text())
    edit(data)
    p = tmp_path / name
    p.write_text(json.dumps(data))
    return p


@pytest.mark.parametrize("edit, fragment", [
    (lambda d: next(l for l in d["layers"] if l["method"] == "lora").update(rank=512), "rank 512"),
    (lambda d: next(l for l in d["layers"] if l["method"] != "none").update(params=1), "params 1 but"),
    (lambda d: d.update(layers=[]), "no layers"),
    (lambda d: d.update(status="infeasible"), "status is 'infeasible'"),
    (lambda d: d["layers"].append(copy.deepcopy(d["layers"][0])), "appears 2 times"),
    (lambda d: d["layers"].pop(), "missing from the allocation"),
    (lambda d: d.update(total_params=d["total_params"] + 1), "total_params is"),
])
def test_validate_fails_what_does_not_add_up(allocation, manifest, tmp_path, edit, fragment):
    bad = _edited(allocation, tmp_path, edit)
    r = run("validate", bad, "--manifest", manifest)
    assert r.exit_code == 5, r.output
    assert fragment in r.output
    if "missing" not in fragment and "appears" not in fragment:  # these need the manifest to be seen
        r = run("export", bad, "-o", tmp_path / "peft")
        assert r.exit_code == 1 and "fails validation" in r.output
        assert not (tmp_path / "peft").exists()


def test_validate_a_foreign_allocation(tmp_path):
    llama2 = tmp_path / "a.json"
    assert run("solve", ROOT / "problems" / "architectures" / "llama2-7b.json", "--budget", "5M", "-o", llama2).exit_code == 0
    r = run("validate", llama2, "--manifest", ROOT / "problems" / "architectures" / "llama3-8b.json")
    assert r.exit_code == 5 and "costs" in r.output


def test_validate_a_sound_allocation_passes(allocation, manifest):
    assert run("validate", allocation, "--manifest", manifest).exit_code == 0
    assert run("validate", allocation).exit_code == 0


# ----------------------------------------------------------------------------- fuzz

_JSON = st.recursive(st.none() | st.booleans() | st.integers(-10**20, 10**20) | st.floats(allow_nan=True) | st.text(max_size=8),
                     lambda c: st.lists(c, max_size=3) | st.dictionaries(st.text(max_size=8), c, max_size=3), max_leaves=8)
_FUZZ = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


def _mutate(data, path_choice, value):
    """Replace one field somewhere in ``data`` (chosen by ``path_choice``) by ``value``."""
    paths = []

    def walk(node, path):
        if isinstance(node, dict):
            for k, v in node.items():
                paths.append(path + [k])
                walk(v, path + [k])
        elif isinstance(node, list):
            for i, v in enumerate(node[:3]):
                paths.append(path + [i])
                walk(v, path + [i])

    walk(data, [])
    path = paths[path_choice % len(paths)]
    node = data
    for key in path[:-1]:
        node = node[key]
    node[path[-1]] = value
    return data


@_FUZZ
@given(choice=st.integers(0, 10**6), value=_JSON)
def test_fuzz_manifests(tmp_path, choice, value):
    data = _mutate(json.loads(SCENARIO.read_text()), choice, value)
    m = tmp_path / "fuzz-m.json"
    m.write_text(json.dumps(data))
    before = digest(m)
    out = tmp_path / "fuzz-a.json"
    if out.exists():
        out.unlink()
    r = run("solve", m, "--budget", "50k", "-o", out)
    assert_clean(r)
    assert digest(m) == before
    if out.exists():
        assert r.exit_code == 0 and json.loads(out.read_text())["status"] in ("optimal", "feasible")


@_FUZZ
@given(choice=st.integers(0, 10**6), value=_JSON)
def test_fuzz_allocation_files(tmp_path, choice, value):
    base = tmp_path / "fuzz-base.json"
    if not base.exists():
        assert run("solve", SCENARIO, "--budget", "50k", "-o", base).exit_code == 0
    data = _mutate(json.loads(base.read_text()), choice, value)
    a = tmp_path / "fuzz-alloc.json"
    a.write_text(json.dumps(data))
    before = digest(a)
    for args in (["validate", a], ["validate", a, "--manifest", SCENARIO], ["export", a, "--format", "csv", "-o", tmp_path / "fuzz.csv"]):
        r = run(*args)
        assert_clean(r)
    assert digest(a) == before


@_FUZZ
@given(budget=st.text(max_size=12) | st.sampled_from(["50k", "1e400", "-5", "0", "1.5", "nan", "1e15", "9" * 30]),
       weights=st.text(max_size=30) | st.sampled_from(["gradient_energy=1,fisher=1,proxy_eval=1", "a=b", "=,="]),
       extra=st.sampled_from([[], ["--shrink", "2"], ["--max-rank", "0"], ["--min-utilization", "nan"], ["--ranks", "lora=0"],
                              ["--method-cap", "none=1"], ["--methods", "bogus"], ["--solver", "nope"], ["--time-limit", "-1"]]))
def test_fuzz_cli_values(budget, weights, extra):
    r = run("solve", SCENARIO, "--budget", budget, "--weights", weights, *extra)
    assert_clean(r)


# ----------------------------------------------------------------------------- reliability round 3 (issue 31), first classes


def test_duplicate_json_keys_are_refused_naming_the_key(tmp_path):
    from click.testing import CliRunner

    from layerlens_opt.cli import main

    p = tmp_path / "m.json"
    p.write_text('{"schema_version": 1, "layers": [{"name": "a", "kind": "mlp", "in_features": 64, "in_features": 100000, '
                 '"out_features": 64, "metrics": {"gradient_energy": 1}}]}')
    r = CliRunner().invoke(main, ["solve", str(p), "--budget", "1000"])
    assert r.exit_code == 1 and "'in_features' appears twice" in r.output and len(r.output.strip().splitlines()) == 1
    a = tmp_path / "a.json"
    a.write_text('{"schema_version": 1, "schema_version": 1}')
    r = CliRunner().invoke(main, ["validate", str(a)])
    assert r.exit_code == 1 and "'schema_version' appears twice" in r.output and "Traceback" not in r.output
    a.write_text('{"schema_version": NaN}')
    r = CliRunner().invoke(main, ["validate", str(a)])
    assert r.exit_code == 1 and "schema_version is NaN, which is not JSON; write a finite number" in r.output
    assert "Traceback" not in r.output


def test_a_method_named_twice_in_ranks_is_refused():
    from click.testing import CliRunner

    from layerlens_opt.cli import main

    r = CliRunner().invoke(main, ["solve", str(SCENARIO), "--budget", "50k", "--ranks", "lora=1;lora=64"])
    assert r.exit_code == 1 and "names 'lora' twice" in r.output


def test_max_rank_below_every_offered_rank_offers_no_larger_rank():
    from click.testing import CliRunner

    from layerlens_opt.cli import main

    r = CliRunner().invoke(main, ["solve", str(SCENARIO), "--budget", "50k", "--methods", "lora", "--ranks", "lora=8,16",
                                  "--max-rank", "2", "--min-utilization", "0", "--json"])
    assert r.exit_code in (0, 3), r.output
    if r.exit_code == 0:
        assert all(l["rank"] <= 2 for l in json.loads(r.output)["layers"] if l["method"] != "none")
    r = CliRunner().invoke(main, ["solve", str(SCENARIO), "--budget", "50k", "--methods", "lora,-none", "--ranks", "lora=8,16",
                                  "--max-rank", "2"])
    assert r.exit_code == 1 and "has a rank at most --max-rank 2" in r.output and "Traceback" not in r.output


def test_a_nan_anywhere_is_named_by_its_path(tmp_path):
    from layerlens_opt.io import NotFinite, strict_json

    with pytest.raises(NotFinite, match=r"^layers\[1\]\.metrics\.fisher is -Infinity, which is not JSON; write a finite number$"):
        strict_json('{"layers": [{"metrics": {}}, {"metrics": {"fisher": -Infinity}}]}')
    assert strict_json('{"name": "NaN Infinity"}') == {"name": "NaN Infinity"}  # inside a string it is text


def test_output_through_a_symlink_writes_its_target(manifest, tmp_path):
    target = tmp_path / "real.json"
    target.write_text("old")
    link = tmp_path / "link.json"
    link.symlink_to(target)
    r = run("solve", manifest, "--budget", "50k", "-o", link)
    assert_clean(r, {0})
    assert link.is_symlink() and json.loads(target.read_text())["status"] == "optimal"
    dangling = tmp_path / "dangling.json"
    dangling.symlink_to(tmp_path / "not-yet.json")
    assert run("solve", manifest, "--budget", "50k", "-o", dangling).exit_code == 0
    assert dangling.is_symlink() and (tmp_path / "not-yet.json").is_file()


def test_a_non_regular_output_is_refused(manifest, tmp_path):
    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    r = run("solve", manifest, "--budget", "50k", "-o", fifo)
    assert_clean(r, {1, 2})
    assert "not a regular file" in r.output and fifo.exists() and not fifo.is_file()


def test_peft_export_never_writes_over_its_input(allocation, tmp_path):
    folder = tmp_path / "out"
    folder.mkdir()
    inside = folder / "adapter_config.json"
    inside.write_bytes(allocation.read_bytes())
    before = digest(inside)
    r = run("export", inside, "--format", "peft", "-o", folder)
    assert_clean(r, {1, 2})
    assert "input allocation" in r.output and digest(inside) == before


def test_markdown_cells_with_pipes_and_newlines_keep_the_table(tmp_path):
    from layerlens_opt.export import to_markdown
    from layerlens_opt.manifest import parse_manifest
    from layerlens_opt.problem import Constraints, build_problem
    from layerlens_opt.solvers import solve

    layers = [{"name": name, "kind": "attention", "in_features": 8, "out_features": 8, "metrics": {"m": 1.0}}
              for name in ("a|b", "c\nd", "e\\|f")]
    problem = build_problem(parse_manifest({"schema_version": 1, "layers": layers, "metric_weights": {"m": 1}}),
                            Constraints(budget=100, min_utilization=0.0, max_utilization=1.0))
    rows = to_markdown(solve(problem)).splitlines()[2:5]
    assert [r.count("|") - r.count("\\|") for r in rows] == [9, 9, 9]
    assert rows[0].startswith("| a\\|b |") and rows[1].startswith("| c d |") and rows[2].startswith("| e\\\\\\|f |")


def test_json_printed_to_the_console_is_strict(manifest, monkeypatch):
    from layerlens_opt.allocation import Allocation

    monkeypatch.setattr(Allocation, "to_dict", lambda self: {"objective": float("nan")})
    r = run("compare", manifest, "--budget", "50k", "--json")
    assert_clean(r, {1})
    assert r.output.startswith("Error: the comparison holds a NaN or infinite number, which JSON cannot carry")
    assert len(r.output.strip().splitlines()) == 1


@pytest.mark.parametrize("value", [1e300, -1e300, 5e12])
def test_a_pair_value_past_the_gain_scale_is_an_input_error_naming_the_pair(tmp_path, value):
    layers = [{"name": n, "kind": "attention", "in_features": 8, "out_features": 8, "metrics": {"m": 0.5}} for n in ("a", "b")]
    data = {"schema_version": 2, "layers": layers, "metric_weights": {"m": 1},
            "interactions": {"metric": "m", "pairs": [{"layers": ["a", "b"], "value": value}]}}
    p = tmp_path / "m.json"
    p.write_text(json.dumps(data))
    r = run("solve", p, "--budget", "100", "--min-utilization", "0")
    assert_clean(r, {1})
    assert "the interaction between 'a' and 'b'" in r.output and "--no-interactions" in r.output
    assert len(r.output.strip().splitlines()) == 1
    ok = run("solve", p, "--budget", "100", "--min-utilization", "0", "--no-interactions")
    assert ok.exit_code == 0, ok.output


def test_an_infeasible_budget_exits_3_from_every_command_that_solves(manifest):
    args = ["--min-utilization", "0.9", "--max-utilization", "0.9"]
    for command in (["solve", manifest, "--budget", "100"], ["compare", manifest, "--budget", "100"],
                    ["explain", manifest, "--budget", "100"]):
        r = run(*command, *args)
        assert_clean(r, {3})
        assert "infeasible" in r.output, command
    r = run("frontier", manifest, "--budgets", "100, 200", *args)
    assert_clean(r, {3})
    assert "no budget of the sweep has an allocation (infeasible)" in r.output


def test_explain_and_frontier_take_a_time_limit(manifest):
    r = run("explain", manifest, "--budget", "50k", "--time-limit", "5")
    assert_clean(r, {0})
    assert "integer optimum" in r.output
    r = run("frontier", manifest, "--budgets", "20k,50k", "--time-limit", "5", "--json")
    assert_clean(r, {0})
    assert [p["exact_status"] for p in json.loads(r.stdout)] == ["optimal", "optimal"]
    for command in (["explain", manifest, "--budget", "50k"], ["frontier", manifest, "--budgets", "50k"]):
        r = run(*command, "--time-limit", "-1")
        assert_clean(r, {2})


def test_a_missing_input_file_is_a_usage_error_from_every_command(tmp_path):
    missing = tmp_path / "missing.json"
    for command in (["solve", missing, "--budget", "5"], ["validate", missing], ["export", missing, "-o", tmp_path / "o.csv"],
                    ["profile", "--model", "minilm", "--data", missing, "-o", tmp_path / "m.json"],
                    ["frontier", missing, "--budgets", "5"]):
        r = run(*command)
        assert_clean(r, {2})
        assert "does not exist" in r.output, command


@pytest.mark.parametrize("edit, fragment", [
    (lambda d: d["layers"][0].update(block=99), "in the allocation but"),
    (lambda d: d.update(objective=d["objective"] + 1.0, bound=d["objective"] + 1.0), "but the manifest gives"),
    (lambda d: d.update(bound=d["objective"] - 1.0), "is below the objective"),
    (lambda d: next(l for l in d["layers"] if l["method"] == "none").update(gain=0.5), "with method none"),
])
def test_validate_with_the_manifest_recomputes_what_the_allocation_claims(allocation, manifest, edit, fragment):
    data = json.loads(allocation.read_text())
    edit(data)
    allocation.write_text(json.dumps(data))
    r = run("validate", allocation, "--manifest", manifest)
    assert_clean(r, {5})
    assert fragment in r.output


def _forge_one_gain(data):
    """A forged per-layer gain with the objective and bound raised to match, so only a recomputation can see it."""
    layer = next(l for l in data["layers"] if l["method"] != "none")
    layer["gain"] += 0.25
    data["objective"] += 0.25
    data["bound"] = data["objective"]


@pytest.mark.parametrize("options", [[], ["--shrink", "0.3"], ["--normalization", "rank"], ["--weights", "gradient_energy=1,fisher=0,proxy_eval=0.5"]])
def test_validate_recomputes_every_gain_under_the_allocations_gain_model(manifest, tmp_path, options):
    path = tmp_path / "a.json"
    r = run("solve", manifest, "--budget", "50k", *options, "-o", path)
    assert r.exit_code == 0, r.output
    assert run("validate", path, "--manifest", manifest).exit_code == 0  # solved under these options: recomputes equal
    data = json.loads(path.read_text())
    _forge_one_gain(data)
    path.write_text(json.dumps(data))
    r = run("validate", path, "--manifest", manifest)
    assert_clean(r, {5})
    assert "but the manifest gives" in r.output and "under its gain_model" in r.output
    data = json.loads(path.read_text())
    data["gain_model"]["shrink"] = 0.9  # claiming another gain model does not launder the gains either
    path.write_text(json.dumps(data))
    assert_clean(run("validate", path, "--manifest", manifest), {5})


def test_validate_recomputes_the_objective_with_the_manifests_pair_terms(tmp_path):
    manifest = PROFILED / "minilm-pairs-probe.json"
    path = tmp_path / "a.json"
    assert run("solve", manifest, "--budget", "9216", "-o", path).exit_code == 0
    assert run("validate", path, "--manifest", manifest).exit_code == 0
    data = json.loads(path.read_text())
    data["objective"] += 0.01
    data["bound"] = data["objective"]
    path.write_text(json.dumps(data))
    r = run("validate", path, "--manifest", manifest)
    assert_clean(r, {5})
    assert "plus its active pair terms" in r.output
    data = json.loads(path.read_text())
    data["gain_model"]["colour"] = 1
    path.write_text(json.dumps(data))
    r = run("validate", path)
    assert_clean(r, {1})
    assert "gain_model has unknown key 'colour'" in r.output


def test_validate_refuses_unknown_keys(allocation):
    data = json.loads(allocation.read_text())
    data["objectve"] = 1.0
    allocation.write_text(json.dumps(data))
    r = run("validate", allocation)
    assert_clean(r, {1})
    assert "unknown key 'objectve'" in r.output
    del data["objectve"]
    data["layers"][0]["rnak"] = 4
    allocation.write_text(json.dumps(data))
    r = run("validate", allocation)
    assert_clean(r, {1})
    assert "unknown field 'rnak'" in r.output


def test_a_block_edit_cannot_hide_a_mixed_tied_block(tmp_path):
    """Tied blocks are checked on the manifest's blocks: an allocation that mixes methods in a block fails even after
    one layer's block field is edited to put it apart."""
    from conftest import layer, manifest as make

    m = tmp_path / "m.json"
    m.write_text(json.dumps(make([layer(f"l{i}", "attention", 16, 16, block=i // 2) for i in range(4)])))
    a = tmp_path / "a.json"
    assert run("solve", m, "--budget", "200", "--tie-blocks", "--min-utilization", "0", "-o", a).exit_code == 0
    data = json.loads(a.read_text())
    data["layers"][0].update(method="ia3", rank=1, params=16) if data["layers"][1]["method"] != "ia3" else \
        data["layers"][0].update(method="lora", rank=1, params=32)
    data["layers"][0]["block"] = 7
    data["total_params"] = sum(l["params"] for l in data["layers"])
    data["utilization"] = data["total_params"] / data["budget"]
    a.write_text(json.dumps(data))
    r = run("validate", a, "--manifest", m)
    assert_clean(r, {5})
    assert "block 7 in the allocation but 0 in the manifest" in r.output


def test_an_exact_window_no_total_reaches_is_proven_infeasible_up_front():
    path = ROOT / "problems" / "architectures" / "bert-base.json"
    r = run("solve", path, "--budget", "100000", "--min-utilization", "0.9", "--max-utilization", "0.9", "--time-limit", "5")
    assert_clean(r, {3})
    assert "no choice of one option per layer totals between 90,000 and 90,000" in r.output
    assert "--min-utilization 0.8991 reaches it" in r.output


def test_validate_json_stays_strict_with_utilities_near_the_float_limit(allocation):
    data = json.loads(allocation.read_text())
    for l in data["layers"]:
        l["utility"] = 1.7e308
    allocation.write_text(json.dumps(data))
    r = run("validate", allocation, "--json")
    assert_clean(r, {0, 5})
    report = json.loads(r.stdout, parse_constant=lambda name: pytest.fail(f"{name} in validate --json"))
    assert report["metrics"]["utility_cv"] == pytest.approx(0.0, abs=1e-12)


@pytest.mark.skipif(not os.path.isdir("/proc"), reason="finds the solver's children through /proc (Linux)")
@pytest.mark.parametrize("sig", ["SIGTERM", "SIGINT"])
def test_a_signal_during_a_cbc_solve_leaves_no_solver_and_no_files(tmp_path, sig):
    import signal
    import subprocess
    import sys
    import time

    from layerlens_opt.bench import synthetic_with_pairs

    data = synthetic_with_pairs(7 * 126, every_layer=True)  # CBC takes minutes on it
    path = tmp_path / "m.json"
    path.write_text(json.dumps(data))
    scratch = tmp_path / "tmp"
    scratch.mkdir()
    proc = subprocess.Popen([sys.executable, "-m", "layerlens_opt.cli", "solve", str(path), "--budget",
                             str(data["model"]["suggested_budget"]), "--solver", "cbc", "-o", str(tmp_path / "a.json")],
                            env=dict(os.environ, TMPDIR=str(scratch)), stdout=subprocess.PIPE, stderr=subprocess.PIPE)

    def children():
        out = []
        for d in filter(str.isdigit, os.listdir("/proc")):
            try:
                with open(f"/proc/{d}/stat") as f:
                    if int(f.read().rsplit(")", 1)[1].split()[1]) == proc.pid:
                        out.append(int(d))
            except (OSError, ValueError, IndexError):
                pass
        return out

    deadline = time.time() + 60
    while not children() and time.time() < deadline and proc.poll() is None:
        time.sleep(0.05)
    solver = children()
    assert solver, "CBC never started"
    time.sleep(0.5)
    proc.send_signal(getattr(signal, sig))
    _, err = proc.communicate(timeout=60)
    assert proc.returncode != 0 and b"Traceback" not in err
    assert not [pid for pid in solver if os.path.exists(f"/proc/{pid}")], "CBC outlived the command"
    assert os.listdir(scratch) == [] and not (tmp_path / "a.json").exists()


@pytest.mark.parametrize("with_blocks", [False, True])
def test_a_plot_of_20000_layers_aggregates_into_tiles(monkeypatch, tmp_path, with_blocks):
    pytest.importorskip("matplotlib")
    from layerlens_opt import plots
    from layerlens_opt.generate import synthetic
    from layerlens_opt.manifest import parse_manifest
    from layerlens_opt.problem import Constraints, build_problem
    from layerlens_opt.solvers import solve

    data = synthetic(20_000)
    if not with_blocks:
        for l in data["layers"]:
            l.pop("block", None)
    alloc = solve(build_problem(parse_manifest(data), Constraints(data["model"]["suggested_budget"])))
    seen = {}

    def capture(fig, path, plt):
        ax = fig.axes[0]
        seen.update(title=ax.get_title(), shape=ax.images[0].get_array().shape, texts=len(ax.texts))
        plt.close(fig)

    monkeypatch.setattr(plots, "_save", capture)
    plots.plot_allocation(alloc, str(tmp_path / "p.png"))
    assert "20,000 layers; each cell the most common method of" in seen["title"]
    assert seen["shape"][0] <= plots.MAX_ROWS and seen["shape"][1] <= plots.MAX_COLS and seen["texts"] == 0


def _strict(text):
    return json.loads(text, parse_constant=lambda name: pytest.fail(f"{name} in JSON output"))


@_FUZZ
@given(choice=st.integers(0, 10**6), value=_JSON,
       command=st.sampled_from(["solve", "compare", "explain", "frontier"]))
def test_fuzz_every_solving_command(tmp_path, choice, value, command):
    """Over mutated manifests and every command that solves: no traceback, the documented exit code (3 exactly when the
    answer is infeasible), strict JSON out, the input unchanged."""
    data = _mutate(json.loads(SCENARIO.read_text()), choice, value)
    m = tmp_path / "fuzz-any.json"
    m.write_text(json.dumps(data))
    before = digest(m)
    args = {"solve": ["--budget", "50k", "--json"], "compare": ["--budget", "50k", "--json"], "explain": ["--budget", "50k"],
            "frontier": ["--budgets", "20k,50k", "--json"]}[command]
    r = run(command, m, *args)
    assert_clean(r)
    assert digest(m) == before
    if r.exit_code in (0, 3, 4) and command != "explain":
        out = _strict(r.stdout)
        status = {"solve": lambda o: [o["status"]], "compare": lambda o: [o["exact"]["status"]],
                  "frontier": lambda o: [p["exact_status"] for p in o]}[command](out)
        if command != "frontier":
            assert (status == ["infeasible"]) == (r.exit_code == 3)
            assert (status == ["error"]) == (r.exit_code == 4)


# ----------------------------------------------------------------------------- a later campaign's cases


@pytest.mark.parametrize("methods", ["", " , ", "none", "-none"])
def test_methods_that_adapt_nothing_are_an_input_error_not_infeasible(manifest, methods):
    for args in (["solve", manifest, "--budget", "50k"], ["frontier", manifest, "--budgets", "10k,50k"]):
        r = run(*args, "--methods", methods)
        assert_clean(r, {1})
        assert "name at least one method that adapts a layer" in r.output


def test_a_byte_order_mark_is_read_and_other_encodings_are_named(manifest, allocation, tmp_path):
    bom = tmp_path / "bom.json"
    bom.write_bytes(b"\xef\xbb\xbf" + manifest.read_bytes())
    assert run("solve", bom, "--budget", "50k").exit_code == 0
    bom_alloc = tmp_path / "bom-alloc.json"
    bom_alloc.write_bytes(b"\xef\xbb\xbf" + allocation.read_bytes())
    assert run("validate", bom_alloc, "--manifest", manifest).exit_code == 0
    latin = tmp_path / "latin.json"
    latin.write_bytes(manifest.read_bytes().replace(b"encoder.layer.0", b"encoder.layer.\xe9", 1))
    r = run("solve", latin, "--budget", "50k")
    assert_clean(r, {1})
    assert "not UTF-8 text (byte" in r.output and "save the manifest as UTF-8 JSON" in r.output
    latin_alloc = tmp_path / "latin-alloc.json"
    latin_alloc.write_bytes(b"\xe9" + allocation.read_bytes())
    r = run("validate", latin_alloc)
    assert_clean(r, {1})
    assert "not UTF-8 text (byte 0)" in r.output
