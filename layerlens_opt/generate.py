"""Manifests to solve straight away: the predecessor's scenarios, real architectures' shapes, synthetic scale problems.

Run ``python -m layerlens_opt.generate problems/`` (or ``python problems/generate.py``)
to rebuild everything under ``problems/``; ``python -m layerlens_opt.generate --help``
shows how to make a custom architecture.

Metric values are invented, not measured (see problems/README.md): each layer
gets a latent sensitivity ``s`` (the pattern a scenario is named after), and
its three metrics are noisy, differently-scaled functions of ``s`` —
``gradient_energy ~ 0.01 s``, ``fisher ~ 1e-4 s^1.2``, ``proxy_eval ~ 0.02 s`` —
with ``metadata.gradient_norms = sqrt(gradient_energy)`` and
``metadata.fisher_traces = fisher``, so the validation correlations mean
something.
"""

from __future__ import annotations

import argparse
import math
import random
from dataclasses import dataclass
from pathlib import Path

from .manifest import DEFAULT_METRIC_WEIGHTS, SEPARABLE_SCHEMA_VERSION

SCENARIOS = (
    "default-uniform",
    "high-budget-uniform",
    "early-sensitive",
    "late-sensitive",
    "lora-cheap",
    "utility-focused",
    "random-sensitivity",
)


def _metrics(s: float, rng: random.Random, noise: float = 0.05) -> dict[str, float]:
    def jitter() -> float:
        return math.exp(rng.gauss(0.0, noise))

    return {
        "gradient_energy": 0.01 * s * jitter(),
        "fisher": 1e-4 * s**1.2 * jitter(),
        "proxy_eval": 0.02 * s * jitter(),
    }


def _manifest(model: dict, layers: list[dict]) -> dict:
    return {
        "schema_version": SEPARABLE_SCHEMA_VERSION,
        "model": model,
        "metric_weights": dict(DEFAULT_METRIC_WEIGHTS),
        "layers": layers,
        "metadata": {
            "gradient_norms": {l["name"]: math.sqrt(l["metrics"]["gradient_energy"]) for l in layers},
            "fisher_traces": {l["name"]: l["metrics"]["fisher"] for l in layers},
        },
    }


def scenario(name: str, seed: int = 0, blocks: int = 12, hidden: int = 768) -> dict:
    """One of the predecessor's seven scenarios: ``blocks`` whole transformer blocks of width ``hidden``."""
    if name not in SCENARIOS:
        raise ValueError(f"unknown scenario {name!r}; choose from {', '.join(SCENARIOS)}")
    rng = random.Random(f"{name}:{seed}")
    depth = [i / (blocks - 1) for i in range(blocks)]
    curves = None
    if name in ("default-uniform", "high-budget-uniform"):
        # nearly flat: +-5% around 1 (a real profile is never exactly flat)
        sens = [1.0 + 0.05 * rng.uniform(-1, 1) for _ in depth]
    elif name == "early-sensitive":
        sens = [0.15 + math.exp(-3.0 * d) for d in depth]
    elif name == "late-sensitive":
        sens = [0.15 + math.exp(-3.0 * (1 - d)) for d in depth]
    elif name == "lora-cheap":
        # LoRA captures most of each block's signal at low rank (measured-style curves)
        sens = [0.5 + 0.5 * rng.random() for _ in depth]
        curves = {"lora": {"1": 0.45, "2": 0.66, "4": 0.82, "8": 0.91, "16": 0.96, "32": 0.98, "64": 0.99}}
    elif name == "utility-focused":
        hot = set(rng.sample(range(blocks), 3))
        sens = [1.0 if i in hot else 0.08 + 0.04 * rng.random() for i in range(blocks)]
    else:  # random-sensitivity
        sens = [math.exp(rng.gauss(0.0, 0.8)) for _ in depth]
    layers = []
    for i, s in enumerate(sens):
        layer = {
            "name": f"encoder.layer.{i}",
            "kind": "block",
            "in_features": hidden,
            "out_features": hidden,
            "block": i,
            "metrics": _metrics(s, rng),
        }
        if curves:
            layer["gain_curves"] = curves
        layers.append(layer)
    if name == "high-budget-uniform":
        # the same flat profile, metrics on a 1000x larger scale: normalisation must not care
        for layer in layers:
            layer["metrics"] = {k: v * 1000 for k, v in layer["metrics"].items()}
    model = {"name": f"scenario-{name}", "num_parameters": blocks * 12 * hidden * hidden, "suggested_budget": 50000,
             "hidden_size": hidden}
    if name == "high-budget-uniform":
        model["note"] = "also meant for large budgets, e.g. --budget 200k"
    return _manifest(model, layers)


