"""The default signal: every method measured in one short gated probe run.

Why: the allocator chooses, per layer, *which* method and rank; a profile that
measures LoRA only can offer nothing else. This probe prices every method that
``apply`` can train on a layer (lora, ia3, adapter on every linear layer;
prefix on each BERT-family attention block) in one short probe (on MiniLM 0.85-0.93 of one 300-step training run).

1. **One gated probe, every method on every layer.** Each adaptable linear
   layer carries LoRA (rank ``rank``), IA3 and a bottleneck adapter (width
   ``rank``); each BERT-family attention block a prefix (length ``rank``).
   Every method sits behind its own scalar gate ``g`` (UniPELT's design, with
   the gates as the measuring device): ``y = W x + g_lora s B A x``, then
   ``y * (1 + g_ia3 (l - 1))``, then ``y + g_adapter up(gelu(down y))``; a
   prefix adds ``log(g_prefix h_j)`` to position j's attention scores. Each method's
   parameters train at their own learning rate (the catalog's
   :attr:`~layerlens_opt.methods.MethodSpec.lr`), the head at ``lr``. At every
   step each gate is switched on with probability ``keep`` and off otherwise
   (drawn from the seed), so each method learns to work alone, not only as a
   stand-in for another on its layer. The run stops when the held-out loss has
   not improved for ``patience`` checks (every ``eval_every`` steps), within
   ``max_steps``, but never while its best check would not be trusted (see
   below): a plateau at the loss without adapters is trained through to the
   cap. Every check measures the held-out loss with the gates at ``keep``;
   the loss with every gate off (what trust is judged against) is measured
   for the best check only when trust must be judged, at a plateau or at the
   end. The weights of the best check are kept and restored at the end, so
   the values are measured there, not wherever training stopped, and its two
   losses are the manifest's. A training step skips the branches whose gate
   is off (bit for bit the same numbers, see ``_Gates``).
2. **A method's value at a layer** is "this layer carries only this method"
   against "this layer carries nothing", with every other gate at its expected
   training value ``keep`` (the reference point R):
   ``v[l, m] = loss(R, layer l off) - loss(R, layer l only m)``.
   - ``estimate="gradient"`` (default): the first-order expansion of that
     difference around R is exactly ``-dL/dg[l, m]`` (the other methods' terms
     cancel), so one backward pass per held-out batch prices every (layer,
     method) at once: the number of held-out passes does not grow with layers
     x methods.
   - ``estimate="exact"``: the two losses measured, one held-out pass each.
   - ``fidelity=True``: both, with the Spearman correlation of the gradient
     estimate against the exact values reported in the manifest, and per
     method the loss drop of "every layer carries only this method" next to
     the sum of its per-layer values (``method_alone``, ``method_value_sums``).
3. **Rank curves** by truncating each method's learned update: LoRA to its top
   k singular directions (the update is rewritten as ``U S V^T`` with a gate per
   direction), an adapter to its k strongest bottleneck units (by
   ``||up_i|| ||down_i||``), a prefix to its k strongest positions (by the norm of
   their key and value). Each direction has its own gate ``h``; with the gradient
   estimate the captured fraction at rank k is the share of the method's
   first-order value that its first k directions carry, with the exact one
   ``(loss(off) - loss(only m, rank k)) / v[l, m]``. Clipped to [0, 1], made
   non-decreasing; flat past ``rank`` (the probe shows nothing there).
4. **Noise** (gradient estimate): the backward passes run over chunks of ``gradient_batch`` held-out rows, and each
   value's spread over the chunks gives its standard error; with ``shrink`` (default) each method's values are
   shrunk toward that method's mean over layers by it (:func:`shrink`, James-Stein), so that values which are mostly
   noise cannot concentrate a small budget on the layers noise ranked first.
5. **Interactions** (``interactions=True``, exact passes, opt-in): leave-pair-out
   ablations of whole layers around R inside each block, as the LoRA probe's
   (``e_ij = D_ij - D_i - D_j``, ``"when": "either"``).

The manifest's metric ``probe_loss_drop`` is a layer's best method value
(clipped at 0); ``gain_curves`` carry every measured method's value at each rank
as a fraction of it, so ``utility x curve`` is the measured value; every layer
offers exactly its measured methods plus none (``allowed_methods``), and
``metadata.gain_sources`` says how each was measured; ``model.skipped_layers`` names the linear layers not measured
(no probed method fits their kind, or the loss never reaches them). ``model.probe`` records
the cost (steps, passes, seconds) and whether the probe learned enough to be
trusted (``trusted``, ``warning``): it is not when its held-out loss is not at
least ``min_gain`` (relative) below the loss with every gate off.

Deterministic for a seed on the CPU. Data-parallel under torchrun like the
LoRA probe: each rank trains and measures its share of every batch, the
gradients and the gate gradients are summed.
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
from ..inject import PrefixSelfAttention, _dims, _set
from ..manifest import SCHEMA_VERSION
from ..methods import DEFAULT_RANKS, METHODS
from .dist import all_sum, share, world
from .probe import (MIN_HELD_OUT, PROBE_METRIC, held_out_loss, held_out_size, label_prior_loss, nothing_ranked_warning, train_steps,
                    trust_warning)
from .objective import load_task
from .profiler import _progress, adaptable_layers, data_name

#: the methods this probe can measure (each needs a gated branch below); prefix only on BERT-family attention
PROBED = ("lora", "ia3", "adapter", "prefix")
ESTIMATES = ("gradient", "exact")

@dataclass
class MethodProbeConfig:
    max_steps: int = 125
    min_steps: int = 50
    eval_every: int = 25
    patience: int = 2
    rank: int = 4
    lr: float = 2e-3
    lrs: dict = field(default_factory=dict)
    batch_size: int = 32
    held_out: int | None = None
    methods: tuple[str, ...] = PROBED
    keep: float = 0.5
    estimate: str = "gradient"
    fidelity: bool = False
    interactions: bool = False
    min_gain: float = 0.02
    seed: int = 0
    device: str = "cpu"
    max_length: int = 64
    objective: str = "auto"
    dtype: str = "float32"
    eval_batch: int = 128
    #: rows per backward pass of the gradient estimate: the spread of the values over these chunks is their noise
    gradient_batch: int = 32
    #: shrink each method's values toward its mean over layers by their measured noise (James-Stein), gradient estimate
    shrink: bool = True
    ranks: tuple[int, ...] = DEFAULT_RANKS
    kind_patterns: list = field(default_factory=list)
    block_pattern: Any = None
    progress: bool = True


# ----------------------------------------------------------------------------- gated modules


class _Gates:
    """A scalar gate per method and a gate per direction, held as buffers of the module.

    Set them with :meth:`set_gate`: it also remembers, in plain Python, when a method's gate is exactly 0 or 1 with
    every direction on. The forward pass then skips a branch that is off and leaves out the multiplications by 1 of
    one that is on, which computes the same numbers bit for bit (``y + 0 * b`` is ``y``, ``1 * b`` is ``b``): with the
    gates drawn at ``keep`` 0.5, a training step computes about half the branches."""

    def _add_gates(self, method: str, directions: int, device) -> None:
        self.register_buffer(f"g_{method}", torch.ones((), device=device))
        if directions:
            self.register_buffer(f"h_{method}", torch.ones(directions, device=device))
        self.__dict__.setdefault("_fixed_at", {})[method] = 1.0

    def gate(self, method: str) -> torch.Tensor:
        return getattr(self, f"g_{method}")

    def directions(self, method: str) -> torch.Tensor | None:
        return getattr(self, f"h_{method}", None)

    def set_gate(self, method: str, value: float, keep_directions: int | None = None, fast: bool = True) -> None:
        """Gate ``method`` at ``value``, its directions past the first ``keep_directions`` off (None: every one on);
        ``fast=False`` keeps the branch on the general path even at 0 or 1."""
        self.gate(method).fill_(value)
        h = self.directions(method)
        if h is not None:
            h.fill_(1.0)
            if keep_directions is not None:
                h[keep_directions:] = 0.0
        whole = h is None or keep_directions is None or keep_directions >= h.numel()
        self._fixed_at[method] = float(value) if fast and whole and value in (0.0, 1.0) else None

    def fixed(self, method: str) -> float | None:
        """0.0 or 1.0 when the branch can take the fast path (gate exactly that, every direction on, no gradient
        wanted of the gates); else None."""
        g, h = self.gate(method), self.directions(method)
        if g.requires_grad or (h is not None and h.requires_grad):
            return None
        return self._fixed_at[method]


class GatedLinear(nn.Module, _Gates):
    """A linear layer (``nn.Linear`` or ``Conv1D``) carrying LoRA, IA3 and an adapter at once, each behind a gate."""

    def __init__(self, base: nn.Module, methods: tuple[str, ...], rank: int, alpha: float):
        super().__init__()
        d_in, d_out, _ = _dims(base)
        device = base.weight.device
        self.wrapped, self.methods = base, tuple(methods)
        self.lora_rank = min(rank, d_in, d_out)
        self.adapter_width = min(rank, d_out)
        if "lora" in methods:
            self.lora_A = nn.Parameter(torch.empty(self.lora_rank, d_in, device=device))
            self.lora_B = nn.Parameter(torch.zeros(d_out, self.lora_rank, device=device))
            nn.init.kaiming_uniform_(self.lora_A, a=math.sqrt(5))
            self.scaling = alpha / self.lora_rank
            self._add_gates("lora", self.lora_rank, device)
        if "ia3" in methods:
            self.ia3 = nn.Parameter(torch.ones(d_out, device=device))
            self._add_gates("ia3", 0, device)
        if "adapter" in methods:
            self.down = nn.Linear(d_out, self.adapter_width, device=device)
            self.up = nn.Linear(self.adapter_width, d_out, device=device)
            nn.init.zeros_(self.up.weight)
            nn.init.zeros_(self.up.bias)
            self._add_gates("adapter", self.adapter_width, device)
        self.parts = {"lora": ["lora_A", "lora_B"], "ia3": ["ia3"], "adapter": ["down", "up"]}

    def forward(self, x):
        y = self.wrapped(x)
        dtype = y.dtype  # a bfloat16 / float16 model: the methods compute in float32, their output goes back in its dtype
        x, y = x.float(), y.float()
        # a branch whose gate is exactly 0 is skipped, and 1 is not multiplied by (see _Gates): the same numbers
        if "lora" in self.methods and (fixed := self.fixed("lora")) != 0.0:
            z = x @ self.lora_A.t()
            y = y + (z if fixed == 1.0 else z * self.h_lora) @ self.lora_B.t() * (self.scaling * self.g_lora)
        if "ia3" in self.methods and self.fixed("ia3") != 0.0:
            y = y * (1 + self.g_ia3 * (self.ia3 - 1))
        if "adapter" in self.methods and (fixed := self.fixed("adapter")) != 0.0:
            z = nn.functional.gelu(self.down(y))
            y = y + (self.up(z) if fixed == 1.0 else self.g_adapter * self.up(self.h_adapter * z))
        return y.to(dtype)

    @torch.no_grad()
    def order_directions(self) -> None:
        """Rewrite the learned updates so that direction i is the i-th strongest (the rank curves truncate in this order):
        LoRA as ``U S V^T`` (B = U S, A = V^T, scaling 1), the adapter's units sorted by ``||up_i|| ||down_i||``."""
        if "lora" in self.methods:
            U, S, Vh = torch.linalg.svd((self.lora_B @ self.lora_A).double() * self.scaling, full_matrices=False)
            r = self.lora_rank
            self.lora_B.data = (U[:, :r] * S[:r]).to(self.lora_B.dtype).contiguous()
            self.lora_A.data = Vh[:r].to(self.lora_A.dtype).contiguous()
            self.scaling = 1.0
        if "adapter" in self.methods:
            strength = self.up.weight.norm(dim=0) * self.down.weight.norm(dim=1)
            order = torch.argsort(strength, descending=True, stable=True)
            self.down.weight.data = self.down.weight.data[order]
            self.down.bias.data = self.down.bias.data[order]
            self.up.weight.data = self.up.weight.data[:, order]


