"""Command-line values with the manifest's rules: finite, non-negative, within integer range, one
documented separator; and the problem a command's options describe. One parsing layer, used by
every command (``cli.py`` is parse -> one library call -> print)."""

from __future__ import annotations

import math
import re
import time
from pathlib import Path

import click

from .errors import LayerlensError
from .methods import DEFAULT_METHODS, DEFAULT_WINDOW

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
    if not [m for m in items if m not in ("none", "-none")]:
        raise LayerlensError(f"--methods {text!r}: name at least one method that adapts a layer, e.g. --methods lora,ia3")
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


class OutputPath(click.ParamType):
    """A file the command will write: its folder exists and no folder is in the way; ``image=True``
    also wants a known image extension. Refusals are one-line errors (exit 1) before any work. That no
    output is also an input of the command is checked by :func:`refuse_inputs` and again by the writer."""

    name = "FILE"

    def __init__(self, what: str = "output", image: bool = False):
        self.what, self.image = what, image

    def convert(self, value, param, ctx):
        from .io import check_output

        if self.image:
            from .plots import check_image_path

            check_image_path(str(value))
        check_output(value, (), self.what)
        return str(value)


def refuse_inputs(outputs, inputs) -> None:
    """One-line error when an output path is also an input, or two outputs are the same file."""
    from .io import check_output

    outputs = [o for o in outputs if o]
    for path in outputs:
        check_output(path, list(inputs) + [o for o in outputs if o is not path])


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
            if key.strip() in out:
                raise LayerlensError(f"{what} names {key.strip()!r} twice; give each once (e.g. {key.strip()}=...)")
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



def parse_budgets(text: str) -> list[int]:
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
    if re.fullmatch(r"\d{1,3}(,\d{3})+", text.strip()):
        # '50,000' reads as one budget to a person and as two (50 and 0) to a list: --budget takes it as 50000,
        # so here it is refused rather than read either way
        one = text.strip().replace(",", "")
        raise LayerlensError(f"--budgets {text!r} is ambiguous: commas separate budgets here; write {one} (or "
                             f"{parse_count(one) / 1000:g}k) for one budget, or put a space after each comma for a list")
    budgets = sorted({parse_count(t, "--budgets") for t in text.split(",") if t.strip()})
    if not budgets or len(budgets) > MAX_FRONTIER_POINTS:
        raise LayerlensError(f"--budgets {text!r}: give 1 to {MAX_FRONTIER_POINTS} budgets")
    return budgets



def _collector_for_the_command() -> None:
    """Turn the cyclic garbage collector off for the rest of the running command (back on when its click context
    closes, also after an error, if it was on); outside a command (a library call) the caller's settings stay.

    A 50,000-layer manifest makes ~10^6 long-lived objects (its JSON, layers, options, the allocation's rows) and
    no reference cycles worth collecting: with Python's default thresholds the collector traversed them again and
    again (a third of the 50,000-layer solve); with thresholds raised to (100,000, 50, 1,000) it still ran 45
    times (0.09 s); refcounting frees everything a command drops, and the process ends with the command."""
    import gc

    ctx = click.get_current_context(silent=True)
    if ctx is None or not gc.isenabled():
        return
    gc.disable()
    ctx.call_on_close(gc.enable)


def warn_untrusted(manifest, path) -> None:
    """One line on stderr when the manifest's probe said it learned too little to trust: its gains are mostly noise."""
    probe = manifest.model.get("probe")
    if isinstance(probe, dict) and probe.get("trusted") is False:
        why = probe.get("warning") or "the probe learned too little to trust"
        click.echo(f"warning: {Path(path).name}: {why}", err=True)


def build_from_options(kw):
    """Manifest + options -> Problem, timed."""
    from .manifest import load_manifest
    from .problem import Constraints, ModelOptions, build_problem

    _collector_for_the_command()
    t0 = time.perf_counter()
    manifest = load_manifest(kw["manifest"])
    warn_untrusted(manifest, kw["manifest"])
    methods = parse_methods(kw["methods"]) if kw["methods"] is not None else None
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


def solve_from_options(problem, build_seconds, kw, solver=None):
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
    return alloc.replace(seconds=seconds)


def _stack(*decorators):
    """One decorator applying ``decorators`` top to bottom, as if written above the function."""

    def apply(f):
        for d in reversed(decorators):
            f = d(f)
        return f

    return apply


problem_options = _stack(  # every command that builds a problem from a manifest
        click.argument("manifest", type=click.Path(exists=True, dir_okay=False)),
        click.option("--budget", "-b", type=CountType(), required=True, help="Trainable-parameter budget: 50000, 50k, 1.2M."),
        click.option("--min-utilization", type=FiniteFloat(0, 1), default=DEFAULT_WINDOW[0], show_default=True, help="Floor of the budget window."),
        click.option("--max-utilization", type=FiniteFloat(0, 1), default=DEFAULT_WINDOW[1], show_default=True, help="Cap of the budget window."),
        click.option("--methods", default=None, help="Comma-separated methods to offer; 'none' is implied, '-none' forbids it "
                     f"[default: {','.join(DEFAULT_METHODS)}, plus every method the manifest measured (a profile's ia3)]."),
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

solver_options = _stack(
        click.option("--solver", "-s", default="auto", show_default=True, help="auto | cbc | highs | heuristic."),
        click.option("--time-limit", type=FiniteFloat(0, 1e7, lo_open=True), help="Seconds before the solver stops (reports the gap)."),
        click.option("--threads", type=click.IntRange(min=1), help="Threads for CBC/HiGHS; auto races two searches on two cores unless this is 1."),
        click.option("--no-warm-start", is_flag=True, help="Do not pass a starting allocation to CBC."),
        click.option("--no-presolve", is_flag=True, help="Give CBC/HiGHS the full model without the knapsack presolve."),
)
