"""The ``layerlens-opt`` command line: parse, one library call, print.

Exit codes: 0 success, 1 bad input (one line on stderr naming the problem),
2 usage error (click), 3 infeasible (the reason is printed), 4 solver error or
no allocation within the limits, 5 ``validate`` found a FAIL.
"""

from __future__ import annotations

import json
import math
import re
import sys
import time
from pathlib import Path

import click

from .errors import LayerlensError
from .methods import DEFAULT_WINDOW

EXIT_INFEASIBLE = 3
EXIT_ERROR = 4
EXIT_VALIDATION = 5

#: the largest count a budget may name (far beyond any model; keeps every sum exact in int64 and float)
MAX_COUNT = 10**15
#: most budgets one frontier sweep solves (each is a full solve)
MAX_FRONTIER_POINTS = 200

_SUFFIX = {"": 1, "k": 1_000, "m": 1_000_000, "g": 1_000_000_000, "b": 1_000_000_000}


def parse_count(text: str, what: str = "budget") -> int:
    """'50000', '50k', '1.2M', '5e4', '50_000' -> a positive integer."""
    s = str(text).strip().replace("_", "").replace(",", "")
    m = re.fullmatch(r"([+-]?\d+(?:\.\d*)?(?:e[+-]?\d+)?)\s*([kmgb]?)", s, re.IGNORECASE)
    if not m:
        raise LayerlensError(f"{what} {text!r} is not a number of parameters; write e.g. 50000, 50k or 1.2M")
    value = float(m.group(1)) * _SUFFIX[m.group(2).lower()]
    if not math.isfinite(value) or value > MAX_COUNT:
        raise LayerlensError(f"{what} {text!r} is too large; give at most {MAX_COUNT:.0e} parameters")
    if value <= 0:
        raise LayerlensError(f"{what} must be positive, got {text!r}")
    if abs(value - round(value)) > 1e-6:
        raise LayerlensError(f"{what} {text!r} is not a whole number of parameters")
    return int(round(value))


def parse_methods(text: str) -> tuple[str, ...]:
    """``--methods``: the methods offered; ``none`` (leave a layer as it is) is implied unless given as ``-none``."""
    items = [m.strip() for m in text.split(",") if m.strip()]
    if "-none" in items:
        return tuple(m for m in items if m not in ("-none", "none"))
    return tuple(items) + (() if "none" in items else ("none",))


class CountType(click.ParamType):
    name = "COUNT"

    def convert(self, value, param, ctx):
        if isinstance(value, int):
            return value
        try:
            return parse_count(value, f"--{param.name}" if param else "value")
        except LayerlensError as exc:
            self.fail(str(exc), param, ctx)


class FiniteFloat(click.ParamType):
    """A finite number in [lo, hi] (click's FloatRange lets NaN through)."""

    name = "NUMBER"

    def __init__(self, lo: float, hi: float, lo_open: bool = False):
        self.lo, self.hi, self.lo_open = lo, hi, lo_open

    def convert(self, value, param, ctx):
        try:
            x = float(value)
        except (TypeError, ValueError):
            self.fail(f"{value!r} is not a number", param, ctx)
        if not math.isfinite(x) or x > self.hi or x < self.lo or (self.lo_open and x == self.lo):
            self.fail(f"{value!r} must be a finite number {'>' if self.lo_open else '>='} {self.lo:g} and <= {self.hi:g}", param, ctx)
        return x


def _pairs(values, what: str, convert, separators: str = r"[,;\s]+", hint: str = ""):
    """NAME=VALUE pairs separated by commas, semicolons or spaces (``--ranks`` values hold commas: there ; or spaces)."""
    out = {}
    for item in values:
        for part in filter(None, re.split(separators, item)):
            if "=" not in part:
                raise LayerlensError(f"{what} {part!r} must look like NAME=VALUE (pairs separated by commas)")
            key, val = part.split("=", 1)
            try:
                out[key.strip()] = convert(val)
            except (ValueError, OverflowError):
                raise LayerlensError(f"{what} {part!r}: {val!r} is not a valid value{'; ' + hint if hint else ''}") from None
    return out


