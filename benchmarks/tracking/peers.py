"""OpenCV's classic single-object trackers, behind the protocol every tracker in this benchmark follows.

The protocol (the Siamese tracker follows it too, so ``evaluate`` treats all alike)::

    tracker.init(frame, box)             # frame uint8 [H, W, 3] RGB, box [x, y, w, h] in pixels
    box, score = tracker.update(frame)   # box float64 [4] [x, y, w, h]; score a float, or nan if none

The peers: CSRT (discriminative correlation filter with channel and spatial reliability,
Lukezic et al., CVPR 2017), KCF (kernelized correlation filters, Henriques et al., TPAMI 2015)
and MIL (multiple-instance learning, Babenko et al., CVPR 2009), from opencv-contrib.
"""

from __future__ import annotations

import numpy as np

# Class names in cv2 (OpenCV 5 has them at top level; some older builds only under cv2.legacy).
OPENCV_TRACKERS = {"csrt": "TrackerCSRT", "kcf": "TrackerKCF", "mil": "TrackerMIL"}


class OpenCVTracker:
    """One OpenCV tracker. OpenCV wants BGR frames and integer boxes, and may report a failure:
    then the previous box is kept, as OTB's one-pass evaluation scores a tracker that lost its target.
    OpenCV gives these trackers no confidence, so the score is nan."""

    def __init__(self, name: str):
        import cv2

        if name not in OPENCV_TRACKERS:
            raise ValueError(f"name must be one of {tuple(OPENCV_TRACKERS)}. Received: name={name!r}")
        cls = getattr(cv2, OPENCV_TRACKERS[name], None) or getattr(getattr(cv2, "legacy", None), OPENCV_TRACKERS[name],
                                                                   None)
        if cls is None:
            raise ImportError(f"cv2 {cv2.__version__} has no {OPENCV_TRACKERS[name]}: install "
                              "opencv-contrib-python-headless (requirements/bench.txt)")
        self.name, self._cls, self._cv2 = name, cls, cv2
        self._tracker, self._box = None, None
        self.failures = 0  # frames on which OpenCV reported a failure since init

    def init(self, frame, box) -> None:
        frame = self._bgr(frame)
        box = np.asarray(box, np.float64).reshape(4)
        self._tracker = self._cls.create()  # a fresh one: OpenCV trackers cannot be re-initialised reliably
        self._tracker.init(frame, _int_rect(box, frame.shape[:2]))
        self._box, self.failures = box.copy(), 0

    def update(self, frame) -> tuple[np.ndarray, float]:
        if self._tracker is None:
            raise RuntimeError(f"{self.name}: call init(frame, box) before update(frame)")
        found, rect = self._tracker.update(self._bgr(frame))
        if found and rect[2] > 0 and rect[3] > 0:
            self._box = np.asarray(rect, np.float64)
        else:
            self.failures += 1
        return self._box.copy(), float("nan")

    def _bgr(self, frame) -> np.ndarray:
        frame = np.asarray(frame)
        if frame.ndim != 3 or frame.shape[2] != 3 or frame.dtype != np.uint8:
            raise ValueError(f"frame must be uint8 [H, W, 3] RGB. Received: {frame.dtype} {frame.shape}")
        return np.ascontiguousarray(frame[:, :, ::-1])


def _int_rect(box: np.ndarray, frame_size) -> tuple[int, int, int, int]:
    """The whole-pixel box covering the same corners (rounded), inside the frame and at least 1 px."""
    height, width = frame_size
    x0, y0 = np.clip(np.round(box[:2]), 0, [width - 1, height - 1])
    x1, y1 = np.clip(np.round(box[:2] + box[2:]), [x0 + 1, y0 + 1], [width, height])
    return int(x0), int(y0), int(x1 - x0), int(y1 - y0)


def opencv_tracker(name: str) -> OpenCVTracker:
    """``"csrt"``, ``"kcf"`` or ``"mil"``: a new tracker following the benchmark's protocol."""
    return OpenCVTracker(name)
