"""Shared helpers: tiny manifests built in code and a brute-force optimum."""

from __future__ import annotations

import json
import random
from pathlib import Path

import numpy as np
import pytest

from layerlens_opt.manifest import parse_manifest
from layerlens_opt.problem import Constraints, ModelOptions, build_problem

ROOT = Path(__file__).resolve().parent.parent
PROBLEMS = ROOT / "problems"
SCENARIOS = sorted((PROBLEMS / "scenarios").glob("*.json"))
ARCHITECTURES = sorted((PROBLEMS / "architectures").glob("*.json"))
PROFILED = sorted((PROBLEMS / "profiled").glob("*.json"))


def layer(name, kind="block", d_in=64, d_out=64, block=None, ge=1.0, fi=1.0, pe=1.0, **extra):
    out = {"name": name, "kind": kind, "in_features": d_in, "out_features": d_out,
           "metrics": {"gradient_energy": ge, "fisher": fi, "proxy_eval": pe}}
    if block is not None:
        out["block"] = block
    out.update(extra)
    return out


def manifest(layers, **top):
    data = {"schema_version": 1, "layers": layers}
    data.update(top)
    return data


def random_problem(seed, n_layers=4, budget=None, lo=0.7, hi=0.9, zero_gain=False, methods=("lora", "adapter", "prefix", "none"), ranks=(1, 2, 4),
                   block_size=2, **side):
    """A small random problem; ``zero_gain`` gives some layers zero utility so the floor can bind."""
    rng = random.Random(seed)
    kinds = ["attention", "mlp", "linear", "block"]
    layers = []
    for i in range(n_layers):
        d_in = rng.choice([8, 16, 24, 32])
        d_out = rng.choice([8, 16, 24, 32])
        s = 0.0 if zero_gain and rng.random() < 0.5 else rng.random() + 0.05
        layers.append(layer(f"l{i}", rng.choice(kinds), d_in, d_out, block=i // block_size, ge=s, fi=s * rng.random(), pe=s))
    if all(l["metrics"]["gradient_energy"] == 0 for l in layers):
        layers[0]["metrics"] = {"gradient_energy": 1.0, "fisher": 1.0, "proxy_eval": 1.0}
    if max(l["metrics"]["fisher"] for l in layers) == 0:
        layers[0]["metrics"]["fisher"] = 0.5
    m = parse_manifest(manifest(layers))
    opts = ModelOptions(methods=methods, ranks={m_: ranks for m_ in methods if m_ not in ("none", "ia3")})
    probe = build_problem(m, Constraints(budget=10**9), opts)
    if budget is None:
        _, top = probe.cost_range()
        budget = max(1, int(top * rng.uniform(0.3, 1.2)))
    return build_problem(m, Constraints(budget=budget, min_utilization=lo, max_utilization=hi, **side), opts)


def brute_force(problem):
    """(best objective, best choice) by enumerating every combination; (None, None) if infeasible."""
    c = problem.constraints
    tot_cost = np.zeros(1, dtype=np.int64)
    tot_gain = np.zeros(1)
    picks = [np.zeros((1, 0), dtype=np.int64)]
    combos = np.zeros((1, 0), dtype=np.int64)
    for l in range(problem.n_layers):
        opts = np.array(list(problem.options_of(l)))
        tot_cost = (tot_cost[:, None] + problem.option_cost[opts][None, :]).ravel()
        tot_gain = (tot_gain[:, None] + problem.option_gain[opts][None, :]).ravel()
        combos = np.concatenate([np.repeat(combos, len(opts), axis=0), np.tile(opts, len(combos))[:, None]], axis=1)
    ok = (tot_cost >= c.lo) & (tot_cost <= c.hi)
    if not ok.any():
        return None, None
    i = np.flatnonzero(ok)[np.argmax(tot_gain[ok])]
    return float(tot_gain[i]), tuple(int(o) for o in combos[i])


@pytest.fixture
def tmp_manifest(tmp_path):
    """Write a manifest dict to a file and return its path."""
    import json

    def write(data, name="m.json"):
        p = tmp_path / name
        p.write_text(json.dumps(data))
        return str(p)

    return write


@pytest.fixture
def generated72(tmp_path):
    """A generated 72-layer manifest (written to a file) and its suggested budget: long enough to cut a table."""
    from layerlens_opt.generate import synthetic

    data = synthetic(72, seed=0)
    path = tmp_path / "m.json"
    path.write_text(json.dumps(data))
    return path, data["model"]["suggested_budget"]


#: the tiny decoder architectures :func:`lm_dir` saves
ARCHS = ("llama", "qwen2", "gpt2")


@pytest.fixture(scope="session")
def lm_dir(tmp_path_factory):
    """Tiny LLaMA-style, Qwen2 and GPT-2 decoders saved as Hugging Face folders, with 300 rows each of text, prompt/
    completion and chat data (``text.jsonl``, ``sft.jsonl``, ``chat.jsonl``)."""
    import sys

    sys.path.insert(0, str(ROOT / "tests"))
    from tiny_models import lm_rows, save_tiny_decoder

    root = tmp_path_factory.mktemp("clm")
    for arch in ARCHS:
        save_tiny_decoder(root / arch, arch)
    for kind in ("text", "sft", "chat"):
        (root / f"{kind}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in lm_rows(kind, 300)))
    return root
