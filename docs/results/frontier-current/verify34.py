"""Retrain a sample of the reused runs of seeds 3-4 (trained on 36bbc7c in this environment) on the current code, as the
frontier trains them (two at once, one thread each), and compare the accuracy to the last digit.

    python docs/results/frontier-current/verify34.py      # from the repository root; prints one line per run
"""
import json
import multiprocessing as mp
import random
from pathlib import Path

from layerlens_opt.inject import param_cost
from layerlens_opt.train_bench import _minilm_dims, _worker_init, train_once

HERE = Path(__file__).resolve().parent
DIMS = _minilm_dims()
ORDER = {name: i for i, name in enumerate(DIMS)}
rows = [r for r in json.loads((HERE / "results.json").read_text()) if r["seed"] in (3, 4) and r["method"].startswith("uniform")]
signature = {(m["task"], int(m["budget"]), m["method"]): json.loads(m["signature"]) for m in json.loads((HERE / "models.json").read_text())}
rng = random.Random(34)
families = {}
for r in rows:
    families.setdefault(r["method"].split(" r=")[0].split(" p=")[0], []).append(r)
sample = [rng.choice(families[k]) for k in rng.sample(sorted(families), 6)]  # six uniform families, one run each


def job(r):
    layers = [{"name": n, "method": m, "rank": k, "params": param_cost(m, k, *DIMS[n if n in DIMS else n + ".value"])}
              # in model order, as the benchmark's allocations list them: LoRA, adapter and prefix weights are drawn in it
              for n, m, k in sorted(signature[r["task"], r["budget"], r["method"]], key=lambda t: ORDER[t[0] if t[0] in ORDER else t[0] + ".value"])]
    total = sum(l["params"] for l in layers)
    return {"task": r["task"], "seed": r["seed"], "steps": 300, "batch_size": 32, "lr": 0.002, "device": "cpu", "signature": "x",
            "at_once": 2, "allocation": {"schema_version": 1, "solver": "x", "status": "feasible", "budget": r["budget"],
                                         "total_params": total, "utilization": total / r["budget"], "layers": layers}}


if __name__ == "__main__":
    with mp.get_context("spawn").Pool(2, initializer=_worker_init, initargs=(1,)) as pool:
        for r, out in zip(sample, pool.imap(train_once, [job(r) for r in sample])):
            print(r["task"], r["budget"], r["method"], "seed", r["seed"], "recorded", r["accuracy"], "now", out["accuracy"],
                  "SAME" if out["accuracy"] == r["accuracy"] else "DIFF", flush=True)
