"""Retrain a sample of the reused runs of seeds 3-4 (trained on 36bbc7c in this environment) on the current code, as the
frontier trains them (two at once, one thread each), and compare the accuracy to the last digit. verify34.log is its
output.

    python docs/results/frontier-current/verify34.py      # from the repository root; prints one line per run
"""
import json
import random
from pathlib import Path

from verify import check  # the same job and comparison as for seeds 0-2

if __name__ == "__main__":
    HERE = Path(__file__).resolve().parent
    rows = [r for r in json.loads((HERE / "results.json").read_text()) if r["seed"] in (3, 4) and r["method"].startswith("uniform")]
    sig = {(m["task"], int(m["budget"]), m["method"]): json.loads(m["signature"]) for m in json.loads((HERE / "models.json").read_text())}
    rng = random.Random(34)
    families = {}
    for r in rows:
        families.setdefault(r["method"].split(" r=")[0].split(" p=")[0], []).append(r)
    sample = [rng.choice(families[k]) for k in rng.sample(sorted(families), 6)]  # six uniform families, one run each
    check(sample, lambda r: sig[r["task"], r["budget"], r["method"]])
