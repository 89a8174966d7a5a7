"""The corpus: the CPython standard library's own ``.py`` sources, present wherever Python is.

Which text, exactly: the top-level modules of the running interpreter's standard library
(``sysconfig.get_paths()["stdlib"]/*.py``, no packages, no site-packages), sorted by file
name, each read as UTF-8 (undecodable bytes replaced). A file's split comes from a hash of its
name (the first 8 bytes of SHA-256 of the name, modulo 10: 0 -> test, 1 -> validation, else
train), so a module is never split across the sets and the assignment does not depend on the
Python version. Each split is the concatenation of its files in name order, cut at
``max_characters[split]`` characters. The texts differ between Python versions; the returned
``files`` list says what was used.
"""

from __future__ import annotations

import hashlib
import sysconfig
from pathlib import Path

SPLITS = ("train", "validation", "test")
MAX_CHARACTERS = {"train": 3_000_000, "validation": 300_000, "test": 500_000}


def split_of(file_name: str) -> str:
    """``"train"``, ``"validation"`` or ``"test"`` for a file name (its SHA-256, modulo 10)."""
    bucket = int.from_bytes(hashlib.sha256(file_name.encode("utf-8")).digest()[:8], "big") % 10
    return "test" if bucket == 0 else "validation" if bucket == 1 else "train"


def stdlib_files(stdlib=None) -> list[Path]:
    """The top-level ``.py`` modules of the standard library, sorted by name."""
    directory = Path(stdlib or sysconfig.get_paths()["stdlib"])
    files = sorted(path for path in directory.glob("*.py") if path.is_file())
    if not files:
        raise FileNotFoundError(f"no .py modules in the standard library directory {directory}")
    return files


def stdlib_corpus(max_characters: dict | None = None, stdlib=None) -> dict:
    """``{split: {"text": str, "files": [[name, characters used], ...]}}`` for the three splits
    (module docstring: which files, how they are split and capped). ``max_characters``:
    per-split caps (default :data:`MAX_CHARACTERS`); ``stdlib``: another directory of modules."""
    caps = dict(MAX_CHARACTERS if max_characters is None else max_characters)
    unknown = set(caps) - set(SPLITS)
    if unknown or any(not isinstance(v, int) or v < 1 for v in caps.values()):
        raise ValueError(f"max_characters must map splits {SPLITS} to positive ints. Received: {max_characters!r}")
    corpus = {split: {"parts": [], "files": [], "characters": 0} for split in SPLITS}
    for path in stdlib_files(stdlib):
        split = corpus[split_of(path.name)]
        room = caps.get(split_of(path.name), 0) - split["characters"]
        if room <= 0:
            continue
        text = path.read_bytes().decode("utf-8", errors="replace")[:room]
        split["parts"].append(text)
        split["files"].append([path.name, len(text)])
        split["characters"] += len(text)
    return {name: {"text": "".join(split["parts"]), "files": split["files"]} for name, split in corpus.items()}
