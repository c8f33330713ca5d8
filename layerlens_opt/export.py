"""Turn an allocation into what a trainer uses: a peft LoraConfig, or a CSV / Markdown table.

peft and the allocation
-----------------------
Only the LoRA part of an allocation exports to peft: one ``LoraConfig`` cannot
mix LoRA with bottleneck adapters, per-layer prefixes or IA3. Allocations that
use those need :func:`layerlens_opt.apply`, which injects all four.

``rank_pattern`` / ``alpha_pattern`` keys are the full module names with
regex metacharacters escaped. peft matches a key with
``re.match(rf"(.*\\.)?({key})$", name)``: an escaped full name matches that
module (also under a wrapper prefix such as ``base_model.model.``) and never
another — ``layer\\.1\\.`` cannot match ``layer.11.``. A tied group gets one
key: its names with the differing digit runs as ``\\d+``, used only when it
matches exactly the group's layers among the allocation's (else one key per layer).
"""

from __future__ import annotations

import csv
import io
import re
from pathlib import Path
from typing import Any, Mapping

from .allocation import Allocation, as_allocation
from .errors import LayerlensError
from .methods import METHODS

FORMATS = ("peft", "csv", "markdown")


def lora_config(allocation: Allocation | Mapping[str, Any], alpha_ratio: float = 2.0, dropout: float = 0.0,
                prefix: str = "") -> dict[str, Any]:
    """The ``LoraConfig`` keyword arguments for the LoRA layers of ``allocation``.

    ``allocation`` is an :class:`~layerlens_opt.allocation.Allocation` (or a ``solve --json`` dict,
    checked on the way in). ``alpha = alpha_ratio * rank`` per module (the pilot's alpha = 2r).
    ``prefix`` is prepended to every module name (when the trainer's model wraps the profiled one).
    """
    allocation = as_allocation(allocation)
    lora = [l for l in allocation.layers if METHODS[l.method].peft_lora]
    if not lora:
        raise LayerlensError("the allocation gives LoRA to no layer; there is nothing to export to peft")
    names = [prefix + l.name for l in lora]
    ranks = [l.rank for l in lora]
    default_r = max(set(ranks), key=ranks.count)
    # one pattern per tied group where a pattern covers exactly its layers; every other layer by its own name
    keys: dict[str, int] = {}
    everyone = [prefix + l.name for l in allocation.layers]
    members: dict[str, list[int]] = {}
    for k, l in enumerate(lora):
        if l.group is not None:
            members.setdefault(l.group, []).append(k)
    covered: set[int] = set()
    for group, ks in members.items():
        pattern = group_pattern([names[k] for k in ks], everyone) if len(ks) > 1 else None
        if pattern is not None:
            keys[pattern] = ranks[ks[0]]
            covered.update(ks)
    for k, (n, r) in enumerate(zip(names, ranks)):
        if k not in covered:
            keys[re.escape(n)] = r
    return {
        "peft_type": "LORA",
        "task_type": None,
        "target_modules": names,
        "r": default_r,
        "lora_alpha": alpha_ratio * default_r,
        "lora_dropout": dropout,
        "bias": "none",
        "rank_pattern": keys,
        "alpha_pattern": {k: alpha_ratio * r for k, r in keys.items()},
    }


def group_pattern(names: list[str], everyone: list[str]) -> str | None:
    """A peft pattern key matching exactly ``names`` among ``everyone``: the names with the digit runs
    that differ between them replaced by ``\\d+``; None when the names differ otherwise or the
    pattern would also match another layer."""
    tokens = [re.split(r"(\d+)", n) for n in names]
    if any(len(t) != len(tokens[0]) for t in tokens):
        return None
    parts = []
    for column in zip(*tokens):
        if len(set(column)) == 1:
            parts.append(re.escape(column[0]))
        elif all(c.isdigit() for c in column):
            parts.append(r"\d+")
        else:
            return None
    pattern = "".join(parts)
    matcher = re.compile(rf"(.*\.)?({pattern})$")  # how peft matches rank_pattern keys
    return pattern if {n for n in everyone if matcher.match(n)} == set(names) else None


def to_peft_config(allocation: Allocation | Mapping[str, Any], **kwargs):
    """The allocation's LoRA part as a ``peft.LoraConfig`` in memory (needs peft); keyword arguments as :func:`lora_config`."""
    try:
        from peft import LoraConfig
    except ImportError:
        raise LayerlensError("to_peft_config needs peft: pip install 'layerlens-opt[profile]'") from None
    return LoraConfig(**lora_config(allocation, **kwargs))


def others_than_lora(allocation: Allocation) -> dict[str, int]:
    """Methods other than LoRA/none in the allocation (those a peft LoraConfig cannot express), with their layer counts."""
    return {m: n for m, n in allocation.method_counts().items() if not METHODS[m].peft_lora and not METHODS[m].is_none}


def write_peft(allocation: Allocation, out_dir: str | Path, inputs=(), **kwargs) -> Path:
    """Write ``adapter_config.json`` (loadable by ``LoraConfig.from_pretrained``) into ``out_dir``; ``inputs`` (the
    command's input files) are never written over."""
    out_dir = Path(out_dir)
    config = lora_config(allocation, **kwargs)
    if out_dir.exists() and not out_dir.is_dir():
        raise LayerlensError(f"{out_dir} is a file; --format peft writes a folder (adapter_config.json inside), give a folder path")
    target = out_dir / "adapter_config.json"
    for source in inputs:
        if Path(source).resolve() == target.resolve():
            raise LayerlensError(f"refusing to write {target}: it is the input allocation of this command; "
                                 "export into another folder")
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise LayerlensError(f"cannot create folder {out_dir}: {exc.strerror}") from None
    from .io import json_text, write_atomic

    return write_atomic(target, json_text(config, "peft config"), inputs, "peft config")


COLUMNS = ("name", "kind", "block", "method", "rank", "params", "utility", "gain")


def to_csv(allocation: Allocation) -> str:
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(COLUMNS)
    for l in allocation.layers:
        writer.writerow(["" if getattr(l, c) is None else getattr(l, c) for c in COLUMNS])
    return buf.getvalue()


def _cell(text: str) -> str:
    """A Markdown table cell: a '|' escaped, line breaks and backslashes kept from breaking the row."""
    return " ".join(text.replace("\\", "\\\\").replace("|", "\\|").splitlines()) if text else text


def to_markdown(allocation: Allocation) -> str:
    lines = ["| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    for l in allocation.layers:
        cells = []
        for c in COLUMNS:
            v = getattr(l, c)
            cells.append("" if v is None else (f"{v:.4g}" if isinstance(v, float) else _cell(str(v))))
        lines.append("| " + " | ".join(cells) + " |")
    lines.append("")
    lines.append(f"Total: {allocation.total_params:,} of {allocation.budget:,} parameters "
                 f"({allocation.utilization:.1%}); solver {allocation.solver}, status {allocation.status.value}.")
    return "\n".join(lines) + "\n"
