"""The SINT tracker (Tao, Gavves & Smeulders, CVPR 2016) on the zoo's ``sint`` matching network.

SINT tracks by instance search: the target's embedding is taken once, in the first frame,
and in every later frame the tracker takes the candidate box whose embedding is most
similar to it. No model update, no occlusion handling, no motion model. Here:

- **Search window.** Each frame is read through a square window around the previous box,
  ``context`` times the side of the box padded by a quarter of its perimeter (SiamFC's rule),
  resampled to ``search_size`` pixels. The target therefore appears at about the same size
  in every window, and one network input size serves targets of any size. The first
  frame's window gives the target's embedding, so target and candidates are seen alike.
- **Candidates.** The backbone runs once per frame; candidates are pooled from its maps
  (RoIAlign), so many are cheap. A coarse grid of translations of the previous box (``grid``
  x ``grid`` over +-``search_radius`` of the window) finds the target; a fine grid around
  the best one at ``scales`` sizes (``scale_step`` apart) refines position and size, in
  place of the paper's dense radial sampling.
- **Score.** The inner product of unit embeddings (the paper's matching function), so the
  score is a cosine similarity in [-1, 1].

Everything is ``keras.ops`` in one layer, :class:`SiameseTrackingStep`, so the step runs on
every backend and exports as a SavedModel (:func:`export_tracker`) that a server can call
frame by frame: ``initialize(frame, box) -> target``, then ``track(frame, box, target) ->
box, score``. :class:`SiameseTracker` runs it over a sequence in Python. Boxes are ``[x, y,
w, h]`` in pixels throughout (OTB's convention).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

import keras
from keras import ops

from hybrid_keras import CACHE_DIR
from hybrid_keras.layers.roi import RoIAlign
from hybrid_keras.tracking.metrics import check_boxes
from zoo.architectures.sint import MIN_SIZE, embed_boxes, feature_model

MIN_SIDE = 4.0  # pixels: a box never shrinks below this, so it never degenerates
# The step's settings: what save_tracker records and the export's metadata lists.
_STEP_ARGUMENTS = ("search_size", "context", "grid", "search_radius", "refine_grid", "scales", "scale_step",
                   "scale_damping", "temperature", "box_regression", "regression_ridge")
# Where the tracking benchmark saves the tracker it trains, and where `hybrid-keras track` looks by default.
DEFAULT_TRACKER = CACHE_DIR / "sint" / "sint_mobilenet_v2.weights.h5"


def _unstack(boxes):
    return [boxes[..., i] for i in range(4)]


def _centred(cx, cy, w, h):
    return ops.stack([cx - w / 2, cy - h / 2, w, h], axis=-1)


def _box_deltas(boxes, truth):
    """``[B, M, 4]``: how each box must move to become ``truth`` ``[B, 1, 4]``: centre shift in box
    sizes, log ratio of sides (R-CNN's regression targets)."""
    x, y, w, h = _unstack(boxes)
    tx, ty, tw, th = _unstack(truth)
    return ops.stack([(tx + tw / 2 - x - w / 2) / w, (ty + th / 2 - y - h / 2) / h,
                      ops.log(tw / w), ops.log(th / h)], axis=-1)


def _apply_deltas(boxes, deltas):
    """Boxes ``[B, 4]`` moved by ``deltas`` ``[B, 4]`` (see :func:`_box_deltas`), each bounded to the
    range the regressor was fitted on, so one bad prediction cannot throw the box away."""
    x, y, w, h = _unstack(boxes)
    dx, dy = ops.clip(deltas[:, 0], -0.3, 0.3), ops.clip(deltas[:, 1], -0.3, 0.3)
    dw, dh = ops.clip(deltas[:, 2], -0.25, 0.25), ops.clip(deltas[:, 3], -0.25, 0.25)
    return _centred(x + w / 2 + dx * w, y + h / 2 + dy * h, w * ops.exp(dw), h * ops.exp(dh))


def _pick(candidates, scores, temperature: float = 0.0):
    """The answer ``[B, 4]`` among ``candidates`` ``[B, N, 4]`` and its score ``[B]`` (the best one's).

    ``temperature`` 0: the highest-scoring candidate (a one-hot sum, the same on every backend).
    Above 0: the candidates' mean weighted by ``softmax(scores / temperature)``, a soft argmax
    that averages over near-ties (training scores every box overlapping the target by 0.7 or
    more alike); on the benchmark's validation sequences it cost 0.01 to 0.04 AUC.
    """
    if temperature > 0:
        choice = ops.softmax((scores - ops.max(scores, axis=1, keepdims=True)) / temperature, axis=1)
    else:
        choice = ops.one_hot(ops.argmax(scores, axis=1), ops.shape(scores)[1], dtype=candidates.dtype)
    return ops.sum(choice[..., None] * candidates, axis=1), ops.max(scores, axis=1)


@keras.saving.register_keras_serializable(package="hybrid_keras")
class SiameseTrackingStep(keras.layers.Layer):
    """One SINT tracking step: ``[frames [B, H, W, 3], boxes [B, 4], targets [B, state_size]] -> (boxes
    [B, 4], scores [B])``; :meth:`initialize` gives the target states. See the module docstring.

    ``network``: a zoo ``sint`` model. ``search_size``: the search window's side in pixels.
    ``context``: the window's side over the padded box's. ``grid``, ``search_radius``: the
    coarse translations (odd ``grid``; radius as a fraction of the window). ``refine_grid``:
    the fine translations per axis, spanning one coarse step. ``scales``, ``scale_step``:
    the box sizes tried in the fine stage. ``scale_damping``: how much of a new size to take
    (1: all of it, as SINT; 0.5, the default, halves each change, as SiamFC damps its scale).
    ``box_regression``: refine the answer with a regressor fitted on the first frame, as
    SINT does (off by default: on the benchmark's validation sequences it cost 0.10 to 0.14
    AUC; fitted on one frame's boxes, it does not carry over to later frames).
    ``temperature``: see :func:`_pick` (0: take the best candidate).
    """

    def __init__(self, network, *, search_size: int = 128, context: float = 1.5, grid: int = 9,
                 search_radius: float = 0.25, refine_grid: int = 5, scales: int = 5, scale_step: float = 1.04,
                 scale_damping: float = 0.5, temperature: float = 0.0, box_regression: bool = False,
                 regression_ridge: float = 1.0, **kwargs):
        super().__init__(**kwargs)
        if grid < 1 or grid % 2 == 0 or refine_grid < 1 or scales < 1 or scales % 2 == 0:
            raise ValueError(f"grid and scales must be odd and positive, refine_grid positive. Received: grid={grid}, "
                             f"refine_grid={refine_grid}, scales={scales}")
        if not 0.0 < scale_damping <= 1.0:
            raise ValueError(f"scale_damping must be in (0, 1]. Received: {scale_damping}")
        if search_size < MIN_SIZE:
            raise ValueError(f"search_size must be at least {MIN_SIZE}. Received: {search_size}")
        self.network = network
        self.features = feature_model(network)
        self.search_size, self.context = int(search_size), float(context)
        self.grid, self.search_radius, self.refine_grid = int(grid), float(search_radius), int(refine_grid)
        self.scales, self.scale_step, self.scale_damping = int(scales), float(scale_step), float(scale_damping)
        self.box_regression, self.regression_ridge = bool(box_regression), float(regression_ridge)
        self.temperature = float(temperature)
        self.embedding_size = int(network.output_shape[-1])
        self.feature_size = int(network.get_layer("box_features").output.shape[-1])
        # The target state: its embedding, then (with box regression) the regressor's
        # (features + 1) x 4 weights, row-major.
        self.state_size = self.embedding_size + (4 * (self.feature_size + 1) if self.box_regression else 0)
        self._crop = RoIAlign(self.search_size, sampling_ratio=2, aligned=True, name="search_window")
        step = 2 * self.search_radius * self.search_size / max(self.grid - 1, 1)
        coarse = (np.linspace(-self.search_radius, self.search_radius, self.grid) if self.grid > 1
                  else np.zeros(1)) * self.search_size
        fine = np.linspace(-step / 2, step / 2, self.refine_grid) if self.refine_grid > 1 else np.zeros(1)
        self._coarse = np.stack(np.meshgrid(coarse, coarse, indexing="xy"), -1).reshape(-1, 2).astype("float32")
        factors = self.scale_step ** np.arange(-(self.scales // 2), self.scales // 2 + 1)
        dx, dy, s = np.meshgrid(fine, fine, factors, indexing="xy")
        self._fine = np.stack([dx.ravel(), dy.ravel(), s.ravel()], -1).astype("float32")
        # First-frame boxes the regressor learns from: shifts of up to 0.3 box sizes, sizes 0.8x to 1.25x.
        shifts, sizes = np.linspace(-0.3, 0.3, 5), np.log(np.linspace(0.8, 1.25, 5))
        dx, dy, s = np.meshgrid(shifts, shifts, sizes, indexing="xy")
        self._regression_samples = np.stack([dx.ravel(), dy.ravel(), s.ravel()], -1).astype("float32")

    def build(self, input_shape):
        self.built = True  # the network inside is built already

    def settings(self) -> dict:
        """The keyword arguments this step was built with (all but the network)."""
        return {name: getattr(self, name) for name in _STEP_ARGUMENTS}

    # -- the search window ---------------------------------------------------------------
    def search_regions(self, boxes):
        """Square windows ``[B, 4]`` around ``boxes`` ``[B, 4]``."""
        x, y, w, h = _unstack(ops.cast(boxes, "float32"))
        pad = (w + h) / 2
        side = self.context * ops.sqrt((w + pad) * (h + pad))
        return _centred(x + w / 2, y + h / 2, side, side)

    def crop(self, frames, regions):
        """The windows resampled to ``[B, search_size, search_size, 3]`` (bilinear, 2x2 samples a pixel)."""
        x, y, side, _ = _unstack(regions)
        index = ops.cast(ops.arange(ops.shape(regions)[0]), "float32")
        return self._crop([ops.cast(frames, "float32"), ops.stack([index, x, y, x + side, y + side], axis=1)])

    def to_window(self, boxes, regions):
        """Frame boxes ``[B, N, 4]`` in window pixels."""
        scale = self.search_size / regions[:, None, 2:3]
        return ops.concatenate([(boxes[..., :2] - regions[:, None, :2]) * scale, boxes[..., 2:] * scale], axis=-1)

    def from_window(self, boxes, regions):
        """Window boxes ``[B, N, 4]`` in frame pixels."""
        scale = regions[:, None, 2:3] / self.search_size
        return ops.concatenate([boxes[..., :2] * scale + regions[:, None, :2], boxes[..., 2:] * scale], axis=-1)

    # -- embeddings ----------------------------------------------------------------------
    def _embed(self, maps, boxes, box_features=False):
        return embed_boxes(self.network, maps, boxes, box_features=box_features)

    def window_embeddings(self, frames, regions, boxes, training=False):
        """Embeddings ``[B, N, D]`` of frame boxes ``[B, N, 4]`` seen through the windows ``regions``."""
        maps = self.features(self.crop(frames, regions), training=training)
        return self._embed(maps, self.to_window(ops.cast(boxes, "float32"), regions))

    def initialize(self, frames, boxes):
        """The targets' states ``[B, state_size]`` from their first frames and boxes ``[B, 4]``: the
        embedding, then (with ``box_regression``) the box regressor fitted on this frame."""
        boxes = ops.cast(boxes, "float32")
        regions = self.search_regions(boxes)
        maps = self.features(self.crop(frames, regions), training=False)
        truth = self.to_window(boxes[:, None], regions)  # [B, 1, 4]
        embedding = self._embed(maps, truth)[:, 0]
        if not self.box_regression:
            return embedding
        # SINT's refinement, R-CNN's parametrisation: from a box's pooled features, predict the
        # shift of the target's centre in box sizes and the log ratio of their sides; ridge
        # regression in closed form on boxes around the first frame's target.
        samples = ops.convert_to_tensor(self._regression_samples)
        x, y, w, h = _unstack(truth[:, 0])
        cx, cy = x + w / 2, y + h / 2
        scale = ops.exp(samples[None, :, 2])
        sample_boxes = _centred(cx[:, None] + samples[None, :, 0] * w[:, None],
                                cy[:, None] + samples[None, :, 1] * h[:, None], w[:, None] * scale, h[:, None] * scale)
        _, features = self._embed(maps, sample_boxes, box_features=True)  # [B, M, F]
        goals = _box_deltas(sample_boxes, truth)
        design = ops.concatenate([features, ops.ones_like(features[..., :1])], axis=-1)
        gram = ops.einsum("bmf,bmg->bfg", design, design) + self.regression_ridge * ops.eye(self.feature_size + 1)
        weights = ops.solve(gram, ops.einsum("bmf,bmk->bfk", design, goals))  # [B, F + 1, 4]
        return ops.concatenate([embedding, ops.reshape(weights, (-1, 4 * (self.feature_size + 1)))], axis=-1)

    # -- one step ------------------------------------------------------------------------
    def call(self, inputs):
        frames, boxes, states = inputs
        boxes = ops.cast(boxes, "float32")
        states = ops.cast(states, "float32")
        targets = states[:, :self.embedding_size]
        regions = self.search_regions(boxes)
        maps = self.features(self.crop(frames, regions), training=False)
        _, _, w, h = _unstack(self.to_window(boxes[:, None], regions)[:, 0])
        middle = self.search_size / 2.0

        def scores(candidates):
            return ops.einsum("bnd,bd->bn", self._embed(maps, candidates), targets)

        coarse = ops.convert_to_tensor(self._coarse)
        candidates = _centred(middle + coarse[None, :, 0], middle + coarse[None, :, 1],
                              ops.repeat(w[:, None], len(self._coarse), axis=1),
                              ops.repeat(h[:, None], len(self._coarse), axis=1))
        best, _ = _pick(candidates, scores(candidates))
        fine = ops.convert_to_tensor(self._fine)
        cx, cy = best[:, 0] + best[:, 2] / 2, best[:, 1] + best[:, 3] / 2
        candidates = _centred(cx[:, None] + fine[None, :, 0], cy[:, None] + fine[None, :, 1],
                              w[:, None] * fine[None, :, 2], h[:, None] * fine[None, :, 2])
        best, score = _pick(candidates, scores(candidates), self.temperature)
        if self.box_regression:
            weights = ops.reshape(states[:, self.embedding_size:], (-1, self.feature_size + 1, 4))
            _, features = self._embed(maps, best[:, None], box_features=True)
            design = ops.concatenate([features[:, 0], ops.ones_like(features[:, 0, :1])], axis=-1)
            best = _apply_deltas(best, ops.einsum("bf,bfk->bk", design, weights))
        box = self.from_window(best[:, None], regions)[:, 0]
        return self._keep_in_frame(box, boxes, frames), score

    def _keep_in_frame(self, box, previous, frames):
        """Damp the size change, keep the centre inside the frame and the sides within
        [MIN_SIDE, frame side]."""
        x, y, w, h = _unstack(box)
        _, _, w0, h0 = _unstack(previous)
        cx, cy = x + w / 2, y + h / 2
        w = w0 + self.scale_damping * (w - w0)
        h = h0 + self.scale_damping * (h - h0)
        shape = ops.shape(frames)
        height, width = ops.cast(shape[1], "float32"), ops.cast(shape[2], "float32")
        w, h = ops.clip(w, MIN_SIDE, width), ops.clip(h, MIN_SIDE, height)
        return _centred(ops.clip(cx, 0.0, width), ops.clip(cy, 0.0, height), w, h)

    def compute_output_shape(self, input_shape):
        return (input_shape[0][0], 4), (input_shape[0][0],)

    def get_config(self):
        return {**super().get_config(), "network": keras.saving.serialize_keras_object(self.network),
                **self.settings()}

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        network = keras.saving.deserialize_keras_object(config.pop("network"))
        return cls(network, **config)


@keras.saving.register_keras_serializable(package="hybrid_keras")
class TargetState(keras.layers.Layer):
    """``[frames, boxes [B, 4]] -> targets [B, state_size]``: :meth:`SiameseTrackingStep.initialize` as a layer."""

    def __init__(self, step: SiameseTrackingStep, **kwargs):
        super().__init__(**kwargs)
        self.step = step

    def build(self, input_shape):
        self.built = True  # the network inside is built already

    def call(self, inputs):
        frames, boxes = inputs
        return self.step.initialize(frames, boxes)

    def compute_output_shape(self, input_shape):
        return (input_shape[0][0], self.step.state_size)


@keras.saving.register_keras_serializable(package="hybrid_keras")
class CandidateDistances(keras.layers.Layer):
    """The Siamese training pair: ``[first_frames, target_boxes [B, 4], frames, previous_boxes [B, 4],
    candidates [B, K, 4]]`` -> squared distances ``[B, K]`` between each target's embedding (seen
    through its own window, as :meth:`SiameseTrackingStep.initialize` sees it) and its
    candidates' (seen through the window around the previous box, as the tracker sees them),
    for :class:`hybrid_keras.metric_learning.ContrastiveLoss`."""

    def __init__(self, step: SiameseTrackingStep, **kwargs):
        super().__init__(**kwargs)
        self.step = step

    def build(self, input_shape):
        self.built = True  # the network inside is built already

    def call(self, inputs, training=False):
        first_frames, target_boxes, frames, previous, candidates = inputs
        target_boxes = ops.cast(target_boxes, "float32")
        targets = self.step.window_embeddings(first_frames, self.step.search_regions(target_boxes),
                                              target_boxes[:, None], training=training)
        found = self.step.window_embeddings(frames, self.step.search_regions(ops.cast(previous, "float32")),
                                            candidates, training=training)
        return ops.sum(ops.square(found - targets), axis=-1)

    def compute_output_shape(self, input_shape):
        return tuple(input_shape[4][:2])


def tracking_models(step: SiameseTrackingStep):
    """``(initialize, track)`` Keras models sharing ``step``: ``[frame, box] -> target`` and
    ``[frame, box, target] -> [box, score]``, for any frame size."""
    frame = keras.Input((None, None, 3), name="frame")
    box = keras.Input((4,), name="box")
    target = keras.Input((step.state_size,), name="target")
    initialize = keras.Model([frame, box], TargetState(step, name="target_state")([frame, box]),
                             name="sint_initialize")
    new_box, score = step([frame, box, target])
    track = keras.Model([frame, box, target], [new_box, score], name="sint_track")
    return initialize, track


def pair_model(step: SiameseTrackingStep, frame_shape=(None, None, 3), candidates: int | None = None):
    """The Siamese training model: see :class:`CandidateDistances`; compile it with
    ``ContrastiveLoss`` and fit on labels ``[B, K]`` (1: the candidate is the target)."""
    inputs = [keras.Input(frame_shape, name="first_frames"), keras.Input((4,), name="target_boxes"),
              keras.Input(frame_shape, name="frames"), keras.Input((4,), name="previous_boxes"),
              keras.Input((candidates, 4), name="candidates")]
    return keras.Model(inputs, CandidateDistances(step, name="squared_distances")(inputs), name="sint_pairs")


class SiameseTracker:
    """SINT over a sequence: ``init(frame, box)``, then ``update(frame) -> (box, score)`` per frame
    (the protocol of OpenCV's trackers), or :meth:`track` for a whole sequence.

    ``network``: a zoo ``sint`` model (or an existing :class:`SiameseTrackingStep`);
    keyword arguments go to :class:`SiameseTrackingStep`.
    """

    def __init__(self, network, **step_kwargs):
        self.step = network if isinstance(network, SiameseTrackingStep) else SiameseTrackingStep(network, **step_kwargs)
        self._initialize, self._track = tracking_models(self.step)
        self.box = self.target = self._frame_size = None

    @staticmethod
    def _frame(frame) -> np.ndarray:
        frame = np.asarray(frame)
        if frame.ndim != 3 or frame.shape[2] != 3:
            raise ValueError(f"a frame must be [H, W, 3] RGB. Received: shape {frame.shape}")
        return frame.astype(np.float32)[None]

    def init(self, frame, box) -> None:
        frame = self._frame(frame)
        self._frame_size = frame.shape[1:3]
        self.box = check_boxes(box, "the target box", frame_size=self._frame_size).astype(np.float32)
        self.target = self._initialize.predict_on_batch([frame, self.box])

    def update(self, frame):
        if self.target is None:
            raise RuntimeError("call init(frame, box) with the first frame before update()")
        frame = self._frame(frame)
        box, score = self._track.predict_on_batch([frame, self.box, self.target])
        self.box = np.asarray(box, np.float32)
        return self.box[0].astype(np.float64), float(np.asarray(score)[0])

    def track(self, frames, box):
        """Boxes ``[T, 4]`` and scores ``[T]`` over ``frames`` ``[T, H, W, 3]``; frame 0 gets ``box``
        (score 1), as in OTB's one-pass evaluation."""
        if len(frames) == 0:
            raise ValueError("an empty sequence cannot be tracked")
        self.init(frames[0], box)
        boxes, scores = [self.box[0].astype(np.float64)], [1.0]
        for frame in frames[1:]:
            new_box, score = self.update(frame)
            boxes.append(new_box)
            scores.append(score)
        return np.stack(boxes), np.asarray(scores)


# -- saving, loading and export ----------------------------------------------------------------

def save_tracker(tracker: SiameseTracker, path, network_arguments: dict) -> None:
    """Save the network's weights to ``path`` (``.weights.h5``) and, beside it (``.json``), what
    :func:`load_tracker` needs to rebuild it: ``network_arguments`` for ``zoo.load("sint", ...)``
    and the step's settings."""
    import json

    path = Path(path)
    if not path.name.endswith(".weights.h5"):
        raise ValueError(f"path must end in .weights.h5. Received: {path}")
    path.parent.mkdir(parents=True, exist_ok=True)
    tracker.step.network.save_weights(path)
    path.with_suffix("").with_suffix(".json").write_text(
        json.dumps({"network": network_arguments, "step": tracker.step.settings()}, indent=2))


def load_tracker(path, **step_overrides) -> SiameseTracker:
    """A :class:`SiameseTracker` from weights saved by :func:`save_tracker` (the ``.json`` beside
    them says how to build it); ``step_overrides`` change the step's settings."""
    import json

    import zoo

    path = Path(path)
    description = path.with_suffix("").with_suffix(".json")
    if not path.is_file() or not description.is_file():
        raise FileNotFoundError(f"a saved tracker is a .weights.h5 file with its .json beside it; missing "
                                f"{path if not path.is_file() else description}")
    saved = json.loads(description.read_text())
    network = zoo.load("sint", weights=str(path), **saved["network"])
    return SiameseTracker(network, **{**saved["step"], **step_overrides})


def _verification_sequence(seed: int = 0):
    """Three frames of a seeded virtual-camera sequence over a smooth random texture, and its first
    box: inputs with a clear best candidate, so graph and eager execution pick the same one."""
    from PIL import Image, ImageFilter

    from hybrid_keras.tracking.sequences import synthetic_sequence

    rng = np.random.default_rng(seed)
    texture = rng.integers(0, 256, (150, 200, 3), dtype=np.uint8)
    photo = np.asarray(Image.fromarray(texture).resize((400, 300), Image.BILINEAR).filter(ImageFilter.GaussianBlur(2)))
    sequence = synthetic_sequence(photo, [170, 120, 56, 48], frames=3, frame_size=(120, 160), motion="pan", seed=seed)
    return sequence.frames.astype(np.float32), sequence.boxes.astype(np.float32)


def export_tracker(tracker, path, *, verify: bool = True, verbose: bool = False):
    """Write ``tracker`` (a :class:`SiameseTracker` or :class:`SiameseTrackingStep`) as a TF Serving
    SavedModel at the version directory ``path``, and by default verify it in a fresh
    TensorFlow-only process. Signatures (frames of any size, RGB in [0, 255]):

    - ``initialize``: ``frame`` float32 ``[B, H, W, 3]``, ``box`` float32 ``[B, 4]`` -> ``target``
      ``[B, state_size]``: call once, with the first frame and the target's box.
    - ``serving_default`` (also ``track``): ``frame``, ``box`` (the previous answer),
      ``target`` -> ``box`` ``[B, 4]`` and ``score`` ``[B]`` (cosine similarity); call per frame.

    Returns the path written.
    """
    import tensorflow as tf

    from hybrid_keras.export import check_served, serve_in_fresh_process, write_archive

    if isinstance(tracker, SiameseTracker):  # its models are built already
        step, initialize_model, track_model = tracker.step, tracker._initialize, tracker._track
    else:
        step = tracker
        initialize_model, track_model = tracking_models(step)
    frame_spec = tf.TensorSpec((None, None, None, 3), tf.float32, name="frame")
    box_spec = tf.TensorSpec((None, 4), tf.float32, name="box")
    target_spec = tf.TensorSpec((None, step.state_size), tf.float32, name="target")

    def initialize(frame, box):
        return {"target": initialize_model([frame, box], training=False)}

    def track(frame, box, target):
        new_box, score = track_model([frame, box, target], training=False)
        return {"box": new_box, "score": score}

    archive = keras.export.ExportArchive()
    archive.track(initialize_model)
    archive.track(track_model)
    archive.add_endpoint("initialize", initialize, [frame_spec, box_spec])
    archive.add_endpoint("serving_default", track, [frame_spec, box_spec, target_spec])
    archive.add_endpoint("track", track, [frame_spec, box_spec, target_spec])
    metadata = {"model": step.network.name, "task": "tracking", "box_format": "[x, y, w, h] pixels",
                "state_size": step.state_size, "signatures": {"initialize": ["target"], "track": ["box", "score"]},
                "step": step.settings()}

    def check(staging):
        frames, boxes = _verification_sequence()
        target = initialize_model.predict_on_batch([frames[:1], boxes[:1]])
        expected = {"initialize/target/0": target}
        inputs = {"initialize.frame.0": frames[:1], "initialize.box.0": boxes[:1]}
        for case, signature in enumerate(("serving_default", "track")):
            new_box, score = track_model.predict_on_batch([frames[1 + case:2 + case], boxes[case:case + 1], target])
            inputs.update({f"{signature}.frame.{case}": frames[1 + case:2 + case],
                           f"{signature}.box.{case}": boxes[case:case + 1], f"{signature}.target.{case}": target})
            expected.update({f"{signature}/box/{case}": new_box, f"{signature}/score/{case}": score})
        # Boxes are in pixels: a relative check on them is in pixels too.
        check_served(serve_in_fresh_process(staging, inputs), expected, staging, tolerance=1e-4,
                     what="the Keras tracker")

    return write_archive(archive, path, metadata, check if verify else None, verbose=verbose)
