"""Detection accuracy: COCO's AP@[.5:.95] family (box and mask) and PASCAL VOC's AP@0.5.

``coco_metrics`` reimplements the COCO evaluation in NumPy, rule for rule as pycocotools'
``COCOeval`` (the field's reference, which the tests compare it with): per image and class,
detections in decreasing score (the first 100) are matched greedily to the unmatched ground
truth of highest IoU at each threshold 0.5, 0.55, ..., 0.95; crowd boxes match many detections
and neither reward nor penalise them, nor do ground truths outside an area range; precision
is made monotone and read at 101 recall points; AP is its mean over recall points, thresholds
and the classes that have ground truth. Having it here means training code needs no compiled
extension; pycocotools stays the reference in tests and benchmarks.

Inputs are one dict per image, boxes ``[x1, y1, x2, y2]`` in pixels:
ground truth ``{"boxes", "labels"}`` plus optional ``"masks"`` (``[N, H, W]`` booleans),
``"iscrowd"`` and ``"area"`` (defaults: box or mask area); detections ``{"boxes", "scores",
"labels"}`` plus ``"masks"`` for mask AP.
"""

from __future__ import annotations

import numpy as np

IOU_THRESHOLDS = np.linspace(0.5, 0.95, 10)
RECALL_POINTS = np.linspace(0.0, 1.0, 101)
MAX_DETECTIONS = (1, 10, 100)
AREA_RANGES = {"all": (0.0, 1e10), "small": (0.0, 32.0 ** 2), "medium": (32.0 ** 2, 96.0 ** 2),
               "large": (96.0 ** 2, 1e10)}


def _flat_masks(masks) -> np.ndarray:
    masks = np.asarray(masks, bool)
    return masks.reshape(len(masks), int(np.prod(masks.shape[1:])))


def _pairwise_iou(detected, truth, crowd, iou_type: str) -> np.ndarray:
    """``[D, G]``; against a crowd region the overlap is divided by the detection's own area."""
    if iou_type == "bbox":
        d, g = np.asarray(detected, np.float64), np.asarray(truth, np.float64)
        width = np.clip(np.minimum(d[:, None, 2], g[None, :, 2]) - np.maximum(d[:, None, 0], g[None, :, 0]), 0, None)
        height = np.clip(np.minimum(d[:, None, 3], g[None, :, 3]) - np.maximum(d[:, None, 1], g[None, :, 1]), 0, None)
        overlap = width * height
        area_d = (d[:, 2] - d[:, 0]) * (d[:, 3] - d[:, 1])
        area_g = (g[:, 2] - g[:, 0]) * (g[:, 3] - g[:, 1])
    else:
        d, g = _flat_masks(detected).astype(np.float64), _flat_masks(truth).astype(np.float64)
        overlap = d @ g.T
        area_d, area_g = d.sum(1), g.sum(1)
    union = np.where(crowd[None, :], area_d[:, None], area_d[:, None] + area_g[None, :] - overlap)
    return np.where(union > 0, overlap / np.where(union > 0, union, 1.0), 0.0)


def _areas(item: dict, iou_type: str, key: str) -> np.ndarray:
    if "area" in item and key == "truth":
        return np.asarray(item["area"], np.float64)
    if iou_type == "segm":
        return _flat_masks(item["masks"]).sum(1).astype(np.float64)
    boxes = np.asarray(item["boxes"], np.float64).reshape(-1, 4)
    return (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])


def _check(items, name: str, needs: tuple[str, ...]) -> None:
    for i, item in enumerate(items):
        missing = [k for k in needs if k not in item]
        if missing:
            raise ValueError(f"{name}[{i}] lacks {missing}. Received keys: {sorted(item)}")


