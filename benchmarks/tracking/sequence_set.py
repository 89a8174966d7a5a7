"""The tracking benchmark's sequences: a virtual camera over the staged real photos, exact ground truth.

How the sequences are made (``sequence_set(split)``):

- **Photos.** The 128 COCO128 photos (COCO val2017) and the 200 BSDS500 test photos, read through
  ``hybrid_keras.datasets``, at their own resolution unless a COCO target needs them smaller.
- **Split by photo.** Each photo goes to one split by a hash of its name (SHA-256 of
  ``"<source>:<photo id>"`` read as a number u in [0, 1)): ``test`` if u < 0.30 for COCO128 or
  u < 0.15 for BSDS500, ``validation`` for the next 0.10, ``train`` for the rest. No photo gives
  sequences to two splits (asserted on every build). BSDS500 gives half the COCO share of test
  photos because fewer COCO photos hold a usable target, so the test set has about as many
  sequences of each source (one per test photo).
- **Targets.** In a COCO photo, an annotated object whose box covers at least 1% of the photo,
  has an aspect ratio of at most 4, keeps 2 px from the photo border (the object is not cut
  off) and overlaps no other annotated box by IoU > 0.5 (the box singles out one object). Where
  the object is more than half the frame on a side, the photo is first scaled down (antialiased,
  by at most 2x) so that it is half the frame: a target, not the scene, at zoom 1. After that
  it must be at least 24 px on each side. Among those objects, the one whose frame-sized
  surroundings lie most inside the photo (the camera then sees photo, not the black outside
  it), then the largest. A BSDS500 photo has no annotations: its target is the window of
  highest mean gradient magnitude (texture gives a tracker something to hold on to) among the
  windows whose centre lies in the central 60% of the photo, with a size drawn per photo: 1% to
  5% of the photo, aspect 0.6 to 1.6, each side clipped to [24 px, half the frame].
- **Sequences per photo.** ``test`` and ``validation``: one per photo. ``train``: two per COCO
  photo when a second qualifying object overlaps the first by IoU < 0.3, else one; one per BSDS500
  photo.
- **Motion.** ``hybrid_keras.tracking.synthetic_sequence`` renders ``frames`` frames (default 60
  of 240x320) through a camera that follows the target loosely: in every sequence its centre is the
  target's plus a smooth offset of up to a quarter of the frame's width and height (so the
  target wanders across the frame); on top of that, for ``zoom`` its scale varies within a
  factor e^0.4 either way, for ``roll`` it turns up to 20 degrees either way, and ``all`` does
  both. (``pan`` is the panning alone.) The photo moves as one rigid plane, so the
  target never moves against its background.
  Sequence k of a split (in source, photo, object order) gets motion ``MOTIONS[k % 4]`` (pan,
  zoom, roll, all) and condition ``k // 4 % 3``: none, motion blur over a fifth of the frames, or
  the target's left half occluded by a grey block over a sixth of them (a seeded window that
  never includes frame 0). The seed comes from the sequence's photo and object; if the target
  leaves the frame entirely, the next seed is tried (up to 5), then the sequence is skipped.
- **Names** read ``source:photo:target:motion[+blur|+occlusion]``, e.g.
  ``coco128:000000000139:tv#2:zoom+blur`` (``#2``: the object's row in the photo's annotation
  file) or ``bsds500:100007:texture:roll``; ``describe`` parses them.

Rendered splits are cached as .npz under ``~/.cache/hybrid_keras/tracking/`` (or
``$HYBRID_KERAS_CACHE/tracking``), keyed by split, frames, frame size, data folder and
``RECIPE_VERSION``; a cache hit needs neither TensorFlow nor the photos.
"""

from __future__ import annotations

import hashlib
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from benchmarks.common import CACHE_DIR as COMMON_CACHE_DIR
from benchmarks.common import DEFAULT_DATA_DIR
from hybrid_keras.tracking.metrics import box_iou
from hybrid_keras.tracking.sequences import MOTIONS, Sequence, camera_path, synthetic_sequence