@dataclass(frozen=True)
class Architecture:
    """A transformer's published shape. ``style`` picks module names: bert, vit, gpt2, llama, and the
    mixture-of-experts styles mixtral, qwen3-moe and deepseek-v3 (``experts`` routed experts per block,
    ``expert_intermediate`` their width; deepseek-v3's MLA attention and dense first blocks are built in)."""

    name: str
    style: str
    blocks: int
    hidden: int
    intermediate: int
    heads: int
    kv_heads: int | None = None
    num_parameters: int = 0
    suggested_budget: int = 50000
    experts: int = 0
    expert_intermediate: int = 0
    head_dim: int | None = None


ARCHITECTURES = {
    "bert-base": Architecture("bert-base-uncased", "bert", 12, 768, 3072, 12, num_parameters=109_482_240, suggested_budget=50_000),
    "gpt2-small": Architecture("gpt2", "gpt2", 12, 768, 3072, 12, num_parameters=124_439_808, suggested_budget=50_000),
    "roberta-large": Architecture("roberta-large", "roberta", 24, 1024, 4096, 16, num_parameters=355_359_744, suggested_budget=200_000),
    "vit-b16": Architecture("google/vit-base-patch16-224", "vit", 12, 768, 3072, 12, num_parameters=86_389_248, suggested_budget=50_000),
    "llama2-7b": Architecture("meta-llama/Llama-2-7b-hf", "llama", 32, 4096, 11008, 32, 32, num_parameters=6_738_415_616, suggested_budget=4_000_000),
    "llama3-8b": Architecture("meta-llama/Meta-Llama-3-8B", "llama", 32, 4096, 14336, 32, 8, num_parameters=8_030_261_248, suggested_budget=4_000_000),
    "llama3-70b": Architecture("meta-llama/Meta-Llama-3-70B", "llama", 80, 8192, 28672, 64, 8, num_parameters=70_553_706_496, suggested_budget=20_000_000),
    "mixtral-8x22b": Architecture("mistralai/Mixtral-8x22B-v0.1", "mixtral", 56, 6144, 16384, 48, 8, num_parameters=140_620_634_112,
                                  suggested_budget=40_000_000, experts=8, expert_intermediate=16384),
}

#: mixture-of-experts models with tens of thousands of linear layers: written by ``--moe`` (large files)
MOE_ARCHITECTURES = {
    "qwen3-235b-a22b": Architecture("Qwen/Qwen3-235B-A22B", "qwen3-moe", 94, 4096, 12288, 64, 4, num_parameters=235_093_634_560,
                                    suggested_budget=60_000_000, experts=128, expert_intermediate=1536, head_dim=128),
    "deepseek-v3": Architecture("deepseek-ai/DeepSeek-V3", "deepseek-v3", 61, 7168, 18432, 128, None, num_parameters=671_026_419_200,
                                suggested_budget=100_000_000, experts=256, expert_intermediate=2048),
}