def _match_image(truth: dict, detected: dict, label: int, area_range, iou_type: str):
    """One image and class: (scores, matched [T, D], ignored [T, D], truth_ignored [G]) for the
    detections kept (at most the largest max-detections), or None with nothing on either side."""
    gt = np.flatnonzero(np.asarray(truth["labels"]) == label)
    dt = np.flatnonzero(np.asarray(detected["labels"]) == label)
    if not len(gt) and not len(dt):
        return None
    crowd = np.asarray(truth.get("iscrowd", np.zeros(len(truth["labels"]))), bool)[gt]
    truth_area = _areas(truth, iou_type, "truth")[gt]
    ignored_truth = crowd | (truth_area < area_range[0]) | (truth_area > area_range[1])
    gt_order = np.argsort(ignored_truth, kind="mergesort")  # ignored ground truth last
    gt, crowd, ignored_truth = gt[gt_order], crowd[gt_order], ignored_truth[gt_order]
    scores = np.asarray(detected["scores"], np.float64)[dt]
    dt_order = np.argsort(-scores, kind="mergesort")[:MAX_DETECTIONS[-1]]
    dt, scores = dt[dt_order], scores[dt_order]
    key = "boxes" if iou_type == "bbox" else "masks"
    if len(dt) and len(gt):
        ious = _pairwise_iou(np.asarray(detected[key])[dt], np.asarray(truth[key])[gt], crowd, iou_type)
    else:
        ious = np.zeros((len(dt), len(gt)))

    thresholds = len(IOU_THRESHOLDS)
    matched = np.zeros((thresholds, len(dt)), bool)
    ignored = np.zeros((thresholds, len(dt)), bool)
    for t, threshold in enumerate(IOU_THRESHOLDS):
        taken = np.zeros(len(gt), bool)
        for d in range(len(dt)):
            best, match = min(threshold, 1 - 1e-10), -1
            for g in range(len(gt)):
                if taken[g] and not crowd[g]:
                    continue
                if match > -1 and not ignored_truth[match] and ignored_truth[g]:
                    break  # only ignored ground truth is left; keep the real match
                if ious[d, g] < best:
                    continue
                best, match = ious[d, g], g
            if match > -1:
                taken[match] = True
                matched[t, d] = True
                ignored[t, d] = ignored_truth[match]
    detected_area = _areas({k: np.asarray(v)[dt] for k, v in detected.items() if k in ("boxes", "masks")},
                           iou_type, "detections")
    outside = (detected_area < area_range[0]) | (detected_area > area_range[1])
    ignored |= ~matched & outside[None, :]
    return scores, matched, ignored, ignored_truth


def _average_precision(per_image, max_detections: int):
    """Precision at the 101 recall points per threshold ``[T, 101]`` and recall ``[T]``, or
    None for a class without (non-ignored) ground truth."""
    per_image = [m for m in per_image if m is not None]
    if not per_image:
        return None
    truth_count = sum(int(np.count_nonzero(~m[3])) for m in per_image)
    if truth_count == 0:
        return None
    scores = np.concatenate([m[0][:max_detections] for m in per_image])
    order = np.argsort(-scores, kind="mergesort")
    matched = np.concatenate([m[1][:, :max_detections] for m in per_image], axis=1)[:, order]
    ignored = np.concatenate([m[2][:, :max_detections] for m in per_image], axis=1)[:, order]
    true_positives = np.cumsum(matched & ~ignored, axis=1, dtype=np.float64)
    false_positives = np.cumsum(~matched & ~ignored, axis=1, dtype=np.float64)
    precision = np.zeros((len(IOU_THRESHOLDS), len(RECALL_POINTS)))
    recall = np.zeros(len(IOU_THRESHOLDS))
    for t in range(len(IOU_THRESHOLDS)):
        tp, fp = true_positives[t], false_positives[t]
        if not len(tp):
            continue
        rc = tp / truth_count
        pr = np.maximum.accumulate((tp / (tp + fp + np.spacing(1)))[::-1])[::-1]  # monotone envelope
        recall[t] = rc[-1]
        at = np.searchsorted(rc, RECALL_POINTS, side="left")
        valid = at < len(pr)
        precision[t, : int(valid.sum())] = pr[at[valid]]
    return precision, recall


