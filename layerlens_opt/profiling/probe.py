"""The probe signal: a short uniform-LoRA training run, then held-out ablations.

Why: first-order signals (gradient energy, Fisher, a one-step proxy) measure
each layer alone at the start of training. What decides how a fine-tune goes
is a layer's value *after* some training, with the other adapters present
(see docs/design.md, "The gain model"). The probe measures exactly that:

1. **Train a probe.** LoRA of rank ``rank`` (alpha = 2 rank) on *every*
   adaptable linear layer, plus the head, for ``steps`` AdamW steps at ``lr``
   on the training rows — the same recipe a real run uses, only short.
2. **Per-layer value** on ``held_out`` rows the probe never trained on:
   ``D_l = loss(probe without layer l's update) - loss(full probe)``.
3. **Per-rank curve** from the learned update ``dW_l = (alpha/r) B A``: keep its
   top k singular directions, measure the loss, and take the captured fraction
   ``(loss(without l) - loss(rank k)) / D_l`` (clipped to [0, 1], made
   non-decreasing) for the candidate ranks k < ``rank``; rank ``rank`` is 1 by
   definition. Beyond ``rank`` the curve stays flat: the probe shows no growth
   there, so none is invented (the solver's curve reader is flat past the last
   measured rank).
4. **Interactions** inside each block: leave-pair-out ablations give
   ``e_ij = D_ij - D_i - D_j``. With ``z`` the set of adapted layers, the
   second-order expansion of the held-out loss around the full probe is exact
   at every measured point (all layers, all-but-one, all-but-two) and reads

       value(z) = const + sum_i D_i z_i + sum_{i<j} e_ij [z_i or z_j]

   so each pair enters the integer program as ``e_ij`` times "at least one of
   i, j is adapted" (``"when": "either"`` in the manifest). ``e_ij > 0``: the
   two substitute for each other (removing both hurts more than the sum), so
   one of them is worth more than its leave-one-out value says; ``e_ij < 0``:
   they complement each other, so one alone is worth less.

Only LoRA is measured. The manifest therefore offers each layer ``lora`` and
``none`` only (``allowed_methods``) and says so in ``metadata.gain_sources``:
no method's gain is left on an unmeasured prior next to LoRA's measured one.

Deterministic for a seed on the CPU (probe rows, initialisation, batches and
dropout all come from seeded generators). Memory: the model, its LoRA
factors and one held-out chunk of activations; nothing per layer beyond the
rank-r factors.
"""

from __future__ import annotations

import math
import random
import time
from dataclasses import dataclass, field
from itertools import combinations
from typing import Any

import torch
from torch import nn

from ..errors import LayerlensError
from ..manifest import SCHEMA_VERSION
from ..methods import DEFAULT_RANKS
from .dist import all_sum, all_sum_grads, one_process_dropout, share, world
from .objective import load_task
from .profiler import _progress, adaptable_layers, data_name

#: the metric a probe manifest carries (raw held-out loss increase, clipped at 0)
PROBE_METRIC = "probe_loss_drop"

MIN_HELD_OUT = 100
MAX_HELD_OUT = 512

VALUE_MODES = ("leave-one-out", "masks")


@dataclass
class ProbeConfig:
    steps: int = 100
    rank: int = 4
    lr: float = 2e-3
    batch_size: int = 32
    #: rows held out to measure on; None: a fifth of the rows, at least 100 and at most 512
    held_out: int | None = None
    interactions: bool = True
    #: the probe is trusted when its held-out loss is at least this much (relative) below the loss without adapters
    min_gain: float = 0.02
    #: how layer values are measured: "leave-one-out" (all others present) or "masks" (random subsets, regression)
    values: str = "leave-one-out"
    masks: int = 256
    keep: float = 0.5
    seed: int = 0
    device: str = "cpu"
    max_length: int = 64
    objective: str = "auto"
    dtype: str = "float32"
    eval_batch: int = 256
    ranks: tuple[int, ...] = DEFAULT_RANKS
    kind_patterns: list = field(default_factory=list)
    block_pattern: Any = None
    progress: bool = True


