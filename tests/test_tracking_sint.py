"""The SINT matching network, tracker, training pairs, export and `hybrid-keras track`."""

import json

import numpy as np
import pytest

import keras

import zoo
from hybrid_keras.metric_learning import ContrastiveLoss
from hybrid_keras.tracking import Sequence, box_iou, synthetic_sequence
from hybrid_keras.tracking.sint import SiameseTracker, _apply_deltas, _box_deltas, load_tracker, save_tracker
from hybrid_keras.tracking.training import PairBatches, sample_candidates
from zoo.architectures.sint import TAP_STRIDES, embed_boxes, feature_model, matching_network

agnostic = pytest.mark.backend_agnostic
SMALL = {"backbone": "mobilenet_v2", "alpha": 0.35, "embedding_dim": 16, "roi_size": 3}
SMALL_STEP = {"search_size": 64, "grid": 5, "refine_grid": 3, "scales": 3}


def _np(x):
    return keras.ops.convert_to_numpy(x)


def _compiled(fn):
    """``fn`` giving NumPy; under JAX jitted: one XLA compilation per input shape instead of one
    per operation (a quarter of the time here). The weights it reads are fixed at its first call
    (for networks that do not change meanwhile). TensorFlow and PyTorch run it eagerly."""
    if keras.backend.backend() == "jax":
        import jax

        jitted = jax.jit(fn)
        return lambda *args: np.asarray(jitted(*args))
    return lambda *args: _np(fn(*args))


def pixel_network(roi_size=5):
    """A SINT network whose features are the image itself (centred on grey), average-pooled to
    strides 8 and 16, with an identity projection: the tracker becomes a normalised template
    matcher with nothing learnt, so what it does follows from the search alone."""
    images, boxes = keras.Input((None, None, 3)), keras.Input((None, 4))
    centred = keras.layers.Lambda(lambda x: x - 128.0)(images)  # (Rescaling needs TensorFlow)
    # Pooling cell i covers pixels [i s, (i + 1) s), centred where RoIAlign expects: no shift.
    maps = {s: (keras.layers.AveragePooling2D(s)(centred), 0.0) for s in TAP_STRIDES}
    size = roi_size * roi_size * 3 * len(TAP_STRIDES)
    model = matching_network(images, boxes, maps, embedding_dim=size, roi_size=roi_size, name="pixels")
    model.get_layer("projection").set_weights([np.eye(size, dtype="float32"), np.zeros(size, "float32")])
    return model


