"""The causal language-model objective: next-token loss on a decoder's own ``lm_head``.

A model is a causal LM when its Hugging Face config names a ``*ForCausalLM`` / ``*LMHeadModel`` architecture (or
``--objective causal-lm`` says so; a ``module:function`` factory may return one, alone or with its tokenizer). The
loss is the mean over target tokens of the next-token cross-entropy, with no extra head. Data rows (JSONL):

* ``{"text": ...}`` -- every token is a target (plain-text language modelling);
* ``{"prompt": ..., "completion": ...}`` -- only the completion's tokens (and the end-of-sequence token after it, when
  the tokenizer has one) are targets, as in supervised fine-tuning;
* ``{"messages": [{"role": ..., "content": ...}, ...]}`` -- with the tokenizer's chat template, only the tokens the
  assistant turns add are targets.

Rows are tokenized once, truncated to ``max_length`` tokens. :class:`CausalLM` has the interface the probes train
and measure through (``loss_sum``, ``count``); embeddings and ``lm_head`` are never adapted (:data:`SKIPPED`).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..errors import LayerlensError

#: module names never offered for adaptation on a causal LM (the output projection; embeddings are not linear)
SKIPPED = ("lm_head",)

FORMATS = {"text": ("text",), "prompt-completion": ("prompt", "completion"), "messages": ("messages",)}

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def is_causal_config(path: Path) -> bool:
    """Whether a Hugging Face model directory's config names a causal-LM architecture."""
    try:
        config = json.loads((path / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return any(str(a).endswith(("ForCausalLM", "LMHeadModel")) for a in config.get("architectures") or [])


def is_causal_module(model: Any) -> bool:
    return type(model).__name__.endswith(("ForCausalLM", "LMHeadModel")) and hasattr(model, "get_output_embeddings")


class CausalLM(nn.Module):
    """A decoder with its own ``lm_head``: examples are (token ids, target flags) pairs; ``loss_sum`` is the summed
    next-token cross-entropy over the targets and ``count`` how many there are."""

    objective = "causal-lm"

    def __init__(self, lm: nn.Module, pad_id: int):
        super().__init__()
        self.encoder = lm  # the adaptable module tree (its lm_head is skipped)
        self.head = nn.Identity()  # no extra head: the model's own lm_head predicts
        self.pad_id = pad_id
        self.skip = SKIPPED

    @staticmethod
    def count(examples) -> int:
        return sum(sum(t[1:]) for _, t in examples)

    def _logits_and_targets(self, examples) -> tuple[torch.Tensor, torch.Tensor]:
        """The logits that predict each next token and its target (-100 where it is padding or not a target)."""
        device = next(self.encoder.parameters()).device
        width = max(len(ids) for ids, _ in examples)
        ids = torch.full((len(examples), width), self.pad_id, dtype=torch.long)
        mask = torch.zeros((len(examples), width), dtype=torch.long)
        labels = torch.full((len(examples), width), -100, dtype=torch.long)
        for i, (seq, targets) in enumerate(examples):
            n = len(seq)
            ids[i, :n] = torch.tensor(seq, dtype=torch.long)
            mask[i, :n] = 1
            labels[i, :n] = torch.where(torch.tensor(targets, dtype=torch.bool), ids[i, :n], -100)
        out = self.encoder(input_ids=ids.to(device), attention_mask=mask.to(device))
        return out.logits[:, :-1], labels[:, 1:].to(device)

    def loss_sum(self, examples, y=None, precise: bool = False) -> tuple[torch.Tensor, int]:
        logits, target = self._logits_and_targets(examples)
        logits = logits.double() if precise else logits.float()
        loss = nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), target.reshape(-1), ignore_index=-100,
                                           reduction="sum")
        return loss, int((target != -100).sum())

    def correct_sum(self, examples) -> tuple[int, int]:
        """How many target tokens the model predicts right (greedy), and how many there are."""
        logits, target = self._logits_and_targets(examples)
        kept = target != -100
        return int((logits.argmax(-1)[kept] == target[kept]).sum()), int(kept.sum())


def load_tokenizer(path: Path):
    """The tokenizer saved with a causal LM's directory (read before the weights, so bad data is refused fast)."""
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(str(path))
    except (OSError, ValueError) as exc:
        raise LayerlensError(f"cannot load the tokenizer in {path}: {exc}") from None