def modules(arch: Architecture) -> list[tuple[str, str, int, int, int, str]]:
    """(name, kind, in, out, block, role) for every adaptable linear layer of ``arch``."""
    h, f = arch.hidden, arch.intermediate
    kv = h // arch.heads * (arch.kv_heads or arch.heads)
    out = []
    for b in range(arch.blocks):
        if arch.style in ("bert", "roberta", "vit"):
            root = {"bert": "bert.encoder.layer", "roberta": "roberta.encoder.layer", "vit": "vit.encoder.layer"}[arch.style]
            att = "attention.attention" if arch.style == "vit" else "attention.self"
            spec = [
                (f"{att}.query", "attention", h, h, "q"),
                (f"{att}.key", "attention", h, h, "k"),
                (f"{att}.value", "attention", h, h, "v"),
                ("attention.output.dense", "attention", h, h, "o"),
                ("intermediate.dense", "mlp", h, f, "up"),
                ("output.dense", "mlp", f, h, "down"),
            ]
            prefix = f"{root}.{b}"
        elif arch.style == "gpt2":
            spec = [
                ("attn.c_attn", "attention", h, 3 * h, "qkv"),
                ("attn.c_proj", "attention", h, h, "o"),
                ("mlp.c_fc", "mlp", h, f, "up"),
                ("mlp.c_proj", "mlp", f, h, "down"),
            ]
            prefix = f"transformer.h.{b}"
        elif arch.style in ("mixtral", "qwen3-moe"):
            hd = arch.head_dim or h // arch.heads
            q_out, kv_out = arch.heads * hd, (arch.kv_heads or arch.heads) * hd
            spec = [
                ("self_attn.q_proj", "attention", h, q_out, "q"),
                ("self_attn.k_proj", "attention", h, kv_out, "k"),
                ("self_attn.v_proj", "attention", h, kv_out, "v"),
                ("self_attn.o_proj", "attention", q_out, h, "o"),
            ]
            e_f = arch.expert_intermediate
            if arch.style == "mixtral":  # w1 gate, w3 up, w2 down
                for e in range(arch.experts):
                    spec += [(f"block_sparse_moe.experts.{e}.w1", "mlp", h, e_f, "gate"), (f"block_sparse_moe.experts.{e}.w3", "mlp", h, e_f, "up"),
                             (f"block_sparse_moe.experts.{e}.w2", "mlp", e_f, h, "down")]
            else:
                for e in range(arch.experts):
                    spec += [(f"mlp.experts.{e}.gate_proj", "mlp", h, e_f, "gate"), (f"mlp.experts.{e}.up_proj", "mlp", h, e_f, "up"),
                             (f"mlp.experts.{e}.down_proj", "mlp", e_f, h, "down")]
            prefix = f"model.layers.{b}"
        elif arch.style == "deepseek-v3":
            # MLA (config: q_lora_rank 1536, kv_lora_rank 512, qk_nope 128, qk_rope 64, v_head 128); first 3 blocks dense
            heads = arch.heads
            spec = [
                ("self_attn.q_a_proj", "attention", h, 1536, "q"),
                ("self_attn.q_b_proj", "attention", 1536, heads * (128 + 64), "q"),
                ("self_attn.kv_a_proj_with_mqa", "attention", h, 512 + 64, "k"),
                ("self_attn.kv_b_proj", "attention", 512, heads * (128 + 128), "v"),
                ("self_attn.o_proj", "attention", heads * 128, h, "o"),
            ]
            e_f = arch.expert_intermediate
            if b < 3:
                spec += [("mlp.gate_proj", "mlp", h, f, "gate"), ("mlp.up_proj", "mlp", h, f, "up"), ("mlp.down_proj", "mlp", f, h, "down")]
            else:
                for e in list(range(arch.experts)) + ["shared"]:
                    root = "mlp.shared_experts" if e == "shared" else f"mlp.experts.{e}"
                    spec += [(f"{root}.gate_proj", "mlp", h, e_f, "gate"), (f"{root}.up_proj", "mlp", h, e_f, "up"),
                             (f"{root}.down_proj", "mlp", e_f, h, "down")]
            prefix = f"model.layers.{b}"
        elif arch.style == "llama":
            spec = [
                ("self_attn.q_proj", "attention", h, h, "q"),
                ("self_attn.k_proj", "attention", h, kv, "k"),
                ("self_attn.v_proj", "attention", h, kv, "v"),
                ("self_attn.o_proj", "attention", h, h, "o"),
                ("mlp.gate_proj", "mlp", h, f, "gate"),
                ("mlp.up_proj", "mlp", h, f, "up"),
                ("mlp.down_proj", "mlp", f, h, "down"),
            ]
            prefix = f"model.layers.{b}"
        else:
            raise ValueError(f"unknown style {arch.style!r}; use bert, roberta, vit, gpt2, llama, mixtral, qwen3-moe or deepseek-v3")
        for sub, kind, d_in, d_out, role in spec:
            out.append((f"{prefix}.{sub}", kind, d_in, d_out, b, role))
    return out


#: plausible relative sensitivity of each module role (value/output and down projections lead)
ROLE_WEIGHT = {"q": 0.55, "k": 0.35, "v": 1.0, "o": 0.8, "qkv": 0.9, "gate": 0.5, "up": 0.6, "down": 0.85}


