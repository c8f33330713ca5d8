"""Retrain a sample of the seeds 0-2 runs recorded on bb7dd2e/49899b3 on the current code, as the frontier trains them
(two at once, one thread each), and compare the accuracy to the last digit. verify.log is its output; verify-first.log
is a first version's, stopped after 8 runs, which listed each allocation's layers in sorted order instead of the
model's (LoRA, adapter and prefix weights are drawn in that order), see hypothesis.md.

    python docs/results/frontier-current/verify.py      # from the repository root
"""
import json
import multiprocessing as mp
import random
from pathlib import Path
from layerlens_opt.train_bench import train_once, _worker_init, _minilm_dims
from layerlens_opt.inject import param_cost
DIMS = _minilm_dims()
ORDER = {name: i for i, name in enumerate(DIMS)}
D = Path(__file__).resolve().parent.parent / "frontier"
models = json.loads((D / "seeds0-1" / "models.json").read_text())
sig = {(m["task"], str(m["budget"]), m["method"]): m["signature"] for m in models}
rows = json.loads((D / "seeds0-1" / "results.json").read_text()) + json.loads((D / "seed2" / "results.json").read_text())
rng = random.Random(7)
by_method = {}
for r in rows:
    by_method.setdefault(r["method"].split(" r=")[0].split(" p=")[0], []).append(r)
sample = [rng.choice(v) for k, v in sorted(by_method.items())]
jobs = []
for r in sample:
    layers = [{"name": n, "method": m, "rank": k, "params": param_cost(m, k, *DIMS[n if n in DIMS else n + ".value"])}
              # in model order, as the benchmark's allocations list them: LoRA, adapter and prefix weights are drawn in it
              for n, m, k in sorted(json.loads(sig[(r["task"], str(r["budget"]), r["method"])]), key=lambda t: ORDER[t[0] if t[0] in ORDER else t[0] + ".value"])]
    total = sum(l["params"] for l in layers)
    jobs.append({"task": r["task"], "seed": r["seed"], "steps": 300, "batch_size": 32, "lr": 0.002, "device": "cpu", "signature": "x",
                 "at_once": 2, "allocation": {"schema_version": 1, "solver": "x", "status": "feasible", "budget": int(r["budget"]),
                                              "total_params": total, "utilization": total / int(r["budget"]), "layers": layers}})
if __name__ == "__main__":
    with mp.get_context("spawn").Pool(2, initializer=_worker_init, initargs=(1,)) as pool:
        for r, out in zip(sample, pool.imap(train_once, jobs)):
            print(r["task"], r["budget"], r["method"], "seed", r["seed"], "recorded", r["accuracy"], "now", out["accuracy"],
                  "SAME" if out["accuracy"] == r["accuracy"] else "DIFF", flush=True)
