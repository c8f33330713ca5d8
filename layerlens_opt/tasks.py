"""Real, offline word tasks from human-rated lexicons shipped in Python packages.

Words are split into train and test *by word*, so no test word is seen in training.

polarity (VADER, package ``vaderSentiment``; ~7,500 words rated by ten people)
    ``{"text": word, "label": 1 if valence > 0 else 0}`` for alphabetic words with
    |valence| >= 0.5. Easy: it nearly saturates.
pairs (VADER)
    ``{"text": "word_a word_b", "label": 1 if valence(a) > valence(b) else 0}`` for
    pairs whose ratings differ by >= 0.5, both words from the same split. A frozen
    encoder with a trained head is at chance, so every point above 50% is bought
    by the adapters.
emotion (NRC emotion lexicon, package ``nrclex``; crowd-annotated)
    ``{"text": word, "label": emotion}`` for the ~2,300 words annotated with exactly
    one of the eight basic emotions (anger, anticipation, disgust, fear, joy,
    sadness, surprise, trust): eight classes.
frequency (package ``wordfreq``; frequencies from large corpora)
    ``{"text": "word_a word_b", "label": 1 if a is more frequent than b else 0}``
    for pairs of alphabetic words from the 30,000 most frequent English words whose
    Zipf frequencies differ by >= 0.5 (a factor of ~3).
"""

from __future__ import annotations

import json
import random
from pathlib import Path

from .errors import LayerlensError

TASKS = ("polarity", "pairs", "emotion", "frequency")

EMOTIONS = ("anger", "anticipation", "disgust", "fear", "joy", "sadness", "surprise", "trust")


def lexicon() -> dict[str, float]:
    """word -> mean valence (VADER), alphabetic entries only."""
    try:
        import vaderSentiment
    except ImportError:
        raise LayerlensError("the VADER tasks need the vaderSentiment package: pip install 'layerlens-opt[bench]'") from None
    path = Path(vaderSentiment.__file__).parent / "vader_lexicon.txt"
    out = {}
    for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
        parts = line.split("\t")
        if len(parts) >= 2 and parts[0].isalpha():
            out[parts[0].lower()] = float(parts[1])
    return out


def emotion_lexicon() -> dict[str, str]:
    """word -> its one basic emotion (NRC), for words annotated with exactly one of :data:`EMOTIONS`."""
    try:
        from importlib import resources

        import nrclex.data  # noqa: F401
    except ImportError:
        raise LayerlensError("the emotion task needs the nrclex package: pip install 'layerlens-opt[bench]'") from None
    raw = json.loads(resources.files("nrclex.data").joinpath("nrc_en.json").read_text(encoding="utf-8"))
    out = {}
    for word, tags in raw.items():
        emotions = [t for t in tags if t in EMOTIONS]
        if word.isalpha() and len(emotions) == 1:
            out[word.lower()] = emotions[0]
    return out


def frequency_lexicon(n_words: int = 30_000) -> dict[str, float]:
    """word -> Zipf frequency (wordfreq), alphabetic words among the ``n_words`` most frequent."""
    try:
        from wordfreq import top_n_list, zipf_frequency
    except ImportError:
        raise LayerlensError("the frequency task needs the wordfreq package: pip install 'layerlens-opt[bench]'") from None
    return {w: zipf_frequency(w, "en") for w in top_n_list("en", n_words) if w.isalpha() and len(w) > 1}


def _split(words, seed: int, test_fraction: float = 0.3) -> tuple[list[str], list[str]]:
    words = sorted(words)
    rng = random.Random(seed)
    rng.shuffle(words)
    n_test = int(len(words) * test_fraction)
    return sorted(words[n_test:]), sorted(words[:n_test])


def split_words(seed: int = 0, test_fraction: float = 0.3) -> tuple[list[str], list[str]]:
    """The VADER words split into (train, test)."""
    return _split(lexicon(), seed, test_fraction)


def _pairs(values: dict[str, float], words: list[str], n: int, rng: random.Random, margin: float) -> list[dict]:
    out = []
    while len(out) < n:
        a, b = rng.sample(words, 2)
        if abs(values[a] - values[b]) >= margin:
            out.append({"text": f"{a} {b}", "label": int(values[a] > values[b])})
    return out


def examples(task: str, split: str, seed: int = 0, n_pairs: int = 6000) -> list[dict]:
    """The examples of ``task`` on the ``split`` ('train' or 'test') words."""
    if task not in TASKS:
        raise LayerlensError(f"unknown task {task!r}; choose from {', '.join(TASKS)}")
    if split not in ("train", "test"):
        raise LayerlensError(f"unknown split {split!r}; use train or test")
    n = n_pairs if split == "train" else n_pairs // 3
    if task in ("polarity", "pairs"):
        val = lexicon()
        train, test = split_words(seed)
        words = train if split == "train" else test
        if task == "polarity":
            return [{"text": w, "label": int(val[w] > 0)} for w in words if abs(val[w]) >= 0.5]
        return _pairs(val, words, n, random.Random(f"pairs:{split}:{seed}"), 0.5)
    if task == "emotion":
        emo = emotion_lexicon()
        train, test = _split(emo, seed)
        return [{"text": w, "label": emo[w]} for w in (train if split == "train" else test)]
    freq = frequency_lexicon()
    train, test = _split(freq, seed)
    return _pairs(freq, train if split == "train" else test, n, random.Random(f"frequency:{split}:{seed}"), 0.5)


def write_jsonl(rows: list[dict], path: str | Path) -> None:
    from .io import write_atomic

    write_atomic(path, "".join(json.dumps(r, allow_nan=False) + "\n" for r in rows), (), "data")