def _weight(text: str) -> float:
    value = float(text)
    if not math.isfinite(value) or value < 0 or value > 1e12:
        raise ValueError(text)
    return value


def _cap(text: str) -> int:
    value = int(text)
    if not 0 <= value <= MAX_COUNT:
        raise ValueError(text)
    return value


def _ranks(text: str) -> tuple[int, ...]:
    ranks = tuple(int(r) for r in text.split(",") if r)
    if not ranks or any(not 1 <= r <= 1_000_000 for r in ranks):
        raise ValueError(text)
    return ranks


def _stack(*decorators):
    """One decorator applying ``decorators`` top to bottom, as if written above the function."""

    def apply(f):
        for d in reversed(decorators):
            f = d(f)
        return f

    return apply


_problem_options = _stack(  # every command that builds a problem from a manifest
        click.argument("manifest", type=click.Path(exists=True, dir_okay=False)),
        click.option("--budget", "-b", type=CountType(), required=True, help="Trainable-parameter budget: 50000, 50k, 1.2M."),
        click.option("--min-utilization", type=FiniteFloat(0, 1), default=DEFAULT_WINDOW[0], show_default=True, help="Floor of the budget window."),
        click.option("--max-utilization", type=FiniteFloat(0, 1), default=DEFAULT_WINDOW[1], show_default=True, help="Cap of the budget window."),
        click.option("--methods", default="lora,adapter,prefix,none", show_default=True, help="Comma-separated methods to offer (ia3 available); 'none' is implied, '-none' forbids it."),
        click.option("--ranks", multiple=True, help="Candidate ranks per method, e.g. --ranks lora=1,2,4,8 (repeatable)."),
        click.option("--max-rank", type=click.IntRange(min=1), help="Largest rank/prefix length offered on any layer."),
        click.option("--weights", help="Metric weights, e.g. gradient_energy=0.5,fisher=0.3,proxy_eval=0.2 (default: the manifest's)."),
        click.option("--normalization", type=click.Choice(["max", "rank"]), default="max", show_default=True, help="How each metric is normalised (once)."),
        click.option("--shrink", type=FiniteFloat(0, 1), default=0.0, show_default=True, help="Pull utilities toward their mean by this share (a prior for noisy profiles)."),
        click.option("--min-methods", type=click.IntRange(min=0), default=0, help="At least K distinct methods besides none."),
        click.option("--method-cap", multiple=True, help="At most N layers with a method, e.g. --method-cap prefix=4 (repeatable)."),
        click.option("--tie-blocks", is_flag=True, help="All layers of a block use one method (or none)."),
        click.option("--tie-groups", metavar="REGEX", help="Layers whose names give the same capture groups under REGEX share one method "
                     "and rank, e.g. 'layers\\.(\\d+)\\.mlp\\.experts\\.\\d+\\.(\\w+)' (besides the manifest's 'group' fields)."),
        click.option("--no-interactions", is_flag=True, help="Ignore the manifest's pairwise interaction terms (separable gains only)."),
)

_solver_options = _stack(
        click.option("--solver", "-s", default="auto", show_default=True, help="auto | cbc | highs | heuristic."),
        click.option("--time-limit", type=FiniteFloat(0, 1e7, lo_open=True), help="Seconds before the solver stops (reports the gap)."),
        click.option("--threads", type=click.IntRange(min=1), help="Threads for CBC/HiGHS."),
        click.option("--no-warm-start", is_flag=True, help="Do not pass a starting allocation to CBC."),
        click.option("--no-presolve", is_flag=True, help="Give CBC/HiGHS the full model without the knapsack presolve."),
)