class GatedPrefixAttention(PrefixSelfAttention, _Gates):
    """A BERT-family self-attention with a learned prefix whose positions are gated: ``log(g h_j)`` is added to
    position j's attention scores (gate 0: the prefix is gone; 1: as trained)."""

    def __init__(self, attn: nn.Module, length: int):
        super().__init__(attn, length)
        self._add_gates("prefix", length, self.prefix_key.device)
        self.methods = ("prefix",)
        self.parts = {"prefix": ["prefix_key", "prefix_value"]}

    def prefix_offset(self):
        return torch.log((self.g_prefix * self.h_prefix).clamp_min(1e-30))

    @torch.no_grad()
    def order_directions(self) -> None:
        strength = self.prefix_key.norm(dim=1) * self.prefix_value.norm(dim=1)
        order = torch.argsort(strength, descending=True, stable=True)
        self.prefix_key.data = self.prefix_key.data[order]
        self.prefix_value.data = self.prefix_value.data[order]


# ----------------------------------------------------------------------------- the probe


@dataclass
class GatedProbe:
    """A trained gated probe: ``units[layer][method]`` is the module carrying that method for that layer."""

    model: nn.Module
    units: dict[str, dict[str, nn.Module]]
    layers: list[dict]
    rank_of: dict[tuple[str, str], int]
    held_texts: list[str]
    held_y: Any
    task_info: dict
    model_name: str
    train_examples: int
    skipped: list[str]
    steps: int
    seconds: float
    curve: list[tuple[int, float]]
    config: MethodProbeConfig
    own_parameters: int = 0
    passes: int = 0
    plateaus_trained_through: int = 0
    prior: float | None = None  # held-out loss of predicting the training labels' frequencies (classification)
    best_step: int = 0
    #: the gradient estimate's standard error per (layer, method), from its spread over held-out chunks
    value_se: dict = field(default_factory=dict)
    #: held-out loss at the best check with the gates at keep and with every gate off (the weights measured at)
    best_losses: tuple[float, float] = (math.inf, math.inf)

    def modules(self):
        return list(dict.fromkeys(m for per in self.units.values() for m in per.values()))

    def set_reference(self) -> None:
        """Every gate at ``keep`` and every direction on: the point R values are measured around."""
        for module in self.modules():
            for method in module.methods:
                module.set_gate(method, self.config.keep)

    def loss(self, settings=()) -> float:
        """Held-out loss at R with ``settings`` ((layer, method, gate, rank kept or None) tuples) applied, then R again."""
        self.set_reference()
        for layer, method, g, k in settings:
            self.units[layer][method].set_gate(method, g, k)
        self.passes += 1
        try:
            return held_out_loss(self.model, self.held_texts, self.held_y, self.config.eval_batch)
        finally:
            self.set_reference()

    def off(self, layer: str) -> list[tuple]:
        return [(layer, m, 0.0, None) for m in self.units[layer]]

    def only(self, layer: str, method: str, k: int | None = None) -> list[tuple]:
        return [(layer, m, 1.0 if m == method else 0.0, k if m == method else None) for m in self.units[layer]]