def coco_metrics(ground_truth: list[dict], detections: list[dict], iou_type: str = "bbox") -> dict:
    """The twelve figures pycocotools' ``COCOeval.summarize`` prints, by name: ``AP``, ``AP50``,
    ``AP75``, ``AP_small``, ``AP_medium``, ``AP_large``, ``AR1``, ``AR10``, ``AR100``, ``AR_small``,
    ``AR_medium``, ``AR_large`` (-1 where nothing qualifies, as there)."""
    if iou_type not in ("bbox", "segm"):
        raise ValueError(f"iou_type must be 'bbox' or 'segm'. Received: {iou_type!r}")
    if len(ground_truth) != len(detections):
        raise ValueError(f"ground_truth and detections need one entry per image. Received: {len(ground_truth)} "
                         f"and {len(detections)}")
    key = "boxes" if iou_type == "bbox" else "masks"
    _check(ground_truth, "ground_truth", (key, "labels"))
    _check(detections, "detections", (key, "scores", "labels"))
    labels = sorted({int(v) for item in ground_truth + detections for v in np.asarray(item["labels"]).ravel()})
    # Matching depends on the class and the area range only; each max-detections cut reuses it.
    matches = {area: {label: [_match_image(g, d, label, bounds, iou_type) for g, d in zip(ground_truth, detections)]
                      for label in labels} for area, bounds in AREA_RANGES.items()}

    def evaluate(area: str, max_detections: int, part: int):
        results = [_average_precision(per_image, max_detections) for per_image in matches[area].values()]
        results = [r[part] for r in results if r is not None]
        return np.stack(results) if results else None

    def mean(values):
        return float(np.mean(values)) if values is not None and np.size(values) else -1.0

    precision = evaluate("all", 100, 0)
    results = {"AP": mean(precision), "AP50": mean(None if precision is None else precision[:, 0]),
               "AP75": mean(None if precision is None else precision[:, 5])}
    for area in ("small", "medium", "large"):
        results[f"AP_{area}"] = mean(evaluate(area, 100, 0))
    for count in MAX_DETECTIONS:
        results[f"AR{count}"] = mean(evaluate("all", count, 1))
    for area in ("small", "medium", "large"):
        results[f"AR_{area}"] = mean(evaluate(area, 100, 1))
    return results


def voc_average_precision(ground_truth: list[dict], detections: list[dict], iou_threshold: float = 0.5) -> dict:
    """PASCAL VOC's AP (2010 onwards: area under the monotone precision envelope over all
    recall points) per class, and its mean, ``{"mAP": ..., "per_class": {label: AP}}``.

    A detection is a true positive when its best-overlapping ground truth of its class (IoU
    >= ``iou_threshold``) is not yet taken; ground truth marked ``"difficult"`` neither counts
    nor penalises (VOC's rule).
    """
    _check(ground_truth, "ground_truth", ("boxes", "labels"))
    _check(detections, "detections", ("boxes", "scores", "labels"))
    labels = sorted({int(v) for item in ground_truth for v in np.asarray(item["labels"]).ravel()})
    per_class = {}
    for label in labels:
        records, truth_count = [], 0
        for image, (truth, detected) in enumerate(zip(ground_truth, detections)):
            gt = np.flatnonzero(np.asarray(truth["labels"]) == label)
            difficult = np.asarray(truth.get("difficult", np.zeros(len(truth["labels"]))), bool)[gt]
            truth_count += int((~difficult).sum())
            dt = np.flatnonzero(np.asarray(detected["labels"]) == label)
            ious = (_pairwise_iou(np.asarray(detected["boxes"])[dt], np.asarray(truth["boxes"])[gt],
                                  np.zeros(len(gt), bool), "bbox") if len(dt) and len(gt) else np.zeros((len(dt), 0)))
            for d in range(len(dt)):
                records.append((float(np.asarray(detected["scores"])[dt[d]]), image, ious[d], difficult))
        records.sort(key=lambda r: -r[0])
        taken: dict[int, np.ndarray] = {}
        hits = []
        for _, image, ious, difficult in records:
            used = taken.setdefault(image, np.zeros(len(ious), bool))
            best = int(np.argmax(ious)) if len(ious) else -1
            if best < 0 or ious[best] < iou_threshold:
                hits.append(0)
            elif difficult[best]:
                continue  # neither true nor false positive
            elif not used[best]:
                used[best] = True
                hits.append(1)
            else:
                hits.append(0)
        hits = np.asarray(hits, np.float64)
        tp, fp = np.cumsum(hits), np.cumsum(1 - hits)
        recall = tp / max(truth_count, 1)
        precision = tp / np.maximum(tp + fp, np.finfo(np.float64).eps)
        envelope = np.maximum.accumulate(np.concatenate([precision, [0.0]])[::-1])[::-1]
        steps = np.diff(np.concatenate([[0.0], recall]))
        per_class[label] = float(np.sum(steps * envelope[:-1])) if truth_count else 0.0
    return {"mAP": float(np.mean(list(per_class.values()))) if per_class else 0.0, "per_class": per_class}