def _build(kw):
    """Manifest + options -> Problem, timed."""
    from .manifest import load_manifest
    from .problem import Constraints, ModelOptions, build_problem

    t0 = time.perf_counter()
    manifest = load_manifest(kw["manifest"])
    methods = parse_methods(kw["methods"])
    ranks = _pairs(kw["ranks"], "--ranks", _ranks, r"[;\s]+", "give positive whole ranks, e.g. lora=1,2,4,8")
    weights = _pairs([kw["weights"]], "--weights", _weight, hint="a weight is a finite number >= 0") if kw.get("weights") else None
    caps = _pairs(kw["method_cap"], "--method-cap", _cap, hint="a cap is a whole number of layers >= 0")
    constraints = Constraints(
        budget=kw["budget"],
        min_utilization=kw["min_utilization"],
        max_utilization=kw["max_utilization"],
        min_methods=kw["min_methods"],
        method_caps=tuple(sorted(caps.items())),
        tie_blocks=kw["tie_blocks"],
        tie_groups=kw.get("tie_groups"),
    )
    options = ModelOptions(methods=methods, ranks=ranks, metric_weights=weights, normalization=kw["normalization"], max_rank=kw["max_rank"],
                           shrink=kw["shrink"], interactions=not kw.get("no_interactions", False))
    problem = build_problem(manifest, constraints, options)
    return problem, time.perf_counter() - t0


def _solve(problem, build_seconds, kw, solver=None):
    from dataclasses import replace

    from .solvers import SolverOptions, solve

    limit = kw["time_limit"]
    if limit is not None:  # the clock started when the command did: reading the manifest counts
        limit = max(1e-3, limit - build_seconds)
    options = SolverOptions(
        time_limit=limit, threads=kw["threads"], warm_start=not kw["no_warm_start"], presolve=not kw["no_presolve"]
    )
    alloc = solve(problem, solver or kw["solver"], options)
    seconds = dict(alloc.seconds)
    seconds["build"] = seconds.get("build", 0.0) + build_seconds
    return replace(alloc, seconds=seconds)


def _write(path: str, text: str, inputs=(), what: str = "output") -> None:
    from .io import write_atomic

    write_atomic(path, text, inputs, what)


class _Group(click.Group):
    """Turns LayerlensError into a one-line message and exit code 1."""

    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except LayerlensError as exc:
            raise click.ClickException(str(exc)) from None


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="layerlens-opt")
def main():
    """Allocate PEFT methods and ranks across layers under a trainable-parameter budget."""


@main.command()
@_problem_options
@_solver_options
@click.option("--json", "as_json", is_flag=True, help="Print the allocation object (schema v1) instead of tables.")
@click.option("--output", "-o", type=click.Path(dir_okay=False), help="Write the allocation JSON to this file.")
@click.option("--export-lp", type=click.Path(dir_okay=False), help="Write the full integer program as an LP file.")
@click.option("--export-mps", type=click.Path(dir_okay=False), help="Write the full integer program as an MPS file.")
def solve(as_json, output, export_lp, export_mps, **kw):
    """Solve the allocation for MANIFEST under --budget."""
    from .io import check_output, json_text, write_atomic

    outputs = [p for p in (output, export_lp, export_mps) if p]
    for path in outputs:  # refuse a clobbered input or a missing folder before any work
        check_output(path, [kw["manifest"]] + [o for o in outputs if o is not path])
    problem, build_seconds = _build(kw)
    if export_lp or export_mps:
        from .solvers.ilp import export_model

        for path, fmt in ((export_lp, "lp"), (export_mps, "mps")):
            if path:
                write_atomic(path, lambda tmp, fmt=fmt: export_model(problem, tmp, fmt), [kw["manifest"]], f"{fmt.upper()} model")
    alloc = _solve(problem, build_seconds, kw)
    data = alloc.to_dict()
    text = json_text(data, "allocation").rstrip("\n")
    if output and alloc.layers:
        _write(output, text + "\n", [kw["manifest"]], "allocation")
    elif output:
        click.echo(f"{output} not written: the solve found no allocation ({alloc.status.value}); any earlier file there is unchanged", err=True)
        output = None
    if as_json:
        click.echo(text)
    else:
        from .report import allocation_table, summary

        if alloc.layers:
            click.echo(allocation_table(data))
            click.echo()
        click.echo(summary(data))
        for path, what in ((export_lp, "LP model"), (export_mps, "MPS model"), (output, "allocation")):
            if path:
                click.echo(f"wrote {what} to {path}")
    _exit_for(alloc.status.value, data.get("message", ""), as_json)


