"""Pretrained weight files: where they come from, fetching them safely, reading them.

A :class:`WeightSpec` names one official file (URL, hash, size), the preprocessing
its publisher trained with, its classes and the accuracy its publisher reports.
:func:`fetch` returns a verified local copy: a path the user gave, a file already
in the cache, or a download through ``keras.utils.get_file``. A file that fails
its check is deleted from the cache and rejected with a clear error; without
network the error names the file, its URL and the cache directory to fill.

Readers return plain ``{layer_or_key: arrays}`` dicts; :func:`assign` puts arrays on
the zoo's layers with shape checks, so a file for another architecture is refused.
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import os
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

import numpy as np

log = logging.getLogger("zoo")

FORMATS = ("keras-h5", "torch-pth")


@dataclasses.dataclass(frozen=True)
class WeightSpec:
    """One published weights file.

    ``file_hash`` is what the publisher gives: a full sha256, the sha256 prefix that
    torchvision puts in its file names (``hash_algorithm="sha256-prefix"``), or
    the md5 keras.applications checks (``"md5"``).
    """

    tag: str
    url: str
    format: str  # one of FORMATS
    source: str  # "keras.applications" or "torchvision"
    preprocessing: str  # hybrid_keras.preprocessing mode the publisher used
    file_hash: str | None = None
    hash_algorithm: str = "sha256"
    size_bytes: int | None = None
    classes: int = 1000
    includes_top: bool = True
    top1: float | None = None  # publisher's reported ImageNet-1k validation accuracy (%)
    top5: float | None = None
    builder_kwargs: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    notes: str = ""

    def __post_init__(self):
        if self.format not in FORMATS:
            raise ValueError(f"format={self.format!r} is not one of {FORMATS}")
        if self.hash_algorithm not in ("sha256", "sha256-prefix", "md5"):
            raise ValueError(f"hash_algorithm={self.hash_algorithm!r} is not sha256, sha256-prefix or md5")

    @property
    def filename(self) -> str:
        return self.url.rsplit("/", 1)[-1]

    def summary(self) -> dict[str, Any]:
        return {
            "url": self.url,
            "format": self.format,
            "source": self.source,
            "hash": f"{self.hash_algorithm}:{self.file_hash}" if self.file_hash else None,
            "size_bytes": self.size_bytes,
            "preprocessing": self.preprocessing,
            "classes": self.classes,
            "includes_top": self.includes_top,
            "top1": self.top1,
            "top5": self.top5,
            "builder_kwargs": dict(self.builder_kwargs),
        }

    def describe(self) -> str:
        acc = f"top-1 {self.top1:.2f}% / top-5 {self.top5:.2f}%" if self.top1 is not None and self.top5 is not None else "accuracy n/a"
        size = f", {self.size_bytes / 2**20:.1f} MiB" if self.size_bytes else ""
        return f"{self.source} {self.filename}{size}, {acc}, preprocessing {self.preprocessing}"


class WeightsError(ValueError):
    """A weights file could not be had, or is not the file it should be."""


def cache_dir() -> Path:
    """Where downloaded weights live: ``$KERAS_HOME/models`` (``~/.keras/models``), as keras.utils.get_file uses."""
    home = os.environ.get("KERAS_HOME") or os.path.join(os.path.expanduser("~"), ".keras")
    return Path(home) / "models"


def _file_digest(path: Path, algorithm: str) -> str:
    digest = hashlib.new("md5" if algorithm == "md5" else "sha256")
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def verify(path: Path, spec: WeightSpec) -> None:
    """Raise WeightsError when ``path`` is not the file ``spec`` names (size, then hash)."""
    if spec.size_bytes is not None and path.stat().st_size != spec.size_bytes:
        raise WeightsError(
            f"{path} has {path.stat().st_size} bytes but {spec.filename} has {spec.size_bytes}: truncated or a different file"
        )
    if spec.file_hash:
        actual = _file_digest(path, spec.hash_algorithm)
        expected = spec.file_hash.lower()
        ok = actual.startswith(expected) if spec.hash_algorithm == "sha256-prefix" else actual == expected
        if not ok:
            raise WeightsError(
                f"{path} does not match {spec.filename}: {spec.hash_algorithm} is {actual[:len(expected)]}, expected {expected} "
                "(corrupt, truncated or a different file)"
            )


def fetch(spec: WeightSpec, *, cache: str | Path | None = None) -> Path:
    """A verified local copy of ``spec``'s file: from the cache, or downloaded into it."""
    directory = Path(cache) if cache is not None else cache_dir()
    target = directory / spec.filename
    if target.exists():
        try:
            verify(target, spec)
            return target
        except WeightsError as error:
            log.warning("removing a bad cached weights file: %s", error)
            target.unlink()
    directory.mkdir(parents=True, exist_ok=True)
    import keras

    try:
        downloaded = Path(
            keras.utils.get_file(
                fname=spec.filename,
                origin=spec.url,
                file_hash=spec.file_hash if spec.hash_algorithm in ("sha256", "md5") else None,
                hash_algorithm="md5" if spec.hash_algorithm == "md5" else "sha256",
                cache_dir=str(directory.parent),
                cache_subdir=directory.name,
            )
        )
    except Exception as error:  # keras raises plain Exception subclasses for network and hash failures
        if target.exists():
            target.unlink()
        raise WeightsError(
            f"could not download {spec.filename} from {spec.url} ({type(error).__name__}: {error}). "
            f"Offline, put the file in {directory} (the cache) or pass weights='/path/to/{spec.filename}'."
        ) from None
    try:
        verify(downloaded, spec)
    except WeightsError:
        downloaded.unlink(missing_ok=True)
        raise
    return downloaded