def train_steps(model, texts, labels, steps: int, batch_size: int, lr: float, seed: int, desc: str | None = None,
                progress: bool = False, on_step=None, lrs=None, groups=None, before_update=None) -> float:
    """AdamW on the model's trainable parameters over random batches; returns seconds taken.

    Each injected method's parameters train at their own rate (:func:`layerlens_opt.inject.param_groups`: ``lrs``,
    else the catalog's), everything else at ``lr``; ``groups`` (AdamW parameter groups) replaces that split.
    ``before_update(step)`` runs between the backward pass (gradients summed over ranks) and the update;
    ``on_step(step)`` runs after each step, and a true return stops."""
    from ..inject import param_groups

    trainable = [p for p in model.parameters() if p.requires_grad]
    if not trainable:
        raise LayerlensError("nothing to train: the model has no trainable parameters")
    if groups is None:
        groups = [{k: v for k, v in g.items() if k != "method"} for g in param_groups(model, lr, lrs)]
    opt = torch.optim.AdamW(groups, lr=lr)
    gen = torch.Generator().manual_seed(seed)
    y = torch.as_tensor(labels, device=next(model.parameters()).device)
    model.train()
    t0 = time.perf_counter()
    for step in _progress(range(steps), progress, desc or "training", unit="step"):
        idx = torch.randint(len(texts), (batch_size,), generator=gen).tolist()
        batch = [texts[i] for i in idx]
        if world()[1] == 1:
            total, n = model.loss_sum(batch, y[idx])
            loss = total / max(n, 1)  # the mean over the batch's rows (classification) or target tokens (causal LM)
        else:  # this rank's share of the batch (dropout masks as one process draws them); the summed gradients are the mean's
            rows = share(list(range(len(idx))))
            mine = [idx[r] for r in rows]
            with one_process_dropout(model, batch, rows):
                total, _ = model.loss_sum([texts[i] for i in mine], y[mine])
                loss = total / max(model.count(batch), 1)
        opt.zero_grad()
        loss.backward()
        all_sum_grads(trainable)  # nothing to do with one process
        if before_update is not None:
            before_update(step)
        opt.step()
        if on_step is not None and on_step(step):
            break
    model.eval()
    return time.perf_counter() - t0