def _exit_for(status: str, message: str, quiet: bool) -> None:
    if status == "infeasible":
        if quiet:
            click.echo(f"infeasible: {message}", err=True)
        sys.exit(EXIT_INFEASIBLE)
    if status == "error":
        if quiet:
            click.echo(f"error: {message}", err=True)
        sys.exit(EXIT_ERROR)


@main.command()
@_problem_options
@_solver_options
@click.option("--json", "as_json", is_flag=True, help="Print both allocations as one JSON object.")
def compare(as_json, **kw):
    """Solve MANIFEST with an exact solver and the heuristic; show both side by side."""
    problem, build_seconds = _build(kw)
    solver = kw["solver"] if kw["solver"] != "heuristic" else "auto"
    exact = _solve(problem, build_seconds, kw, solver).to_dict()
    heur = _solve(problem, build_seconds, kw, "heuristic").to_dict()
    if as_json:
        click.echo(json.dumps({"exact": exact, "heuristic": heur}, indent=1))
    else:
        from .report import compare_text

        click.echo(compare_text(exact, heur))
    if exact["status"] in ("infeasible", "error"):
        _exit_for(exact["status"], exact.get("message", ""), True)


@main.command()
@click.argument("allocation", type=click.Path(exists=True, dir_okay=False))
@click.option("--manifest", type=click.Path(exists=True, dir_okay=False), help="Recompute correlations and compatibility against this manifest.")
@click.option("--json", "as_json", is_flag=True, help="Print metrics and checks as JSON.")
def validate(allocation, manifest, as_json):
    """Recompute an ALLOCATION file: its params, totals and layers (FAIL on any mismatch) and the validation metrics."""
    from .allocation import load_allocation
    from .integrity import integrity_failures
    from .metrics import FAIL, compute_metrics, verdicts
    from .report import validation_table

    data = load_allocation(allocation)
    layers = data["layers"]
    grads = fisher = allowed = None
    man = None
    if manifest:
        from .manifest import load_manifest
        from .methods import METHOD_NAMES
        from .problem import ModelOptions, allowed_methods

        man = load_manifest(manifest)
        accepted = allowed_methods(man, ModelOptions(methods=tuple(METHOD_NAMES)))
        allowed = [accepted.get(l["name"], set()) for l in layers]
        tables = [man.metadata.get(key) for key in ("gradient_norms", "fisher_traces")]
        grads, fisher = [[float(t[l["name"]]) for l in layers] if isinstance(t, dict) and all(l["name"] in t for l in layers) else None
                         for t in tables]
    failures = integrity_failures(data, man)
    metrics = compute_metrics(layers, data["constraints"], grads, fisher, allowed)
    if not manifest:  # correlations need the profile; keep what the solver computed
        for key in ("utility_gradient_correlation", "utility_fisher_correlation"):
            metrics[key] = (data.get("metrics") or {}).get(key)
    checks = verdicts(metrics, data["constraints"])
    n_fail = sum(v == FAIL for v in checks.values()) + len(failures)
    if as_json:
        click.echo(json.dumps({"failures": failures, "metrics": metrics, "checks": checks}, indent=1))
    else:
        for line in failures[:20]:
            click.echo(f"FAIL  {line}")
        if len(failures) > 20:
            click.echo(f"FAIL  ... and {len(failures) - 20} more (--json lists all)")
        if failures:
            click.echo()
        click.echo(validation_table(metrics, data["constraints"]))
        n_warn = sum(v == "WARN" for v in checks.values())
        click.echo(f"\n{'FAIL' if n_fail else 'PASS'}: {n_fail} failed, {n_warn} warnings")
    if n_fail:
        sys.exit(EXIT_VALIDATION)