def _eligible(layer: dict, wanted: set[str]) -> tuple[str, ...]:
    """The gated-linear methods a layer's kind takes (the catalog's ``fits``)."""
    return tuple(m for m in ("lora", "ia3", "adapter") if m in wanted and layer["kind"] in METHODS[m].fits)


def _prefix_host(encoder: nn.Module, name: str) -> str | None:
    """The attention module whose prefix a value projection stands for: its parent, if BERT-family self-attention."""
    parent = name.rpartition(".")[0]
    if not parent or not name.endswith(".value"):
        return None
    attn = encoder.get_submodule(parent)
    return parent if all(hasattr(attn, a) for a in ("query", "key", "value", "num_attention_heads")) else None


def _check(config: MethodProbeConfig) -> None:
    if config.max_steps < 1 or config.rank < 1 or config.batch_size < 1 or config.eval_every < 1 or config.patience < 1:
        raise LayerlensError("--probe-steps, --probe-rank and --batch-size must be at least 1")
    if config.min_steps > config.max_steps:
        config.min_steps = config.max_steps
    if not (config.lr > 0 and math.isfinite(config.lr)):
        raise LayerlensError(f"--probe-lr must be a positive number, got {config.lr!r}")
    for method, lr in config.lrs.items():
        if method not in PROBED:
            raise LayerlensError(f"--method-lr {method}={lr}: the probe measures {', '.join(PROBED)}")
        if not (lr > 0 and math.isfinite(lr)):
            raise LayerlensError(f"--method-lr {method}={lr}: a learning rate must be a positive number")
    unknown = [m for m in config.methods if m not in PROBED]
    if unknown or not config.methods:
        raise LayerlensError(f"the probe measures {', '.join(PROBED)}; got {', '.join(config.methods) or 'nothing'}")
    if config.estimate not in ESTIMATES:
        raise LayerlensError(f"--probe-estimate {config.estimate!r}: choose {' or '.join(ESTIMATES)}")
    if not 0 < config.keep <= 1:
        raise LayerlensError(f"the probe's gate keep probability must be in (0, 1], got {config.keep}")
    if config.held_out is not None and config.held_out < MIN_HELD_OUT:
        raise LayerlensError(f"--held-out {config.held_out} is too few to measure layer values (noise swamps them); use at least {MIN_HELD_OUT}")
    if config.device.startswith("cuda") and not torch.cuda.is_available():
        raise LayerlensError(f"--device {config.device}: CUDA is not available on this machine; use --device cpu")


