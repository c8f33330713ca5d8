"""The ``layerlens-opt`` command line: parse, one library call, print.

Exit codes: 0 success, 1 bad input (one line on stderr naming the problem),
2 usage error (click), 3 infeasible (the reason is printed), 4 solver error or
no allocation within the limits, 5 ``validate`` found a FAIL, 6 ``profile``'s probe
learned too little to trust (nothing written; ``--allow-untrusted`` writes it).
"""

from __future__ import annotations

import sys
from pathlib import Path

import click

from .cliparse import (
    FiniteFloat, OutputPath, build_from_options as _build, parse_budgets, parse_count, parse_methods, problem_options as _problem_options,
    refuse_inputs, solve_from_options as _solve, solver_options as _solver_options, warn_untrusted,
)

__all__ = ["main", "parse_count"]
from .errors import LayerlensError
from .integrity import sound_allocation as _sound_allocation
from .io import json_text, write_atomic as _write
from .methods import DEFAULT_METHODS, DEFAULT_WINDOW

EXIT_INFEASIBLE = 3
EXIT_ERROR = 4
EXIT_VALIDATION = 5
EXIT_UNTRUSTED = 6
#: ``solve``, ``compare`` and ``explain`` print every layer's row up to this many layers (a 50,000-layer table
#: scrolls past unread)
TABLE_MAX_ROWS = 1000
_max_rows = click.option("--max-rows", type=click.IntRange(0), default=TABLE_MAX_ROWS, show_default=True,
                         help="Past this many layers the table shows only its first and last rows (0: every layer).")


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
    import signal
    import threading

    # SIGTERM ends the command as Ctrl-C does: through the cleanup (CBC and the raced search killed, temporary files
    # removed, no half-written output) instead of dying on the spot
    if threading.current_thread() is threading.main_thread() and signal.getsignal(signal.SIGTERM) == signal.SIG_DFL:
        signal.signal(signal.SIGTERM, _terminated)


def _terminated(signum, frame):
    raise SystemExit(128 + signum)


@main.command()
@_problem_options
@_solver_options
@click.option("--json", "as_json", is_flag=True, help="Print the allocation object (schema v1) instead of tables.")
@click.option("--output", "-o", type=OutputPath("allocation"), help="Write the allocation JSON to this file.")
@click.option("--export-lp", type=OutputPath("LP model"), help="Write the full integer program as an LP file.")
@click.option("--export-mps", type=OutputPath("MPS model"), help="Write the full integer program as an MPS file.")
@_max_rows
def solve(as_json, output, export_lp, export_mps, max_rows, **kw):
    """Solve the allocation for MANIFEST under --budget."""
    from .io import json_text, write_atomic

    refuse_inputs((output, export_lp, export_mps), [kw["manifest"]])  # before any work
    problem, build_seconds = _build(kw)
    if export_lp or export_mps:
        from .solvers.ilp import export_model

        for path, fmt in ((export_lp, "lp"), (export_mps, "mps")):
            if path:
                write_atomic(path, lambda tmp, fmt=fmt: export_model(problem, tmp, fmt), [kw["manifest"]], f"{fmt.upper()} model")
    alloc = _solve(problem, build_seconds, kw)
    text = json_text(alloc.to_dict(), "allocation").rstrip("\n") if output or as_json else ""
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
            click.echo(allocation_table(alloc, max_rows))
            click.echo()
        click.echo(summary(alloc))
        for path, what in ((export_lp, "LP model"), (export_mps, "MPS model"), (output, "allocation")):
            if path:
                click.echo(f"wrote {what} to {path}")
    _exit_for(alloc.status.value, alloc.message, as_json)


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
@_max_rows
def compare(as_json, max_rows, **kw):
    """Solve MANIFEST with an exact solver and the heuristic; show both side by side."""
    problem, build_seconds = _build(kw)
    solver = kw["solver"] if kw["solver"] != "heuristic" else "auto"
    exact = _solve(problem, build_seconds, kw, solver)
    heur = _solve(problem, build_seconds, kw, "heuristic")
    if as_json:
        click.echo(json_text({"exact": exact.to_dict(), "heuristic": heur.to_dict()}, "comparison"), nl=False)
    else:
        from .report import compare_text

        click.echo(compare_text(exact, heur, max_rows))
    if not exact.ok:
        _exit_for(exact.status.value, exact.message, True)