CACHE_DIR = COMMON_CACHE_DIR / "tracking"
RECIPE_VERSION = 2  # bump when anything below changes the sequences, so stale caches are not read
SPLITS = ("train", "validation", "test")
TEST_SHARE = {"coco128": 0.30, "bsds500": 0.15}
VALIDATION_SHARE = 0.10
CONDITIONS = ("", "blur", "occlusion")
MIN_SIDE, MIN_AREA, MAX_ASPECT, BORDER_MARGIN, MAX_IOU_OTHER, MIN_SCALE = 24, 0.01, 4.0, 2, 0.5, 0.5
SEED_ATTEMPTS = 5


@dataclass(frozen=True)
class _Target:
    """One sequence to render, before its motion is assigned."""

    source: str
    photo_id: str
    target: str  # "tv#2" (COCO label and annotation row) or "texture" (BSDS500)
    box: tuple[float, float, float, float]  # [x, y, w, h] on the photo
    scale: float = 1.0  # the photo is resized by this first, so the target is at most half the frame

    @property
    def photo(self) -> str:
        return f"{self.source}:{self.photo_id}"


def photo_split(source: str, photo_id: str) -> str:
    """The split a photo belongs to; a hash, so it never depends on which other photos exist."""
    u = int(hashlib.sha256(f"{source}:{photo_id}".encode()).hexdigest()[:12], 16) / 16**12
    test = TEST_SHARE[source]
    return "test" if u < test else "validation" if u < test + VALIDATION_SHARE else "train"


def describe(name: str) -> dict:
    """``{"source", "photo", "target", "motion", "blur", "occlusion"}`` of a sequence name made here."""
    parts = name.split(":")
    if len(parts) != 4:
        raise ValueError(f"name: expected 'source:photo:target:motion[+blur|+occlusion]'. Received: {name!r}")
    motion, *flags = parts[3].split("+")
    return {"source": parts[0], "photo": parts[1], "target": parts[2], "motion": motion,
            "blur": "blur" in flags, "occlusion": "occlusion" in flags}


def sequence_set(split: str, *, data_dir=DEFAULT_DATA_DIR, frames: int = 60, frame_size=(240, 320),
                 cache: bool = True) -> list[Sequence]:
    """The ``split``'s sequences (see the module docstring), rendered or read from the cache.

    All sequences share one ``[N, T, H, W, 3]`` array (each Sequence's frames are a view of it),
    so a split costs N * 13.8 MB at the defaults and nothing more.
    """
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}. Received: split={split!r}")
    frame_size = tuple(int(v) for v in frame_size)
    data_dir = Path(data_dir).expanduser().resolve()
    key = hashlib.sha256(f"{RECIPE_VERSION}:{data_dir}".encode()).hexdigest()[:10]
    path = CACHE_DIR / f"{split}_{frames}x{frame_size[0]}x{frame_size[1]}_{key}.npz"
    if cache and path.exists():
        with np.load(path) as saved:
            all_frames, boxes, names = saved["frames"], saved["boxes"], [str(n) for n in saved["names"]]
    else:
        all_frames, boxes, names = _render(split, data_dir, frames, frame_size)
        if cache:
            path.parent.mkdir(parents=True, exist_ok=True)
            staging = path.with_suffix(".tmp.npz")
            np.savez(staging, frames=all_frames, boxes=boxes, names=np.array(names))  # uncompressed: loads fast
            staging.replace(path)  # atomically: a half-written cache is never read
    return [Sequence(all_frames[i], boxes[i], names[i]) for i in range(len(names))]