def train_gated_probe(model_spec: str, data_path: str, config: MethodProbeConfig | None = None) -> GatedProbe:
    """Step 1: every method on every layer behind random gates, trained until the held-out loss stops improving."""
    config = config or MethodProbeConfig()
    _check(config)
    task = load_task(model_spec, data_path, config.objective, config.device, config.dtype, config.max_length,
                     progress=config.progress, seed=config.seed)
    texts, labels = task.examples, task.labels
    held_n = held_out_size(len(texts), config.held_out)
    if len(texts) < held_n + config.batch_size:
        least = MIN_HELD_OUT + config.batch_size
        raise LayerlensError(
            f"{data_path} has too few examples ({len(texts)}): the probe needs at least {least} ({MIN_HELD_OUT} held out to measure on plus "
            f"{config.batch_size} to train on)" + ("" if config.held_out is None else f"; --held-out {config.held_out} asks for more"))
    order = list(range(len(texts)))
    random.Random(config.seed).shuffle(order)
    held, train = order[:held_n], order[held_n:]
    if task.objective == "classification" and len({labels[i] for i in train}) < 2:
        raise LayerlensError(f"{data_path}: the probe's training rows carry a single label; a probe needs at least two classes")
    prior = label_prior_loss([labels[i] for i in train], [labels[i] for i in held]) if task.objective == "classification" else None

    torch.manual_seed(config.seed)
    model, model_name = task.model, task.model_name
    encoder = model.encoder
    found = adaptable_layers(model, config)  # a layer the loss never reaches (an unused pooler) is skipped after training
    wanted = set(config.methods)
    own_parameters = sum(p.numel() for p in encoder.parameters())
    for p in model.parameters():
        p.requires_grad_(False)
    units: dict[str, dict[str, nn.Module]] = {}
    rank_of: dict[tuple[str, str], int] = {}
    hosts: dict[str, str] = {}
    for l in found:
        methods = _eligible(l, wanted)
        host = _prefix_host(encoder, l["name"]) if "prefix" in wanted and l["kind"] in METHODS["prefix"].fits else None
        if host is not None:
            hosts[l["name"]] = host
        units[l["name"]] = {}
        if methods:
            gated = GatedLinear(encoder.get_submodule(l["name"]), methods, config.rank, alpha=2.0 * config.rank)
            _set(encoder, l["name"], gated)
            for m in methods:
                units[l["name"]][m] = gated
            rank_of[l["name"], "lora"] = gated.lora_rank
            rank_of[l["name"], "adapter"] = gated.adapter_width
    for layer, host in hosts.items():  # after the projections: the prefix wraps the attention that holds them
        gated = GatedPrefixAttention(encoder.get_submodule(host), config.rank)
        _set(encoder, host, gated)
        units[layer]["prefix"] = gated
        rank_of[layer, "prefix"] = config.rank
    unfit = [n for n, u in units.items() if not u]  # a kind no probed method fits (e.g. a pooler of kind 'other')
    units = {n: u for n, u in units.items() if u}
    if not units:
        raise LayerlensError("the probe found no layer that takes any of " + ", ".join(config.methods))
    modules = list(dict.fromkeys(m for per in units.values() for m in per.values()))
    for module in modules:
        for method in module.methods:
            for p in _params(module, method):
                p.requires_grad_(True)
    for p in model.head.parameters():
        p.requires_grad_(True)
    owners = _owners(modules)

    run = GatedProbe(model=model, units=units, layers=[l for l in found if l["name"] in units], rank_of=rank_of,
                     held_texts=[texts[i] for i in held], held_y=torch.tensor([labels[i] for i in held], device=config.device),
                     task_info=task.info, model_name=model_name, train_examples=len(train), skipped=[], steps=0, seconds=0.0, curve=[],
                     config=config, own_parameters=own_parameters, prior=prior)
    gen = torch.Generator().manual_seed(config.seed + 1)
    gates = [(module, method) for module in modules for method in module.methods]

    def draw(fast=True):
        on = (torch.rand(len(gates), generator=gen) < config.keep).tolist()
        for (module, method), g in zip(gates, on):
            module.set_gate(method, 1.0 if g else 0.0, fast=fast)

    # The first step computes every branch, off or on: the branches whose parameters it gives a gradient (zero where
    # the gate is off) are those the loss reaches. Later steps skip the branches that are off (the same numbers, see
    # _Gates); AdamW must still see the zero gradient those would have had (its moments and weight decay move on).
    reached: set[tuple[int, str]] = set()
    branches = [(module, method, _params(module, method)) for module in modules for method in module.methods]

    def before_update(step):
        for module, method, params in branches:
            if step == 0:
                if any(p.grad is not None for p in params):
                    reached.add((id(module), method))
            elif (id(module), method) in reached and module.fixed(method) == 0.0:
                for p in params:
                    if p.grad is None:
                        p.grad = torch.zeros_like(p)

    # the best check so far: its held-out loss with the gates at keep, with every gate off (measured only when needed),
    # its step and trainable weights; checks since
    best = {"loss": math.inf, "without": None, "step": 0, "state": None, "since": 0}
    trainable = [p for p in model.parameters() if p.requires_grad]

    def load(state):
        with torch.no_grad():
            for p, saved in zip(trainable, state):
                p.copy_(saved)

    def without_at_best() -> float:
        """The held-out loss with every gate off at the best check's weights: what trust is judged against. Only a
        plateau (stop or train on?) and the manifest need it, so it is measured then, once per best check."""
        if best["without"] is None:
            current = [p.detach().clone() for p in trainable]
            load(best["state"])
            best["without"] = run.loss([s for layer in run.units for s in run.off(layer)])
            load(current)
        return best["without"]

    def on_step(step):
        run.steps = step + 1
        stop = False
        if run.steps % config.eval_every == 0 or run.steps == config.max_steps:
            model.eval()
            value = run.loss()  # every gate at keep: the point the values are measured around
            run.curve.append((run.steps, value))
            if value < best["loss"] - 1e-4:
                best.update(loss=value, without=None, step=run.steps, since=0, state=[p.detach().clone() for p in trainable])
            else:
                best["since"] += 1
            if run.steps >= config.min_steps and best["since"] >= config.patience:
                # a plateau stops the run only once its best check has learned enough to be trusted; else train to the cap
                stop = _trust(best["loss"], without_at_best(), run.prior, config.min_gain) is None
                run.plateaus_trained_through += not stop
            model.train()
        draw()
        return stop

    draw(fast=False)
    run.seconds = train_steps(model, [texts[i] for i in train], [labels[i] for i in train], config.max_steps, config.batch_size,
                              config.lr, config.seed, "probe training (all methods)", config.progress, on_step=on_step,
                              lrs=None, groups=_groups(model, owners, config), before_update=before_update)
    if best["state"] is not None:  # measure at the best check, not at the last step
        run.best_losses = (best["loss"], without_at_best())
        if best["step"] != run.steps:
            load(best["state"])
    run.best_step = best["step"] or run.steps
    untouched = [n for n, per in units.items() if all((id(mod), m) not in reached for m, mod in per.items())]
    run.skipped = [l["name"] for l in found if l["name"] in unfit or l["name"] in untouched]  # not measured, in model order
    for name in untouched:
        del units[name]
    run.layers = [l for l in run.layers if l["name"] in units]
    if not units:
        raise LayerlensError("no linear layer of the model received a gradient from the loss; is the encoder's output used?")
    for module in modules:
        module.order_directions()
    run.set_reference()
    return run


