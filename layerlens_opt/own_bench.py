"""The budget-frontier benchmark on a user's own model and data: ``train_bench --model DIR --data FILE``.

What changes against the shipped MiniLM tasks, and nothing else (the contenders, the training loop, the paired seeds
and the report are :mod:`layerlens_opt.train_bench`'s):

- the data file is split once by row (seeded): a fifth of the rows, at least one, are the test split; the profiles
  are measured on the training split only, exactly as ``profile`` measures them (:func:`gain_models`);
- the layers and their shapes are the first-order profile's (every layer ``profile`` offers; never embeddings or a
  causal LM's ``lm_head``), and the uniform baselines find q, k, v, o and the FFN output by the layer names'
  roles (:func:`layerlens_opt.naming.role`), so LLaMA/Qwen2 and GPT-2 (fused ``c_attn``) names work;
- the default budgets are the same four anchors as MiniLM's, costed on this model (:func:`default_budgets`);
- the score is test accuracy for a classifier and next-token accuracy over the test split's target tokens for a
  causal LM (completion tokens only for prompt/completion rows, assistant turns for chat rows).
"""

from __future__ import annotations

import json
import random
import time
from pathlib import Path

from .errors import LayerlensError

#: the test split's share of the rows
TEST_SHARE = 0.2
#: fewer rows cannot give both splits something to work with
MIN_ROWS = 10


def split(data_path: str | Path, folder: Path, seed: int = 0) -> tuple[Path, Path]:
    """Write ``folder/train.jsonl`` and ``folder/test.jsonl`` from the data file's non-blank lines (shuffled with
    ``seed``; the test split is a fifth, at least one row); returns their paths."""
    path = Path(data_path)
    if not path.is_file():
        raise LayerlensError(f"--data {data_path}: no such file; give a JSONL file of the rows to benchmark on")
    try:
        lines = [line for line in path.read_text(encoding="utf-8-sig").splitlines() if line.strip()]
    except UnicodeDecodeError as exc:
        raise LayerlensError(f"--data {data_path}: not UTF-8 text (byte {exc.start}); save the data as UTF-8 JSONL") from None
    if len(lines) < MIN_ROWS:
        raise LayerlensError(f"--data {data_path}: {len(lines)} rows; the benchmark needs at least {MIN_ROWS} (a fifth are held out "
                             "for testing, and the profile needs its own held-out split of the rest)")
    random.Random(seed).shuffle(lines)
    n_test = max(1, round(TEST_SHARE * len(lines)))
    folder.mkdir(parents=True, exist_ok=True)
    train, test = folder / "train.jsonl", folder / "test.jsonl"
    train.write_text("\n".join(lines[n_test:]) + "\n", encoding="utf-8")
    test.write_text("\n".join(lines[:n_test]) + "\n", encoding="utf-8")
    return train, test


def gain_models(model_spec: str, train: Path, folder: Path, args) -> dict:
    """The three profiles ``train_bench`` compares, measured as ``profile`` measures them on the training split (cached in
    ``folder``); returns what :func:`layerlens_opt.train_bench.gain_models` returns."""
    from .manifest import save_manifest
    from .profiling import profile_manifest
    from .train_bench import profiled

    fidelity = bool(args.fidelity_tasks)
    paths = {stem: folder / f"{stem}.json" for stem in ("first-order", "probe", "lora-probe")}
    shape = dict(device=args.device, progress=not args.quiet, objective=args.objective, dtype=args.dtype, max_length=args.max_length)
    for stem, path in paths.items():
        if path.exists():
            continue
        t0 = time.perf_counter()
        if stem == "probe":
            manifest = profile_manifest(model_spec, str(train), "probe", interactions=True, probe_fidelity=fidelity, **shape)
        elif stem == "lora-probe":
            manifest = profile_manifest(model_spec, str(train), "lora-probe", interactions=False, **shape)
        else:
            manifest = profile_manifest(model_spec, str(train), "first-order", **shape)
        manifest.model["wall_seconds"] = round(time.perf_counter() - t0, 2)
        save_manifest(manifest, path, [train])
    return profiled(paths)


def dims_of(manifest_path: Path) -> dict[str, tuple[int, int]]:
    """Every offered layer's (in_features, out_features), in model order, from a profile."""
    return {l["name"]: (l["in_features"], l["out_features"]) for l in json.loads(Path(manifest_path).read_text())["layers"]}


def profiled_subject(folder: Path) -> tuple[dict[str, tuple[int, int]], set[str], int | None, bool]:
    """What the profiles in ``folder`` say of the model: every offered layer's shape (the first-order profile's), the
    methods the probe measured (what ``apply`` can train there), the tokens kept per row (a causal LM's) and whether it
    is a causal LM."""
    probe = json.loads((folder / "probe.json").read_text())["model"]
    return (dims_of(folder / "first-order.json"), set(probe["probe"]["methods"]), probe.get("max_length"),
            probe.get("objective") == "causal-lm")


def default_budgets(dims: dict[str, tuple[int, int]]) -> list[int]:
    """MiniLM's four anchors costed on this model: uniform IA3 on the values, LoRA on q,v at r=1, IA3 on every layer,
    LoRA on every layer at r=1 (those the model has, sorted)."""
    from .train_bench import layers_of, uniform

    anchors = [("v", "ia3"), ("q,v", "lora"), ("all", "ia3"), ("all", "lora")]
    costs = {uniform(layers_of(dims, roles), 1, dims, method)["total_params"] for roles, method in anchors}
    return sorted(c for c in costs if c > 0)


# ----------------------------------------------------------------------------- one run (in a worker)


def load_run(own: dict):
    """A fresh model and the train and test examples of one run: (model, train examples, train labels, test examples,
    test labels, objective)."""
    from .profiling.objective import load_task

    task = load_task(own["model"], own["train"], own["objective"], own["device"], own["dtype"], own["max_length"], progress=False)
    if task.objective == "causal-lm":
        from .profiling import causal_lm

        tokenizer = _tokenizer(own["model"])
        test, _ = causal_lm.load_rows(own["test"], tokenizer, own["max_length"])
        return task.model, task.examples, task.labels, test, [0] * len(test), task.objective
    from .profiling.profiler import load_jsonl

    texts, labels, classes = load_jsonl(own["test"])
    index = {c: i for i, c in enumerate(task.info["classes"])}
    # a class the training split never saw cannot be predicted: such a row counts as wrong (-1 never matches)
    return task.model, task.examples, task.labels, texts, [index.get(str(classes[y]), -1) for y in labels], task.objective


def _tokenizer(model_spec: str):
    from .profiling import causal_lm
    from .profiling.profiler import call_factory

    path = Path(model_spec)
    if path.is_dir():
        return causal_lm.load_tokenizer(path)
    return call_factory(model_spec)[1]
