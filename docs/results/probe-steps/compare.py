"""Other default probes (100 and 125 steps; shrunk values at 125 and 200) against the 200-step one, and each against the
best uniform of the frontier.

    python docs/results/probe-steps/compare.py

Reads the uniform baselines of the current frontier (docs/results/frontier-current/results.json: the same training
code, environment and seeds as these arms) and the ILP (probe) runs of f100/, f125/, s125/, s200/ and f200b/ here (an
arm whose folder is missing is left out), and prints the tables docs/benchmarks.md quotes.
"""

import json
import statistics
from pathlib import Path

from layerlens_opt.train_bench import goal_table, summarize, versus_best_uniform

HERE = Path(__file__).resolve().parent
FRONTIER = HERE.parent / "frontier-current"
FULL = "ILP (probe, 200 steps)"
#: label -> (folder, short name in the tables)
ARMS = {"ILP (probe, 100 steps)": (HERE / "f100", "100 steps"), "ILP (probe, 125 steps)": (HERE / "f125", "125 steps"),
        "ILP (probe, 125 steps, shrunk)": (HERE / "s125", "125 shrunk"), "ILP (probe, 200 steps, shrunk)": (HERE / "s200", "200 shrunk"),
        FULL: (HERE / "f200b", "200 steps")}
ARMS = {label: arm for label, arm in ARMS.items() if (arm[0] / "results.json").exists()}
TASKS = ("pairs", "emotion", "frequency")

results = [r for r in json.loads((FRONTIER / "results.json").read_text()) if r["method"].startswith("uniform")]
for label, (folder, _) in ARMS.items():
    results += [dict(r, method=label) for r in json.loads((folder / "results.json").read_text()) if r["method"] == "ILP (probe)"]
rows = summarize(results)
diffs = versus_best_uniform(rows)
print("\n".join(goal_table(rows)))

by = {(r[0], r[1], r[2]): r for r in rows}
for short in ARMS:
    if short == FULL:
        continue
    steps = ARMS[short][1]
    print(f"\n### {steps} against 200 steps\n")
    print(f"| task | budget | best uniform | its accuracy | 200 steps: accuracy | vs best uniform, per seed | {steps}: vs best uniform "
          f"| {steps} - 200 steps, per seed |")
    print("|---|---|---|---|---|---|---|---|")
    dev, held, cells = [], [], {}
    for task in TASKS:
        for budget in sorted({r[1] for r in rows if r[0] == task}):
            uniforms = [r for r in rows if r[0] == task and r[1] == budget and r[2].startswith("uniform")]
            best = max(uniforms, key=lambda r: r[4])
            a, b = by[task, budget, FULL], by[task, budget, short]
            vs_best = [100 * (x - y) for x, y in zip(a[7], best[7])]
            per = [100 * (x - y) for x, y in zip(b[7], a[7])]
            (held if task == "frequency" else dev).append(statistics.mean(per))
            cells.setdefault(task, []).append(statistics.mean(per))
            print(f"| {task} | {budget:,} | {best[2]} | {100 * best[4]:.1f}% ± {100 * best[5]:.1f} | {100 * a[4]:.1f}% ± {100 * a[5]:.1f} | "
                  f"{diffs[task, budget, FULL]:+.1f} ({', '.join(f'{x:+.1f}' for x in vs_best)}) | {diffs[task, budget, short]:+.1f} | "
                  f"{statistics.mean(per):+.1f} ({', '.join(f'{x:+.1f}' for x in per)}) |")
    print(f"\n{steps} - 200 steps over the development cells (pairs, emotion): mean {statistics.mean(dev):+.2f}, worst cell {min(dev):+.2f}; "
          + "; ".join(f"{t} alone: mean {statistics.mean(v):+.2f}, worst cell {min(v):+.2f}" for t, v in cells.items()))

# the ILP with the probe's pair terms (--interactions, opt-in): the 200-step probe's (the frontier) and the shrunk
# 125-step probe's (s125-pairs/); its pair terms are exact ablations, not shrunk
PAIRS = {"ILP (probe + pairs), 200 steps": FRONTIER, "ILP (probe + pairs), 125 shrunk": HERE / "s125-pairs"}
paired = [r for r in json.loads((FRONTIER / "results.json").read_text()) if r["method"].startswith("uniform")]
for label, folder in PAIRS.items():
    if (folder / "results.json").exists():
        paired += [dict(r, method=label) for r in json.loads((folder / "results.json").read_text()) if r["method"] == "ILP (probe + pairs)"]
print("\n### with pair terms\n")
print("\n".join(goal_table(summarize(paired))))

# fidelity of the current default probe (125 steps, shrunk): Spearman of what it predicts for every contender's
# allocation (s125/models.json holds its prediction for all of them) against their measured accuracy: the frontier's
# runs for the contenders that do not use this probe, s125/ and s125-pairs/ for the two that do
from layerlens_opt.train_bench import fidelity  # noqa: E402

if (HERE / "s125" / "results.json").exists() and (HERE / "s125-pairs" / "results.json").exists():
    runs = [r for r in json.loads((FRONTIER / "results.json").read_text()) if not r["method"].startswith("ILP (probe")]
    runs += [r for r in json.loads((HERE / "s125" / "results.json").read_text()) if r["method"] == "ILP (probe)"]
    runs += [r for r in json.loads((HERE / "s125-pairs" / "results.json").read_text()) if r["method"] == "ILP (probe + pairs)"]
    models = json.loads((HERE / "s125" / "models.json").read_text())
    fid = fidelity(summarize(runs), models)
    print("\n### fidelity of the default probe (125 steps, shrunk): Spearman(predicted objective, accuracy) over every contender and budget\n")
    print("| task | probe | probe + pairs |\n|---|---|---|")
    for task, per in fid.items():
        print(f"| {task} | " + " | ".join("-" if per[n] is None else f"{per[n]:+.2f}" for n in ("probe", "probe+pairs")) + " |")