def _sound_allocation(path: str) -> dict:
    """The allocation file, refused (one line, exit 1) when its own fields do not add up."""
    from .allocation import load_allocation
    from .integrity import integrity_failures

    data = load_allocation(path)
    failures = integrity_failures(data)
    if failures:
        more = f" (and {len(failures) - 1} more)" if len(failures) > 1 else ""
        raise LayerlensError(f"{path} fails validation: {failures[0]}{more}; run `layerlens-opt validate {path}`")
    return data


@main.command()
@click.option("--model", "-m", "model_spec", required=True, help="Hugging Face model directory, module:function returning an nn.Module, or minilm (all-MiniLM-L6-v2, shipped offline).")
@click.option("--data", "-d", "data_path", required=True, type=click.Path(dir_okay=False), help="JSONL of {\"text\": ..., \"label\": ...}.")
@click.option("--output", "-o", required=True, type=click.Path(dir_okay=False), help="Manifest file to write.")
@click.option("--signal", type=click.Choice(["probe", "first-order"]), default="probe", show_default=True,
              help="probe: short uniform-LoRA run + held-out ablations; first-order: gradient energy, Fisher, one-step proxy.")
@click.option("--probe-steps", type=click.IntRange(min=1), default=100, show_default=True, help="probe: training steps.")
@click.option("--probe-rank", type=click.IntRange(min=1), default=4, show_default=True, help="probe: LoRA rank on every layer.")
@click.option("--probe-lr", type=FiniteFloat(0, 10, lo_open=True), default=2e-3, show_default=True, help="probe: AdamW learning rate.")
@click.option("--held-out", type=click.IntRange(min=1), default=512, show_default=True, help="probe: rows kept out of probe training to measure on.")
@click.option("--no-interactions", is_flag=True, help="probe: measure no pairwise interactions inside blocks.")
@click.option("--probe-values", type=click.Choice(["leave-one-out", "masks"]), default="leave-one-out", show_default=True,
              help="probe: a layer's value with all others present, or by regression over random subsets (--probe-masks).")
@click.option("--probe-masks", type=click.IntRange(min=16), default=256, show_default=True, help="probe: random subsets measured with --probe-values masks.")
@click.option("--batches", type=click.IntRange(min=1), default=8, show_default=True, help="first-order: batches.")
@click.option("--batch-size", type=click.IntRange(min=1), default=32, show_default=True)
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--device", default="cpu", show_default=True, help="cpu, cuda, cuda:1, ...")
@click.option("--head-steps", type=click.IntRange(min=0), default=100, show_default=True, help="first-order: steps fitting the head on frozen features first.")
@click.option("--kind-pattern", multiple=True, help="REGEX=KIND overriding the inferred kind (repeatable).")
@click.option("--block-pattern", help="REGEX with one group capturing the block number.")
@click.option("--quiet", "-q", is_flag=True, help="No progress bars.")
def profile(model_spec, data_path, output, signal, probe_steps, probe_rank, probe_lr, held_out, no_interactions, probe_values, probe_masks, batches, batch_size,
            seed, device, head_steps, kind_pattern, block_pattern, quiet):
    """Profile a torch model on labelled text into a manifest (needs the torch extra)."""
    try:
        from .profiling.probe import ProbeConfig, probe
        from .profiling.profiler import ProfileConfig
        from .profiling.profiler import profile as run_profile
    except ImportError as exc:
        raise LayerlensError(f"profiling needs torch ({exc.name} is missing): pip install torch==2.13.0 && pip install -e '.[torch]'") from None
    from .naming import parse_block_pattern, parse_kind_patterns

    from .io import check_output, json_text

    check_output(output, [data_path], "manifest")
    naming = dict(kind_patterns=parse_kind_patterns(kind_pattern), block_pattern=parse_block_pattern(block_pattern), progress=not quiet)
    if signal == "probe":
        config = ProbeConfig(steps=probe_steps, rank=probe_rank, lr=probe_lr, batch_size=batch_size, held_out=held_out,
                             interactions=not no_interactions, values=probe_values, masks=probe_masks, seed=seed, device=device, **naming)
        manifest = probe(model_spec, data_path, config)
    else:
        config = ProfileConfig(batches=batches, batch_size=batch_size, seed=seed, device=device, head_steps=head_steps, **naming)
        manifest = run_profile(model_spec, data_path, config)
    from .manifest import parse_manifest

    parse_manifest(manifest, source="profiled manifest")  # what we write must read back
    _write(output, json_text(manifest, "manifest"), [data_path], "manifest")
    kinds = {}
    for l in manifest["layers"]:
        kinds[l["kind"]] = kinds.get(l["kind"], 0) + 1
    click.echo(f"profiled {len(manifest['layers'])} layers ({', '.join(f'{k} {n}' for k, n in sorted(kinds.items()))}) "
               f"of {manifest['model']['name']} ({signal}) in {manifest['model']['seconds']:.1f} s; wrote {output}")