@main.command()
@click.argument("allocation", type=click.Path(exists=True, dir_okay=False))
@click.option("--manifest", type=click.Path(exists=True, dir_okay=False), help="Recompute correlations and compatibility against this manifest.")
@click.option("--json", "as_json", is_flag=True, help="Print metrics and checks as JSON.")
def validate(allocation, manifest, as_json):
    """Recompute an ALLOCATION file: its params, totals and layers (FAIL on any mismatch) and the validation metrics."""
    from .allocation import load_allocation
    from .integrity import validate_allocation
    from .metrics import FAIL
    from .report import validation_table

    data = load_allocation(allocation)
    man = None
    if manifest:
        from .manifest import load_manifest

        man = load_manifest(manifest)
    failures, metrics, checks = validate_allocation(data, man)
    n_fail = sum(v == FAIL for v in checks.values()) + len(failures)
    if as_json:
        click.echo(json_text({"failures": failures, "metrics": metrics, "checks": checks}, "validation report"), nl=False)
    else:
        for line in failures[:20]:
            click.echo(f"FAIL  {line}")
        if len(failures) > 20:
            click.echo(f"FAIL  ... and {len(failures) - 20} more (--json lists all)")
        if failures:
            click.echo()
        click.echo(validation_table(metrics, data.constraints))
        n_warn = sum(v == "WARN" for v in checks.values())
        click.echo(f"\n{'FAIL' if n_fail else 'PASS'}: {n_fail} failed, {n_warn} warnings")
    if n_fail:
        sys.exit(EXIT_VALIDATION)


@main.command()
@click.option("--model", "-m", "model_spec", required=True, help="Hugging Face model directory, module:function returning an nn.Module, or minilm (all-MiniLM-L6-v2, shipped offline).")
@click.option("--data", "-d", "data_path", required=True, type=click.Path(exists=True, dir_okay=False),
              help="JSONL: {\"text\", \"label\"} rows for a classifier; {\"text\"}, {\"prompt\", \"completion\"} or {\"messages\"} rows for a causal LM.")
@click.option("--objective", type=click.Choice(["auto", "classification", "causal-lm"]), default="auto", show_default=True,
              help="auto: a causal LM where the model's config names a *ForCausalLM / *LMHeadModel architecture (next-token "
                   "loss on its own lm_head), else a classifier (mean pooling and a linear head).")
@click.option("--dtype", type=click.Choice(["float32", "bfloat16", "float16"]), default="float32", show_default=True,
              help="the causal LM's weights (the adapters train in float32).")
@click.option("--max-length", type=click.IntRange(min=2, max=1_000_000), default=None,
              help="tokens kept per row [default: classification 64, causal LM 256].")
@click.option("--output", "-o", required=True, type=OutputPath("manifest"), help="Manifest file to write.")
@click.option("--signal", "-S", type=click.Choice(["probe", "lora-probe", "first-order"]), default="probe", show_default=True,
              help="probe: every method (LoRA, IA3, adapter, prefix) on every layer behind gates, trained once, priced per layer "
                   "and method; lora-probe: short uniform-LoRA run + held-out ablations (LoRA only); first-order: gradient energy, "
                   "Fisher, one-step proxy (under torchrun write -S: torchrun's own parser takes --signal for its --signals-to-handle).")
@click.option("--probe-steps", type=click.IntRange(min=1), default=None,
              help="probe: most training steps (it stops earlier when the held-out loss stops improving) [default: 125]; "
                   "lora-probe: training steps [default: 100].")
@click.option("--probe-rank", type=click.IntRange(min=1), default=4, show_default=True,
              help="probe: LoRA rank, adapter width and prefix length on every layer (lora-probe: LoRA rank).")
@click.option("--probe-lr", type=FiniteFloat(0, 10, lo_open=True), default=2e-3, show_default=True,
              help="probe: the head's AdamW learning rate (each method trains at its own, see --method-lr); lora-probe: the rate.")
@click.option("--method-lr", "method_lrs", multiple=True, metavar="METHOD=LR",
              help="probe: a method's learning rate instead of its catalog rate (lora 2e-3, ia3 3e-2, adapter 3e-3, prefix 3e-2); repeatable.")
@click.option("--probe-methods", metavar="LIST", help="probe: the methods to measure, comma-separated [default: lora,ia3,adapter,prefix].")
@click.option("--probe-estimate", type=click.Choice(["gradient", "exact"]), default="gradient", show_default=True,
              help="probe: a (layer, method) value from the gates' gradients (one backward pass per held-out batch) or from "
                   "two held-out passes each.")
@click.option("--probe-shrink/--no-probe-shrink", default=None,
              help="probe: pull each method's values toward its mean over layers by their measured noise (James-Stein), so "
                   "that noise cannot concentrate a budget [default: on; with --probe-estimate gradient only].")
@click.option("--probe-fidelity", is_flag=True, help="probe: measure both estimates and report their rank correlation in the manifest.")
@click.option("--held-out", type=click.IntRange(min=1), default=None,
              help="rows kept out of probe training to measure on [default: a fifth of the rows, at least 100 and at most 512].")
@click.option("--interactions/--no-interactions", default=None,
              help="measure pairwise interactions inside blocks [default: probe no, lora-probe yes].")