def _trust(reference: float, without: float, prior: float | None, min_gain: float) -> str | None:
    """The probe's trust warning against the lower of its loss with every gate off and the label prior's: a head trained
    with the adapters on can do worse without them than a constant guess, and beating that alone proves nothing."""
    if prior is not None and prior < without:
        return trust_warning(reference, prior, min_gain, "predicting the training labels' frequencies")
    return trust_warning(reference, without, min_gain)


def _owners(modules) -> dict[int, str]:
    """Parameter id -> the method it belongs to."""
    owner = {}
    for module in modules:
        for method in module.methods:
            for p in _params(module, method):
                owner[id(p)] = method
    return owner


def _groups(model, owners: dict[int, str], config: MethodProbeConfig) -> list[dict]:
    """AdamW groups: each method's parameters at its rate (``config.lrs``, else the catalog's), the rest at ``config.lr``."""
    by: dict[str | None, list] = {}
    for p in model.parameters():
        if p.requires_grad:
            by.setdefault(owners.get(id(p)), []).append(p)
    out = []
    for method, params in by.items():
        rate = config.lr if method is None else config.lrs.get(method, METHODS[method].lr or config.lr)
        out.append({"params": params, "lr": rate})
    return out


def _params(module: nn.Module, method: str) -> list[nn.Parameter]:
    """The trained parameters of ``method`` on ``module``."""
    out = []
    for part in module.parts[method]:
        obj = getattr(module, part)
        out += list(obj.parameters()) if isinstance(obj, nn.Module) else [obj]
    return out


