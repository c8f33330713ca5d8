"""Inject an allocation's PEFT modules into a torch model and freeze everything else.

``apply(model, allocation)`` handles every method of the catalog, so mixed
allocations (which no single peft config can express) train as allocated:

========  =====================================================  ==========================
method    injected module                                        trainable parameters
========  =====================================================  ==========================
lora      ``W x + (alpha/r) B A x`` (A kaiming, B = 0)            r (d_in + d_out)
adapter   on the layer's output: ``y + up(gelu(down(y)))``,       2 d_out r + r + d_out
          down d_out->r and up r->d_out with biases, up = 0
ia3       on the layer's output: ``y * l`` (l = 1)                d_out
prefix    learned key and value prefixes of length p, attended    2 p d_out
          by every query of the layer's attention block
========  =====================================================  ==========================

Prefix needs the attention internals: it is supported on BERT-family self
attention (a module with ``query``/``key``/``value`` projections and
``num_attention_heads``: BERT, RoBERTa, MiniLM, ViT). The allocation names the
value projection (or the attention module itself); elsewhere ``apply`` raises
a clear error. LoRA, adapters and IA3 work on any ``nn.Linear`` or
transformers ``Conv1D``.

After ``apply``, the trainable parameter count equals the allocation's
``total_params`` exactly (tested); any head you train is on top of that.
"""

from __future__ import annotations

import math
import re
from typing import Any, Mapping

import torch
from torch import nn

from .allocation import Allocation, as_allocation
from .errors import LayerlensError
from .integrity import rank_problem, usable_failures
from .methods import METHODS, param_cost


def _dims(base: nn.Module) -> tuple[int, int, bool]:
    if isinstance(base, nn.Linear):
        return base.in_features, base.out_features, False
    try:
        from transformers.pytorch_utils import Conv1D
    except ImportError:  # pragma: no cover
        Conv1D = None
    if Conv1D is not None and isinstance(base, Conv1D):
        return base.weight.shape[0], base.weight.shape[1], True
    raise LayerlensError(f"cannot adapt a {type(base).__name__}: only nn.Linear and Conv1D layers")


class LoRALinear(nn.Module):
    def __init__(self, base: nn.Module, rank: int, alpha: float):
        super().__init__()
        d_in, d_out, _ = _dims(base)
        self.wrapped = base
        self.lora_A = nn.Parameter(torch.empty(rank, d_in))
        self.lora_B = nn.Parameter(torch.zeros(d_out, rank))
        nn.init.kaiming_uniform_(self.lora_A, a=math.sqrt(5))
        self.scaling = alpha / rank

    def forward(self, x):
        y = self.wrapped(x)  # (a half-precision model: the update computes in float32 and is added in the model's dtype)
        return y + ((x.float() @ self.lora_A.t() @ self.lora_B.t()) * self.scaling).to(y.dtype)


class AdapterOut(nn.Module):
    def __init__(self, base: nn.Module, rank: int):
        super().__init__()
        _, d_out, _ = _dims(base)
        self.wrapped = base
        self.down = nn.Linear(d_out, rank)
        self.up = nn.Linear(rank, d_out)
        nn.init.zeros_(self.up.weight)
        nn.init.zeros_(self.up.bias)

    def forward(self, x):
        y = self.wrapped(x)
        return y + self.up(nn.functional.gelu(self.down(y.float()))).to(y.dtype)


class IA3Out(nn.Module):
    def __init__(self, base: nn.Module):
        super().__init__()
        _, d_out, _ = _dims(base)
        self.wrapped = base
        self.scale = nn.Parameter(torch.ones(d_out))

    def forward(self, x):
        y = self.wrapped(x)
        return (y.float() * self.scale).to(y.dtype)


