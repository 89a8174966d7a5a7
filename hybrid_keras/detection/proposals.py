"""Selective search region proposals (Uijlings et al., IJCV 2013), as R-CNN and Fast R-CNN use them.

:func:`selective_search` runs OpenCV contrib's implementation
(``cv2.ximgproc.segmentation.createSelectiveSearchSegmentation``; the package is
``opencv-contrib-python-headless``, in ``requirements/test.txt`` and the ``rcnn`` extra) and
returns pixel ``[x1, y1, x2, y2]`` float32 boxes (torchvision's convention, which the rest of
``hybrid_keras.detection`` takes), in OpenCV's ranking (its hierarchical grouping order),
duplicates removed.

Determinism: OpenCV ranks the grouped regions by their hierarchy level times a random number
drawn from the C library's ``rand()`` (not from OpenCV's own generator), so the same image
gives the same set of boxes but in a different order on each call, and ``max_proposals``
would keep a different subset. Each call therefore fixes the thread count
(``cv2.setNumThreads(threads)``, restored afterwards), OpenCV's generator
(``cv2.setRNGSeed(seed)``) and the C library's (``srand(seed)`` through ``ctypes``): the same
image gives the same boxes in the same order every time (checked in ``tests/test_rcnn.py``).
Where the C library cannot be reached (no ``ctypes.CDLL(None)``, as on Windows) the order is
not fixed; the function then sorts the boxes (by area, largest first, then coordinates) before
keeping ``max_proposals``, so the result is still deterministic, with OpenCV's ranking lost.

"fast" is the paper's fast mode (two colour spaces, two similarity strategies, k = 50, 100),
"quality" its quality mode (more colour spaces and k values: several times slower, more and
better-covering boxes). Both are slow on large images: downscale first (R-CNN's own
pipeline works on images of a few hundred pixels) and scale the boxes back.
"""

from __future__ import annotations

import ctypes

import numpy as np

MODES = ("fast", "quality")


def _cv2():
    try:
        import cv2
    except ImportError as error:  # pragma: no cover - depends on the environment
        raise ImportError("selective search needs OpenCV with the contrib modules: pip install "
                          "opencv-contrib-python-headless (pinned in requirements/test.txt; the 'rcnn' extra)"
                          ) from error
    if not hasattr(cv2, "ximgproc"):
        raise ImportError("this OpenCV has no contrib modules (cv2.ximgproc): install opencv-contrib-python-headless "
                          "instead of opencv-python")
    return cv2


def _seed_c_rand(seed: int) -> bool:
    """``srand(seed)`` in the process's C library; False where it cannot be reached."""
    try:
        ctypes.CDLL(None).srand(ctypes.c_uint(seed))
    except (OSError, AttributeError, TypeError):  # pragma: no cover - platform dependent
        return False
    return True


def selective_search(image, mode: str = "fast", max_proposals: int = 2000, min_size: int = 4, *, threads: int = 1,
                     seed: int = 0) -> np.ndarray:
    """Selective search proposals for one RGB image.

    Args:
        image: uint8 (or [0, 255]) ``[H, W, 3]`` RGB array.
        mode: "fast" or "quality" (see the module).
        max_proposals: keep at most this many boxes, OpenCV's best-ranked first.
        min_size: drop boxes narrower or shorter than this many pixels.
        threads, seed: fixed for the call so the result is deterministic (see the module).

    Returns:
        float32 ``[N, 4]`` pixel ``[x1, y1, x2, y2]`` (``x2 = x + w``), inside the image, no
        duplicates, ``N <= max_proposals`` (N may be 0 for a featureless image).
    """
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}. Received: mode={mode!r}")
    if not isinstance(max_proposals, (int, np.integer)) or max_proposals < 1:
        raise ValueError(f"max_proposals must be a positive int. Received: max_proposals={max_proposals!r}")
    if min_size < 0:
        raise ValueError(f"min_size must be >= 0 pixels. Received: min_size={min_size!r}")
    image = np.asarray(image)
    if image.ndim != 3 or image.shape[2] != 3 or min(image.shape[:2]) < 2:
        raise ValueError("image must be an RGB array [H, W, 3] at least 2 pixels a side. Received: shape "
                         f"{image.shape}")
    if image.dtype != np.uint8:
        image = np.clip(np.round(image.astype(np.float64)), 0, 255).astype(np.uint8)
    cv2 = _cv2()
    previous = cv2.getNumThreads()
    cv2.setNumThreads(int(threads))
    try:
        cv2.setRNGSeed(int(seed))
        ranked = _seed_c_rand(int(seed))
        search = cv2.ximgproc.segmentation.createSelectiveSearchSegmentation()
        search.setBaseImage(np.ascontiguousarray(image[..., ::-1]))  # OpenCV takes BGR
        if mode == "fast":
            search.switchToSelectiveSearchFast()
        else:
            search.switchToSelectiveSearchQuality()
        rects = np.asarray(search.process(), np.float32).reshape(-1, 4)  # x, y, w, h
    finally:
        cv2.setNumThreads(previous)
    boxes = np.concatenate([rects[:, :2], rects[:, :2] + rects[:, 2:]], axis=1)
    height, width = image.shape[:2]
    boxes = np.clip(boxes, 0, [width, height, width, height]).astype(np.float32)
    large = ((boxes[:, 2] - boxes[:, 0]) >= min_size) & ((boxes[:, 3] - boxes[:, 1]) >= min_size)
    boxes = boxes[large]
    _, first = np.unique(boxes, axis=0, return_index=True)  # first occurrence keeps OpenCV's rank
    boxes = boxes[np.sort(first)]
    if not ranked:  # pragma: no cover - platform dependent
        area = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
        boxes = boxes[np.lexsort((boxes[:, 3], boxes[:, 2], boxes[:, 1], boxes[:, 0], -area))]
    return boxes[:max_proposals]


def proposal_recall(proposals, truth, thresholds=(0.5, 0.7)) -> dict[str, float]:
    """The fraction of ground-truth boxes some proposal covers at IoU >= each threshold.

    ``proposals``, ``truth``: lists (one entry per image) of pixel ``[x1, y1, x2, y2]`` arrays.
    Returns ``{"recall@0.5": ..., ...}`` over all ground-truth boxes.
    """
    from keras import ops

    from hybrid_keras.detection.boxes import box_iou

    best = []
    for boxes, gt in zip(proposals, truth):
        gt = np.asarray(gt, np.float32).reshape(-1, 4)
        if not len(gt):
            continue
        if not len(boxes):
            best.append(np.zeros(len(gt)))
            continue
        iou = ops.convert_to_numpy(box_iou(gt, np.asarray(boxes, np.float32)))
        best.append(iou.max(axis=1))
    best = np.concatenate(best) if best else np.zeros(0)
    return {f"recall@{t}": float(np.mean(best >= t)) if len(best) else 0.0 for t in thresholds}