# ----------------------------------------------------------------------------- measuring


def gradient_values(run: GatedProbe) -> tuple[dict, dict]:
    """First-order values at R: ``v[l, m] = -dL/dg[l, m]`` and per-direction ``a[l, m] = -dL/dh[l, m]`` (one backward pass
    per held-out chunk, this rank's share, summed over ranks)."""
    run.set_reference()
    model, config = run.model, run.config
    tensors = []
    for module in run.modules():
        for method in module.methods:
            for t in (module.gate(method), module.directions(method)):
                if t is not None:
                    t.requires_grad_(True)
                    t.grad = None
                    tensors.append(t)
    count = max(model.count(run.held_texts), 1)  # the held-out loss is a mean over rows or target tokens
    keys = [(layer, method) for layer, per in run.units.items() for method in per]
    gates = [run.units[layer][method].gate(method) for layer, method in keys]
    # each chunk's share of every value (chunks of the held-out rows, whichever processes compute them): their spread
    # over chunks is the values' sampling noise (value_se), the same under torchrun as in one process
    held = list(range(len(run.held_texts)))
    starts = range(0, len(held), config.gradient_batch)
    shares = torch.zeros(len(starts), len(keys), dtype=torch.float64)
    before = torch.zeros(len(keys), dtype=torch.float64)
    model.eval()
    try:
        with torch.enable_grad():
            for j, s in enumerate(starts):
                part = share(held[s : s + config.gradient_batch])  # this rank's rows of the chunk
                if not part:
                    continue
                value, _ = model.loss_sum([run.held_texts[i] for i in part], run.held_y[part], precise=True)
                loss = value / count
                loss.backward()
                run.passes += 1
                now = torch.stack([torch.zeros((), dtype=torch.float64) if g.grad is None else g.grad.double() for g in gates])
                shares[j] = now - before
                before = now
        for t in tensors:
            if t.grad is None:
                t.grad = torch.zeros_like(t)
            all_sum(t.grad)
        all_sum(shares)
        chunks = len(starts)
        # the variance of a sum of chunk shares drawn alike: chunks x the shares' sample variance
        spread = shares.var(dim=0, correction=1) * chunks if chunks > 1 else torch.full((len(keys),), math.inf, dtype=torch.float64)
        run.value_se = {k: math.sqrt(float(x)) for k, x in zip(keys, spread)}
        values, directions = {}, {}
        for layer, per in run.units.items():
            for method, module in per.items():
                values[layer, method] = -float(module.gate(method).grad)
                h = module.directions(method)
                if h is not None:
                    directions[layer, method] = (-h.grad.double()).tolist()
    finally:
        for t in tensors:
            t.requires_grad_(False)
            t.grad = None
        # the trained parameters' gradients from these passes are not the training's: drop them
        for p in model.parameters():
            p.grad = None
    return values, directions


def shrink(values: dict, se: dict) -> tuple[dict, dict]:
    """James-Stein shrinkage (positive part) of each method's values toward that method's mean over layers.

    A probe that has not learned a task well measures values that are mostly sampling noise; taken at face value, the
    integer program then spends a small budget on the two or three layers that noise put on top. With ``k`` layers
    carrying a method, their mean ``m``, spread ``S = sum (v - m)^2`` and mean squared standard error ``s2``, each value
    becomes ``m + (1 - B)(v - m)`` with ``B = min(1, (k - 3) s2 / S)``: pure noise is pulled to the mean (every layer
    worth the same, so the budget spreads), a clear signal is left nearly as measured. Fewer than 4 layers: unchanged.
    Returns the shrunk values and ``B`` per method."""
    out, factors = dict(values), {}
    for method in dict.fromkeys(m for _, m in values):
        keys = [k for k in values if k[1] == method]
        if len(keys) < 4 or any(not math.isfinite(se.get(k, math.inf)) for k in keys):
            continue
        mean = sum(values[k] for k in keys) / len(keys)
        spread = sum((values[k] - mean) ** 2 for k in keys)
        noise = sum(se[k] ** 2 for k in keys) / len(keys)
        factor = 1.0 if spread <= 0 else min(1.0, (len(keys) - 3) * noise / spread)
        for k in keys:
            out[k] = mean + (1.0 - factor) * (values[k] - mean)
        factors[method] = factor
    return out, factors