@main.command()
@click.argument("task", type=click.Choice(["polarity", "pairs", "emotion", "frequency"]))
@click.option("--split", type=click.Choice(["train", "test"]), default="train", show_default=True)
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of the word split.")
@click.option("--output", "-o", required=True, type=click.Path(dir_okay=False))
def data(task, split, seed, output):
    """Write a word task (VADER polarity/pairs, NRC emotion, wordfreq frequency; words split between train and test) as JSONL."""
    from .tasks import examples, write_jsonl

    from .io import check_output

    check_output(output, (), "data")
    rows = examples(task, split, seed)
    write_jsonl(rows, output)
    click.echo(f"wrote {len(rows)} {task} examples ({split} words) to {output}")


@main.command()
@click.argument("allocation", type=click.Path(exists=True, dir_okay=False))
@click.option("--format", "fmt", type=click.Choice(["peft", "csv", "markdown"]), default="peft", show_default=True)
@click.option("--output", "-o", required=True, type=click.Path(), help="A folder for peft (adapter_config.json), a file otherwise.")
@click.option("--module-prefix", default="", help="Prepended to module names, when the trainer wraps the profiled model (e.g. 'encoder.').")
@click.option("--alpha-ratio", type=FiniteFloat(0, 1e6, lo_open=True), default=2.0, show_default=True, help="LoRA alpha = ratio x rank.")
def export(allocation, fmt, output, module_prefix, alpha_ratio):
    """Export an ALLOCATION as a peft LoraConfig folder, CSV or Markdown."""
    from . import export as ex

    data = _sound_allocation(allocation)
    if fmt == "peft":
        path = ex.write_peft(data, output, alpha_ratio=alpha_ratio, prefix=module_prefix)
        n = len(ex.lora_config(data)["target_modules"])
        click.echo(f"wrote {path}: LoRA on {n} modules")
        others = ex.others_than_lora(data)
        if others:
            click.echo("not in the peft config (peft cannot mix them with LoRA; use layerlens_opt.apply): "
                       + ", ".join(f"{m} x{c}" for m, c in sorted(others.items())), err=True)
    else:
        _write(output, ex.to_csv(data) if fmt == "csv" else ex.to_markdown(data), [allocation], fmt)
        click.echo(f"wrote {output}")


@main.command()
@click.argument("allocation", type=click.Path(exists=True, dir_okay=False))
@click.option("--output", "-o", required=True, type=click.Path(dir_okay=False), help="Image file (.png, .svg, .pdf).")
def plot(allocation, output):
    """Methods and ranks across layers: a heatmap by block x module."""
    from .io import check_output
    from .plots import check_image_path, plot_allocation

    check_image_path(output)
    check_output(output, [allocation], "plot")
    plot_allocation(_sound_allocation(allocation), output)
    click.echo(f"wrote {output}")