def detect_format(path: Path) -> str:
    """'keras-h5' or 'torch-pth', by the file's first bytes (not its name)."""
    with open(path, "rb") as f:
        head = f.read(8)
    if head.startswith(b"\x89HDF\r\n\x1a\n"):
        return "keras-h5"
    if head.startswith(b"PK") or head.startswith(b"\x80"):  # zip, or a legacy torch pickle stream
        return "torch-pth"
    raise WeightsError(f"{path} is neither an HDF5 (.h5) nor a PyTorch (.pth) weights file")


def read_keras_h5(path: str | Path) -> dict[str, list[np.ndarray]]:
    """``{layer_name: [arrays in the layer's weight order]}`` from a keras.applications ``.h5``."""
    import h5py

    layers: dict[str, list[np.ndarray]] = {}
    try:
        with h5py.File(path, "r") as f:
            group = f["model_weights"] if "model_weights" in f else f
            names = [n.decode() if isinstance(n, bytes) else n for n in group.attrs.get("layer_names", [])]
            for name in names:
                layer_group = group[name]
                weight_names = [w.decode() if isinstance(w, bytes) else w for w in layer_group.attrs.get("weight_names", [])]
                if weight_names:
                    layers[name] = [np.asarray(layer_group[w]) for w in weight_names]
    except (OSError, KeyError) as error:
        raise WeightsError(f"{path} is not a readable Keras HDF5 weights file: {error}") from None
    if not layers:
        raise WeightsError(f"{path} holds no layer weights in the Keras HDF5 layout")
    return layers