def _fractions(run: GatedProbe, layer: str, method: str, directions: dict | None, exact: dict | None) -> dict[int, float]:
    """Captured fraction at each candidate rank up to the probe's, non-decreasing, in [0, 1]."""
    spec = METHODS[method]
    if not spec.ranked:
        return {spec.fixed_rank: 1.0}
    full = run.rank_of[layer, method]
    ks = [k for k in run.config.ranks if k < full] + [full]
    out, prev = {}, 0.0
    for k in ks:
        if k == full:
            frac = 1.0
        elif exact is not None:
            frac = exact[layer, method, k]
        else:
            a = directions[layer, method]
            total = sum(a)
            frac = sum(a[:k]) / total if total > 0 else k / full
        prev = max(prev, min(1.0, max(0.0, frac)))
        out[k] = prev
    return out


def exact_values(run: GatedProbe) -> tuple[dict, dict]:
    """Measured values ``loss(R, l off) - loss(R, l only m)`` and truncated fractions, one held-out pass each."""
    jobs = []
    for layer, per in run.units.items():
        jobs.append(("off", layer))
        for method in per:
            jobs.append(("only", layer, method))
            if METHODS[method].ranked:
                jobs += [("rank", layer, method, k) for k in run.config.ranks if k < run.rank_of[layer, method]]
    off, only, trunc = {}, {}, {}
    for job in _progress(jobs, run.config.progress, "probe ablations", unit="pass"):
        if job[0] == "off":
            off[job[1]] = run.loss(run.off(job[1]))
        elif job[0] == "only":
            only[job[1], job[2]] = run.loss(run.only(job[1], job[2]))
        else:
            trunc[job[1:]] = run.loss(run.only(job[1], job[2], job[3]))
    values = {(l, m): off[l] - v for (l, m), v in only.items()}
    fractions = {}
    for (l, m, k), v in trunc.items():
        d = values[l, m]
        fractions[l, m, k] = (off[l] - v) / d if d > 0 else 1.0
    return values, fractions


def method_alone(run: GatedProbe, without: float) -> dict[str, float]:
    """Per method m, the held-out loss drop when every layer carries only m (the layers that do not take m carry
    nothing) against every gate off, at the probe's weights: one pass per method. A fidelity diagnostic: how the probe's
    trained state ranks the methods as whole-model choices, next to the sum of their per-layer values."""
    methods = sorted({m for per in run.units.values() for m in per}, key=list(METHODS).index)
    out = {}
    for method in methods:
        settings = [(layer, m, 1.0 if m == method else 0.0, None) for layer, per in run.units.items() for m in per]
        out[method] = without - run.loss(settings)
    return out


def pair_terms(run: GatedProbe) -> list[dict]:
    """Leave-pair-out interactions of whole layers inside each block, around R (exact passes)."""
    blocks: dict[Any, list[str]] = {}
    for l in run.layers:
        if l["block"] is not None:
            blocks.setdefault(l["block"], []).append(l["name"])
    pairs = [p for members in blocks.values() for p in combinations(members, 2)]
    if not pairs:
        return []
    ref = run.loss()
    layers = list(dict.fromkeys(n for p in pairs for n in p))
    drop = {n: run.loss(run.off(n)) - ref for n in _progress(layers, run.config.progress, "probe layer ablations", unit="pass")}
    out = []
    for a, b in _progress(pairs, run.config.progress, "probe pair ablations", unit="pass"):
        both = run.loss(run.off(a) + run.off(b)) - ref
        out.append({"layers": [a, b], "value": both - drop[a] - drop[b], "when": "either"})
    return out


