"""CamVid splits as arrays at a fixed size, read through the TFDS builder once and cached as .npz.

The cache lets a machine without TensorFlow (the GPU machines have JAX and PyTorch only)
train on the same arrays: copy the cache folder there and point ``HYBRID_KERAS_CACHE`` at it.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from benchmarks.common import CACHE_DIR

SPLITS = ("train", "validation", "test")


def camvid(data_dir: Path, split: str, image_size: tuple[int, int], limit: int | None = None):
    """``(images uint8 [N, H, W, 3], masks int32 [N, H, W])`` of a CamVid split in its list's order.

    Images are resized bilinearly (antialiased), masks by nearest neighbour, so mask values
    stay class indices 0-10 and the void label 11. ``limit`` keeps the first ones.
    """
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}. Received: split={split!r}")
    path = CACHE_DIR / f"camvid_{split}_{image_size[0]}x{image_size[1]}.npz"
    if path.exists():
        with np.load(path) as cached:
            images, masks = cached["images"], cached["masks"]
    else:
        from hybrid_keras import datasets

        examples = datasets.load("camvid", split=split, manual_dir=Path(data_dir) / "camvid")
        images, masks = datasets.to_numpy(datasets.image_mask_pairs(examples, image_size=image_size))
        path.parent.mkdir(parents=True, exist_ok=True)
        staging = path.with_suffix(".tmp.npz")
        np.savez_compressed(staging, images=images, masks=masks)
        staging.replace(path)  # atomically: a half-written cache is never read
    return (images[:limit], masks[:limit]) if limit else (images, masks)
