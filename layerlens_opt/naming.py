"""Kind, role and block of a layer from its module name (BERT, RoBERTa, ViT, GPT-2, LLaMA naming).

The one place these rules live: the profiler uses them to describe layers, the
problem builder to find the value projection (or fused q,k,v) of a block that may
take prefix tuning. Pure Python, no torch: the rules are tested on names alone.
A user's patterns (``--kind-pattern REGEX=KIND``, ``--block-pattern REGEX``) are
tried first by the profiler.
"""

from __future__ import annotations

import functools
import re
from typing import Sequence

from .errors import LayerlensError
from .methods import KINDS

# (pattern, kind, role) tried in order; role is informative (q, k, v, o, up, down, gate)
RULES: tuple[tuple[re.Pattern, str, str], ...] = tuple(
    (re.compile(p, re.IGNORECASE), kind, role)
    for p, kind, role in [
        (r"(^|[._])(query|q_proj|q_lin|q_linear|to_q|wq|q)$", "attention", "q"),
        (r"(^|[._])(key|k_proj|k_lin|k_linear|to_k|wk|k)$", "attention", "k"),
        (r"(^|[._])(value|v_proj|v_lin|v_linear|to_v|wv|v)$", "attention", "v"),
        (r"(^|[._])(c_attn|qkv|query_key_value|wqkv|in_proj)$", "attention", "qkv"),
        (r"attention\.output\.dense$|(^|\.)(o_proj|out_lin|to_out(\.0)?|wo|out_proj)$|attn\.c_proj$|attn\.(proj|dense)$", "attention", "o"),
        (r"(^|\.)(gate_proj|w1)$", "mlp", "gate"),
        (r"intermediate\.dense$|(^|\.)(up_proj|c_fc|fc1|lin1|w3|dense_h_to_4h)$|mlp\.fc_in$", "mlp", "up"),
        (r"(?<!attention\.)output\.dense$|(^|\.)(down_proj|fc2|lin2|w2|dense_4h_to_h)$|mlp\.c_proj$|mlp\.fc_out$", "mlp", "down"),
    ]
)

BLOCK = re.compile(r"(?:^|\.)(?:layer|layers|h|blocks|block|encoder_layer|decoder_layer)\.(\d+)(?:\.|$)")


def parse_kind_patterns(items: Sequence[str]) -> list[tuple[re.Pattern, str]]:
    out = []
    for item in items:
        if "=" not in item:
            raise LayerlensError(f"--kind-pattern {item!r} must look like REGEX=KIND, e.g. 'mixer\\.proj$=attention'")
        pat, kind = item.rsplit("=", 1)
        if kind not in KINDS:
            raise LayerlensError(f"--kind-pattern {item!r}: kind {kind!r} must be one of {', '.join(KINDS)}")
        try:
            out.append((re.compile(pat), kind))
        except re.error as exc:
            raise LayerlensError(f"--kind-pattern {item!r}: bad regex ({exc})") from None
    return out


def parse_block_pattern(text: str | None) -> re.Pattern | None:
    if not text:
        return None
    try:
        pat = re.compile(text)
    except re.error as exc:
        raise LayerlensError(f"--block-pattern {text!r}: bad regex ({exc})") from None
    if pat.groups < 1:
        raise LayerlensError(f"--block-pattern {text!r} needs one capture group for the block number, e.g. 'blocks\\.(\\d+)\\.'")
    return pat


def infer(name: str, user_kinds=(), user_block: re.Pattern | None = None) -> tuple[str, str, int | None]:
    """(kind, role, block) of a module name. Unknown layers inside a block are 'linear', outside 'other'."""
    block = None
    m = (user_block or BLOCK).search(name)
    if m:
        block = int(m.group(1))
    for pat, kind in user_kinds:
        if pat.search(name):
            return kind, "user", block
    for pat, kind, role in RULES:
        if pat.search(name):
            return kind, role, block
    return ("linear" if block is not None else "other"), "", block


def role(name: str) -> str:
    """The built-in role of a module name ('q', 'k', 'v', 'qkv', 'o', 'gate', 'up', 'down'), or ''.

    The rules read at most the last three dot-separated parts of a name (and whether more come before), and
    only a last part of digits (``to_out.0``), so the answer is looked up by that tail with the other parts of
    digits written ``#``: a 50,000-layer model has a few dozen."""
    parts = name.rsplit(".", 3)
    head = "." if len(parts) == 4 else ""
    tail = parts[1:] if head else parts
    return _role_of_tail(head + ".".join(["#" if p.isdigit() else p for p in tail[:-1]] + tail[-1:]))


@functools.lru_cache(maxsize=4096)
def _role_of_tail(name: str) -> str:
    for pat, _kind, r in RULES:
        if pat.search(name):
            return r
    return ""
