"""COCO AP (boxes and masks) against pycocotools on synthetic predictions, and VOC AP by hand."""

import numpy as np
import pytest

from hybrid_keras.detection.evaluation import coco_metrics, voc_average_precision

NAMES = ["AP", "AP50", "AP75", "AP_small", "AP_medium", "AP_large", "AR1", "AR10", "AR100", "AR_small", "AR_medium",
         "AR_large"]
SIZE = 160


def _scene(seed):
    """Ground truth of three classes at every COCO size, a crowd region, and detections that are
    jittered copies (some poor), duplicates, misses and false positives, with random scores."""
    rng = np.random.default_rng(seed)
    truth_boxes, labels = [], []
    for extent in rng.choice([12, 24, 50, 110], size=rng.integers(1, 7)):
        x, y = rng.uniform(0, SIZE - extent, 2)
        w, h = extent * rng.uniform(0.7, 1.3, 2)
        truth_boxes.append([x, y, min(x + w, SIZE), min(y + h, SIZE)])
        labels.append(int(rng.integers(1, 4)))
    crowd = np.zeros(len(labels), bool)
    if seed % 3 == 0:
        truth_boxes.append([0, 0, 60, 60])
        labels.append(1)
        crowd = np.append(crowd, True)
    truth = {"boxes": np.array(truth_boxes), "labels": np.array(labels), "iscrowd": crowd}
    boxes, scores, classes = [], [], []
    for box, label in zip(truth["boxes"], truth["labels"]):
        for _ in range(rng.integers(0, 3)):  # missed, found once, or found twice
            jitter = rng.normal(0, 0.15 * (box[2] - box[0]), 4)
            boxes.append(np.clip(np.sort((box + jitter).reshape(2, 2), axis=0).ravel(), 0, SIZE))
            classes.append(label if rng.random() > 0.1 else int(rng.integers(1, 4)))
            scores.append(rng.random())
    for _ in range(rng.integers(0, 4)):
        x, y = rng.uniform(0, SIZE - 30, 2)
        boxes.append([x, y, x + rng.uniform(5, 30), y + rng.uniform(5, 30)])
        classes.append(int(rng.integers(1, 4)))
        scores.append(rng.random())
    detected = {"boxes": np.array(boxes).reshape(-1, 4), "scores": np.array(scores), "labels": np.array(classes)}
    return truth, detected


def _masks(boxes, rng):
    """An ellipse inside each box."""
    yy, xx = np.mgrid[:SIZE, :SIZE] + 0.5
    masks = []
    for x1, y1, x2, y2 in boxes:
        cx, cy = (x1 + x2) / 2 + rng.normal(0, 1), (y1 + y2) / 2 + rng.normal(0, 1)
        rx, ry = max((x2 - x1) / 2, 1.0), max((y2 - y1) / 2, 1.0)
        masks.append(((xx - cx) / rx) ** 2 + ((yy - cy) / ry) ** 2 <= 1)
    return np.array(masks, bool).reshape(-1, SIZE, SIZE)


def _pycocotools(truths, detections, iou_type):
    from pycocotools import mask as mask_utils
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    def rle(mask):
        encoded = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
        encoded["counts"] = encoded["counts"].decode()
        return encoded

    annotations, results = [], []
    for image, (truth, detected) in enumerate(zip(truths, detections)):
        for i, (box, label) in enumerate(zip(truth["boxes"], truth["labels"])):
            x1, y1, x2, y2 = box
            annotation = {"id": len(annotations) + 1, "image_id": image, "category_id": int(label),
                          "bbox": [x1, y1, x2 - x1, y2 - y1], "iscrowd": int(truth["iscrowd"][i]),
                          "area": float((x2 - x1) * (y2 - y1))}
            if iou_type == "segm":
                annotation["segmentation"] = rle(truth["masks"][i])
                annotation["area"] = float(truth["masks"][i].sum())
            annotations.append(annotation)
        for i, (box, score, label) in enumerate(zip(detected["boxes"], detected["scores"], detected["labels"])):
            x1, y1, x2, y2 = box
            result = {"image_id": image, "category_id": int(label), "score": float(score)}
            if iou_type == "segm":
                result["segmentation"] = rle(detected["masks"][i])
            else:
                result["bbox"] = [x1, y1, x2 - x1, y2 - y1]
            results.append(result)
    coco = COCO()
    coco.dataset = {"images": [{"id": i, "height": SIZE, "width": SIZE} for i in range(len(truths))],
                    "annotations": annotations, "categories": [{"id": c} for c in (1, 2, 3)]}
    coco.createIndex()
    evaluation = COCOeval(coco, coco.loadRes(results), iou_type)
    evaluation.evaluate()
    evaluation.accumulate()
    evaluation.summarize()
    return dict(zip(NAMES, evaluation.stats))


@pytest.mark.parametrize("iou_type", ["bbox", "segm"])
def test_coco_metrics_equal_pycocotools(iou_type):
    scenes = [_scene(seed) for seed in range(12)]
    truths, detections = [t for t, _ in scenes], [d for _, d in scenes]
    if iou_type == "segm":
        rng = np.random.default_rng(0)
        for item in truths + detections:
            item["masks"] = _masks(item["boxes"], rng)
    expected = _pycocotools(truths, detections, iou_type)
    ours = coco_metrics(truths, detections, iou_type)
    for name in NAMES:
        assert ours[name] == pytest.approx(expected[name], abs=1e-9), name
    assert 0.1 < ours["AP"] < 0.9  # a scene with something to measure


def test_coco_metrics_perfect_and_empty():
    truth = {"boxes": np.array([[10, 10, 50, 60], [70, 20, 90, 40]]), "labels": np.array([1, 2])}
    perfect = {"boxes": truth["boxes"], "scores": np.array([0.9, 0.8]), "labels": truth["labels"]}
    assert coco_metrics([truth], [perfect])["AP"] == pytest.approx(1.0)
    nothing = {"boxes": np.zeros((0, 4)), "scores": np.zeros(0), "labels": np.zeros(0, int)}
    assert coco_metrics([truth], [nothing])["AP"] == 0.0
    with pytest.raises(ValueError, match="one entry per image"):
        coco_metrics([truth], [])
    with pytest.raises(ValueError, match="lacks"):
        coco_metrics([truth], [{"boxes": truth["boxes"]}])


def test_voc_average_precision_by_hand():
    # Two objects; three detections by score: hit, false positive, hit -> precision 1, 1/2, 2/3
    # at recall 1/2, 1/2, 1. Envelope: 1 up to recall 1/2, then 2/3: AP = 0.5 * 1 + 0.5 * 2/3.
    truth = {"boxes": np.array([[0, 0, 10, 10], [20, 20, 30, 30]]), "labels": np.array([1, 1])}
    detected = {"boxes": np.array([[0, 0, 10, 10], [50, 50, 60, 60], [21, 21, 30, 30]]),
                "scores": np.array([0.9, 0.8, 0.7]), "labels": np.array([1, 1, 1])}
    result = voc_average_precision([truth], [detected])
    assert result["per_class"][1] == pytest.approx(0.5 + 0.5 * 2 / 3)
    # A duplicate of a taken object is a false positive; a "difficult" object is neither.
    truth["difficult"] = np.array([False, True])
    detected["boxes"][1] = [0, 0, 10, 10]
    assert voc_average_precision([truth], [detected])["mAP"] == pytest.approx(1.0)