def _budgets(text: str) -> list[int]:
    if ":" in text:
        parts = text.split(":")
        if len(parts) not in (2, 3):
            raise LayerlensError(f"--budgets {text!r}: use START:STOP or START:STOP:POINTS, e.g. 10k:200k")
        lo, hi = parse_count(parts[0], "--budgets start"), parse_count(parts[1], "--budgets stop")
        try:
            n = int(parts[2]) if len(parts) == 3 else 12
        except ValueError:
            raise LayerlensError(f"--budgets {text!r}: POINTS {parts[2]!r} must be a whole number, e.g. 10k:200k:20") from None
        if hi <= lo or not 2 <= n <= MAX_FRONTIER_POINTS:
            raise LayerlensError(f"--budgets {text!r}: the stop must exceed the start and POINTS be 2 to {MAX_FRONTIER_POINTS}")
        return sorted({round(lo + (hi - lo) * i / (n - 1)) for i in range(n)})
    budgets = sorted({parse_count(t, "--budgets") for t in text.split(",") if t.strip()})
    if not budgets or len(budgets) > MAX_FRONTIER_POINTS:
        raise LayerlensError(f"--budgets {text!r}: give 1 to {MAX_FRONTIER_POINTS} budgets")
    return budgets


@main.command()
@click.argument("manifest", type=click.Path(exists=True, dir_okay=False))
@click.option("--budgets", required=True, help="START:STOP[:POINTS] (e.g. 10k:200k) or a list 10k,20k,50k.")
@click.option("--methods", default="lora,adapter,prefix,none", show_default=True)
@click.option("--min-utilization", type=FiniteFloat(0, 1), default=DEFAULT_WINDOW[0], show_default=True)
@click.option("--max-utilization", type=FiniteFloat(0, 1), default=DEFAULT_WINDOW[1], show_default=True)
@click.option("--output", "-o", type=click.Path(dir_okay=False), help="Plot of objective vs budget (needs matplotlib).")
@click.option("--json", "as_json", is_flag=True, help="Print the sweep as JSON.")
def frontier(manifest, budgets, methods, min_utilization, max_utilization, output, as_json):
    """Solve a sweep of budgets with the exact solver and the heuristic; objective vs budget."""
    from .manifest import load_manifest
    from .problem import Constraints, ModelOptions, build_problem
    from .report import table
    from .solvers import solve as run_solver

    if output:
        from .io import check_output
        from .plots import check_image_path

        check_image_path(output)
        check_output(output, [manifest], "plot")
    man = load_manifest(manifest)
    options = ModelOptions(methods=parse_methods(methods))
    points = []
    with click.progressbar(_budgets(budgets), label="solving budgets", file=sys.stderr) as bar:
        for b in bar:
            problem = build_problem(man, Constraints(budget=b, min_utilization=min_utilization, max_utilization=max_utilization), options)
            exact, heur = run_solver(problem, "auto"), run_solver(problem, "heuristic")
            points.append({"budget": b, "exact": exact.objective, "exact_status": exact.status.value,
                           "exact_params": exact.total_params, "heuristic": heur.objective,
                           "heuristic_status": heur.status.value, "heuristic_params": heur.total_params})
    if as_json:
        click.echo(json.dumps(points, indent=1))
    else:
        rows = [(p["budget"], p["exact"], p["exact_status"], p["heuristic"], p["heuristic_status"]) for p in points]
        click.echo(table(("budget", "exact objective", "status", "heuristic objective", "status"), rows, "rrlrl"))
    if output:
        from .plots import plot_frontier

        plot_frontier(points, output, title=Path(manifest).stem)
        click.echo(f"wrote {output}", err=as_json)


@main.command()
@_problem_options
@click.option("--layer", "layer_name", help="Explain one layer only.")
def explain(layer_name, **kw):
    """Why each layer got what it got: the budget's shadow price (cvxpy LP) and marginal gains."""
    from .explain import explain as run_explain

    problem, _ = _build(kw)
    click.echo(run_explain(problem, layer_name))


if __name__ == "__main__":  # pragma: no cover
    main()
