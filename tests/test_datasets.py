"""TFDS builders of ``hybrid_keras.datasets``: every feature against values computed from the source files.

Each dataset gets a tiny fixture in its on-disk format (generated images, masks, boxes,
XML, CSV, JSON), is prepared through its builder into a temporary data_dir, and its
examples are checked against independent truth: pixels against PIL's decoding, boxes
worked out by hand from the annotation, masks against the panoptic PNG, splits and
counts against the lists. The shipped MNIST is checked against its IDX bytes. Features
are checked against TFDS's own catalogue builders (names, types, dtypes, shapes).
"""

from __future__ import annotations

import csv
import gzip
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

tf = pytest.importorskip("tensorflow")
tfds = pytest.importorskip("tensorflow_datasets")

from hybrid_keras import datasets  # noqa: E402

COCO_IDS_USED = {1: 0, 13: 11, 90: 79}  # COCO category id -> coco/2017 label index (80 things, id order)


def _pil_rgb(path) -> np.ndarray:
    with Image.open(path) as image:
        return np.asarray(image.convert("RGB"))


def _smooth_image(rng, height, width, channels=3) -> np.ndarray:
    """A JPEG-friendly image: a coarse random grid, upsampled."""
    coarse = rng.integers(0, 256, (max(height // 4, 1), max(width // 4, 1), channels)).astype(np.uint8)
    image = Image.fromarray(coarse[..., 0] if channels == 1 else coarse).resize((width, height), Image.BILINEAR)
    return np.asarray(image)


def _save_jpeg(path: Path, array: np.ndarray) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path, quality=90)
    return path


def _load(name, manual_dir, tmp_path, **kwargs):
    return datasets.load(name, manual_dir=manual_dir, data_dir=tmp_path / "tfds", **kwargs)


def _examples(dataset) -> list[dict]:
    return list(dataset.as_numpy_iterator())


# --------------------------------------------------------------------------- package


def test_importing_the_package_imports_neither_tensorflow_nor_tfds():
    code = ("import sys, hybrid_keras, hybrid_keras.datasets\n"
            "print(sorted(m for m in ('tensorflow', 'tensorflow_datasets') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def _flat_features(features, prefix="") -> dict:
    flat = {}
    for key, feature in features.items():
        if isinstance(feature, tfds.features.Sequence) and isinstance(feature.feature, tfds.features.FeaturesDict):
            flat.update(_flat_features(feature.feature, f"{prefix}{key}/"))
        else:
            flat[prefix + key] = feature
    return flat


@pytest.mark.parametrize("ours, catalogue, extra", [
    ("mnist", "mnist", set()),
    ("cifar10_jpeg", "cifar10", set()),
    ("coco128/detection", "coco/2017", set()),
    ("coco128/instances", "coco/2017", {"objects/segmentation"}),
    ("raccoon", "voc/2007", set()),
])
def test_features_are_the_catalogue_datasets(ours, catalogue, extra):
    """Every feature TFDS's own builder has is here with the same type, dtype and shape; only ``extra`` is added."""
    mine = _flat_features(datasets.builder(ours).info.features)
    theirs = _flat_features(tfds.builder(catalogue).info.features)
    assert set(mine) - set(theirs) == extra
    for key in set(mine) & set(theirs):
        assert type(mine[key]) is type(theirs[key]), key
        assert (mine[key].np_dtype, mine[key].shape) == (theirs[key].np_dtype, theirs[key].shape), key


def test_instance_masks_have_the_lvis_feature():
    mine = datasets.builder("coco128/instances").info.features["objects"].feature["segmentation"]
    lvis = tfds.builder("lvis").info.features["objects"].feature["segmentation"]
    assert (type(mine), mine.np_dtype, mine.shape) == (type(lvis), lvis.np_dtype, lvis.shape)


def test_builders_do_not_take_the_catalogue_names():
    for name in datasets.DATASETS:
        datasets.builder_class(name)  # imports (and registers) every builder
    assert tfds.builder_cls("mnist").__module__.startswith("tensorflow_datasets.")
    assert tfds.builder_cls("cifar10").__module__.startswith("tensorflow_datasets.")
    assert tfds.builder_cls("coco").__module__.startswith("tensorflow_datasets.")
    assert tfds.builder_cls("hybrid_keras_mnist") is datasets.builder_class("mnist")


def test_unknown_name_suggests_close_ones():
    with pytest.raises(ValueError, match=r"name: unknown dataset 'camvd'.*Did you mean 'camvid'"):
        datasets.builder("camvd")


# --------------------------------------------------------------------------- MNIST


def _idx_arrays(folder: Path, prefix: str):
    with gzip.open(folder / f"{prefix}-images-idx3-ubyte.gz") as f:
        images = np.frombuffer(f.read()[16:], np.uint8).reshape(-1, 28, 28)
    with gzip.open(folder / f"{prefix}-labels-idx1-ubyte.gz") as f:
        labels = np.frombuffer(f.read()[8:], np.uint8)
    return images, labels


def test_shipped_mnist_loads_with_no_manual_dir_and_equals_the_idx_bytes(tmp_path):
    dataset = datasets.load("mnist", split="test", data_dir=tmp_path / "tfds", as_supervised=True)
    images, labels = datasets.to_numpy(dataset)
    expected_images, expected_labels = _idx_arrays(datasets.builder_class("mnist").DEFAULT_MANUAL_DIR, "t10k")
    assert images.shape == (10000, 28, 28, 1) and images.dtype == np.uint8
    np.testing.assert_array_equal(images[..., 0], expected_images)
    np.testing.assert_array_equal(labels, expected_labels)
    # Stored in file order: a slice is the same images as an index range.
    tail, tail_labels = datasets.to_numpy(datasets.load("mnist", split="test[8000:]", data_dir=tmp_path / "tfds",
                                                        as_supervised=True))
    np.testing.assert_array_equal(tail[..., 0], expected_images[8000:])
    np.testing.assert_array_equal(tail_labels, expected_labels[8000:])


def _write_idx(folder: Path, prefix: str, images: np.ndarray, labels: np.ndarray):
    folder.mkdir(parents=True, exist_ok=True)
    header = np.array([2051, len(images), 28, 28], ">i4").tobytes()
    (folder / f"{prefix}-images-idx3-ubyte.gz").write_bytes(gzip.compress(header + images.tobytes()))
    header = np.array([2049, len(labels)], ">i4").tobytes()
    (folder / f"{prefix}-labels-idx1-ubyte.gz").write_bytes(gzip.compress(header + labels.tobytes()))


def test_mnist_folder_with_train_files_gives_both_splits(tmp_path, rng):
    source = tmp_path / "mnist"
    written = {}
    for prefix, count in (("train", 7), ("t10k", 3)):
        written[prefix] = (rng.integers(0, 256, (count, 28, 28), dtype=np.uint8),
                           rng.integers(0, 10, count, dtype=np.uint8))
        _write_idx(source, prefix, *written[prefix])
    splits = _load("mnist", source, tmp_path)
    assert {split: len(ds) for split, ds in splits.items()} == {"train": 7, "test": 3}
    for split, prefix in (("train", "train"), ("test", "t10k")):
        examples = _examples(splits[split])
        np.testing.assert_array_equal(np.stack([e["image"][..., 0] for e in examples]), written[prefix][0])
        np.testing.assert_array_equal([e["label"] for e in examples], written[prefix][1])


def test_corrupt_idx_file_is_named(tmp_path):
    source = tmp_path / "mnist"
    _write_idx(source, "t10k", np.zeros((2, 28, 28), np.uint8), np.zeros(2, np.uint8))
    (source / "t10k-images-idx3-ubyte.gz").write_bytes(gzip.compress(b"\0" * 40))
    with pytest.raises(ValueError, match="t10k-images-idx3-ubyte.gz is not an IDX3 image file"):
        _load("mnist", source, tmp_path)


# --------------------------------------------------------------------------- CIFAR-10 JPEG

CIFAR_CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")


def _cifar_folder(root: Path, rng, per_class: int) -> Path:
    for name in CIFAR_CLASSES:
        for i in range(per_class):
            _save_jpeg(root / "test" / name / f"{i:04d}.jpg", _smooth_image(rng, 32, 32))
    return root


def test_cifar10_jpeg_pixels_labels_ids_and_class_round_robin(tmp_path, rng):
    source = _cifar_folder(tmp_path / "cifar10_jpg", rng, per_class=3)
    dataset, info = _load("cifar10_jpeg", source, tmp_path, split="test", with_info=True)
    examples = _examples(dataset)
    assert info.features["label"].names == list(CIFAR_CLASSES)
    assert len(examples) == 30
    # Round robin: file 0000 of every class in label order, then 0001, ...
    expected = [(label, f"test/{CIFAR_CLASSES[label]}/{i:04d}.jpg") for i in range(3) for label in range(10)]
    assert [(int(e["label"]), e["id"].decode()) for e in examples] == expected
    for example in examples:
        np.testing.assert_array_equal(example["image"], _pil_rgb(source / example["id"].decode()))
    # Any prefix slice is class-balanced.
    first_two = _examples(_load("cifar10_jpeg", source, tmp_path, split="test[:20]"))
    assert sorted(int(e["label"]) for e in first_two) == sorted(list(range(10)) * 2)


def test_changed_manual_dir_is_prepared_again_and_unchanged_is_reused(tmp_path, rng, capsys):
    source = _cifar_folder(tmp_path / "cifar10_jpg", rng, per_class=1)
    assert len(_load("cifar10_jpeg", source, tmp_path, split="test")) == 10
    prepared_info = tmp_path / "tfds" / "hybrid_keras_cifar10_jpeg" / "1.0.0" / "dataset_info.json"
    stamp = prepared_info.stat().st_mtime_ns
    assert len(_load("cifar10_jpeg", source, tmp_path, split="test")) == 10
    assert prepared_info.stat().st_mtime_ns == stamp  # same files: not prepared again
    _save_jpeg(source / "test" / "cat" / "0001.jpg", _smooth_image(rng, 32, 32))
    capsys.readouterr()
    assert len(_load("cifar10_jpeg", source, tmp_path, split="test")) == 11
    assert "preparing it again" in capsys.readouterr().out
    # Without manual_dir the prepared copy is used as it is.
    assert len(_load("cifar10_jpeg", None, tmp_path, split="test")) == 11


# --------------------------------------------------------------------------- CamVid


def _camvid_folder(root: Path, rng) -> dict:
    """Pairs per split; validation's list uses SegNet's absolute paths."""
    pairs = {}
    for split, folder, count in (("train", "train", 3), ("validation", "val", 2), ("test", "test", 2)):
        lines, pairs[split] = [], []
        for i in range(count):
            image = rng.integers(0, 256, (12, 16, 3), dtype=np.uint8)
            mask = rng.integers(0, 12, (12, 16), dtype=np.uint8)
            name = f"0001TP_{i:06d}.png" if split != "test" else f"Seq05VD_f{i:05d}.png"
            for sub, array in ((folder, image), (folder + "annot", mask)):
                (root / sub).mkdir(parents=True, exist_ok=True)
                Image.fromarray(array).save(root / sub / name)
            prefix = "/SegNet/CamVid/" if split == "validation" else ""
            lines.append(f"{prefix}{folder}/{name} {prefix}{folder}annot/{name}")
            pairs[split].append((name, image, mask))
        list_name = {"train": "train.txt", "validation": "val.txt", "test": "test.txt"}[split]
        (root / list_name).write_text("\n".join(lines) + "\n")
    return pairs


def test_camvid_images_masks_and_splits_follow_the_lists(tmp_path, rng):
    source = tmp_path / "camvid"
    pairs = _camvid_folder(source, rng)
    splits = _load("camvid", source, tmp_path)
    assert {split: len(ds) for split, ds in splits.items()} == {"train": 3, "validation": 2, "test": 2}
    for split, expected in pairs.items():
        examples = _examples(splits[split])
        for example, (name, image, mask) in zip(examples, expected):
            assert example["file_name"].decode() == name
            np.testing.assert_array_equal(example["image"], image)
            np.testing.assert_array_equal(example["segmentation_mask"][..., 0], mask)
    image, mask = next(iter(_load("camvid", source, tmp_path, split="test", as_supervised=True)))
    np.testing.assert_array_equal(mask.numpy()[..., 0], pairs["test"][0][2])


def test_image_mask_pairs_resize_masks_by_nearest_neighbour(tmp_path, rng):
    source = tmp_path / "camvid"
    pairs = _camvid_folder(source, rng)
    dataset = _load("camvid", source, tmp_path, split="train")
    images, masks = datasets.to_numpy(datasets.image_mask_pairs(dataset, image_size=(6, 8)))
    assert images.shape == (3, 6, 8, 3) and images.dtype == np.uint8
    assert masks.shape == (3, 6, 8) and masks.dtype == np.int32
    for (_, image, mask), resized_image, resized_mask in zip(pairs["train"], images, masks):
        # Halving picks the source pixel under each output pixel's centre: odd rows and columns.
        np.testing.assert_array_equal(resized_mask, mask[1::2, 1::2])
        pil = np.asarray(Image.fromarray(image).resize((8, 6), Image.BILINEAR)).astype(int)
        assert np.abs(resized_image.astype(int) - pil).max() <= 1  # antialiased bilinear, as PIL's


def test_camvid_mask_with_values_past_void_is_refused(tmp_path, rng):
    source = tmp_path / "camvid"
    pairs = _camvid_folder(source, rng)
    Image.fromarray(np.full((12, 16), 30, np.uint8)).save(source / "testannot" / pairs["test"][0][0])
    with pytest.raises(ValueError, match="mask of class indices 0-11"):
        _load("camvid", source, tmp_path)


# --------------------------------------------------------------------------- Raccoon

RACCOON_XML = """<annotation><filename>{name}</filename>
<size><width>{width}</width><height>{height}</height><depth>3</depth></size>{objects}</annotation>"""
RACCOON_OBJECT = """<object><name>raccoon</name><pose>{pose}</pose><truncated>{truncated}</truncated>
<difficult>{difficult}</difficult><bndbox><xmin>{xmin}</xmin><ymin>{ymin}</ymin><xmax>{xmax}</xmax>
<ymax>{ymax}</ymax></bndbox></object>"""


def _raccoon_folder(root: Path, rng) -> dict:
    images = {  # name: (height, width, channels, boxes (xmin, ymin, xmax, ymax, pose, truncated, difficult))
        "raccoon-1.jpg": (40, 60, 3, [(6, 4, 54, 40, "Unspecified", 0, 0)]),
        "raccoon-2.jpg": (50, 30, 1, [(0, 10, 15, 25, "Left", 1, 0), (12, 20, 30, 50, "Frontal", 0, 1)]),
        "raccoon-10.jpg": (24, 24, 3, [(3, 3, 21, 12, "Rear", 0, 0)]),
    }
    for name, (height, width, channels, boxes) in images.items():
        _save_jpeg(root / "images" / name, _smooth_image(rng, height, width, channels))
        objects = "".join(RACCOON_OBJECT.format(xmin=b[0], ymin=b[1], xmax=b[2], ymax=b[3], pose=b[4],
                                                truncated=b[5], difficult=b[6]) for b in boxes)
        (root / "annotations").mkdir(exist_ok=True)
        (root / "annotations" / name.replace(".jpg", ".xml")).write_text(
            RACCOON_XML.format(name=name, width=width, height=height, objects=objects))
    for csv_name, names in (("train_labels.csv", ["raccoon-2.jpg", "raccoon-10.jpg"]),
                            ("test_labels.csv", ["raccoon-1.jpg"])):
        with open(root / csv_name, "w", newline="") as f:
            writer = csv.writer(f)
            writer.writerow(["filename", "width", "height", "class", "xmin", "ymin", "xmax", "ymax"])
            for name in names:
                height, width, _, boxes = images[name]
                for b in boxes:  # one row per box, as the author's CSVs
                    writer.writerow([name, width, height, "raccoon", *b[:4]])
    return images


def test_raccoon_boxes_are_normalised_ymin_xmin_ymax_xmax_with_voc_fields(tmp_path, rng):
    source = tmp_path / "raccoon"
    images = _raccoon_folder(source, rng)
    splits, info = _load("raccoon", source, tmp_path, with_info=True)
    poses = info.features["objects"]["pose"].names
    assert poses == ["frontal", "rear", "left", "right", "unspecified"]
    for split, names in (("train", ["raccoon-2.jpg", "raccoon-10.jpg"]), ("test", ["raccoon-1.jpg"])):
        examples = _examples(splits[split])
        assert [e["image/filename"].decode() for e in examples] == names  # CSV order, each image once
        for example, name in zip(examples, names):
            height, width, _, boxes = images[name]
            np.testing.assert_array_equal(example["image"], _pil_rgb(source / "images" / name))
            expected = [[b[1] / height, b[0] / width, b[3] / height, b[2] / width] for b in boxes]
            np.testing.assert_allclose(example["objects"]["bbox"], expected, rtol=1e-6)
            assert list(example["objects"]["label"]) == [0] * len(boxes)
            assert [poses[p] for p in example["objects"]["pose"]] == [b[4].lower() for b in boxes]
            assert list(example["objects"]["is_truncated"]) == [bool(b[5]) for b in boxes]
            assert list(example["objects"]["is_difficult"]) == [bool(b[6]) for b in boxes]
            assert list(example["labels"]) == [0]
            assert list(example["labels_no_difficult"]) == ([0] if any(not b[6] for b in boxes) else [])


# --------------------------------------------------------------------------- COCO128

COCO128_IMAGES = {  # image id: (height, width, channels)
    139: (30, 40, 3),
    285: (24, 20, 1),   # grayscale, as one COCO128 image is
    632: (16, 16, 3),   # no YOLO file (no objects) and no panoptic annotation (not in "instances")
}
YOLO_LINES = {139: ["0 0.5 0.5 0.5 0.4", "79 0.25 0.75 0.1 0.2"], 285: ["11 0.5 0.5 1.0 1.0"]}
COCO_NAMES = {1: "person", 13: "stop sign", 90: "toothbrush"}


def _coco128_folder(root: Path, rng, yaml_names=None) -> dict:
    """Images, YOLO boxes, a YOLO names file and COCO panoptic PNG/JSON for two of the three images."""
    for image_id, (height, width, channels) in COCO128_IMAGES.items():
        _save_jpeg(root / "images" / "val2017" / f"{image_id:012d}.jpg", _smooth_image(rng, height, width, channels))
    (root / "labels_detection" / "val2017").mkdir(parents=True)
    for image_id, lines in YOLO_LINES.items():
        (root / "labels_detection" / "val2017" / f"{image_id:012d}.txt").write_text("\n".join(lines) + "\n")
    from hybrid_keras.datasets.coco128 import CLASSES
    names = yaml_names or CLASSES
    (root / "classes_detection.yaml").write_text("path: .\nnames:\n" + "".join(f"  {i}: {n}\n"
                                                                               for i, n in enumerate(names)))
    # Panoptic: segment ids that need all three PNG channels; a stuff segment; a crowd segment.
    segments = {  # image id: [(segment id, category id, iscrowd, (y0, x0, y1, x1))]
        139: [(3226956, 1, 0, (2, 3, 12, 20)), (70000, 90, 0, (15, 5, 25, 9)), (5000000, 184, 0, (26, 0, 30, 40)),
              (1, 1, 1, (0, 30, 4, 40))],
        285: [(2 + 256 * 7 + 65536 * 200, 13, 0, (0, 0, 24, 20))],
    }
    panoptic = {"images": [], "annotations": [], "categories": [
        {"id": i, "name": n, "isthing": 1, "supercategory": "x"} for i, n in COCO_NAMES.items()]
        + [{"id": 184, "name": "tree-merged", "isthing": 0, "supercategory": "plant"}]}
    (root / "panoptic" / "panoptic_val2017").mkdir(parents=True)
    for image_id, segs in segments.items():
        height, width, _ = COCO128_IMAGES[image_id]
        ids = np.zeros((height, width), np.uint32)
        infos = []
        for segment_id, category_id, crowd, (y0, x0, y1, x1) in segs:
            ids[y0:y1, x0:x1] = segment_id
        for segment_id, category_id, crowd, _ in segs:
            ys, xs = np.nonzero(ids == segment_id)
            infos.append({"id": segment_id, "category_id": category_id, "iscrowd": crowd, "area": int(len(ys)),
                          "bbox": [int(xs.min()), int(ys.min()), int(xs.max() - xs.min() + 1),
                                   int(ys.max() - ys.min() + 1)]})
        rgb = np.stack([ids % 256, ids // 256 % 256, ids // 65536], -1).astype(np.uint8)
        Image.fromarray(rgb).save(root / "panoptic" / "panoptic_val2017" / f"{image_id:012d}.png")
        panoptic["images"].append({"id": image_id, "file_name": f"{image_id:012d}.jpg", "height": height,
                                   "width": width})
        panoptic["annotations"].append({"image_id": image_id, "file_name": f"{image_id:012d}.png",
                                        "segments_info": infos})
    (root / "panoptic" / "panoptic_val2017.json").write_text(json.dumps(panoptic))
    return segments


def test_coco128_detection_boxes_labels_and_ids(tmp_path, rng):
    source = tmp_path / "coco128"
    _coco128_folder(source, rng)
    dataset = _load("coco128", source, tmp_path, split="validation")  # detection is the default config
    examples = _examples(dataset)
    assert [int(e["image/id"]) for e in examples] == sorted(COCO128_IMAGES)
    for example in examples:
        image_id = int(example["image/id"])
        assert example["image/filename"].decode() == f"{image_id:012d}.jpg"
        np.testing.assert_array_equal(example["image"],
                                      _pil_rgb(source / "images" / "val2017" / f"{image_id:012d}.jpg"))
        lines = [[float(v) for v in line.split()] for line in YOLO_LINES.get(image_id, [])]
        expected = [[cy - h / 2, cx - w / 2, cy + h / 2, cx + w / 2] for _, cx, cy, w, h in lines]
        np.testing.assert_allclose(example["objects"]["bbox"].reshape(-1, 4), np.reshape(expected, (-1, 4)),
                                   atol=1e-6)
        assert list(example["objects"]["label"]) == [int(line[0]) for line in lines]


def test_coco128_yolo_names_other_than_coco_are_refused(tmp_path, rng):
    source = tmp_path / "coco128"
    _coco128_folder(source, rng, yaml_names=["raccoon"] + ["x"] * 79)
    with pytest.raises(ValueError, match="not COCO's 80 in category-id order"):
        _load("coco128/detection", source, tmp_path)


def test_coco128_instance_masks_equal_the_panoptic_segments(tmp_path, rng):
    source = tmp_path / "coco128"
    segments = _coco128_folder(source, rng)
    dataset, info = _load("coco128/instances", source, tmp_path, split="validation", with_info=True)
    label_names = info.features["objects"]["label"].names
    examples = _examples(dataset)
    assert [int(e["image/id"]) for e in examples] == sorted(segments)  # only images with panoptic annotations
    for example in examples:
        image_id = int(example["image/id"])
        height, width, _ = COCO128_IMAGES[image_id]
        png = np.asarray(Image.open(source / "panoptic" / "panoptic_val2017" / f"{image_id:012d}.png"), np.int64)
        ids = png[..., 0] + 256 * png[..., 1] + 65536 * png[..., 2]
        things = [s for s in segments[image_id] if s[1] in COCO_IDS_USED]  # stuff (184) left out
        objects = example["objects"]
        assert list(objects["id"]) == [s[0] for s in things]
        assert list(objects["label"]) == [COCO_IDS_USED[s[1]] for s in things]
        assert [label_names[i] for i in objects["label"]] == [COCO_NAMES[s[1]] for s in things]
        assert list(objects["is_crowd"]) == [bool(s[2]) for s in things]
        for segment, mask, area, box in zip(things, objects["segmentation"], objects["area"], objects["bbox"]):
            np.testing.assert_array_equal(mask[..., 0], np.where(ids == segment[0], 255, 0))
            assert area == (ids == segment[0]).sum()
            y0, x0, y1, x1 = segment[3]
            np.testing.assert_allclose(box, [y0 / height, x0 / width, y1 / height, x1 / width], atol=1e-6)


# --------------------------------------------------------------------------- BSDS500


def test_bsds500_splits_are_its_folders_and_tfds_load_finds_the_registered_builder(tmp_path, rng):
    source = tmp_path / "bsds500"
    written = {"test": ["2018.jpg", "100007.jpg"], "validation": ["3096.jpg"]}
    for split, names in written.items():
        for name in names:
            _save_jpeg(source / "images" / ("val" if split == "validation" else split) / name,
                       _smooth_image(rng, 21, 32))
    splits = _load("bsds500", source, tmp_path)
    assert {split: [e["image/filename"].decode() for e in _examples(ds)] for split, ds in splits.items()} == {
        split: sorted(names) for split, names in written.items()}
    for example in _examples(splits["test"]):
        np.testing.assert_array_equal(example["image"], _pil_rgb(source / "images" / "test" /
                                                                 example["image/filename"].decode()))
    # Plain TFDS, by the registered name (its default decoding: JPEG's fast IDCT, so pixels may differ by a few levels).
    plain = tfds.load("hybrid_keras_bsds500", split="validation", data_dir=tmp_path / "tfds")
    assert [e["image/filename"].decode() for e in _examples(plain)] == ["3096.jpg"]


# --------------------------------------------------------------------------- missing or empty manual_dir


def test_dataset_without_a_default_source_asks_for_manual_dir(tmp_path):
    with pytest.raises(ValueError, match=r"manual_dir: hybrid_keras_camvid .*train\.txt, val\.txt, test\.txt"):
        datasets.load("camvid", data_dir=tmp_path / "tfds")


def test_missing_manual_dir_is_named(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"manual_dir: no folder at .*nowhere.*train_labels\.csv"):
        datasets.load("raccoon", manual_dir=tmp_path / "nowhere", data_dir=tmp_path / "tfds")


def test_empty_manual_dir_lists_the_missing_files(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match=r"lacks images/\*/\*\.jpg, panoptic/panoptic_\*\.json"):
        datasets.load("coco128/instances", manual_dir=tmp_path / "empty", data_dir=tmp_path / "tfds")
    assert not (tmp_path / "tfds" / "hybrid_keras_coco128").exists()  # nothing half-prepared left behind


# --------------------------------------------------------------------------- Keras inputs


def test_image_label_pairs_pad_and_rgb_turn_mnist_into_the_zoos_input(tmp_path, rng):
    source = tmp_path / "mnist"
    images, labels = rng.integers(0, 256, (4, 28, 28), dtype=np.uint8), rng.integers(0, 10, 4, dtype=np.uint8)
    _write_idx(source, "t10k", images, labels)
    dataset = _load("mnist", source, tmp_path, split="test")
    x, y = datasets.to_numpy(datasets.image_label_pairs(dataset, image_size=(32, 32), method="pad", rgb=True))
    np.testing.assert_array_equal(x, np.repeat(np.pad(images, ((0, 0), (2, 2), (2, 2)))[..., None], 3, axis=-1))
    np.testing.assert_array_equal(y, labels)
    assert x.dtype == np.uint8 and y.dtype == np.int64
    with pytest.raises(ValueError, match="method: expected one of"):
        datasets.image_label_pairs(dataset, image_size=(32, 32), method="bicubic")