def _render(split, data_dir, frames, frame_size):
    photos, annotations = _photos(data_dir)
    targets = {name: _targets(name, photos, annotations, frame_size) for name in SPLITS}
    photos_of = {name: {t.photo for t in targets[name]} for name in SPLITS}
    for a, b in (("train", "test"), ("validation", "test"), ("train", "validation")):
        shared = photos_of[a] & photos_of[b]
        assert not shared, f"photos in both {a} and {b}: {sorted(shared)[:5]}"
    chosen = targets[split]
    assert len({(t.photo, t.target) for t in chosen}) == len(chosen), "two sequences of a split share a name"
    out = np.zeros((len(chosen), frames, *frame_size, 3), np.uint8)
    boxes, names, kept = np.zeros((len(chosen), frames, 4)), [], []
    for k, target in enumerate(chosen):
        motion, condition = MOTIONS[k % len(MOTIONS)], CONDITIONS[k // len(MOTIONS) % len(CONDITIONS)]
        name = f"{target.source}:{target.photo_id}:{target.target}:{motion}" + (f"+{condition}" if condition else "")
        photo, box = _resized(photos[target.photo], target.box, target.scale)
        base_seed = zlib.crc32(f"{target.photo}:{target.target}".encode())
        for seed in range(base_seed, base_seed + SEED_ATTEMPTS):
            rng = np.random.default_rng(seed)
            length = max(1, frames // (5 if condition == "blur" else 6))
            window = range(start := int(rng.integers(1, max(2, frames - length + 1))), start + length)
            # Every sequence pans: zoom or roll alone would keep the target at the frame's
            # centre, where a box that never moves scores well.
            centres, _, _ = camera_path(box, frames, frame_size, "pan", seed)
            _, scales, angles = camera_path(box, frames, frame_size, motion, seed)
            try:
                sequence = synthetic_sequence(photo, box, frames=frames, frame_size=frame_size,
                                              camera=(centres, scales, angles), seed=seed, name=name,
                                              blur_frames=window if condition == "blur" else None,
                                              occlusion_frames=window if condition == "occlusion" else None)
            except ValueError as error:
                if "leaves the frame" not in str(error):
                    raise
                continue
            out[k], boxes[k] = sequence.frames, sequence.boxes
            names.append(name)
            kept.append(k)
            break
    if len(kept) < len(chosen):
        print(f"sequence_set({split!r}): skipped {len(chosen) - len(kept)} of {len(chosen)} sequences whose "
              f"target left the frame under {SEED_ATTEMPTS} seeds", flush=True)
        out, boxes = out[kept], boxes[kept]
    print(f"sequence_set({split!r}): {len(names)} sequences from {len({n.rsplit(':', 2)[0] for n in names})} photos",
          flush=True)
    return out, boxes, names


def _photos(data_dir: Path) -> tuple[dict, dict]:
    """``({"source:photo id": uint8 [H, W, 3]}, {"coco128:photo id": (boxes [N, 4] x y w h px, labels)})``."""
    from hybrid_keras import datasets
    from hybrid_keras.datasets.coco128 import CLASSES

    photos, annotations = {}, {}
    for example in datasets.load("coco128", split="validation", manual_dir=data_dir / "coco128").as_numpy_iterator():
        key = f"coco128:{Path(example['image/filename'].decode()).stem}"
        height, width = example["image"].shape[:2]
        ymin, xmin, ymax, xmax = np.asarray(example["objects"]["bbox"], np.float64).reshape(-1, 4).T
        boxes = np.stack([xmin * width, ymin * height, (xmax - xmin) * width, (ymax - ymin) * height], axis=1)
        photos[key] = example["image"]
        annotations[key] = (boxes, [CLASSES[int(label)].replace(" ", "_") for label in example["objects"]["label"]])
    for example in datasets.load("bsds500", split="test", manual_dir=data_dir / "bsds500").as_numpy_iterator():
        photos[f"bsds500:{Path(example['image/filename'].decode()).stem}"] = example["image"]
    return photos, annotations


def _targets(split: str, photos: dict, annotations: dict, frame_size) -> list[_Target]:
    """The split's targets in (source, photo id, object) order."""
    chosen = []
    for key in sorted(photos):
        source, photo_id = key.split(":")
        if photo_split(source, photo_id) != split:
            continue
        if source == "coco128":
            boxes, labels = annotations[key]
            rows = _coco_objects(boxes, photos[key].shape[:2], frame_size)
            if split == "train" and len(rows) > 1:
                rows = [rows[0]] + [r for r in rows[1:] if _iou(boxes[r[0]], boxes[rows[0][0]]) < 0.3][:1]
            else:
                rows = rows[:1]
            chosen += [_Target(source, photo_id, f"{labels[r]}#{r}", tuple(boxes[r]), scale) for r, scale in rows]
        else:
            chosen.append(_Target(source, photo_id, "texture", _textured_window(photos[key], frame_size, photo_id)))
    return chosen


def _coco_objects(boxes: np.ndarray, photo_size, frame_size) -> list[tuple[int, float]]:
    """``(row, photo scale)`` of the boxes that make fair targets, best first (rules in the module docstring)."""
    height, width = photo_size
    x, y, w, h = boxes.T if len(boxes) else np.zeros((4, 0))
    half_height, half_width = frame_size[0] / 2, frame_size[1] / 2
    scale = np.minimum(1.0, np.minimum(half_width / np.maximum(w, 1e-9), half_height / np.maximum(h, 1e-9)))
    fair = ((w * scale >= MIN_SIDE) & (h * scale >= MIN_SIDE) & (w * h >= MIN_AREA * width * height)
            & (scale >= MIN_SCALE) & (np.maximum(w / np.maximum(h, 1e-9), h / np.maximum(w, 1e-9)) <= MAX_ASPECT)
            & (x >= BORDER_MARGIN) & (y >= BORDER_MARGIN)
            & (x + w <= width - BORDER_MARGIN) & (y + h <= height - BORDER_MARGIN))
    ranked = []
    for r in np.flatnonzero(fair):
        if max((_iou(boxes[r], o) for o in np.delete(boxes, r, axis=0)), default=0.0) <= MAX_IOU_OTHER:
            # The frame-sized window around the target at camera zoom 1, in original photo pixels.
            view_w, view_h = frame_size[1] / scale[r], frame_size[0] / scale[r]
            view = (x[r] + w[r] / 2 - view_w / 2, y[r] + h[r] / 2 - view_h / 2, view_w, view_h)
            inside = _intersection(view, (0, 0, width, height)) / (view_w * view_h)
            ranked.append((-round(inside, 2), -w[r] * h[r], int(r), float(scale[r])))
    return [(r, s) for *_, r, s in sorted(ranked)]


def _textured_window(photo: np.ndarray, frame_size, photo_id: str) -> tuple[float, float, float, float]:
    """The window of highest mean gradient magnitude: texture gives a tracker something to hold on to."""
    height, width = photo.shape[:2]
    rng = np.random.default_rng(zlib.crc32(f"bsds500:{photo_id}".encode()))
    area = np.exp(rng.uniform(np.log(0.01), np.log(0.05))) * width * height
    aspect = np.exp(rng.uniform(np.log(0.6), np.log(1.6)))
    w = int(np.clip(round(np.sqrt(area * aspect)), MIN_SIDE, frame_size[1] // 2))
    h = int(np.clip(round(np.sqrt(area / aspect)), MIN_SIDE, frame_size[0] // 2))
    gray = photo.astype(np.float64) @ [0.299, 0.587, 0.114]
    gy, gx = np.gradient(gray)
    integral = np.pad(np.hypot(gx, gy).cumsum(0).cumsum(1), ((1, 0), (1, 0)))
    sums = integral[h:, w:] - integral[:-h, w:] - integral[h:, :-w] + integral[:-h, :-w]  # [top, left]
    tops, lefts = np.arange(sums.shape[0]), np.arange(sums.shape[1])
    central_y = np.abs(tops + h / 2 - height / 2) <= 0.3 * height
    central_x = np.abs(lefts + w / 2 - width / 2) <= 0.3 * width
    sums = np.where(central_y[:, None] & central_x[None, :], sums, -np.inf)
    top, left = np.unravel_index(np.argmax(sums), sums.shape)
    return float(left), float(top), float(w), float(h)


def _resized(photo: np.ndarray, box, scale: float):
    """The photo resized by ``scale`` (antialiased) and the box on it."""
    if scale == 1.0:
        return photo, np.asarray(box, np.float64)
    from PIL import Image

    height, width = photo.shape[:2]
    size = (max(1, round(width * scale)), max(1, round(height * scale)))
    resized = np.asarray(Image.fromarray(photo).resize(size, Image.BILINEAR))
    return resized, np.asarray(box, np.float64) * np.tile([size[0] / width, size[1] / height], 2)


def _intersection(a, b) -> float:
    return (max(0.0, min(a[0] + a[2], b[0] + b[2]) - max(a[0], b[0]))
            * max(0.0, min(a[1] + a[3], b[1] + b[3]) - max(a[1], b[1])))


def _iou(a, b) -> float:
    return float(box_iou(np.asarray([a]), np.asarray([b]))[0])
