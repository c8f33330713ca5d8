"""What the default profile costs next to one training run of the benchmark, each alone on the machine.

``python -m layerlens_opt.train_bench --cost`` runs, per task and one after the other (never two at once, every
thread of the machine each): the default ``profile`` (the all-method probe with gradient measuring, from loading the
model to the manifest) and one 300-step training run of the benchmark (uniform LoRA on q,v at r=1, seed 0). The run
is timed two ways: its training steps alone (the benchmark's "seconds/run") and the whole run (loading the model,
training, scoring the test split). The table gives the profile in runs of each kind.

Why a mode of its own: the frontier trains two runs at once with one thread each and profiles alone with every
thread, so its seconds cannot be set against each other; this mode measures both under the same conditions.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

#: the training run the profile is priced against: a cheap, common baseline that fits the 9,216 budget
RUN_LABEL, RUN_BUDGET = "uniform LoRA q,v r=1", 9216


def measure(task: str, out: Path, args, probe=None, train=None) -> dict:
    """Time the default profile and one training run of ``task`` (``probe``/``train`` stand in for the real ones in
    tests); returns one row of the cost table."""
    import torch

    from .profiling.method_probe import MethodProbeConfig, method_probe
    from .train_bench import _minilm_dims, train_once, train_split, uniform_baselines

    probe, train = probe or method_probe, train or train_once
    data = train_split(task, out)
    allocation = dict(uniform_baselines(_minilm_dims(), RUN_BUDGET))[RUN_LABEL]
    config = MethodProbeConfig(device=args.device, progress=not args.quiet, lr=args.lr, max_steps=args.probe_steps)
    t0 = time.perf_counter()
    manifest = probe("minilm", str(data), config)
    profile_seconds = time.perf_counter() - t0
    p = manifest["model"]["probe"]
    job = {"task": task, "seed": 0, "allocation": allocation, "steps": args.steps, "batch_size": args.batch_size, "lr": args.lr,
           "device": args.device, "signature": RUN_LABEL}
    t0 = time.perf_counter()
    run = train(job)
    whole = time.perf_counter() - t0
    return {"task": task, "threads": torch.get_num_threads(), "profile_seconds": round(profile_seconds, 2),
            "probe_steps": p["steps"], "max_steps": p["max_steps"], "held_out_passes": p["held_out_passes"], "trusted": p["trusted"],
            "seconds_training": p["seconds_training"], "seconds_measuring": p["seconds_measuring"],
            "run_training_seconds": round(run["seconds"], 2), "run_whole_seconds": round(whole, 2), "run_accuracy": run["accuracy"]}


def table(rows: list[dict], steps: int) -> str:
    """The cost table: the profile's seconds, and in training runs of each kind."""
    md = ["| task | default profile (s) | probe steps | held-out passes | trusted | one run: training steps (s) | "
          "one run: load, train, score (s) | profile / run training | profile / whole run |",
          "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        md.append(f"| {r['task']} | {r['profile_seconds']:.1f} | {r['probe_steps']} of {r['max_steps']} | {r['held_out_passes']} | "
                  f"{'yes' if r['trusted'] else 'no'} | {r['run_training_seconds']:.1f} | {r['run_whole_seconds']:.1f} | "
                  f"{r['profile_seconds'] / r['run_training_seconds']:.2f} | {r['profile_seconds'] / r['run_whole_seconds']:.2f} |")
    threads = sorted({r["threads"] for r in rows})
    md.append("")
    md.append(f"Each alone on the machine, one after the other, {'/'.join(map(str, threads))} thread(s) each; the run is "
              f"{RUN_LABEL} at {RUN_BUDGET:,}, {steps} steps, seed 0; the profile runs from loading the model to its manifest.")
    return "\n".join(md) + "\n"


def main(args, tasks: list[str], probe=None, train=None) -> list[dict]:
    """Measure every task, write ``cost.json`` and ``cost.md`` to ``args.out``, print the table."""
    import torch

    from .train_bench import environment, environment_line

    torch.set_num_threads(args.threads)
    rows = [measure(task, args.out, args, probe, train) for task in tasks]
    env = environment()
    text = table(rows, args.steps) + "\n" + environment_line(env) + "\n"
    (args.out / "cost.json").write_text(json.dumps({"rows": rows, "environment": env}, indent=1) + "\n")
    (args.out / "cost.md").write_text(text)
    print(text)
    return rows
