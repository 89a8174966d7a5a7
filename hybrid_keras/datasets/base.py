"""What every builder here shares: reading a local copy through ``manual_dir``.

The builders never download. Each names the files it needs (``required_files``);
preparation checks them first and fails with the list of what is missing. Each
prepared copy records a fingerprint of the folder it was made from (paths, sizes and
modification times of its files), so ``hybrid_keras.datasets.prepare`` notices when a
``manual_dir`` has changed since (for example a full copy of CamVid replacing the
subset) and prepares the dataset again instead of serving the stale one.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import tensorflow_datasets as tfds

FINGERPRINT_KEY = "source_fingerprint"


def source_fingerprint(manual_dir: str | os.PathLike) -> str:
    """A digest of every file under ``manual_dir``: relative path, size and mtime (contents are not read)."""
    root = Path(manual_dir)
    digest = hashlib.sha256()
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        stat = path.stat()
        digest.update(f"{path.relative_to(root).as_posix()}\0{stat.st_size}\0{stat.st_mtime_ns}\n".encode())
    return digest.hexdigest()


class LocalDatasetBuilder(tfds.core.GeneratorBasedBuilder, skip_registration=True):
    """A ``GeneratorBasedBuilder`` over a local copy of a dataset, given as ``manual_dir``.

    Subclasses set ``name`` (distinct from TFDS's catalogue, so ``tfds.load("mnist")``
    and its prepared files stay TFDS's own), ``MANUAL_DOWNLOAD_INSTRUCTIONS``, and
    implement ``required_files``, ``_info`` (through ``_dataset_info``), ``_splits``
    and ``_generate_examples``. Examples are stored in the order the builder yields
    them (integer keys, shuffling disabled): the source's own order, so slices such as
    ``"test[:8000]"`` mean the same files every time.
    """

    # Where the copy lives when the caller gives none (only for data the project ships).
    DEFAULT_MANUAL_DIR: Path | None = None

    @tfds.core.utils.classproperty
    @classmethod
    def code_path(cls):
        # TFDS looks beside a builder's code for the checksums of its downloads; these
        # download nothing. (TFDS 4.9.10's lookup also needs the `importlib_resources`
        # backport, which it does not declare for Python >= 3.9.)
        return None

    def required_files(self) -> tuple[str, ...]:
        """Glob patterns relative to ``manual_dir``; each must match at least one file."""
        raise NotImplementedError

    def check_manual_dir(self, manual_dir: str | os.PathLike | None) -> Path:
        """``manual_dir`` as a Path, or a FileNotFoundError naming what is missing and where it comes from."""
        expected = ", ".join(self.required_files())
        if manual_dir is None:
            raise ValueError(f"manual_dir: {self.name} reads a local copy and needs its folder (holding {expected}); "
                             f"see MANUAL_DOWNLOAD_INSTRUCTIONS:\n{self.MANUAL_DOWNLOAD_INSTRUCTIONS}\nReceived: None")
        root = Path(manual_dir).expanduser()
        if not root.is_dir():
            raise FileNotFoundError(f"manual_dir: no folder at {root} (expected one holding {expected}).\n"
                                    f"{self.MANUAL_DOWNLOAD_INSTRUCTIONS}")
        missing = [pattern for pattern in self.required_files() if not any(p.is_file() for p in root.glob(pattern))]
        if missing:
            raise FileNotFoundError(f"manual_dir: {root} lacks {', '.join(missing)} (expected {expected}).\n"
                                    f"{self.MANUAL_DOWNLOAD_INSTRUCTIONS}")
        return root

    def _dataset_info(self, **kwargs) -> tfds.core.DatasetInfo:
        return tfds.core.DatasetInfo(builder=self, metadata=tfds.core.MetadataDict(), disable_shuffling=True, **kwargs)

    def _split_generators(self, dl_manager):
        root = self.check_manual_dir(dl_manager.manual_dir)
        self.info.metadata[FINGERPRINT_KEY] = source_fingerprint(root)
        return self._splits(root)

    def _splits(self, root: Path) -> dict:
        """``{split name: self._generate_examples(...)}`` for the local copy at ``root``."""
        raise NotImplementedError