def textured_patch_photo(seed=0, size=(360, 480), patch=48):
    """A grey photo with one blocky random texture in the middle: the target at ``box``."""
    rng = np.random.default_rng(seed)
    photo = np.full((*size, 3), 128, np.uint8)
    texture = rng.integers(0, 256, (patch // 8, patch // 8, 3)).astype(np.uint8).repeat(8, 0).repeat(8, 1)
    top, left = (size[0] - patch) // 2, (size[1] - patch) // 2
    photo[top:top + patch, left:left + patch] = texture
    return photo, [left, top, patch, patch]


@agnostic
def test_network_embeds_each_box_on_its_own():
    keras.utils.set_random_seed(0)
    network = zoo.load("sint", **SMALL)
    image = np.random.default_rng(0).uniform(0, 255, (1, 64, 80, 3)).astype("float32")
    boxes = np.array([[[4, 6, 30, 20], [40, 10, 24, 40], [0, 0, 80, 64]]], np.float32)
    embed = _compiled(lambda image, boxes: network([image, boxes]))
    embeddings = embed(image, boxes)
    assert embeddings.shape == (1, 3, 16)
    np.testing.assert_allclose(np.linalg.norm(embeddings, axis=-1), 1.0, atol=1e-5)
    np.testing.assert_allclose(embed(image, boxes[:, ::-1]), embeddings[:, ::-1], atol=1e-5)
    np.testing.assert_allclose(embed(image, boxes[:, 1:2]), embeddings[:, 1:2], atol=1e-5)
    # The tracker's split path (maps once, boxes many times) is the same network.
    features = feature_model(network)
    split = _compiled(lambda image, boxes: embed_boxes(network, features(image), boxes))
    np.testing.assert_allclose(split(image, boxes), embeddings, atol=1e-5)


@agnostic
@pytest.mark.parametrize("motion", ["pan", "zoom"])
def test_template_tracker_follows_known_motion(motion):
    photo, box = textured_patch_photo()
    sequence = synthetic_sequence(photo, box, frames=24, frame_size=(120, 160), motion=motion, seed=1)
    # The window's resolution bounds the precision: 1.5 contexts over 192 pixels give the
    # 48-pixel target about 48 window pixels, 6 cells of the stride-8 map.
    # Sizes undamped: the search alone, as SINT has it.
    tracker = SiameseTracker(pixel_network(), search_size=192, context=1.5, scale_damping=1.0, box_regression=False)
    boxes, scores = tracker.track(sequence.frames, sequence.boxes[0])
    overlap = box_iou(boxes, sequence.boxes)
    assert overlap.min() > 0.7 and overlap.mean() > 0.85, np.round(overlap, 2)
    assert scores[0] == 1.0 and np.all((scores[1:] > 0.3) & (scores[1:] <= 1.0 + 1e-6))  # cosine similarities


@agnostic
def test_box_regression_undoes_a_shift_on_the_first_frame():
    # Fitted on the first frame, the regressor must bring a box started off the target back to it.
    photo, box = textured_patch_photo(seed=2)
    sequence = synthetic_sequence(photo, box, frames=2, frame_size=(120, 160), motion="pan", seed=3)
    tracker = SiameseTracker(pixel_network(), search_size=96, box_regression=True, refine_grid=1, scales=1, grid=1)
    tracker.init(sequence.frames[0], sequence.boxes[0])
    off = sequence.boxes[0] + [5, -4, 0, 0]
    tracker.box = off[None].astype("float32")
    refined, _ = tracker.update(sequence.frames[0])
    assert box_iou(refined[None], sequence.boxes[:1])[0] > box_iou(off[None], sequence.boxes[:1])[0] + 0.05


@agnostic
def test_box_deltas_round_trip():
    boxes = keras.ops.convert_to_tensor(np.array([[[10, 20, 30, 40], [0, 0, 8, 6]]], np.float32))
    truth = keras.ops.convert_to_tensor(np.array([[[12, 18, 33, 36]]], np.float32))
    deltas = _box_deltas(boxes, truth)
    moved = _np(_apply_deltas(boxes[0], deltas[0]))
    np.testing.assert_allclose(moved[0], _np(truth)[0, 0], atol=1e-4)  # within the bounded range: exact
    assert np.all(_np(deltas)[0, 1, :2] > 0.3) and not np.allclose(moved[1], _np(truth)[0, 0])  # past it: bounded


@agnostic
def test_candidates_are_labelled_by_overlap():
    rng = np.random.default_rng(0)
    truth = np.array([50.0, 40.0, 30.0, 20.0])
    boxes, labels = sample_candidates(rng, truth, candidates=64)
    overlap = box_iou(boxes, np.repeat(truth[None], 64, 0))
    assert labels.sum() == 16
    assert np.all(overlap[labels == 1] >= 0.7) and np.all(overlap[labels == 0] <= 0.5)
    boxes, labels = sample_candidates(rng, truth, candidates=32, positive_iou=0.85, negative_iou=0.6)
    overlap = box_iou(boxes, np.repeat(truth[None], 32, 0))
    assert np.all(overlap[labels == 1] >= 0.85) and np.all(overlap[labels == 0] <= 0.6)


@agnostic
def test_pair_batches_are_reproducible_and_shaped():
    photo, box = textured_patch_photo()
    sequences = [synthetic_sequence(photo, box, frames=5, frame_size=(60, 80), motion="pan", seed=s) for s in (0, 1)]
    data = PairBatches(sequences, batch_size=3, pairs=5, candidates=8, seed=4)
    assert len(data) == 2
    (first, targets, frames, previous, candidates), labels = data[0]
    assert first.shape == frames.shape == (3, 60, 80, 3) and targets.shape == previous.shape == (3, 4)
    assert candidates.shape == (3, 8, 4) and labels.shape == (3, 8)
    np.testing.assert_array_equal(data[0][0][4], candidates)
    assert data[1][1].shape == (2, 8)
    with pytest.raises(ValueError, match="one frame size"):
        PairBatches([sequences[0], Sequence(np.zeros((3, 10, 10, 3), np.uint8), np.ones((3, 4)))])
    with pytest.raises(ValueError, match="negative_iou < positive_iou"):
        PairBatches(sequences, positive_iou=0.5, negative_iou=0.6)


@agnostic
def test_contrastive_loss_per_candidate_with_weights():
    # Two examples, two candidates each: 1/2 d^2 for matches, 1/2 max(0, 1 - d^2) otherwise.
    labels = np.array([[1.0, 0.0], [0.0, 1.0]])
    squared = np.array([[0.2, 0.4], [1.5, 0.0]])
    weights = np.array([[1.0, 1.0], [0.0, 1.0]])
    value = ContrastiveLoss(1.0, reduction="sum")(labels, squared, sample_weight=weights)
    assert float(_np(value)) == pytest.approx(0.1 + 0.3 + 0.0)


@agnostic
def test_bad_input_gets_clear_errors():
    tracker = SiameseTracker(pixel_network(roi_size=3), search_size=64)
    frame = np.zeros((60, 80, 3), np.uint8)
    with pytest.raises(RuntimeError, match="init"):
        tracker.update(frame)
    with pytest.raises(ValueError, match="zero area"):
        tracker.init(frame, [10, 10, 0, 5])
    with pytest.raises(ValueError, match="outside"):
        tracker.init(frame, [90, 10, 5, 5])
    with pytest.raises(ValueError, match="empty sequence"):
        tracker.track(np.zeros((0, 60, 80, 3), np.uint8), [1, 1, 5, 5])
    with pytest.raises(ValueError, match=r"\[H, W, 3\]"):
        tracker.init(frame[..., 0], [1, 1, 5, 5])


@agnostic
def test_training_steps_lower_the_pair_loss():
    from hybrid_keras.tracking.sint import pair_model
    from hybrid_keras.tracking.training import train_matching_network

    # The pixel network learns only its projection: enough to see the loss go down, cheaply.
    keras.utils.set_random_seed(0)
    photo, box = textured_patch_photo()
    sequences = [synthetic_sequence(photo, box, frames=6, frame_size=(96, 128), motion="all", seed=s) for s in (0, 1)]
    tracker = SiameseTracker(pixel_network(roi_size=3), search_size=96)
    inputs, labels = PairBatches(sequences, batch_size=8, pairs=8, candidates=8, seed=1)[0]
    model, loss = pair_model(tracker.step), ContrastiveLoss(1.0)

    def pair_loss():  # traced afresh for each call: the weights change in between
        return float(_compiled(lambda pairs: loss(labels, model(pairs)))(inputs))

    before = pair_loss()
    history = train_matching_network(tracker.step, sequences, epochs=5, pairs_per_epoch=8, batch_size=8, candidates=8,
                                     learning_rate=1e-2, seed=1)
    assert len(history.history["loss"]) == 5
    assert pair_loss() < before


def test_track_command_and_export_of_a_saved_tracker(tmp_path):
    from PIL import Image
    from tensorflow.core.protobuf import saved_model_pb2

    from hybrid_keras import cli
    from hybrid_keras.tracking.sint import export_tracker

    keras.utils.set_random_seed(0)
    photo, box = textured_patch_photo()
    sequence = synthetic_sequence(photo, box, frames=5, frame_size=(72, 96), motion="pan", seed=2)
    frames_dir = tmp_path / "frames"
    frames_dir.mkdir()
    for t, frame in enumerate(sequence.frames):
        Image.fromarray(frame).save(frames_dir / f"frame_{t:04d}.png")
    tracker = SiameseTracker(zoo.load("sint", **SMALL), **SMALL_STEP)
    weights = tmp_path / "tracker" / "sint.weights.h5"
    save_tracker(tracker, weights, SMALL)
    start = ",".join(f"{v:.2f}" for v in sequence.boxes[0])
    assert cli.main(["track", str(frames_dir), "--box", start, "--out", str(tmp_path / "out"),
                     "--weights", str(weights), "--strip-frames", "3"]) == 0
    rows = (tmp_path / "out" / "boxes.csv").read_text().strip().splitlines()
    assert rows[0] == "frame,file,x,y,w,h,score" and len(rows) == 6
    written = np.array([[float(v) for v in row.split(",")[2:6]] for row in rows[1:]])
    expected, _ = load_tracker(weights).track(sequence.frames, np.round(sequence.boxes[0], 2))
    np.testing.assert_allclose(written, expected, atol=0.01)  # the saved tracker is the same tracker

    path = tmp_path / "sint" / "1"
    assert cli.main(["export", "sint", str(path), "--weights", str(weights)]) == 0  # verified in a fresh TF process
    metadata = json.loads((path / "assets.extra" / "hybrid_keras.json").read_text())
    assert metadata["task"] == "tracking" and metadata["state_size"] == tracker.step.state_size
    # The signatures as the SavedModel file lists them (the export already ran them in a fresh process).
    saved = saved_model_pb2.SavedModel.FromString((path / "saved_model.pb").read_bytes())
    assert {"serving_default", "initialize", "track"} <= set(saved.meta_graphs[0].signature_def)
    with pytest.raises(FileExistsError):
        export_tracker(tracker, path)
    strip = Image.open(tmp_path / "out" / "strip.png")
    assert strip.size[0] == 3 * 96 + 2 * 4
    with pytest.raises(SystemExit, match="x,y,w,h"):
        cli.main(["track", str(frames_dir), "--box", "1,2,3", "--out", str(tmp_path / "o2"), "--weights", str(weights)])
    with pytest.raises(SystemExit, match="no frames"):
        (tmp_path / "empty").mkdir()
        cli.main(["track", str(tmp_path / "empty"), "--box", start, "--out", str(tmp_path / "o3"),
                  "--weights", str(weights)])
