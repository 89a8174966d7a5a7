"""The ANN benchmark's datasets: a base to index and named query sets, ground truth by exact search.

Every dataset serves its query sets from one base, so each index is built once and
searched with all of them:

Images are read through ``hybrid_keras.datasets`` (TFDS builders over the local copies).

- ``sift``: OpenCV SIFT descriptors (128-D) of the BSDS500 photos, split by photo. The
  photos of the base split give the base and the ``in_distribution`` queries (descriptors
  drawn at random from those photos and removed from the base: other descriptors of the
  same photos stay); the ``held_out`` queries come from photos none of whose descriptors
  are in the base, which is how retrieval is used (queries from new images).
- ``embeddings``: zoo MobileNetV2 (random weights) stride-16 feature-map cells, 96-D and
  L2-normalised, of CamVid frames, split by frame the same way.
- ``random``: uniform points in [0, 1]^128 with uniform queries (the talk's case where
  no graph does well).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from benchmarks.common import CACHE_DIR


@dataclass
class Dataset:
    name: str
    base: np.ndarray  # [N, D] float32, C-contiguous
    queries: dict[str, np.ndarray]  # query-set name -> [Q, D] float32
    description: str
    details: dict = field(default_factory=dict)


def _split_by_group(vectors: np.ndarray, groups: np.ndarray, held_out_groups: int, queries: int, seed: int):
    """(base, in-distribution queries, held-out queries, held-out group ids).

    ``held_out_groups`` groups (photos, frames) chosen at random supply the held-out
    queries and nothing else; ``queries`` vectors drawn at random from the other groups are
    the in-distribution queries and leave the base."""
    rng = np.random.default_rng(seed)
    unique = np.unique(groups)
    if not 0 < held_out_groups < len(unique):
        raise ValueError(f"held_out_groups must be in [1, {len(unique) - 1}]. Received: {held_out_groups}")
    held_out = rng.choice(unique, held_out_groups, replace=False)
    is_held_out = np.isin(groups, held_out)
    inside, outside = np.flatnonzero(~is_held_out), np.flatnonzero(is_held_out)
    if len(outside) < queries or len(inside) < 2 * queries:
        raise ValueError(f"{queries} queries need more vectors: {len(inside)} in the base groups, "
                         f"{len(outside)} in the held-out ones")
    in_queries = rng.choice(inside, queries, replace=False)
    base_rows = np.setdiff1d(inside, in_queries)
    out_queries = rng.choice(outside, queries, replace=False)
    take = lambda rows: np.ascontiguousarray(vectors[rows], dtype=np.float32)  # noqa: E731
    return take(base_rows), take(in_queries), take(out_queries), np.sort(held_out)


# ---------------------------------------------------------------------- SIFT
def _load(name: str, data_dir: Path, split: str):
    """A dataset of ``hybrid_keras.datasets`` read from its copy under ``data_dir``."""
    from hybrid_keras import datasets

    return datasets.load(name, split=split, manual_dir=data_dir / name)


def sift_by_photo(data_dir: Path) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """SIFT descriptors of every BSDS500 photo, their photo index, and the photo names in
    file-name order (cached: extraction takes a minute)."""
    cache = CACHE_DIR / "bsds500_sift_by_photo.npz"
    if cache.exists():
        saved = np.load(cache)
        return saved["descriptors"], saved["photo"], [str(n) for n in saved["names"]]
    import cv2

    photos = sorted(((str(e["image/filename"], "utf-8") if isinstance(e["image/filename"], bytes)
                      else str(e["image/filename"]), e["image"])
                     for e in _load("bsds500", data_dir, "test").as_numpy_iterator()), key=lambda pair: pair[0])
    sift = cv2.SIFT_create()
    parts, photo = [], []
    for number, (_, rgb) in enumerate(photos):
        _, descriptors = sift.detectAndCompute(cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY), None)
        if descriptors is not None:
            parts.append(descriptors.astype(np.float32))
            photo.append(np.full(len(descriptors), number, np.int32))
    descriptors, photo = np.concatenate(parts), np.concatenate(photo)
    names = [Path(name).stem for name, _ in photos]
    cache.parent.mkdir(parents=True, exist_ok=True)
    np.savez(cache, descriptors=descriptors, photo=photo, names=np.array(names))
    return descriptors, photo, names


def sift(data_dir: Path, held_out_photos: int, queries: int, limit: int | None = None, seed: int = 0) -> Dataset:
    descriptors, photo, names = sift_by_photo(data_dir)
    base, in_q, out_q, held_out = _split_by_group(descriptors, photo, held_out_photos, queries, seed)
    base = base[:limit] if limit else base
    return Dataset(
        "sift", base, {"in_distribution": in_q, "held_out": out_q},
        f"BSDS500 SIFT, {len(np.unique(photo)) - held_out_photos} base photos; in-distribution queries "
        f"from those photos, held-out queries from {held_out_photos} other photos",
        {"photos": len(names), "descriptors": len(descriptors), "held_out_photos": [names[i] for i in held_out]})


# ---------------------------------------------------------------------- embeddings
def camvid_cells(data_dir: Path, limit: int | None) -> tuple[np.ndarray, np.ndarray]:
    """MobileNetV2 (zoo, alpha 1.0, seeded random init) stride-16 cells of CamVid frames
    (all splits, in file-name order, the first ``limit``), L2-normalised, and each cell's
    frame index (cached)."""
    cache = CACHE_DIR / f"camvid_mobilenet_v2_cells_by_frame_{limit or 'all'}.npz"
    if cache.exists():
        saved = np.load(cache)
        return saved["cells"], saved["frame"]
    import keras

    import zoo

    frames = sorted(((str(e["file_name"]), e["image"]) for e in
                     _load("camvid", data_dir, "train+validation+test").as_numpy_iterator()), key=lambda pair: pair[0])
    frames = frames[:limit]
    keras.utils.set_random_seed(0)
    # Zoo models take raw RGB pixels in [0, 255]: their preprocessing is their first layer.
    backbone = zoo.load("mobilenet_v2", include_top=False, input_shape=(360, 480, 3))
    cells = keras.Model(backbone.input, backbone.get_layer("block_12_add").output)
    parts, frame = [], []
    for start in range(0, len(frames), 16):
        batch = np.stack([image for _, image in frames[start: start + 16]]).astype(np.float32)
        features = np.asarray(cells.predict(batch, verbose=0))
        parts.append(features.reshape(-1, features.shape[-1]))
        per_frame = features.shape[1] * features.shape[2]
        frame.append(np.repeat(np.arange(start, start + len(batch), dtype=np.int32), per_frame))
    vectors = np.concatenate(parts)
    vectors /= np.maximum(np.linalg.norm(vectors, axis=1, keepdims=True), 1e-12)
    vectors, frame = vectors.astype(np.float32), np.concatenate(frame)
    cache.parent.mkdir(parents=True, exist_ok=True)
    np.savez(cache, cells=vectors, frame=frame)
    return vectors, frame


def embeddings(data_dir: Path, held_out_frames: int, queries: int, limit: int | None = None, seed: int = 0) -> Dataset:
    cells, frame = camvid_cells(data_dir, limit)
    base, in_q, out_q, _ = _split_by_group(cells, frame, held_out_frames, queries, seed)
    return Dataset(
        "embeddings", base, {"in_distribution": in_q, "held_out": out_q},
        f"CamVid MobileNetV2 (random weights) stride-16 cells of {len(np.unique(frame)) - held_out_frames} "
        f"frames; held-out queries from {held_out_frames} other frames (neighbouring video frames are alike)",
        {"frames": int(len(np.unique(frame)))})


# ---------------------------------------------------------------------- random
def uniform(size: int, queries: int, dim: int = 128, seed: int = 0) -> Dataset:
    rng = np.random.default_rng(seed)
    return Dataset("random", rng.random((size, dim), dtype=np.float32),
                   {"uniform": rng.random((queries, dim), dtype=np.float32)},
                   f"uniform random points in [0, 1]^{dim}")


# ---------------------------------------------------------------------- ground truth
def exact_neighbours(base: np.ndarray, queries: np.ndarray, k: int) -> np.ndarray:
    """Exact k nearest rows (squared L2) by faiss IndexFlatL2: [Q, k] int64."""
    import faiss

    flat = faiss.IndexFlatL2(base.shape[1])
    flat.add(base)
    return flat.search(queries, k)[1]


def recall_at(found: np.ndarray, truth: np.ndarray, k: int) -> float:
    """Mean fraction of each query's true k nearest found among its first k results."""
    found, truth = np.asarray(found)[:, :k], np.asarray(truth)[:, :k]
    hits = (found[:, :, None] == truth[:, None, :]).any(axis=2).sum(axis=1)
    return float(hits.mean() / k)