def method_probe(model_spec: str, data_path: str, config: MethodProbeConfig | None = None) -> dict:
    """Run the all-method probe and return the manifest as a dict (schema version 2)."""
    from ..metrics import spearman

    config = config or MethodProbeConfig()
    t0 = time.perf_counter()
    run = train_gated_probe(model_spec, data_path, config)
    t1 = time.perf_counter()
    clock = {}  # seconds of each measuring phase: what --probe-fidelity and --interactions add to the default's cost

    def timed(phase, fn):
        start = time.perf_counter()
        out = fn()
        clock[phase] = round(time.perf_counter() - start, 2)
        return out

    # the best check measured both at these weights (order_directions only rewrote them into an equal form): not again
    reference, without = run.best_losses
    if not math.isfinite(reference):  # no check ever measured a finite loss: measure here, and let the values say so
        reference, without = run.loss(), run.loss([s for layer in run.units for s in run.off(layer)])
    grad_values = grad_dirs = exact = fractions = None
    if config.estimate == "gradient" or config.fidelity:
        grad_values, grad_dirs = timed("gradient", lambda: gradient_values(run))
    if config.estimate == "exact" or config.fidelity:
        exact, fractions = timed("exact", lambda: exact_values(run))
    values = grad_values if config.estimate == "gradient" else exact
    shrinkage = None
    if config.estimate == "gradient" and config.shrink:
        values, shrinkage = shrink(values, run.value_se)
    alone = timed("method alone", lambda: method_alone(run, without)) if config.fidelity else None
    pairs = timed("pairs", lambda: pair_terms(run)) if config.interactions else None
    measure_s = time.perf_counter() - t1

    manifest_layers = []
    for l in run.layers:
        n = l["name"]
        per = {m: values[n, m] for m in run.units[n]}
        best = max(0.0, max(per.values()))
        curves = {}
        for m, v in per.items():
            frac = _fractions(run, n, m, grad_dirs if config.estimate == "gradient" else None, fractions if config.estimate == "exact" else None)
            curves[m] = {str(k): (min(1.0, max(0.0, v) * f / best) if best > 0 else 0.0) for k, f in frac.items()}
        entry: dict[str, Any] = {"name": n, "kind": l["kind"], "in_features": l["in_features"], "out_features": l["out_features"]}
        if l["block"] is not None:
            entry["block"] = l["block"]
        entry["metrics"] = {PROBE_METRIC: best}
        entry["allowed_methods"] = [m for m in METHODS if m in per] + ["none"]
        entry["gain_curves"] = curves
        manifest_layers.append(entry)

    warning = _trust(reference, without, run.prior, config.min_gain) or nothing_ranked_warning(
        manifest_layers, "give more rows or more --probe-steps, or use --signal first-order")
    fidelity = None
    if grad_values is not None and exact is not None:
        keys = sorted(exact)
        fidelity = {"spearman": spearman([grad_values[k] for k in keys], [exact[k] for k in keys]),
                    "pairs": len(keys),
                    "per_method": {m: spearman([grad_values[k] for k in keys if k[1] == m], [exact[k] for k in keys if k[1] == m])
                                   for m in dict.fromkeys(k[1] for k in keys) if sum(k[1] == m for k in keys) >= 3},
                    "method_alone": alone,
                    "method_value_sums": {m: sum(v for (_, mm), v in values.items() if mm == m) for m in alone}}
    measured = sorted({m for per in run.units.values() for m in per}, key=list(METHODS).index)
    how = "first-order gate attribution" if config.estimate == "gradient" else "exact held-out ablation"
    sources = {m: (f"gated probe ({how}, rank {config.rank}, {run.steps} steps)" if m in measured else
                   "not offered: " + ("cannot be trained on this model's layers" if m in PROBED else "not measured by the probe"))
               for m in METHODS if not METHODS[m].is_none}
    rates = {m: config.lrs.get(m, METHODS[m].lr or config.lr) for m in measured}
    manifest: dict[str, Any] = {
        "schema_version": SCHEMA_VERSION,
        "model": {
            "name": run.model_name,
            "num_parameters": run.own_parameters,
            "profiled_on": data_name(data_path),
            **run.task_info,
            "signal": "probe",
            "seed": config.seed,
            "probe": {
                "methods": measured, "rank": config.rank, "keep": config.keep, "estimate": config.estimate,
                "steps": run.steps, "best_step": run.best_step, "max_steps": config.max_steps, "lr": config.lr, "method_lr": rates,
                "batch_size": config.batch_size, "train_examples": run.train_examples, "held_out_examples": len(run.held_texts),
                "held_out_loss": reference, "held_out_loss_without_adapters": without,
                **({"held_out_loss_label_prior": run.prior} if run.prior is not None else {}),
                "held_out_curve": [[s, v] for s, v in run.curve],
                "plateaus_trained_through": run.plateaus_trained_through,
                "trusted": warning is None, **({"warning": warning} if warning else {}),
                **({"fidelity": fidelity} if fidelity else {}),
                **({"shrinkage": shrinkage} if shrinkage is not None else {}),
                "held_out_passes": run.passes, "pairs": len(pairs) if pairs is not None else 0,
                "seconds_training": round(run.seconds, 2), "seconds_measuring": round(measure_s, 2),
                "seconds_by_phase": clock,
            },
            "seconds": round(time.perf_counter() - t0, 2),
            "skipped_layers": run.skipped,
        },
        "metric_weights": {PROBE_METRIC: 1.0},
        "layers": manifest_layers,
        "metadata": {
            "probe_values": {f"{l}|{m}": v for (l, m), v in values.items()},
            **({"probe_values_measured": {f"{l}|{m}": v for (l, m), v in grad_values.items()},
                "probe_value_se": {f"{l}|{m}": v for (l, m), v in run.value_se.items()}} if grad_values is not None else {}),
            "gain_sources": sources,
        },
    }
    if pairs is not None:
        manifest["interactions"] = {"metric": PROBE_METRIC, "pairs": pairs}
    return manifest