@click.option("--probe-values", type=click.Choice(["leave-one-out", "masks"]), default="leave-one-out", show_default=True,
              help="lora-probe: a layer's value with all others present, or by regression over random subsets (--probe-masks).")
@click.option("--probe-masks", type=click.IntRange(min=16), default=256, show_default=True, help="lora-probe: random subsets measured with --probe-values masks.")
@click.option("--batches", type=click.IntRange(min=1), default=8, show_default=True, help="first-order: batches.")
@click.option("--batch-size", type=click.IntRange(min=1), default=32, show_default=True)
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--device", default="cpu", show_default=True, help="cpu, cuda, cuda:1, ...")
@click.option("--head-steps", type=click.IntRange(min=0), default=100, show_default=True, help="first-order: steps fitting the head on frozen features first.")
@click.option("--kind-pattern", multiple=True, help="REGEX=KIND overriding the inferred kind (repeatable).")
@click.option("--block-pattern", help="REGEX with one group capturing the block number.")
@click.option("--allow-untrusted", is_flag=True,
              help="write the manifest even when the probe learned too little to trust (its values are then mostly noise; "
                   "the manifest and every command that solves it say so) [default: refuse, exit 6, nothing written].")
@click.option("--quiet", "-q", is_flag=True, help="No progress bars.")
def profile(model_spec, data_path, objective, dtype, max_length, output, signal, probe_steps, probe_rank, probe_lr, method_lrs, probe_methods, probe_estimate, probe_shrink,
            probe_fidelity, held_out, interactions, probe_values, probe_masks, batches, batch_size, seed, device, head_steps, kind_pattern, block_pattern,
            allow_untrusted, quiet):
    """Profile a torch model on labelled text (a classifier) or text / SFT data (a causal LM) into a manifest (needs the
    torch extra)."""
    from .manifest import save_manifest
    from .profiling import is_main, parse_method_lrs, parse_methods, profile_manifest, summary

    refuse_inputs([output], [data_path])
    lrs = parse_method_lrs(method_lrs)
    methods = parse_methods(probe_methods) if probe_methods is not None else None
    manifest = profile_manifest(model_spec, data_path, signal, kind_pattern=kind_pattern, block_pattern=block_pattern, progress=not quiet,
                                probe_steps=probe_steps, probe_rank=probe_rank, probe_lr=probe_lr, method_lrs=lrs, probe_methods=methods,
                                probe_estimate=probe_estimate, probe_shrink=probe_shrink, probe_fidelity=probe_fidelity, held_out=held_out,
                                interactions=interactions, probe_values=probe_values, probe_masks=probe_masks, batches=batches,
                                batch_size=batch_size, seed=seed, device=device, head_steps=head_steps, objective=objective,
                                dtype=dtype, max_length=max_length)
    warning = manifest.model.get("probe", {}).get("warning")
    refused = warning is not None and not allow_untrusted
    if is_main():  # under torchrun every rank holds the same manifest; rank 0 writes it (or says why it does not)
        if refused:  # its values would be mostly noise: a solve would price noise and validate would pass it
            click.echo(f"Error: {warning}; nothing was written to {output} (--allow-untrusted writes it anyway)", err=True)
        else:
            save_manifest(manifest, output, [data_path])
            if warning:
                click.echo(f"warning: {warning}", err=True)
            click.echo(f"{summary(manifest, signal)}; wrote {output}")
    if manifest.model.get("processes", 1) > 1:
        # under torchrun, once the process group is torn down and the manifest written: leave without the
        # interpreter's finalization, where gloo's worker threads can still abort a finished rank (SIGABRT,
        # "terminate called without an active exception": seen about once in fifty 2-process runs here)
        import os

        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(EXIT_UNTRUSTED if refused else 0)
    if refused:
        sys.exit(EXIT_UNTRUSTED)


@main.command()
@click.argument("task", type=click.Choice(["polarity", "pairs", "emotion", "frequency"]))
@click.option("--split", type=click.Choice(["train", "test"]), default="train", show_default=True)
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of the word split.")
@click.option("--output", "-o", required=True, type=OutputPath("data"))
def data(task, split, seed, output):
    """Write a word task (VADER polarity/pairs, NRC emotion, wordfreq frequency; words split between train and test) as JSONL."""
    from .tasks import examples, write_jsonl

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
        path = ex.write_peft(data, output, inputs=[allocation], alpha_ratio=alpha_ratio, prefix=module_prefix)
        n = len(ex.lora_config(data)["target_modules"])
        others = ex.others_than_lora(data)
        if others:  # the first line: the config does not carry the whole allocation
            dropped = sum(others.values())
            click.echo(f"warning: the peft config drops {dropped} of {dropped + n} adapted layers ("
                       + ", ".join(f"{m} x{c}" for m, c in sorted(others.items()))
                       + "): peft's LoraConfig cannot mix them with LoRA; train the whole allocation with layerlens_opt.apply", err=True)
        click.echo(f"wrote {path}: LoRA on {n} modules; load it with peft.LoraConfig.from_pretrained({str(output)!r}) "
                   "and peft.get_peft_model(model, config)")
    else:
        _write(output, ex.to_csv(data) if fmt == "csv" else ex.to_markdown(data), [allocation], fmt)
        click.echo(f"wrote {output}")


