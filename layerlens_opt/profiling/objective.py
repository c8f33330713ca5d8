"""Which objective a profile measures, and the model and data it needs: :func:`load_task`.

``classification`` (``profiler.py``: an encoder, mean pooling and a linear head on ``{"text", "label"}`` rows) or
``causal-lm`` (``causal_lm.py``: a decoder's own next-token loss on text, prompt/completion or chat rows). ``auto``
takes the model's word for it: a Hugging Face directory whose config names a ``*ForCausalLM`` / ``*LMHeadModel``
architecture, or a factory that returns such a model, is a causal LM; anything else is a classifier.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import LayerlensError

OBJECTIVES = ("auto", "classification", "causal-lm")


@dataclass
class Task:
    model: Any  # ``.encoder`` (what is adapted), ``.head``, ``loss_sum(examples, y, precise)``, ``count(examples)``
    model_name: str
    examples: list
    labels: list  # class indices (classification); zeros (causal LM: the targets are in the examples)
    objective: str
    #: what the manifest's ``model`` records about the data: ``classes``, or the causal LM's ``data_format``
    info: dict = field(default_factory=dict)


def load_task(model_spec: str, data_path: str, objective: str = "auto", device: str = "cpu", dtype: str = "float32",
              max_length: int = 64, progress: bool = True, seed: int | None = None) -> Task:
    """The model (loaded once, on ``device``) and the data's examples for ``objective``; the data is read and checked
    before a directory's weights are loaded. With ``seed``, torch is seeded first: a classifier's head (and a factory's
    weights) are drawn while the task loads, and a fresh torch seeds itself from the OS, so without it one profile
    command gave a different profile on every run."""
    from .profiler import MODEL_ALIASES, load_jsonl, load_model

    if seed is not None:
        import torch

        torch.manual_seed(seed)

    if not progress:
        try:
            from transformers.utils import logging as hf_logging

            hf_logging.disable_progress_bar()  # "Loading weights" / "Writing model shards"
        except ImportError:  # pragma: no cover
            pass

    if objective not in OBJECTIVES:
        raise LayerlensError(f"--objective {objective!r}: choose one of {', '.join(OBJECTIVES)}")
    if not Path(str(data_path)).exists():
        raise LayerlensError(f"data file {data_path} does not exist")
    path = Path(model_spec) if model_spec not in MODEL_ALIASES else None
    made = None
    if objective != "classification" and path is not None and not path.exists() and ":" in model_spec:
        from .profiler import call_factory

        made = call_factory(model_spec)
    causal = objective == "causal-lm" or (objective == "auto" and _looks_causal(path, made))
    if not causal:
        if dtype != "float32":
            raise LayerlensError(f"--dtype {dtype} is for causal language models; a classification profile runs in float32")
        texts, labels, classes = load_jsonl(data_path)
        model, name = load_model(model_spec, len(classes), device, max_length, made=made)
        return Task(model, name, texts, labels, "classification", {"classes": [str(c) for c in classes]})
    from . import causal_lm

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    if made is not None:
        if not (isinstance(made, tuple) and len(made) == 2):
            raise LayerlensError(f"--model {model_spec}: a causal language model factory must return (model, tokenizer)")
        examples, fmt = causal_lm.load_rows(data_path, made[1], max_length)
        model, _ = causal_lm.load_causal_lm(None, made, device, dtype)
        name = model_spec
    else:
        if path is None or not (path / "config.json").exists():
            raise LayerlensError(f"--objective causal-lm needs a Hugging Face causal LM directory or a module:function factory; "
                                 f"got {model_spec}")
        tokenizer = causal_lm.load_tokenizer(path)
        examples, fmt = causal_lm.load_rows(data_path, tokenizer, max_length)
        model, _ = causal_lm.load_causal_lm(path, None, device, dtype, tokenizer)
        name = path.name
    return Task(model, name, examples, [0] * len(examples), "causal-lm", {"objective": "causal-lm", "data_format": fmt,
                                                                      "dtype": dtype, "max_length": max_length})


def is_causal(model_spec: str, objective: str = "auto") -> bool:
    """Whether ``load_task`` will profile a causal LM, from the objective and the model directory's config alone (a
    factory's model is only known once it is called: False here)."""
    from .profiler import MODEL_ALIASES

    if objective != "auto":
        return objective == "causal-lm"
    return model_spec not in MODEL_ALIASES and _looks_causal(Path(model_spec), None)


def _looks_causal(path: Path | None, made) -> bool:
    from .causal_lm import is_causal_config, is_causal_module

    if made is not None:
        return is_causal_module(made[0] if isinstance(made, tuple) and len(made) == 2 else made)
    return path is not None and path.is_dir() and is_causal_config(path)