class PrefixSelfAttention(nn.Module):
    """BERT-family self-attention with ``length`` learned key/value positions prepended."""

    def __init__(self, attn: nn.Module, length: int):
        super().__init__()
        for attr in ("query", "key", "value", "num_attention_heads"):
            if not hasattr(attn, attr):
                raise LayerlensError(
                    f"prefix needs BERT-family self-attention (query/key/value projections); {type(attn).__name__} has no {attr!r}"
                )
        self.wrapped = attn
        value = getattr(attn.value, "wrapped", attn.value)  # through a wrapper of ours (the probe wraps the projections first)
        width = value.out_features if isinstance(value, nn.Linear) else _dims(value)[1]
        self.prefix_key = nn.Parameter(torch.randn(length, width) * 0.02)
        self.prefix_value = nn.Parameter(torch.randn(length, width) * 0.02)

    def prefix_offset(self):
        """What is added to the attention scores of the prefix positions (None: nothing; the probe gates them here)."""
        return None

    def forward(self, hidden_states, attention_mask=None, *args, **kwargs):
        a = self.wrapped
        heads = a.num_attention_heads
        B, T, _ = hidden_states.shape
        q = a.query(hidden_states)
        k = a.key(hidden_states)
        v = a.value(hidden_states)
        head = q.shape[-1] // heads
        p = self.prefix_key.shape[0]
        k = torch.cat([self.prefix_key.expand(B, p, -1), k], 1)
        v = torch.cat([self.prefix_value.expand(B, p, -1), v], 1)

        def split(t):
            return t.view(B, t.shape[1], heads, head).transpose(1, 2)

        q, k, v = split(q), split(k), split(v)
        scores = q @ k.transpose(-1, -2) / math.sqrt(head)
        offset = self.prefix_offset()
        if offset is not None:
            scores = torch.cat([scores[..., :p] + offset, scores[..., p:]], -1)
        if attention_mask is not None:
            mask = attention_mask
            if mask.dtype == torch.bool:
                mask = torch.zeros(mask.shape, dtype=scores.dtype, device=scores.device).masked_fill(~mask, torch.finfo(scores.dtype).min)
            mask = mask.to(scores.dtype)
            pad = torch.zeros(*mask.shape[:-1], p, dtype=mask.dtype, device=mask.device)
            scores = scores + torch.cat([pad, mask], -1)
        probs = torch.softmax(scores, -1)
        dropout = getattr(a, "dropout", None)
        if dropout is not None and self.training:
            probs = dropout(probs)
        out = (probs @ v).transpose(1, 2).reshape(B, T, heads * head)
        return out, probs


def _shape(module: nn.Module) -> tuple[int, int]:
    """(d_in, d_out) of the layer an allocation entry names: through our wrappers, and a prefix's attention to its value."""
    inner = getattr(module, "wrapped", module)
    if hasattr(inner, "query") and hasattr(inner, "value"):
        inner = getattr(inner.value, "wrapped", inner.value)
    return _dims(getattr(inner, "wrapped", inner))[:2]


WRAPPED = re.compile(r"\.wrapped(?=\.|$)")


def _resolve(model: nn.Module, name: str, modules: dict[str, nn.Module]) -> str:
    """The module's current name: exact, under a wrapper we injected, or under a unique prefix."""
    if name in modules:
        return name
    plain = {WRAPPED.sub("", n): n for n in modules}
    if name in plain:
        return plain[name]
    matches = [real for n, real in plain.items() if n.endswith("." + name)]
    if len(matches) == 1:
        return matches[0]
    if not matches:
        raise LayerlensError(f"allocation layer {name!r} is not a module of this model")
    raise LayerlensError(f"allocation layer {name!r} matches several modules ({', '.join(matches[:3])}); pass the model the allocation was solved for")


def _set(model: nn.Module, name: str, new: nn.Module) -> None:
    parent_name, _, attr = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    setattr(parent, attr, new)


#: method -> injector(model, module name, module, rank, alpha_ratio, named modules) -> (name to replace, new module).
#: The new module wraps the old one as ``wrapped``; its other parameters are the trainable ones.
INJECTORS: dict = {}


def register_injector(method: str, injector=None):
    """Register how ``method`` (a catalog entry, :func:`layerlens_opt.methods.register_method`) is injected;
    usable as a decorator."""
    from .methods import METHODS

    def add(fn):
        if method not in METHODS:
            raise ValueError(f"register the method {method!r} in layerlens_opt.methods before its injector")
        INJECTORS[method] = fn
        return fn

    return add(injector) if injector is not None else add