def load_causal_lm(spec_path: Path | None, made=None, device: str = "cpu", dtype: str = "float32", tokenizer=None):
    """(CausalLM, tokenizer) from a Hugging Face directory (its tokenizer unless one is given) or a factory's
    (model, tokenizer)."""
    if dtype not in DTYPES:
        raise LayerlensError(f"--dtype {dtype!r}: choose one of {', '.join(DTYPES)}")
    if made is None:
        from transformers import AutoModelForCausalLM

        tokenizer = tokenizer or load_tokenizer(spec_path)
        try:
            lm = AutoModelForCausalLM.from_pretrained(str(spec_path), dtype=DTYPES[dtype])
        except (OSError, ValueError) as exc:
            raise LayerlensError(f"cannot load the causal language model in {spec_path}: {exc}") from None
    else:
        lm, tokenizer = made
        lm = lm.to(DTYPES[dtype])
    lm.to(device)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else (tokenizer.eos_token_id or 0)
    return CausalLM(lm, pad), tokenizer


def load_rows(path: str | Path, tokenizer, max_length: int) -> tuple[list[tuple[list[int], list[bool]]], str]:
    """The examples of a causal-LM JSONL file and its format (every row must have the first row's)."""
    path = Path(path)
    try:
        lines = path.read_text(encoding="utf-8-sig").splitlines()
    except UnicodeDecodeError as exc:
        raise LayerlensError(f"{path}: not UTF-8 text (byte {exc.start}); save the data as UTF-8 JSONL") from None
    except OSError as exc:
        raise LayerlensError(f"{path}: cannot read it ({exc.strerror or exc})") from None
    fmt = None
    examples = []
    expected = ('{"text": ...}, {"prompt": ..., "completion": ...} or {"messages": [{"role": ..., "content": ...}, ...]} '
                "for a causal language model")
    for i, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as exc:
            raise LayerlensError(f"{path} line {i}: not valid JSON ({exc.msg})") from None
        kind = _format_of(row)
        if kind is None:
            found = ", ".join(map(repr, row)) if isinstance(row, dict) else type(row).__name__
            raise LayerlensError(f"{path} line {i}: found {found or 'nothing'}; each line needs {expected}")
        if fmt is None:
            fmt = kind
        elif kind != fmt:
            raise LayerlensError(f"{path} line {i}: a {kind} row after {fmt} rows; write every row in one format")
        seq, targets = _tokenize(row, kind, tokenizer, path, i)
        seq, targets = seq[:max_length], targets[:max_length]
        if len(seq) >= 2 and any(targets[1:]):
            examples.append((seq, targets))
    if fmt is None:
        raise LayerlensError(f"data file {path} is empty: it needs JSON lines of {expected}")
    if not examples:
        raise LayerlensError(f"{path}: no row keeps a token to predict within --max-length {max_length}; raise --max-length")
    return examples, fmt


def _format_of(row) -> str | None:
    if not isinstance(row, dict):
        return None
    if isinstance(row.get("messages"), list):
        return "messages"
    if isinstance(row.get("prompt"), str) and isinstance(row.get("completion"), str):
        return "prompt-completion"
    if isinstance(row.get("text"), str):
        return "text"
    return None


def _tokenize(row, kind, tokenizer, path, i) -> tuple[list[int], list[bool]]:
    if kind == "text":
        seq = tokenizer(row["text"])["input_ids"]
        return seq, [True] * len(seq)
    if kind == "prompt-completion":
        prompt = tokenizer(row["prompt"])["input_ids"]
        completion = tokenizer(row["completion"], add_special_tokens=False)["input_ids"]
        if tokenizer.eos_token_id is not None:
            completion = completion + [tokenizer.eos_token_id]
        return prompt + completion, [False] * len(prompt) + [True] * len(completion)
    if not getattr(tokenizer, "chat_template", None):
        raise LayerlensError(f"{path} line {i}: 'messages' rows need a tokenizer with a chat template, and this one has none; "
                             "write {\"prompt\": ..., \"completion\": ...} rows instead")
    seq: list[int] = []
    targets: list[bool] = []
    for k, message in enumerate(row["messages"]):
        if not (isinstance(message, dict) and isinstance(message.get("role"), str) and isinstance(message.get("content"), str)):
            raise LayerlensError(f"{path} line {i}: message {k} must be {{\"role\": ..., \"content\": ...}}")
        upto = tokenizer.apply_chat_template(row["messages"][: k + 1], tokenize=True)
        upto = list(upto["input_ids"] if isinstance(upto, dict) or hasattr(upto, "keys") else upto)
        if upto[: len(seq)] != seq:
            raise LayerlensError(f"{path} line {i}: the chat template does not extend a conversation's tokens turn by turn, "
                                 "so the assistant's tokens cannot be told apart; write prompt/completion rows instead")
        added = upto[len(seq):]
        seq += added
        targets += [message["role"] == "assistant"] * len(added)
    if not any(targets):
        raise LayerlensError(f"{path} line {i}: no assistant message to learn from")
    return seq, targets
