"""A character vocabulary (fit on a text, id 0 for unknown characters, saved as JSON) and the
check every function that takes token ids makes. NumPy only."""

from __future__ import annotations

import collections
import json
from pathlib import Path
from typing import Iterable

import numpy as np

UNKNOWN_ID = 0


class CharVocabulary:
    """Characters <-> int32 ids. Id 0 stands for every character outside the vocabulary (it
    decodes to ``unknown``); the known characters take ids 1 .. ``len(self) - 1`` in the order
    given (:meth:`fit` sorts them by code point).

    >>> vocabulary = CharVocabulary.fit("def f(): pass\\n")
    >>> vocabulary.decode(vocabulary.encode("def é"))   # 'é' is unknown
    'def \\ufffd'
    """

    def __init__(self, characters: Iterable[str], unknown: str = "\ufffd"):
        characters = list(characters)
        if not isinstance(unknown, str) or len(unknown) != 1:
            raise ValueError(f"unknown must be a single character. Received: unknown={unknown!r}")
        bad = [c for c in characters if not isinstance(c, str) or len(c) != 1]
        if bad:
            raise ValueError(f"characters must be single characters. Received: {bad[:5]!r}")
        if len(set(characters)) != len(characters):
            repeated = sorted(c for c, n in collections.Counter(characters).items() if n > 1)
            raise ValueError(f"characters must not repeat. Received: {repeated[:5]!r} more than once")
        if unknown in characters:
            raise ValueError(f"the unknown character {unknown!r} must not also be a known character")
        if not characters:
            raise ValueError("characters must not be empty. Received: []")
        self.characters = tuple(characters)
        self.unknown = unknown
        self._ids = {c: i + 1 for i, c in enumerate(self.characters)}
        self._table = np.array([unknown, *self.characters])

    @classmethod
    def fit(cls, text: str, *, min_count: int = 1, max_size: int | None = None, unknown: str = "\ufffd"):
        """The characters of ``text`` seen at least ``min_count`` times (the ``max_size - 1`` most
        frequent ones when ``max_size`` is given; ties go to the lower code point), sorted by code point."""
        if not isinstance(text, str) or not text:
            raise ValueError(f"text must be a non-empty str. Received: {type(text).__name__} of length "
                             f"{len(text) if hasattr(text, '__len__') else '?'}")
        if not isinstance(min_count, int) or min_count < 1:
            raise ValueError(f"min_count must be a positive int. Received: min_count={min_count!r}")
        if max_size is not None and (not isinstance(max_size, int) or max_size < 2):
            raise ValueError(f"max_size must be None or an int >= 2 (the unknown id included). Received: {max_size!r}")
        counts = collections.Counter(text)
        counts.pop(unknown, None)
        kept = sorted((c for c, n in counts.items() if n >= min_count), key=lambda c: (-counts[c], c))
        if max_size is not None:
            kept = kept[:max_size - 1]
        if not kept:
            raise ValueError(f"no character of text occurs min_count={min_count} times")
        return cls(sorted(kept), unknown=unknown)

    def __len__(self) -> int:
        return len(self.characters) + 1

    def __repr__(self) -> str:
        return f"CharVocabulary({len(self)} ids: unknown + {''.join(self.characters)[:40]!r}...)"

    def __eq__(self, other) -> bool:
        return isinstance(other, CharVocabulary) and (self.characters, self.unknown) == (other.characters, other.unknown)

    def encode(self, text: str) -> np.ndarray:
        """int32 ids ``[len(text)]``; characters outside the vocabulary get id 0."""
        if not isinstance(text, str):
            raise ValueError(f"text must be a str. Received: {type(text).__name__}")
        ids = self._ids
        return np.fromiter((ids.get(c, UNKNOWN_ID) for c in text), dtype=np.int32, count=len(text))

    def decode(self, token_ids) -> str:
        """The text of ``token_ids`` (a 1-D sequence of ids); id 0 gives ``unknown``."""
        token_ids = check_token_ids(token_ids, len(self), rank=1)
        return "".join(self._table[token_ids].tolist())

    def to_json(self) -> dict:
        return {"characters": list(self.characters), "unknown": self.unknown}

    @classmethod
    def from_json(cls, data: dict):
        if not isinstance(data, dict) or "characters" not in data:
            raise ValueError(f"a saved vocabulary is a dict with 'characters'. Received: {str(data)[:80]}")
        return cls(data["characters"], unknown=data.get("unknown", "\ufffd"))

    def save(self, path) -> Path:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(self.to_json(), ensure_ascii=True, indent=1))
        return path

    @classmethod
    def load(cls, path):
        return cls.from_json(json.loads(Path(path).read_text()))


def check_token_ids(token_ids, vocabulary_size: int | None = None, *, rank: int = 2, name: str = "token_ids") -> np.ndarray:
    """``token_ids`` as an int32 NumPy array, or a ValueError naming ``name`` when it is not
    integers of rank ``rank`` (2: ``[batch, time]``) in ``[0, vocabulary_size)``."""
    array = np.asarray(token_ids)
    shape = "[batch, time]" if rank == 2 else "[time]" if rank == 1 else f"rank {rank}"
    if array.ndim != rank:
        raise ValueError(f"{name} must be integer token ids of shape {shape}. Received: shape {array.shape}")
    if array.size and not np.issubdtype(array.dtype, np.integer):
        raise ValueError(f"{name} must be integer token ids. Received: dtype {array.dtype}")
    if array.size and (array.min() < 0 or (vocabulary_size is not None and array.max() >= vocabulary_size)):
        raise ValueError(f"{name} must lie in [0, {vocabulary_size}) (the vocabulary's ids). "
                         f"Received: ids from {array.min()} to {array.max()}")
    return array.astype(np.int32, copy=False)