@main.command()
@click.argument("allocation", type=click.Path(exists=True, dir_okay=False))
@click.option("--output", "-o", required=True, type=OutputPath("plot", image=True), help="Image file (.png, .svg, .pdf).")
def plot(allocation, output):
    """Methods and ranks across layers: a heatmap by block x module."""
    from .plots import plot_allocation

    refuse_inputs([output], [allocation])
    plot_allocation(_sound_allocation(allocation), output)
    click.echo(f"wrote {output}")


@main.command()
@click.argument("manifest", type=click.Path(exists=True, dir_okay=False))
@click.option("--budgets", required=True, help="START:STOP[:POINTS] (e.g. 10k:200k) or a list 10k,20k,50k (50,000 is refused as ambiguous: write 50000 or 50k).")
@click.option("--methods", default=None, help=f"As solve's [default: {','.join(DEFAULT_METHODS)}, plus the manifest's measured methods].")
@click.option("--min-utilization", type=FiniteFloat(0, 1), default=DEFAULT_WINDOW[0], show_default=True)
@click.option("--max-utilization", type=FiniteFloat(0, 1), default=DEFAULT_WINDOW[1], show_default=True)
@click.option("--output", "-o", type=OutputPath("plot", image=True), help="Plot of objective vs budget (needs matplotlib).")
@click.option("--json", "as_json", is_flag=True, help="Print the sweep as JSON.")
@click.option("--time-limit", type=FiniteFloat(0, 1e7, lo_open=True), help="Seconds for each budget's exact solve (as solve's).")
def frontier(manifest, budgets, methods, min_utilization, max_utilization, output, as_json, time_limit):
    """Solve a sweep of budgets with the exact solver and the heuristic; objective vs budget."""
    from .manifest import load_manifest
    from .problem import ModelOptions
    from .report import table
    from .sweep import frontier_points

    refuse_inputs([output], [manifest])
    man = load_manifest(manifest)
    warn_untrusted(man, manifest)
    options = ModelOptions(methods=parse_methods(methods) if methods is not None else None)
    budgets = parse_budgets(budgets)

    def bar(items):
        with click.progressbar(items, label="solving budgets", file=sys.stderr) as shown:
            yield from shown

    points = frontier_points(man, budgets, options, (min_utilization, max_utilization), bar, time_limit=time_limit)
    if as_json:
        click.echo(json_text(points, "frontier"), nl=False)
    else:
        rows = [(p["budget"], p["exact"], p["exact_status"], p["heuristic"], p["heuristic_status"]) for p in points]
        click.echo(table(("budget", "exact objective", "status", "heuristic objective", "status"), rows, "rrlrl"))
    if output:
        from .plots import plot_frontier

        plot_frontier(points, output, title=Path(manifest).stem)
        click.echo(f"wrote {output}", err=as_json)
    if not any(p["exact_status"] in ("optimal", "feasible") for p in points):  # nothing to show: the exit says why
        statuses = sorted({p["exact_status"] for p in points})
        click.echo(f"no budget of the sweep has an allocation ({', '.join(statuses)}); widen the window or change the budgets",
                   err=True)
        sys.exit(EXIT_INFEASIBLE if statuses == ["infeasible"] else EXIT_ERROR)


@main.command()
@_problem_options
@click.option("--layer", "layer_name", help="Explain one layer only.")
@click.option("--cross-check/--no-cross-check", default=None,
              help="Solve the LP with cvxpy too and compare (default: up to 50,000 options, where cvxpy is installed).")
@click.option("--time-limit", type=FiniteFloat(0, 1e7, lo_open=True), help="Seconds before the solver stops (as solve's).")
@_max_rows
def explain(layer_name, cross_check, max_rows, **kw):
    """Why each layer got what it got: the budget's shadow price (exact LP, cross-checked by cvxpy) and marginal gains."""
    from .explain import explain as run_explain

    problem, build_seconds = _build(kw)
    alloc = _solve(problem, build_seconds, dict(kw, threads=None, no_warm_start=False, no_presolve=False), solver="auto")
    if not alloc.ok:
        _exit_for(alloc.status.value, alloc.message, True)
        raise LayerlensError(f"nothing to explain: {alloc.status.value} - {alloc.message}")
    click.echo(run_explain(problem, layer_name, cross_check=cross_check, max_rows=max_rows, alloc=alloc))


if __name__ == "__main__":  # pragma: no cover
    main()