def held_out_size(rows: int, requested: int | None = None) -> int:
    """The held-out split: ``requested``, else a fifth of the rows, at least 100 and at most 512."""
    if requested is not None:
        return requested
    return max(MIN_HELD_OUT, min(MAX_HELD_OUT, rows // 5))


def trust_warning(reference: float, without: float, min_gain: float, what: str = "without adapters") -> str | None:
    """Why a probe learned too little for its measurements to mean something: its held-out loss ``reference`` is not at
    least ``min_gain`` (relative) below ``without`` (the loss ``what``: without adapters, or predicting the training
    labels' frequencies where that is lower); None when it did."""
    gain = (without - reference) / without if without > 0 else 0.0
    if gain >= min_gain:
        return None
    return (f"the probe learned too little to trust: its held-out loss {reference:.4f} is "
            + (f"worse than {without:.4f} {what}" if reference >= without else
               f"only {100 * gain:.1f}% below {without:.4f} {what} (at least {100 * min_gain:.0f}% is needed)")
            + "; give more data or more --probe-steps, or use --signal first-order")


def nothing_ranked_warning(layers: list[dict], fixes: str) -> str | None:
    """Why a probe manifest cannot rank its layers: it measured every one at zero (no layer's update lowers the held-out
    loss on its own; values are clipped at 0), which ``solve`` refuses; None when some layer is above zero. The probe
    may still have learned: its layers can stand in for each other, so that none is worth anything alone."""
    if any(l["metrics"][PROBE_METRIC] > 0 for l in layers):
        return None
    return ("the probe measured every layer at zero: no layer's adapter lowers the held-out loss on its own, so solve "
            f"cannot rank them; {fixes}")


def label_prior_loss(train_labels, held_labels) -> float:
    """Held-out cross-entropy of predicting every row's class by the training rows' class frequencies (add-one
    smoothed): what a classifier gets without reading its input, the floor a probe must beat."""
    classes = sorted(set(train_labels) | set(held_labels))
    counts = {c: 1 for c in classes}
    for y in train_labels:
        counts[y] += 1
    total = sum(counts.values())
    return -sum(math.log(counts[y] / total) for y in held_labels) / max(len(held_labels), 1)


def held_out_loss(model, texts, y, chunk: int = 256) -> float:
    """Mean loss over ``texts`` (no gradients, eval mode): cross-entropy per row (classification) or per target token
    (causal LM)."""
    total = 0.0
    rows = share(list(range(len(texts))))  # with several ranks, each evaluates its share; the sums are added
    with torch.no_grad():
        for s in range(0, len(rows), chunk):
            part = rows[s : s + chunk]
            value, _ = model.loss_sum([texts[i] for i in part], y[part], precise=True)  # float64: values are differences
            total += float(value)
    return all_sum(total) / max(model.count(texts), 1)


class _Ablation:
    """Temporarily remove or truncate LoRA updates of a probed model (restored on exit)."""

    def __init__(self, modules: dict[str, nn.Module], remove=(), truncate: dict[str, int] | None = None):
        self.modules, self.remove, self.truncate = modules, tuple(remove), truncate or {}
        self.saved: list = []

    def __enter__(self):
        for name in self.remove:
            m = self.modules[name]
            self.saved.append((m, m.lora_A.data, m.lora_B.data, m.scaling))
            m.scaling = 0.0
        for name, k in self.truncate.items():
            m = self.modules[name]
            A, B = m.lora_A.data, m.lora_B.data
            self.saved.append((m, A, B, m.scaling))
            U, S, Vh = torch.linalg.svd((B @ A).double() * m.scaling, full_matrices=False)
            m.lora_B.data = (U[:, :k] * S[:k]).to(B.dtype)
            m.lora_A.data = Vh[:k].to(A.dtype)
            m.scaling = 1.0
        return self

    def __exit__(self, *exc):
        for m, A, B, scaling in reversed(self.saved):
            m.lora_A.data, m.lora_B.data, m.scaling = A, B, scaling
        return False


@dataclass
class TrainedProbe:
    """A trained probe and its held-out rows: ``loss(remove=..., truncate=...)`` measures an ablation."""

    model: nn.Module
    modules: dict[str, nn.Module]  # layer name -> its LoRA module
    layers: list[dict]  # the adaptable layers that took part in training (name, kind, block, shape)
    ranks: dict[str, int]
    held_texts: list[str]
    held_y: Any
    task_info: dict
    model_name: str
    train_examples: int
    skipped: list[str]
    seconds: float
    config: "ProbeConfig"

    def loss(self, remove=(), truncate: dict[str, int] | None = None) -> float:
        """Held-out loss with the updates of ``remove`` taken out and those of ``truncate`` cut to rank k."""
        with _Ablation(self.modules, remove=remove, truncate=truncate):
            return held_out_loss(self.model, self.held_texts, self.held_y, self.config.eval_batch)


def train_probe(model_spec: str, data_path: str, config: ProbeConfig | None = None) -> TrainedProbe:
    """Step 1: uniform LoRA on every adaptable layer, trained ``config.steps`` steps on the non-held-out rows."""
    from ..inject import LoRALinear, inject

    config = config or ProbeConfig()
    if config.steps < 1 or config.rank < 1 or config.batch_size < 1:
        raise LayerlensError("--probe-steps, --probe-rank and --batch-size must be at least 1")
    if not (config.lr > 0 and math.isfinite(config.lr)):
        raise LayerlensError(f"--probe-lr must be a positive number, got {config.lr!r}")
    if config.values not in VALUE_MODES:
        raise LayerlensError(f"--probe-values {config.values!r}: choose {' or '.join(VALUE_MODES)}")
    if config.values == "masks" and (config.masks < 16 or not 0 < config.keep < 1):
        raise LayerlensError(f"--probe-masks must be at least 16 and the keep share in (0, 1), got {config.masks} and {config.keep}")
    if config.held_out is not None and config.held_out < MIN_HELD_OUT:
        raise LayerlensError(f"--held-out {config.held_out} is too few to measure layer values (noise swamps them); use at least {MIN_HELD_OUT}, 512 or more is better")
    if config.device.startswith("cuda") and not torch.cuda.is_available():
        raise LayerlensError(f"--device {config.device}: CUDA is not available on this machine; use --device cpu")
    task = load_task(model_spec, data_path, config.objective, config.device, config.dtype, config.max_length,
                     progress=config.progress, seed=config.seed)
    texts, labels = task.examples, task.labels
    held_n = held_out_size(len(texts), config.held_out)
    if len(texts) < held_n + config.batch_size:
        raise LayerlensError(
            f"{data_path} has too few examples ({len(texts)}): the probe needs at least {MIN_HELD_OUT + config.batch_size} "
            f"({MIN_HELD_OUT} held out to measure on plus {config.batch_size} to train on)"
            + ("" if config.held_out is None else f"; --held-out {config.held_out} asks for more"))
    order = list(range(len(texts)))
    random.Random(config.seed).shuffle(order)
    held, train = order[:held_n], order[held_n:]
    train_labels = {labels[i] for i in train}
    if task.objective == "classification" and len(train_labels) < 2:
        label = task.info["classes"][next(iter(train_labels))]
        raise LayerlensError(f"{data_path}: the probe's training rows carry a single label ({label!r}); a probe needs at least two classes")

    torch.manual_seed(config.seed)
    model, model_name = task.model, task.model_name
    found = adaptable_layers(model, _Naming(config))
    ranks = {l["name"]: min(config.rank, l["in_features"], l["out_features"]) for l in found}
    inject(model.encoder, [(n, "lora", r, None) for n, r in ranks.items()], alpha_ratio=2.0)
    for p in model.head.parameters():
        p.requires_grad_(True)
    modules = {}
    for name in ranks:
        m = model.encoder.get_submodule(name)
        if not isinstance(m, LoRALinear):  # pragma: no cover - apply() wraps every name it is given
            raise LayerlensError(f"probe: layer {name!r} was not wrapped")
        modules[name] = m
    seconds = train_steps(model, [texts[i] for i in train], [labels[i] for i in train], config.steps, config.batch_size,
                          config.lr, config.seed, "probe training", config.progress,
                          lrs={"lora": config.lr})  # --probe-lr is the LoRA probe's one rate
    # a layer whose update never received a gradient takes no part in the loss (e.g. an unused pooler)
    skipped = [n for n in ranks if modules[n].lora_B.grad is None]
    if len(skipped) == len(ranks):
        raise LayerlensError("no linear layer of the model received a gradient from the loss; is the encoder's output used?")
    return TrainedProbe(
        model=model, modules=modules, layers=[l for l in found if l["name"] not in skipped], ranks=ranks,
        held_texts=[texts[i] for i in held], held_y=torch.tensor([labels[i] for i in held], device=config.device),
        task_info=task.info, model_name=model_name, train_examples=len(train), skipped=skipped, seconds=seconds, config=config,
    )


def probe(model_spec: str, data_path: str, config: ProbeConfig | None = None) -> dict:
    """Run the probe (train, then measure) and return the manifest as a dict (schema version 2)."""
    config = config or ProbeConfig()
    t0 = time.perf_counter()
    run = train_probe(model_spec, data_path, config)
    found, names, rank_of, loss = run.layers, [l["name"] for l in run.layers], run.ranks, run.loss

    t1 = time.perf_counter()
    full = loss()
    base = loss(remove=list(run.modules))
    blocks: dict[Any, list[str]] = {}
    for l in found:
        if l["block"] is not None:
            blocks.setdefault(l["block"], []).append(l["name"])
    pairs = [p for members in blocks.values() for p in combinations(members, 2)] if config.interactions else []
    jobs: list[tuple] = [("drop", n) for n in names]
    jobs += [("rank", n, k) for n in names for k in config.ranks if k < rank_of[n]]
    masks = None
    if config.values == "masks":
        gen = torch.Generator().manual_seed(config.seed)
        masks = (torch.rand((config.masks, len(names)), generator=gen) < config.keep).tolist()
        jobs += [("mask", m) for m in range(config.masks)]
    else:
        jobs += [("pair", a, b) for a, b in pairs]
    mask_loss: dict[int, float] = {}
    without: dict[str, float] = {}
    truncated: dict[tuple[str, int], float] = {}
    pair_loss: dict[tuple[str, str], float] = {}
    for job in _progress(jobs, config.progress, "probe ablations", unit="pass"):
        if job[0] == "drop":
            without[job[1]] = loss(remove=[job[1]])
        elif job[0] == "rank":
            truncated[job[1], job[2]] = loss(truncate={job[1]: job[2]})
        elif job[0] == "mask":
            mask_loss[job[1]] = loss(remove=[n for n, kept in zip(names, masks[job[1]]) if not kept])
        else:
            pair_loss[job[1], job[2]] = loss(remove=[job[1], job[2]])
    measure_s = time.perf_counter() - t1

    drop = {n: without[n] - full for n in names}
    value, interactions = drop, []
    if masks is not None:
        value, pair_values = _fit_masks(names, masks, [mask_loss[m] for m in range(len(masks))], pairs)
        interactions = [{"layers": [a, b], "value": v, "when": "both"} for (a, b), v in pair_values.items()]
    else:
        interactions = [{"layers": [a, b], "value": (pair_loss[a, b] - full) - drop[a] - drop[b], "when": "either"} for a, b in pairs]
    manifest_layers = []
    for l in found:
        n = l["name"]
        d = drop[n]
        curve: dict[str, float] = {}
        prev = 0.0
        for k in config.ranks:
            if k < rank_of[n]:
                frac = (without[n] - truncated[n, k]) / d if d > 0 else 1.0
            elif k == rank_of[n]:
                frac = 1.0
            else:
                break
            prev = max(prev, min(1.0, max(0.0, frac)))
            curve[str(k)] = prev
        entry: dict[str, Any] = {"name": n, "kind": l["kind"], "in_features": l["in_features"], "out_features": l["out_features"]}
        if l["block"] is not None:
            entry["block"] = l["block"]
        entry["metrics"] = {PROBE_METRIC: max(0.0, value[n])}
        entry["allowed_methods"] = ["lora", "none"]
        entry["gain_curves"] = {"lora": curve or {str(rank_of[n]): 1.0}}
        manifest_layers.append(entry)

    warning = trust_warning(full, base, config.min_gain) or nothing_ranked_warning(
        manifest_layers, "use the default --signal probe (every method, each layer measured alone), more rows or "
        "--probe-steps, or --signal first-order")
    manifest: dict[str, Any] = {
        "schema_version": SCHEMA_VERSION,
        "model": {
            "name": run.model_name,
            "num_parameters": int(sum(p.numel() for n_, p in run.model.encoder.named_parameters() if "lora_" not in n_)),
            "profiled_on": data_name(data_path),
            **run.task_info,
            "signal": "lora-probe",
            "seed": config.seed,
            "probe": {
                "method": "lora", "rank": config.rank, "alpha": 2 * config.rank, "steps": config.steps, "lr": config.lr,
                "batch_size": config.batch_size, "train_examples": run.train_examples, "held_out_examples": len(run.held_texts),
                "held_out_loss": full, "held_out_loss_without_adapters": base,
                "trusted": warning is None, **({"warning": warning} if warning else {}),
                "values": config.values, **({"masks": config.masks, "keep": config.keep} if masks is not None else {}),
                "forward_passes": 2 + len(jobs), "pairs": len(pairs),
                "seconds_training": round(run.seconds, 2), "seconds_measuring": round(measure_s, 2),
            },
            "seconds": round(time.perf_counter() - t0, 2),
            "skipped_layers": run.skipped,
        },
        "metric_weights": {PROBE_METRIC: 1.0},
        "layers": manifest_layers,
        "metadata": {
            "probe_loss_drop_raw": value,
            **({"probe_leave_one_out": drop} if masks is not None else {}),
            "gain_sources": {"lora": f"probe (rank {config.rank}, {config.steps} steps)",
                             "adapter": "not offered: not measured by the probe",
                             "prefix": "not offered: not measured by the probe",
                             "ia3": "not offered: not measured by the probe"},
        },
    }
    if config.interactions:
        manifest["interactions"] = {"metric": PROBE_METRIC, "pairs": interactions}
    return manifest


def _fit_masks(names, masks, losses, pairs, ridge: float = 1e-3):
    """Least squares of held-out loss on which layers were kept (and, for ``pairs``, kept together).

    ``loss ~ c - sum_i v_i z_i - sum_(i,j) v_ij z_i z_j``: v_i is the loss a layer's update removes on
    average over random subsets of the others (a Banzhaf-style value, robust to the redundancy that makes
    leave-one-out values vanish), v_ij what a pair adds beyond that when both are kept. A small ridge
    term keeps the pair coefficients finite when few masks hold a pair.
    """
    import numpy as np

    Z = np.asarray(masks, dtype=float)
    index = {n: i for i, n in enumerate(names)}
    cols = [np.ones(len(Z))] + [Z[:, i] for i in range(len(names))] + [Z[:, index[a]] * Z[:, index[b]] for a, b in pairs]
    X = np.stack(cols, 1)
    y = np.asarray(losses, dtype=float)
    scale = ridge * len(y)
    penalty = np.sqrt(scale) * np.eye(X.shape[1])[1:]
    beta = np.linalg.lstsq(np.vstack([X, penalty]), np.concatenate([y, np.zeros(X.shape[1] - 1)]), rcond=None)[0]
    values = {n: float(-beta[1 + i]) for i, n in enumerate(names)}
    pair_values = {p: float(-beta[1 + len(names) + k]) for k, p in enumerate(pairs)}
    return values, pair_values


class _Naming:
    """The slice of a profile config that :func:`adaptable_layers` reads."""

    def __init__(self, config: ProbeConfig):
        self.kind_patterns = config.kind_patterns
        self.block_pattern = config.block_pattern
