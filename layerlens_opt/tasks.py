"""Real, offline tasks from the VADER lexicon (package ``vaderSentiment``): ~7,500 tokens,
each with the mean valence given by ten human raters.

Words are split into train and test *by word*, so no test word is seen in training.

polarity
    ``{"text": word, "label": 1 if valence > 0 else 0}`` for alphabetic words with
    |valence| >= 0.5. Easy: it nearly saturates.
pairs
    ``{"text": "word_a word_b", "label": 1 if valence(a) > valence(b) else 0}`` for
    pairs whose ratings differ by >= 0.5, both words from the same split. A frozen
    encoder with a trained head is at chance, so every point above 50% is bought
    by the adapters.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

from .errors import LayerlensError

TASKS = ("polarity", "pairs")


def lexicon() -> dict[str, float]:
    """word -> mean valence, alphabetic entries only."""
    try:
        import vaderSentiment
    except ImportError:
        raise LayerlensError("the VADER tasks need the vaderSentiment package: pip install 'layerlens-opt[torch]'") from None
    path = Path(vaderSentiment.__file__).parent / "vader_lexicon.txt"
    out = {}
    for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
        parts = line.split("\t")
        if len(parts) >= 2 and parts[0].isalpha():
            out[parts[0].lower()] = float(parts[1])
    return out


def split_words(seed: int = 0, test_fraction: float = 0.3) -> tuple[list[str], list[str]]:
    words = sorted(lexicon())
    rng = random.Random(seed)
    rng.shuffle(words)
    n_test = int(len(words) * test_fraction)
    return sorted(words[n_test:]), sorted(words[:n_test])


def examples(task: str, split: str, seed: int = 0, n_pairs: int = 6000) -> list[dict]:
    """The examples of ``task`` on the ``split`` ('train' or 'test') words."""
    if task not in TASKS:
        raise LayerlensError(f"unknown task {task!r}; choose from {', '.join(TASKS)}")
    if split not in ("train", "test"):
        raise LayerlensError(f"unknown split {split!r}; use train or test")
    val = lexicon()
    train, test = split_words(seed)
    words = train if split == "train" else test
    if task == "polarity":
        return [{"text": w, "label": int(val[w] > 0)} for w in words if abs(val[w]) >= 0.5]
    rng = random.Random(f"pairs:{split}:{seed}")
    out = []
    n = n_pairs if split == "train" else n_pairs // 3
    while len(out) < n:
        a, b = rng.sample(words, 2)
        if abs(val[a] - val[b]) >= 0.5:
            out.append({"text": f"{a} {b}", "label": int(val[a] > val[b])})
    return out


def write_jsonl(rows: list[dict], path: str | Path) -> None:
    Path(path).write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