def architecture(key: str | Architecture, seed: int = 0) -> dict:
    """A manifest with ``arch``'s exact shapes and a plausible sensitivity pattern.

    Sensitivity = role weight x a depth profile (a U: first and last blocks
    matter most) x lognormal noise.
    """
    arch = {**ARCHITECTURES, **MOE_ARCHITECTURES}[key] if isinstance(key, str) else key
    rng = random.Random(f"{arch.name}:{seed}")
    layers = []
    for name, kind, d_in, d_out, b, role in modules(arch):
        d = b / max(1, arch.blocks - 1)
        depth = 0.45 + 0.55 * ((2 * d - 1) ** 2) + 0.25 * d
        s = ROLE_WEIGHT[role] * depth * math.exp(rng.gauss(0.0, 0.35))
        layers.append({"name": name, "kind": kind, "in_features": d_in, "out_features": d_out, "block": b,
                       "metrics": _metrics(s, rng, noise=0.15)})
    model = {"name": arch.name, "num_parameters": arch.num_parameters, "suggested_budget": arch.suggested_budget,
             "hidden_size": arch.hidden, "num_layers": arch.blocks}
    return _manifest(model, layers)


def synthetic(n_layers: int, seed: int = 0) -> dict:
    """A LLaMA-like scale problem of ``n_layers`` modules (7 per block, GQA shapes, hidden 4096),
    lognormal sensitivities; used by the benchmark. ~22 options per layer with the default methods."""
    arch = Architecture(f"synthetic-{n_layers}", "llama", math.ceil(n_layers / 7), 4096, 14336, 32, 8)
    rng = random.Random(f"synthetic:{n_layers}:{seed}")
    layers = []
    for name, kind, d_in, d_out, b, role in modules(arch)[:n_layers]:
        s = ROLE_WEIGHT[role] * math.exp(rng.gauss(0.0, 0.6))
        layers.append({"name": name, "kind": kind, "in_features": d_in, "out_features": d_out, "block": b,
                       "metrics": _metrics(s, rng, noise=0.2)})
    total = sum(l["in_features"] + l["out_features"] for l in layers)
    # about rank 4 per layer on average
    model = {"name": arch.name, "suggested_budget": 4 * total}
    return _manifest(model, layers)


def write(manifest: dict, path: Path) -> None:
    """Validate and write through the one manifest writer (atomic, version 1 without interactions)."""
    from .manifest import parse_manifest, save_manifest

    path.parent.mkdir(parents=True, exist_ok=True)
    save_manifest(parse_manifest(manifest, source=str(path)), path)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m layerlens_opt.generate", description=__doc__.split("\n\n")[0])
    parser.add_argument("out", type=Path, help="folder to write into (e.g. problems/)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--custom", metavar="NAME", help="write one custom architecture instead of the shipped set")
    parser.add_argument("--style", default="llama", choices=["bert", "roberta", "vit", "gpt2", "llama", "mixtral", "qwen3-moe", "deepseek-v3"])
    parser.add_argument("--blocks", type=int, default=32)
    parser.add_argument("--hidden", type=int, default=4096)
    parser.add_argument("--intermediate", type=int, default=11008)
    parser.add_argument("--heads", type=int, default=32)
    parser.add_argument("--kv-heads", type=int, default=None)
    parser.add_argument("--budget", type=int, default=1_000_000, help="suggested budget stored in model.suggested_budget")
    parser.add_argument("--moe", action="store_true", help="also write the large mixture-of-experts manifests (Qwen3-235B-A22B, "
                        "DeepSeek-V3: 36k and 45k layers, tens of MB) under OUT/moe/")
    args = parser.parse_args(argv)
    if args.custom:
        arch = Architecture(args.custom, args.style, args.blocks, args.hidden, args.intermediate, args.heads, args.kv_heads,
                            suggested_budget=args.budget)
        path = args.out / f"{args.custom}.json"
        write(architecture(arch, args.seed), path)
        print(f"wrote {path}")
        return
    for name in SCENARIOS:
        write(scenario(name, args.seed), args.out / "scenarios" / f"{name}.json")
    for key in ARCHITECTURES:
        write(architecture(key, args.seed), args.out / "architectures" / f"{key}.json")
    if args.moe:
        for key in MOE_ARCHITECTURES:
            write(architecture(key, args.seed), args.out / "moe" / f"{key}.json")
    print(f"wrote {len(SCENARIOS)} scenarios and {len(ARCHITECTURES)} architectures"
          f"{f' and {len(MOE_ARCHITECTURES)} MoE manifests' if args.moe else ''} under {args.out}")


if __name__ == "__main__":  # pragma: no cover
    main()
