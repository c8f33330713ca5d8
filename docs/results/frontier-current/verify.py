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

from layerlens_opt.methods import param_cost
from layerlens_opt.train_bench import _minilm_dims, _plan, _worker_init, train_once

DIMS = _minilm_dims()
ORDER = {name: i for i, name in enumerate(DIMS)}


def job(task: str, seed: int, signature: list) -> dict:
    """The benchmark's job for one recorded run: its allocation with the layers in model order, as the benchmark lists
    them (LoRA, adapter and prefix weights are drawn in that order)."""
    named = lambda n: n if n in DIMS else n + ".value"  # a prefix may name its attention block
    layers = [{"name": n, "method": m, "rank": k, "params": param_cost(m, k, *DIMS[named(n)])}
              for n, m, k in sorted(signature, key=lambda t: ORDER[named(t[0])])]
    return {"task": task, "seed": seed, "steps": 300, "batch_size": 32, "lr": 0.002, "device": "cpu", "signature": "x",
            "at_once": 2, "allocation": _plan(layers, "recorded")}


def check(sample: list[dict], signature) -> None:
    """Train ``sample`` (results rows) again and print each against its recorded accuracy."""
    with mp.get_context("spawn").Pool(2, initializer=_worker_init, initargs=(1,)) as pool:
        for r, out in zip(sample, pool.imap(train_once, [job(r["task"], r["seed"], signature(r)) for r in sample])):
            print(r["task"], r["budget"], r["method"], "seed", r["seed"], "recorded", r["accuracy"], "now", out["accuracy"],
                  "SAME" if out["accuracy"] == r["accuracy"] else "DIFF", flush=True)


if __name__ == "__main__":
    D = Path(__file__).resolve().parent.parent / "frontier"
    sig = {(m["task"], str(m["budget"]), m["method"]): json.loads(m["signature"])
           for m in json.loads((D / "seeds0-1" / "models.json").read_text())}
    rows = json.loads((D / "seeds0-1" / "results.json").read_text()) + json.loads((D / "seed2" / "results.json").read_text())
    rng = random.Random(7)
    by_method = {}
    for r in rows:
        by_method.setdefault(r["method"].split(" r=")[0].split(" p=")[0], []).append(r)
    check([rng.choice(v) for _, v in sorted(by_method.items())], lambda r: sig[r["task"], str(r["budget"]), r["method"]])
