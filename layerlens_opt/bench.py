"""Benchmark: every solver side by side on generated and shipped problems, in one run.

    python -m layerlens_opt.bench                 # full run (plain CBC at 2,000 layers takes minutes)
    python -m layerlens_opt.bench --quick         # 72/224/560 layers only, shorter limits

Prints, per problem and method: build and solve seconds, objective, bound,
gap, status, and the speed-up over plain CBC measured in the same run; then
the whole ``layerlens-opt solve`` process time (median of several runs) and
its peak memory; then side-constrained problems (method caps, tied blocks:
the knapsack path; min-methods) against CBC at 560 and 2,000 layers; then
generated problems of 10,000 and 50,000 layers (auto alone); then problems with
pairwise interaction terms (a probe manifest of MiniLM and a 560-layer problem
with pair terms inside every attention block), which ``auto`` hands to CBC; then
the generated mixture-of-experts manifests. ``--only profiling`` times
data-parallel profiling (1 process against 2 under torchrun; not in the default
run: it trains); ``--only scale`` the whole process up to 50,000 layers and on the
MoE manifests; ``--only deepening`` the core DP's step schedules on problems of seeds
the other sections do not use. Timings are of this machine at this moment: compare the ratios,
not the absolute numbers, across machines.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

from .generate import synthetic
from .manifest import load_manifest, parse_manifest
from .problem import Constraints, build_problem
from .report import table

METHODS = [
    ("heuristic", "heuristic", {}),
    ("plain CBC", "cbc", {"presolve": False, "warm_start": False}),
    ("CBC + presolve", "cbc", {}),
    ("HiGHS (gap 0)", "highs", {"presolve": False}),
    ("HiGHS + presolve", "highs", {}),
    ("auto (LP + DP core)", "auto", {}),
]


def _run(problem, solver, options):
    from .solvers import SolverOptions, solve

    t0 = time.perf_counter()
    alloc = solve(problem, solver, SolverOptions(**options))
    wall = time.perf_counter() - t0
    return alloc, wall


def compare_solvers(problems, time_limit: float, plain: bool = True):
    """Every method on every problem; ``plain=False`` skips the unpresolved CBC/HiGHS runs."""
    rows = []
    for label, problem in problems:
        plain_wall = None
        results = []
        for name, solver, options in METHODS:
            opts = dict(options)
            if solver != "heuristic":
                opts["time_limit"] = time_limit
            if not plain and options.get("presolve") is False:
                continue
            alloc, wall = _run(problem, solver, opts)
            if name == "plain CBC":
                plain_wall = wall
            results.append((name, alloc, wall))
        best = max((a.objective for _, a, _ in results if a is not None and a.objective is not None and a.ok), default=None)
        for name, alloc, wall in results:
            s = alloc.seconds
            build = s.get("build", 0.0) + s.get("presolve", 0.0)
            gap_to_best = None if alloc.objective is None or not best else (best - alloc.objective) / best
            speed = f"{plain_wall / wall:.1f}x" if plain_wall and wall > 0 else "-"
            rows.append((
                label, name, f"{build:.3f}", f"{s.get('solve', 0.0):.3f}",
                f"{alloc.objective:.6f}" if alloc.objective is not None else "-",
                f"{alloc.bound:.6f}" if alloc.bound is not None else "-",
                f"{alloc.gap:.1e}" if alloc.gap is not None else (f"({gap_to_best:.1e} to best)" if gap_to_best is not None else "-"),
                alloc.status.value, speed,
            ))
    return table(("problem", "method", "build s", "solve s", "objective", "bound", "gap", "status", "vs plain CBC"), rows,
                 "llrrrrrlr")


# VmHWM is the peak of this process's own address space; ru_maxrss would carry the
# parent's high-water mark across fork + exec on Linux and report the benchmark itself.
_MEASURE = (
    "import sys\n"
    "from layerlens_opt.cli import main\n"
    "try:\n    main(sys.argv[1:])\n"
    "except SystemExit:\n    pass\n"
    "import resource\n"
    "hwm = [l for l in open('/proc/self/status') if l.startswith('VmHWM')][0].split()[1]\n"
    "child = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss\n"
    "print('peak_kb', int(hwm) + child, file=sys.stderr)\n"
)


def process_times(files, repeats: int):
    """Wall time of the whole CLI process (start-up, imports, read, build, solve, print), its peak memory (plus that
    of ``auto``'s raced child where one ran: an upper bound, their shared pages counted twice) and the answer's status; ``files``: (label, manifest path, budget, *more solve arguments)."""
    import os

    # one untimed run first, allowed to write bytecode caches (as any install has them; a machine that sets
    # PYTHONDONTWRITEBYTECODE would otherwise compile the package from source in every timed process)
    warm_env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
    rows = []
    for label, path, budget, *more in files:
        cmd = [sys.executable, "-c", _MEASURE, "solve", str(path), "--budget", str(budget), *more]
        subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=warm_env)
        times, peaks = [], []
        for _ in range(repeats):
            t0 = time.perf_counter()
            out = subprocess.run(cmd, check=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
            times.append(time.perf_counter() - t0)
            peaks.append(int(out.stderr.rsplit("peak_kb", 1)[1].split()[0]) / 1024)
        status = next((line.split()[1] for line in out.stdout.splitlines() if line.startswith("status ")), "-")
        rows.append((label, f"{statistics.median(times):.3f}", f"{min(times):.3f}", f"{max(peaks):.0f}", status))
    return table(("problem", "median s", "min s", "peak MB", "status"), rows, "lrrrl")


#: the regex that ties every block's experts per projection in the generated MoE manifests
MOE_TIES = r"layers\.(\d+)\.(?:mlp|block_sparse_moe)\.experts\.\d+\.(\w+)"


def scale(repeats: int, time_limit: float):
    """The whole process from 72 to 50,000 layers and on the MoE manifests, tied and untied."""
    from .generate import MOE_ARCHITECTURES, architecture

    tmp = Path(tempfile.mkdtemp(prefix="layerlens-scale-"))
    limit = ("--time-limit", str(time_limit))
    files = []
    for n in (72, 560, 2000, 10_000, 50_000):
        path = tmp / f"synthetic-{n}.json"
        data = synthetic(n, seed=0)
        path.write_text(json.dumps(data))
        files.append((f"synthetic {n:,}", path, data["model"]["suggested_budget"], *limit))
    for key in MOE_ARCHITECTURES:
        path = tmp / f"{key}.json"
        data = architecture(key)
        path.write_text(json.dumps(data))
        budget = data["model"]["suggested_budget"]
        files.append((f"{key} untied", path, budget, *limit))
        files.append((f"{key} tied experts", path, budget, *limit, "--tie-groups", MOE_TIES))
    return process_times(files, repeats)


def profiling_processes(processes=(1, 2)):
    """Wall time of profiling MiniLM on the pairs task with 1 process and under torchrun with N (gloo on CPU),
    both signals; each process gets cores / N threads, so the processes share the same cores."""
    import os
    import shutil

    torchrun = shutil.which("torchrun")
    if torchrun is None:
        return "torchrun not found: install the torch extra"
    tmp = Path(tempfile.mkdtemp(prefix="layerlens-dist-"))
    data = tmp / "pairs.jsonl"
    subprocess.run([sys.executable, "-m", "layerlens_opt.cli", "data", "pairs", "-o", str(data)], check=True, stdout=subprocess.DEVNULL)
    cores = os.cpu_count() or 1
    signals = [("first-order", ["-S", "first-order", "--batches", "8"]),
               ("probe", ["-S", "probe", "--probe-steps", "50", "--held-out", "256"])]
    rows, manifests, losses = [], {}, {}
    for signal, extra in signals:
        for n in processes:
            env = {**os.environ, "OMP_NUM_THREADS": str(max(1, cores // n))}
            out = tmp / f"{signal}-{n}.json"
            args = ["--model", "minilm", "--data", str(data), *extra, "-o", str(out), "--quiet"]
            cmd = ([sys.executable, "-m", "layerlens_opt.profiling"] if n == 1 else
                   [torchrun, "--nproc_per_node", str(n), "--master_port", str(29600 + n), "-m", "layerlens_opt.profiling"])
            t0 = time.perf_counter()
            subprocess.run(cmd + args, check=True, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            seconds = time.perf_counter() - t0
            written = json.loads(out.read_text())
            manifests[signal, n] = {l["name"]: l["metrics"] for l in written["layers"]}
            if n == processes[0]:  # the held-out loss the loss drops are differences of (the test's unit for them)
                losses[signal] = (written["model"]["probe"] if signal == "probe" else written["model"])["held_out_loss"]
            drop = "probe_loss_drop" if signal == "probe" else "proxy_eval"
            worst, in_loss = manifest_differences(manifests[signal, processes[0]], manifests[signal, n], drop, losses[signal])
            one = next((r[3] for r in rows if r[0] == signal and r[1] == processes[0]), seconds)
            rows.append((signal, n, max(1, cores // n), seconds, one / seconds, worst, in_loss))
    return table(("signal", "processes", "threads each", "wall s", "speed-up vs 1 process", "max diff / metric scale",
                  "loss drops' max diff / held-out loss"),
                 [(s_, n, t, f"{w:.1f}", f"{x:.2f}x", f"{d:.1e}", f"{e:.1e}") for s_, n, t, w, x, d, e in rows], "lrrrrrr")


def manifest_differences(base: dict, other: dict, drop: str, held_out_loss: float) -> tuple[float, float]:
    """How far ``other``'s per-layer metrics ({layer: {metric: value}}) lie from ``base``'s: the largest difference
    of any metric over the layers relative to that metric's largest magnitude in ``base`` (1 where it is 0), and the
    largest difference of the loss drop ``drop`` in units of the held-out loss (the 2-process test's measure)."""
    missing = sorted(set(base) ^ set(other))
    if missing:
        raise ValueError(f"the manifests profile different layers (e.g. {missing[0]})")
    scale = {k: max(abs(m[k]) for m in base.values()) or 1.0 for k in next(iter(base.values()))}
    worst = max(abs(v - base[name][k]) / scale[k] for name, metrics in other.items() for k, v in metrics.items())
    in_loss = max(abs(m[drop] - base[name][drop]) for name, m in other.items()) / held_out_loss
    return worst, in_loss


def side_constrained(problems, time_limit: float):
    """Method caps, tied blocks and min-methods: auto (the knapsack path, CBC where it cannot prove) against CBC."""
    rows = []
    for label, problem in problems:
        c = problem.constraints
        variants = [
            ("method caps (lora <= 25% of layers)", replace(c, method_caps=(("lora", problem.n_layers // 4),))),
            ("method caps (adapter <= 6)", replace(c, method_caps=(("adapter", 6),))),
            ("two caps (adapter <= 6, lora <= 25%)", replace(c, method_caps=(("adapter", 6), ("lora", problem.n_layers // 4)))),
            ("tied blocks", replace(c, tie_blocks=True)),
            ("tied blocks + adapter <= 6", replace(c, tie_blocks=True, method_caps=(("adapter", 6),))),
            ("min 3 methods", replace(c, min_methods=3)),
        ]
        for name, constraints in variants:
            p = problem.with_constraints(constraints)
            alloc, wall = _run(p, "auto", {"time_limit": time_limit})
            cbc, cbc_wall = _run(p, "cbc", {"time_limit": time_limit})
            same = "-" if alloc.objective is None or cbc.objective is None else f"{alloc.objective - cbc.objective:+.1e}"
            rows.append((label, name, alloc.solver, f"{wall:.2f}", alloc.status.value, f"{alloc.gap:.1e}" if alloc.gap is not None else "-",
                         "yes" if not alloc.violations else "NO", f"{cbc_wall:.2f}", cbc.status.value, same))
    return table(("problem", "constraint", "answered by", "wall s", "status", "gap", "constraints hold",
                  "CBC s", "CBC status", "auto - CBC"), rows, "lllrlrlrlr")


def large(sizes, time_limit: float):
    """auto alone on large generated problems (plain CBC would not finish), with the build time."""
    rows = []
    for n in sizes:
        data = synthetic(n, seed=0)
        t0 = time.perf_counter()
        problem = build_problem(parse_manifest(data), Constraints(budget=data["model"]["suggested_budget"]))
        build = time.perf_counter() - t0
        alloc, wall = _run(problem, "auto", {"time_limit": time_limit})
        why = next((n_ for n_ in alloc.notes if n_.startswith("auto:")), "")
        rows.append((f"synthetic {n:,}", f"{build:.2f}", alloc.solver, f"{wall:.2f}", alloc.status.value,
                     f"{alloc.gap:.1e}" if alloc.gap is not None else "-", why[:90]))
    return table(("problem", "build s", "answered by", "solve s", "status", "gap", "why CBC"), rows, "lrlrlrl")


def synthetic_with_pairs(n_layers: int, seed: int = 0, every_layer: bool = False) -> dict:
    """:func:`synthetic` plus an ``either`` pair term between every two attention projections of a
    block (mostly redundant: values ~ N(-0.3, 0.3) x the smaller layer's metric, as the probe measures).
    ``every_layer``: shaped like the probe's manifests instead -- every two of a block's 7 projections (21 pairs a
    block) and the methods the probe measures on a decoder (lora, ia3, adapter, none)."""
    import itertools
    import random

    data = synthetic(n_layers, seed)
    rng = random.Random(f"pairs:{n_layers}:{seed}:{every_layer}")
    metric = next(iter(data["layers"][0]["metrics"]))
    by_block: dict = {}
    for layer in data["layers"]:
        if every_layer or layer["kind"] == "attention":
            by_block.setdefault(layer.get("block"), []).append(layer)
        if every_layer:
            layer["allowed_methods"] = ["lora", "ia3", "adapter", "none"]
    pairs = [{"layers": [a["name"], b["name"]], "value": rng.gauss(-0.3, 0.3) * min(a["metrics"][metric], b["metrics"][metric]),
              "when": "either"} for members in by_block.values() for a, b in itertools.combinations(members, 2)]
    data["schema_version"] = 2
    data["interactions"] = {"metric": metric, "pairs": pairs}
    return data


def with_pairs(time_limit: float, repeats: int = 3):
    """Problems with pair terms: auto (each block of layers joined by pairs one choice among its Pareto points) against
    CBC on the full model, in process; then the whole `solve` process on probe-shaped decoders of 80 and 126 blocks."""
    problems = []
    probe = Path(__file__).resolve().parent.parent / "problems" / "profiled" / "minilm-emotion-probe.json"
    if probe.exists():
        for budget in (9216, 41472):
            problems.append((f"MiniLM probe, {budget:,}", build_problem(load_manifest(probe), Constraints(budget, 0.9, 1.0))))
    for n in (224, 560):
        data = synthetic_with_pairs(n)
        problems.append((f"synthetic {n} + attention pairs", build_problem(parse_manifest(data), Constraints(data["model"]["suggested_budget"]))))
    for blocks in (24, 80, 126):
        data = synthetic_with_pairs(7 * blocks, every_layer=True)
        problems.append((f"probe-shaped {blocks} blocks", build_problem(parse_manifest(data), Constraints(data["model"]["suggested_budget"]))))
    rows = []
    for label, problem in problems:
        fast, wall = _run(problem, "auto", {"time_limit": time_limit})
        cbc, cbc_wall = _run(problem, "cbc", {"time_limit": time_limit})
        same = fast.objective is not None and cbc.objective is not None and \
            abs(fast.objective - cbc.objective) <= 1e-7 * max(1.0, abs(cbc.objective))
        rows.append((label, f"{problem.n_layers}", f"{len(problem.pairs)}", f"{wall:.2f}", fast.status.value, fast.solver,
                     f"{cbc_wall:.2f}", cbc.status.value, f"{cbc_wall / wall:.0f}x" if wall > 0 else "-",
                     "yes" if same else ("-" if cbc.status.value != "optimal" else "NO")))
    body = table(("problem", "layers", "pair terms", "auto s", "status", "answered by", "CBC s", "CBC status", "CBC / auto",
                  "same objective"), rows, "lrrrllrlrl")
    tmp = Path(tempfile.mkdtemp(prefix="layerlens-bench-pairs-"))
    files = []
    for blocks in (80, 126):
        data = synthetic_with_pairs(7 * blocks, every_layer=True)
        path = tmp / f"probe-shaped-{blocks}.json"
        path.write_text(json.dumps(data))
        files.append((f"probe-shaped {blocks} blocks, auto", path, data["model"]["suggested_budget"]))
        files.append((f"probe-shaped {blocks} blocks, --time-limit 1", path, data["model"]["suggested_budget"], "--time-limit", "1"))
    return body + f"\n\nwhole `layerlens-opt solve` process, {repeats} runs each:\n\n" + process_times(files, repeats)


def moe(time_limit: float):
    """The generated MoE manifests, with every block's experts tied per projection, without ties, and with each block
    held to one method (``--tie-blocks``: blocks of hundreds of layers)."""
    from .generate import MOE_ARCHITECTURES, architecture

    rows = []
    for key in MOE_ARCHITECTURES:
        data = architecture(key)
        manifest = parse_manifest(data)
        for label, regex, blocks in (("tied experts", MOE_TIES, False), ("untied", None, False), ("tied blocks", None, True)):
            t0 = time.perf_counter()
            problem = build_problem(manifest, Constraints(data["model"]["suggested_budget"], tie_groups=regex, tie_blocks=blocks))
            alloc, wall = _run(problem, "auto", {"time_limit": time_limit})
            rows.append((key, label, f"{len(manifest.layers):,}", f"{problem.n_layers:,}", f"{time.perf_counter() - t0:.2f}",
                         alloc.status.value, f"{alloc.gap:.1e}" if alloc.gap is not None else "-", alloc.solver))
    return table(("model", "groups", "layers", "problem layers", "build+solve s", "status", "gap", "solver"), rows, "llrrrlrl")


def deepening_schedules(repeats: int = 2, sizes=(2000, 5000, 10_000, 20_000), seeds=(1, 2, 3, 4), moe: bool = True):
    """The core DP's deepening with its fourfold step after a fruitless round against twofold steps only, on
    problems no other section uses (generated seeds 1-4, MoE seeds 1-2, tied and untied): DP seconds (best of
    ``repeats``, one process, after the same presolve) and whether both prove the same optimum."""
    from .generate import MOE_ARCHITECTURES, architecture
    from .solvers import mckp

    problems = [(f"synthetic {n:,} seed {seed}", _generated(n, seed)[1]) for n in sizes for seed in seeds]
    for key in MOE_ARCHITECTURES if moe else ():
        for seed in (1, 2):
            data = architecture(key, seed=seed)
            manifest, budget = parse_manifest(data), data["model"]["suggested_budget"]
            problems.append((f"{key} seed {seed} untied", build_problem(manifest, Constraints(budget))))
            problems.append((f"{key} seed {seed} tied experts", build_problem(manifest, Constraints(budget, tie_groups=MOE_TIES))))
    rows, totals = [], [0.0, 0.0]
    for label, problem in problems:
        pre = mckp.presolve(problem)
        seconds, values = [], []
        for step in (mckp.DEEPENING_MISS_STEP, 2):
            best = math.inf
            for _ in range(repeats):
                t0 = time.perf_counter()
                core, _ = mckp.solve_deepening(problem, pre, miss_step=step)
                best = min(best, time.perf_counter() - t0)
            seconds.append(best)
            values.append(core.value)
        totals = [a + b for a, b in zip(totals, seconds)]
        same = values[0] is not None and values[1] is not None and abs(values[0] - values[1]) <= 1e-9 * max(1.0, abs(values[1]))
        rows.append((label, f"{seconds[0]:.3f}", f"{seconds[1]:.3f}", f"{seconds[1] / seconds[0]:.2f}x", "yes" if same else "NO"))
    rows.append(("all", f"{totals[0]:.2f}", f"{totals[1]:.2f}", f"{totals[1] / totals[0]:.2f}x", ""))
    step = f"x{mckp.DEEPENING_MISS_STEP:g}"
    return table(("problem", f"{step} after a miss s", "x2 only s", f"x2 / {step}", "same optimum"), rows, "lrrrl")


def _generated(n: int, seed: int = 0):
    """A generated problem of ``n`` layers at its suggested budget: (manifest data, problem)."""
    data = synthetic(n, seed=seed)
    return data, build_problem(parse_manifest(data), Constraints(budget=data["model"]["suggested_budget"]))


def _show(title: str, body: str, first: bool = False) -> None:
    print(("" if first else "\n") + f"# {title}\n", flush=True)
    print(body, flush=True)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(prog="python -m layerlens_opt.bench", description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", default="72,224,560,2000", help="generated problem sizes (layers)")
    parser.add_argument("--quick", action="store_true", help="sizes up to 560 and a 30 s limit")
    parser.add_argument("--time-limit", type=float, default=120.0, help="per solver and problem")
    parser.add_argument("--repeats", type=int, default=5, help="process-time repetitions")
    parser.add_argument("--no-shipped", action="store_true", help="skip problems/architectures")
    parser.add_argument("--only", choices=["pairs", "moe", "side", "large", "scale", "profiling", "deepening"],
                        help="run one section only (profiling: 1 vs 2 processes; scale: the whole process up to 50,000 layers and "
                             "on the MoE manifests; deepening: the DP's step schedules on held-out seeds; none of these three "
                             "is in the default run)")
    args = parser.parse_args(argv)
    sizes = [int(s) for s in args.sizes.split(",")]
    if args.quick:
        sizes = [s for s in sizes if s <= 560]
        args.time_limit = min(args.time_limit, 30.0)
    limit = args.time_limit
    # the sections after the solver comparison: name -> (title, the table); the full run shows side, large, pairs, moe
    sections = {
        "side": (f"side constraints: auto (knapsack path; CBC where it cannot prove) against CBC (limit {limit:g} s)",
                 lambda: side_constrained([(f"synthetic {n}", _generated(n)[1]) for n in (560, 2000) if n in sizes], limit)),
        "large": (f"large generated problems, auto only (limit {limit:g} s)", lambda: large([10_000, 50_000], limit)),
        "pairs": (f"pairwise interaction terms: auto against CBC (limit {limit:g} s)", lambda: with_pairs(limit, min(args.repeats, 3))),
        "moe": (f"mixture-of-experts manifests (generated; time limit {limit:g} s)", lambda: moe(limit)),
        "scale": (f"whole `layerlens-opt solve` process at scale, {min(args.repeats, 3)} runs each (time limit 60 s)",
                  lambda: scale(min(args.repeats, 3), 60.0)),
        "profiling": ("data-parallel profiling: MiniLM, pairs task, one process vs torchrun (gloo)", profiling_processes),
        "deepening": ("the core DP's deepening: fourfold step after a fruitless round vs twofold only (held-out seeds; DP seconds)",
                      deepening_schedules),
    }
    if args.only:
        title, run = sections[args.only]
        _show(title, run(), first=True)
        return

    generated, shipped_problems = [], []
    tmp = Path(tempfile.mkdtemp(prefix="layerlens-bench-"))
    files = []
    for n in sizes:
        data, problem = _generated(n)
        generated.append((f"synthetic {n}", problem))
        path = tmp / f"synthetic-{n}.json"
        path.write_text(json.dumps(data))
        files.append((f"synthetic {n}", path, data["model"]["suggested_budget"]))
    shipped = Path(__file__).resolve().parent.parent / "problems" / "architectures"
    if not args.no_shipped and shipped.is_dir():
        for path in sorted(shipped.glob("*.json")):
            budget = json.loads(path.read_text())["model"]["suggested_budget"]
            shipped_problems.append((path.stem, build_problem(load_manifest(path), Constraints(budget=budget))))

    _show(f"generated problems: solvers side by side (time limit {limit:g} s each)", compare_solvers(generated, limit), first=True)
    if shipped_problems:
        _show("shipped problems/architectures at their suggested budgets (presolved and exact methods)",
              compare_solvers(shipped_problems, limit, plain=False))
    _show(f"whole `layerlens-opt solve` process, {args.repeats} runs each", process_times(files, args.repeats))
    for name in ("side", "large", "pairs", "moe"):
        if name == "side" and not any(n in sizes for n in (560, 2000)) or name == "large" and args.quick:
            continue
        title, run = sections[name]
        _show(title, run())


if __name__ == "__main__":  # pragma: no cover
    main()