def assign(
    model,
    layer_arrays: Mapping[str, Sequence[np.ndarray]],
    *,
    skip: Iterable[str] = (),
    source: str = "weights file",
) -> list[str]:
    """Set ``model.get_layer(name).set_weights(arrays)`` for every entry, checking shapes.

    Layers named in ``skip`` are left as they are (a fresh top when fine-tuning).
    Returns the names assigned. Any missing layer or shape mismatch raises a
    WeightsError that names the layer: the usual sign of a file for another
    architecture or another width.
    """
    skip = set(skip)
    assigned = []
    for name, arrays in layer_arrays.items():
        if name in skip:
            continue
        try:
            layer = model.get_layer(name)
        except ValueError:
            raise WeightsError(f"{source} has weights for layer {name!r}, which {model.name!r} does not have: a file for another architecture?") from None
        expected = [tuple(w.shape) for w in layer.weights]
        got = [tuple(np.shape(a)) for a in arrays]
        if expected != got:
            raise WeightsError(
                f"{source}: layer {name!r} of {model.name!r} wants shapes {expected}, the file gives {got}: "
                "a file for another architecture, width or input size?"
            )
        layer.set_weights([np.asarray(a, dtype=w.dtype) for a, w in zip(arrays, layer.weights)])
        assigned.append(name)
    missing = [l.name for l in model.layers if l.weights and l.name not in assigned and l.name not in skip]
    if missing:
        raise WeightsError(f"{source} has no weights for layers {missing[:8]}{'...' if len(missing) > 8 else ''} of {model.name!r}")
    return assigned


# --- torch -> Keras array layouts ---------------------------------------------------

def torch_conv(weight: np.ndarray, bias: np.ndarray | None = None) -> list[np.ndarray]:
    """Conv2d [out, in, kh, kw] -> Keras Conv2D kernel [kh, kw, in, out] (+ bias)."""
    arrays = [np.transpose(weight, (2, 3, 1, 0))]
    return arrays + ([bias] if bias is not None else [])


def torch_depthwise(weight: np.ndarray, bias: np.ndarray | None = None) -> list[np.ndarray]:
    """Depthwise Conv2d [channels, 1, kh, kw] -> Keras DepthwiseConv2D kernel [kh, kw, channels, 1]."""
    arrays = [np.transpose(weight, (2, 3, 0, 1))]
    return arrays + ([bias] if bias is not None else [])


def torch_dense(weight: np.ndarray, bias: np.ndarray | None = None, *, chw: tuple[int, int, int] | None = None) -> list[np.ndarray]:
    """Linear [out, in] -> Dense kernel [in, out].

    ``chw`` = (channels, height, width) when the layer follows a flatten of a
    feature map: torch flattens NCHW, Keras NHWC, so the input axis is reordered.
    """
    kernel = weight
    if chw is not None:
        c, h, w = chw
        kernel = weight.reshape(weight.shape[0], c, h, w).transpose(0, 2, 3, 1).reshape(weight.shape[0], -1)
    arrays = [np.ascontiguousarray(kernel.T)]
    return arrays + ([bias] if bias is not None else [])


def torch_batchnorm(state: Mapping[str, np.ndarray], prefix: str) -> list[np.ndarray]:
    """BatchNorm2d -> Keras BatchNormalization [gamma, beta, moving_mean, moving_variance]."""
    return [state[f"{prefix}.weight"], state[f"{prefix}.bias"], state[f"{prefix}.running_mean"], state[f"{prefix}.running_var"]]


def load_state_dict(path: str | Path) -> dict[str, np.ndarray]:
    """A ``.pth`` state dict as NumPy arrays (no torch needed)."""
    from zoo.pth import PthFormatError, load_state_dict as read

    try:
        return read(path)
    except PthFormatError as error:
        raise WeightsError(str(error)) from None


def take(state: Mapping[str, np.ndarray], key: str, source: str = "checkpoint") -> np.ndarray:
    """``state[key]`` with an error that says which file lacks which tensor."""
    try:
        return state[key]
    except KeyError:
        raise WeightsError(f"{source} has no tensor {key!r}: a checkpoint for another architecture?") from None


def imagenet_class_names() -> list[str]:
    """The 1000 ImageNet-1k class names in the standard index order (shipped, no download)."""
    path = Path(__file__).resolve().parent / "data" / "imagenet_classes.txt"
    return path.read_text(encoding="utf-8").splitlines()