def apply(model: nn.Module, allocation: Allocation | Mapping[str, Any], alpha_ratio: float = 2.0, freeze: bool = True) -> int:
    """Inject the allocation into ``model`` (in place) and return the trainable parameters added.

    ``allocation`` is an :class:`~layerlens_opt.allocation.Allocation` (``solve``, ``load_allocation``),
    a ``solve --json`` dict, checked like a loaded file, or the path of such a file. Layer names may be relative to a submodule
    (e.g. the encoder inside a classifier). With ``freeze`` every other parameter is frozen first.
    Each layer's ``params`` must be what its method and rank cost on this model's module.
    """
    allocation = as_allocation(allocation)
    broken = usable_failures(allocation)
    if broken:
        raise LayerlensError(f"allocation not applied: {broken[0]}")
    return inject(model, [(l.name, l.method, l.rank, l.params) for l in allocation.layers], alpha_ratio, freeze)


def inject(model: nn.Module, choices, alpha_ratio: float = 2.0, freeze: bool = True) -> int:
    """Inject ``(name, method, rank, params)`` tuples (``params`` None: not checked) into ``model``;
    what :func:`apply` does after checking the allocation, and what the probe uses for its own ranks."""
    if freeze:
        for p in model.parameters():
            p.requires_grad_(False)
    modules = dict(model.named_modules())
    added: list[nn.Module] = []
    for name, method, rank, params in choices:
        if METHODS[method].is_none:
            continue
        full = _resolve(model, name, modules)
        base = modules[full]
        d_in, d_out = _shape(base)  # a hand-edited or foreign allocation must not reach training
        why = rank_problem(method, rank, d_in, d_out)
        cost = param_cost(method, rank, d_in, d_out)
        if why or (params is not None and cost != params):
            raise LayerlensError(f"allocation layer {name!r}: " + (why or f"params {params:,} but {method} rank {rank} "
                                 f"on this model's {d_in}x{d_out} module costs {cost:,}") + "; is it the model the allocation was solved for?")
        injector = INJECTORS.get(method)
        if injector is None:
            raise LayerlensError(f"layer {name!r}: no injector for method {method!r}; register one with "
                                 "layerlens_opt.inject.register_injector")
        full, new = injector(model, full, base, rank, alpha_ratio, modules)
        new.peft_method = method  # what param_groups reads to give each method its own learning rate
        for pname, p in new.named_parameters():
            if not pname.startswith("wrapped."):  # only the new module's own parameters
                p.requires_grad_(True)
        _set(model, full, new)
        modules = dict(model.named_modules())
        added.append(new)
    return sum(p.numel() for m in added for n, p in m.named_parameters() if not n.startswith("wrapped."))


def param_groups(model: nn.Module, lr: float, lrs: Mapping[str, float] | None = None) -> list[dict]:
    """AdamW parameter groups for ``model``'s trainable parameters: the parameters each injected method added, at
    ``lrs[method]`` (default: the catalog's :attr:`~layerlens_opt.methods.MethodSpec.lr`, else ``lr``); every other
    trainable parameter (a head) at ``lr``. Groups in the catalog's order, empty ones left out."""
    lrs = dict(lrs or {})
    owner: dict[int, str] = {}
    for module in model.modules():
        method = getattr(module, "peft_method", None)
        if method is not None:
            for pname, p in module.named_parameters():
                if not pname.startswith("wrapped."):
                    owner[id(p)] = method
    by_method: dict[str | None, list] = {}
    for p in model.parameters():
        if p.requires_grad:
            by_method.setdefault(owner.get(id(p)), []).append(p)

    def rate(method):
        if method is None:
            return lr
        return lrs.get(method, METHODS[method].lr if METHODS[method].lr is not None else lr)

    order = [m for m in METHODS if m in by_method] + ([None] if None in by_method else [])
    return [{"params": by_method[m], "lr": rate(m), "method": m or "other"} for m in order]


def trainable_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


@register_injector("lora")
def _inject_lora(model, name, base, rank, alpha_ratio, modules):
    return name, LoRALinear(base, rank, alpha_ratio * rank)


@register_injector("adapter")
def _inject_adapter(model, name, base, rank, alpha_ratio, modules):
    return name, AdapterOut(base, rank)


@register_injector("ia3")
def _inject_ia3(model, name, base, rank, alpha_ratio, modules):
    return name, IA3Out(base)


@register_injector("prefix")
def _inject_prefix(model, name, base, rank, alpha_ratio, modules):
    # the allocation names the value projection (or the attention module itself)
    attn_name = WRAPPED.sub("", name).rpartition(".")[0] if not hasattr(base, "query") else name
    attn_name = _resolve(model, attn_name, modules)
    return attn_name, PrefixSelfAttention(model.get_submodule(attn_name), rank)
