"""SavedModel export for TensorFlow Serving, and its self-check in a fresh process.

``export_saved_model(model, "saved_models/pets/1")`` writes the version directory TF
Serving expects (``<model_base_path>/<version>``). An image model (one input
[batch, H, W, C]) gets three signatures; zoo models normalise inside their first layer
(``hybrid_keras.layers.Preprocessing``), so clients send plain pixels:

======================  ===================================  ==========================
signature               input                                 meaning
======================  ===================================  ==========================
``serving_default``     ``images``: float32 [batch, H, W, C]   RGB (or gray) in [0, 255]
``serve_uint8``         ``images``: uint8 [batch, H, W, C]     the same, as bytes per pixel
``serve_image_bytes``   ``image_bytes``: string [batch]        encoded JPEG/PNG/GIF/BMP,
                                                               resized to H x W
======================  ===================================  ==========================

A segmentation model (one output ``[batch, H, W, classes]`` at the input's size, such as
the zoo's FCNs, with or without a dense CRF or a forest head) serves two outputs per
pixel instead of the model's own: ``class_map`` (uint8 [batch, H, W], the most probable
class) and ``probabilities`` (float32 [batch, H, W, classes]; a softmax is applied when the
model ends in logits). When the model takes any image size, so do its signatures: images
of any height and width (one size per request), and encoded images are decoded at their
own size rather than resized.

Any other model (a forest on tabular features, a kNN head on stored embeddings) gets
one ``serving_default`` signature whose input ``features`` is a float32 tensor of the
model's input shape. Outputs are a dict keyed by the model's output names
(``model.output_names``).

Export never guesses a normalisation: what the model's graph does is what is served.
``preprocessing=`` prepends one for an image model built elsewhere that lacks it (and
is refused for a model that already has a Preprocessing layer).

A detection model (``task == "detection"``, the zoo's Faster R-CNN) serves the TF Object
Detection API dictionary from images of any size and encoded images, letterboxed to the
model's input (``hybrid_keras.detection.serving``).

A SINT tracker exports with ``hybrid_keras.tracking.export_tracker`` (``initialize`` and
``track`` signatures), written and checked by the same :func:`write_archive` and
:func:`serve_in_fresh_process`.

After writing, the export checks itself: a fresh Python process that imports only
TensorFlow (plus ``tf.load_op_library`` when the graph uses this project's FANNG
ops) loads the SavedModel, runs every signature and must reproduce the Keras
outputs to 1e-5 (relative to the output's magnitude when that exceeds 1).
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import subprocess
import sys
import tempfile
import textwrap
from pathlib import Path

import numpy as np

from hybrid_keras.preprocessing import check_mode

log = logging.getLogger("hybrid_keras")

# The namespace of this project's custom ops; saving a graph that uses them needs it whitelisted.
OP_NAMESPACE = "HybridKeras"
TOLERANCE = 1e-5


class ExportVerificationError(AssertionError):
    """The exported SavedModel, loaded in a fresh process, does not reproduce the Keras model."""


IMAGE_SIGNATURES = ("serving_default", "serve_uint8", "serve_image_bytes")


def _single_input_shape(model) -> tuple:
    shape = model.input_shape
    if isinstance(shape, list) or (isinstance(shape, tuple) and shape and isinstance(shape[0], tuple)):
        raise ValueError(f"export_saved_model needs a single-input model; {model.name!r} has {len(model.inputs)} inputs")
    return tuple(shape)


def is_image_model(model) -> bool:
    """One input of shape [batch, height, width, 1 or 3]."""
    shape = _single_input_shape(model)
    return len(shape) == 4 and shape[-1] in (1, 3)


def _model_image_shape(model, image_size, *, any_size: bool = False):
    """(height, width, channels) the signatures take; with ``any_size`` (segmentation), a model
    of any size keeps None for height and width unless ``image_size`` fixes them."""
    shape = _single_input_shape(model)
    height, width, channels = shape[1:]
    if image_size is not None:
        if len(image_size) != 2 or any(int(s) < 1 for s in image_size):
            raise ValueError(f"image_size must be (height, width). Received: image_size={image_size!r}")
        if (height, width) != (None, None) and tuple(image_size) != (height, width):
            raise ValueError(f"image_size={tuple(image_size)} differs from the model's input size {(height, width)}")
        height, width = (int(s) for s in image_size)
    if (height is None or width is None) and any_size:
        return height, width, int(channels)
    if height is None or width is None:
        raise ValueError(
            f"{model.name!r} accepts any image size; pass image_size=(height, width) so the "
            "encoded-image signature knows what to resize to"
        )
    return int(height), int(width), int(channels)


def _feature_shape(model) -> tuple:
    shape = _single_input_shape(model)
    if any(side is None for side in shape[1:]):
        raise ValueError(f"export_saved_model needs the non-batch dimensions of {model.name!r}'s input; it takes {shape}")
    return shape


def _output_names(model) -> list[str]:
    # Functional models name their outputs; a Sequential model has no output_names.
    names = getattr(model, "output_names", None)
    return list(names) if names else [f"output_{i}" for i in range(len(model.outputs))]


def _output_dict(model, outputs):
    names = _output_names(model)
    if not isinstance(outputs, (list, tuple)):
        outputs = [outputs]
    return dict(zip(names, outputs))


# Probe size for telling a per-pixel output from a downsampled feature map (any-size models).
_PROBE_SIZE = (96, 128)
# Any-size segmentation models are verified at these sizes (the second odd, to exercise crops).
SEGMENTATION_VERIFY_SIZES = ((64, 96), (77, 101))


def segmentation_classes(model) -> int | None:
    """The number of classes when ``model`` is a segmentation model, else None.

    A segmentation model is an image model with one output ``[B, H, W, classes]`` at its
    input's height and width (checked on a probe size when the model takes any size).
    """
    if not is_image_model(model) or len(model.outputs) != 1 or len(model.outputs[0].shape) != 4:
        return None
    height, width, channels = _single_input_shape(model)[1:]
    if height is None or width is None:
        height, width = _PROBE_SIZE
        try:
            shape = model.compute_output_shape((1, height, width, channels))
        except Exception:  # a layer that cannot say statically: not treated as per-pixel
            return None
    else:
        shape = model.outputs[0].shape
    return int(shape[-1]) if tuple(shape[1:3]) == (height, width) and shape[-1] else None


def ends_in_probabilities(model) -> bool:
    """Whether a segmentation model's output is already a distribution per pixel.

    Yes when the last layer that computes values (looking back through resizing, cropping
    and padding, which keep a distribution one) is a softmax, a DenseCRF, a classification
    ForestLayer, or is named "probabilities" (the zoo's forest head); no when it is named
    "logits" (an FCN with ``classifier_activation=None``), which then gets a softmax.
    Anything else is refused rather than guessed.
    """
    import keras

    from hybrid_keras.forest import ForestLayer
    from hybrid_keras.layers import CropToReference, DenseCRF, ReplicatePadding

    resampling = (keras.layers.Resizing, keras.layers.UpSampling2D, CropToReference, ReplicatePadding)
    layer = model.outputs[0]._keras_history.operation
    while isinstance(layer, resampling) and layer.name not in ("probabilities", "logits"):
        source = layer.input[0] if isinstance(layer.input, (list, tuple)) else layer.input
        layer = source._keras_history.operation
    if isinstance(layer, DenseCRF) or layer.name == "probabilities":
        return True
    if isinstance(layer, ForestLayer) and layer.task == "classification":
        return True
    if isinstance(layer, keras.layers.Activation) and getattr(layer.activation, "__name__", "") == "softmax":
        return True
    if layer.name == "logits":
        return False
    raise ValueError(f"cannot tell whether {model.name!r}'s per-pixel output (from layer {layer.name!r}) is "
                     "probabilities or logits: end the model in a softmax Activation, or name its last layer "
                     "'probabilities' or 'logits'")


def _segmentation_outputs(outputs, probabilities_given: bool, classes: int):
    """``{"class_map", "probabilities"}`` from a segmentation model's output (keras.ops, any backend)."""
    from keras import ops

    probabilities = outputs if probabilities_given else ops.softmax(outputs, axis=-1)
    class_map = ops.argmax(probabilities, axis=-1)
    return {"class_map": ops.cast(class_map, "uint8" if classes <= 256 else "int32"), "probabilities": probabilities}


def _describe_preprocessing(model, prepended) -> dict:
    from hybrid_keras.layers import find_preprocessing

    layer = prepended or find_preprocessing(model)
    if layer is None:
        return {"mode": "none", "inside_model": False}
    return {**{k: v for k, v in layer.get_config().items() if k in ("mode", "channel_order", "scale", "mean", "std")},
            "inside_model": prepended is None}


def export_saved_model(
    model,
    path: str | os.PathLike,
    *,
    preprocessing: str | None = None,
    image_size: tuple[int, int] | None = None,
    verify: bool = True,
    verify_inputs=None,
    verbose: bool = False,
) -> Path:
    """Write ``model`` as a TF Serving SavedModel at ``path`` and (by default) verify it.

    Args:
        model: a Keras 3 model with one input: images [B, H, W, C] (C = 1 or 3) get the
            float, uint8 and encoded-image signatures; any other input shape gets a
            ``features`` tensor signature.
        path: the version directory, e.g. ``saved_models/pets/1``. It must not exist
            or be empty (TF Serving versions are immutable).
        preprocessing: None or "none" (default: serve the model as it is; zoo models carry
            their normalisation as their first layer), or a mode of
            ``hybrid_keras.preprocessing.MODES`` to prepend for an image model built
            elsewhere that expects normalised input.
        image_size: (height, width) for image models that accept any size.
        verify: reload in a fresh TensorFlow-only process and compare outputs.
        verify_inputs: inputs to verify with: uint8 images [B, H, W, C] for an image
            model, arrays of the input shape otherwise (default: random ones). Give real
            ones for heads that are discontinuous in their input, such as kNN: on noise
            many stored examples are almost equally far, and rounding differences
            between eager and graph execution can swap the k-th neighbour.

    Returns the path written.
    """
    import keras
    import tensorflow as tf

    from hybrid_keras.layers import Preprocessing, find_preprocessing

    if not isinstance(model, keras.Model):
        raise TypeError(f"model must be a keras.Model. Received: {type(model).__name__}")
    if getattr(model, "task", None) == "detection":
        from hybrid_keras.detection.serving import export_detection_model

        if preprocessing not in (None, "none") or image_size is not None:
            raise ValueError("detection models carry their preprocessing and take images of any size: pass neither "
                             f"preprocessing nor image_size. Received: preprocessing={preprocessing!r}, "
                             f"image_size={image_size!r}")
        return export_detection_model(model, path, verify=verify, verify_inputs=verify_inputs, verbose=verbose)
    path = check_version_directory(path)
    image_model = is_image_model(model)
    prepended = None
    if preprocessing is not None and check_mode(preprocessing) != "none":  # "none" adds nothing
        if not image_model:
            raise ValueError(f"preprocessing={preprocessing!r} applies to image models; {model.name!r} takes "
                             f"{model.input_shape}")
        existing = find_preprocessing(model)
        if existing is not None:
            raise ValueError(f"{model.name!r} already starts with a Preprocessing layer ({existing.mode!r}); exporting "
                             f"with preprocessing={preprocessing!r} would normalise twice. Pass preprocessing=None.")
        prepended = Preprocessing(preprocessing, name="export_preprocessing")

    classes = segmentation_classes(model)
    probabilities_given = ends_in_probabilities(model) if classes else None
    if verify and verify_inputs is not None:
        _verification_cases(model, image_size, 2, None, verify_inputs)  # unfit inputs: refused before the slow writing

    def run(inputs):
        outputs = model(prepended(inputs) if prepended is not None else inputs, training=False)
        if classes:
            return _segmentation_outputs(outputs, probabilities_given, classes)
        return _output_dict(model, outputs)

    archive = keras.export.ExportArchive()
    archive.track(model)
    metadata = {"model": model.name, "outputs": ["class_map", "probabilities"] if classes else _output_names(model),
                "preprocessing": _describe_preprocessing(model, prepended)}
    if classes:
        metadata.update(task="segmentation", classes=classes)
    if image_model:
        height, width, channels = _model_image_shape(model, image_size, any_size=bool(classes))
        shape = (None, height, width, channels)

        def serve_uint8(images):
            return run(tf.cast(images, tf.float32))

        def decode(encoded):
            image = tf.cast(tf.io.decode_image(encoded, channels=channels, expand_animations=False), tf.float32)
            if height is not None:  # a model of any size (segmentation) reads each image at its own size
                image = tf.image.resize(image, (height, width), method="bilinear")
            return tf.ensure_shape(image, (height, width, channels))

        def serve_image_bytes(image_bytes):
            images = tf.map_fn(decode, image_bytes, fn_output_signature=tf.TensorSpec((height, width, channels), tf.float32))
            return run(images)

        archive.add_endpoint("serving_default", run, [tf.TensorSpec(shape, tf.float32, name="images")])
        archive.add_endpoint("serve_uint8", serve_uint8, [tf.TensorSpec(shape, tf.uint8, name="images")])
        archive.add_endpoint("serve_image_bytes", serve_image_bytes, [tf.TensorSpec((None,), tf.string, name="image_bytes")])
        metadata["image_shape"] = [height, width, channels]  # None: any size
    else:
        if image_size is not None:
            raise ValueError(f"image_size applies to image models; {model.name!r} takes {model.input_shape}")
        shape = _feature_shape(model)
        archive.add_endpoint("serving_default", run, [tf.TensorSpec(shape, tf.float32, name="features")])
        metadata["feature_shape"] = list(shape[1:])
    check = None
    if verify:
        def check(staging):
            verify_saved_model(model, staging, preprocessing=preprocessing, image_size=image_size, inputs=verify_inputs)
    return write_archive(archive, path, metadata, check, verbose=verbose)


def check_version_directory(path: str | os.PathLike) -> Path:
    """``path`` as a Path; an error when it exists and is not empty."""
    path = Path(path)
    if path.exists() and any(path.iterdir()):
        raise FileExistsError(f"{path} exists and is not empty; TF Serving versions are immutable, use a new version directory")
    return path


def write_archive(archive, path: str | os.PathLike, metadata: dict, verify=None, *, verbose: bool = False) -> Path:
    """Write a ``keras.export.ExportArchive`` as the version directory ``path``, with ``metadata`` in
    ``assets.extra/hybrid_keras.json``; ``verify(staging_path)`` (raising on a mismatch) runs
    before the version appears. It is written beside the target and renamed once verified, so
    TF Serving (which polls the base directory) never sees a half-written or unverified version."""
    import tensorflow as tf

    path = check_version_directory(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{path.name}.", dir=path.parent))
    try:
        archive.write_out(str(staging), options=tf.saved_model.SaveOptions(namespace_whitelist=[OP_NAMESPACE]), verbose=verbose)
        (staging / "assets.extra").mkdir(exist_ok=True)
        (staging / "assets.extra" / "hybrid_keras.json").write_text(json.dumps(metadata, indent=2))
        if verify is not None:
            verify(staging)
        if path.exists():
            path.rmdir()  # empty, checked above
        os.replace(staging, path)
    finally:
        if staging.exists():
            shutil.rmtree(staging)
    return path


def uses_custom_ops(path: str | os.PathLike) -> bool:
    """Whether the SavedModel's graph refers to this project's custom (FANNG) ops."""
    return f"{OP_NAMESPACE}>".encode() in (Path(path) / "saved_model.pb").read_bytes()


# Runs in a fresh interpreter: only TensorFlow (and the op library, if the graph needs it).
# Each input array is named "<signature>.<argument>.<case>"; a case is one request.
_CHECK_SCRIPT = textwrap.dedent(
    """
    import sys, numpy as np, tensorflow as tf
    saved_model, inputs_file, outputs_file, op_library = sys.argv[1:5]
    if op_library:
        tf.load_op_library(op_library)
    loaded = tf.saved_model.load(saved_model)
    data = np.load(inputs_file)
    calls = {}
    for key in data.files:
        signature, argument, case = key.split(".")
        calls.setdefault((signature, case), {})[argument] = tf.constant(data[key])
    results = {}
    for (signature, case), arguments in calls.items():
        outputs = loaded.signatures[signature](**arguments)
        for name, tensor in outputs.items():
            results[signature + "/" + name + "/" + case] = tensor.numpy()
    np.savez(outputs_file, **results)
    """
)


def check_served(served: dict, expected: dict, staging, *, tolerance: float = TOLERANCE,
                 what: str = "the Keras model") -> None:
    """Raise ``ExportVerificationError`` unless a fresh process served exactly the ``expected``
    outputs (keys as :func:`serve_in_fresh_process` returns them), each within ``tolerance``
    (:func:`max_relative_difference`)."""
    if set(served) != set(expected):
        raise ExportVerificationError(f"the SavedModel's outputs {sorted(served)} are not {sorted(expected)}")
    differences = {key: max_relative_difference(served[key], np.asarray(value)) for key, value in expected.items()}
    worst = max(differences, key=differences.get, default=None)
    if worst is not None and differences[worst] > tolerance:
        raise ExportVerificationError(f"{staging}: {worst} differs from {what} by {differences[worst]:.3g}")


def max_relative_difference(actual: np.ndarray, expected: np.ndarray) -> float:
    """The largest ``|actual - expected|``, relative to ``|expected|`` where that exceeds 1."""
    return float(np.max(np.abs(actual - expected) / np.maximum(1.0, np.abs(expected)))) if expected.size else 0.0


def _class_map_mismatches(served: np.ndarray, expected: np.ndarray, probabilities: np.ndarray) -> float:
    """Pixels whose served class differs although the expected top two probabilities are more
    than the tolerance apart (at a near-tie, rounding may pick either class)."""
    top_two = np.sort(probabilities, axis=-1)[..., -2:]
    decided = (top_two[..., 1] - top_two[..., 0]) > TOLERANCE
    return float(np.sum((served != expected) & decided))


def _verification_cases(model, image_size, batch, rng, inputs):
    """``[(uint8 images or feature arrays), ...]``: one request each."""
    if not is_image_model(model):
        shape = _feature_shape(model)
        arrays = (rng.normal(size=(batch, *shape[1:])) if inputs is None else np.asarray(inputs)).astype(np.float32)
        if arrays.shape[1:] != shape[1:]:
            raise ValueError(f"inputs must be [B, {', '.join(map(str, shape[1:]))}]. Received: {arrays.shape}")
        return [arrays]
    height, width, channels = _model_image_shape(model, image_size, any_size=segmentation_classes(model) is not None)
    if inputs is not None:
        images = [np.asarray(x) for x in (inputs if isinstance(inputs, (list, tuple)) else [inputs])]
        for image in images:
            if image.dtype != np.uint8 or image.ndim != 4 or image.shape[3] != channels or (
                    height is not None and image.shape[1:3] != (height, width)):
                raise ValueError(f"inputs must be uint8 [B, {height or 'H'}, {width or 'W'}, {channels}] (a list of such "
                                 f"for a model of any size). Received: {image.dtype} {image.shape}")
        return images
    sizes = [(height, width)] if height is not None else SEGMENTATION_VERIFY_SIZES
    return [rng.integers(0, 256, size=(batch, h, w, channels), dtype=np.uint8) for h, w in sizes]


def serve_in_fresh_process(path, signature_inputs: dict) -> dict:
    """Run a SavedModel's signatures in a fresh Python process that imports only TensorFlow (and
    loads this project's op library when the graph uses it), as TF Serving would.

    ``signature_inputs``: ``{"signature.argument.case": array}``; the arguments of one signature
    and case form one call. Returns ``{"signature/output/case": array}``.
    """
    op_library = ""
    if uses_custom_ops(path):
        from hybrid_keras.fanng.ops import library_path

        op_library = str(library_path())
    with tempfile.TemporaryDirectory() as tmp:
        inputs_file, outputs_file = Path(tmp) / "inputs.npz", Path(tmp) / "outputs.npz"
        np.savez(inputs_file, **signature_inputs)
        env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", CUDA_VISIBLE_DEVICES=os.environ.get("CUDA_VISIBLE_DEVICES", ""))
        result = subprocess.run(
            [sys.executable, "-c", _CHECK_SCRIPT, str(path), str(inputs_file), str(outputs_file), op_library],
            capture_output=True, text=True, env=env,
        )
        if result.returncode != 0:
            raise ExportVerificationError(f"loading {path} in a fresh TensorFlow process failed:\n{result.stderr[-4000:]}")
        with np.load(outputs_file, allow_pickle=False) as served:
            return {key: served[key] for key in served.files}


def verify_saved_model(model, path, *, preprocessing: str | None = None, image_size=None, batch: int = 2, seed: int = 0,
                       inputs=None) -> dict:
    """Load ``path`` in a fresh TensorFlow-only process and compare all signatures with ``model``.

    ``preprocessing``: the mode the export prepended (None when the model carries its own).
    ``inputs``: uint8 images [B, H, W, C] for an image model (a list of batches of different
    sizes for a segmentation model of any size), or arrays of the model's input shape; by
    default ``batch`` random ones (at two sizes for an any-size segmentation model).

    Returns ``{signature/output/case: max relative difference}`` (for ``class_map``: the
    number of pixels that differ away from near-ties); raises ExportVerificationError
    when any exceeds 1e-5.
    """
    import keras
    import tensorflow as tf

    from hybrid_keras.layers import Preprocessing

    rng = np.random.default_rng(seed)
    classes = segmentation_classes(model)
    probabilities_given = ends_in_probabilities(model) if classes else None
    signature_inputs, expected = {}, {}
    for case, arrays in enumerate(_verification_cases(model, image_size, batch, rng, inputs)):
        if is_image_model(model):
            # PNG is lossless, so the decoded bytes equal the images exactly; resizing to the
            # same size is the identity. (A PNG ends with the IEND CRC, never a NUL byte, so
            # the fixed-width bytes array NumPy stores gives each file back unchanged.)
            encoded = np.array([tf.io.encode_png(image).numpy() for image in arrays], dtype=bytes)
            signature_inputs.update({f"serving_default.images.{case}": arrays.astype(np.float32),
                                     f"serve_uint8.images.{case}": arrays,
                                     f"serve_image_bytes.image_bytes.{case}": encoded})
            model_inputs = arrays.astype(np.float32)
            if preprocessing is not None and check_mode(preprocessing) != "none":
                model_inputs = Preprocessing(preprocessing)(model_inputs)
        else:
            signature_inputs[f"serving_default.features.{case}"] = model_inputs = arrays
        outputs = model(model_inputs, training=False)
        outputs = (_segmentation_outputs(outputs, probabilities_given, classes) if classes
                   else _output_dict(model, outputs))
        expected[case] = {name: keras.ops.convert_to_numpy(value) for name, value in outputs.items()}

    served = serve_in_fresh_process(path, signature_inputs)
    diffs = {}
    for key, value in served.items():
        _, name, case = key.split("/")
        reference = expected[int(case)]
        if name == "class_map":
            diffs[key] = _class_map_mismatches(value, reference[name], reference["probabilities"])
        else:
            diffs[key] = max_relative_difference(value, reference[name])
    wanted = {f"{key.split('.')[0]}/{name}/{key.split('.')[2]}" for key in signature_inputs
              for name in expected[int(key.split(".")[2])]}
    missing = wanted - set(diffs)
    if missing:
        raise ExportVerificationError(f"the SavedModel at {path} lacks outputs {sorted(missing)}")
    worst = max(diffs, key=diffs.get)
    if diffs[worst] > TOLERANCE:
        raise ExportVerificationError(f"{path}: {worst} differs from the Keras model by {diffs[worst]:.3g} (> {TOLERANCE})")
    log.info("%s verified in a fresh process: max difference %.2g", path, diffs[worst])
    return diffs


def serving_command(path: str | os.PathLike, *, gpu: bool = True, port: int = 8501) -> str:
    """The stock ``tensorflow/serving`` command that serves the model whose version directory is ``path``."""
    version_dir = Path(path).resolve()
    base, name = version_dir.parent, version_dir.parent.name
    image = "tensorflow/serving:2.19.0-gpu" if gpu else "tensorflow/serving:2.19.0"
    gpus = "--gpus all " if gpu else ""
    return (
        f"docker run --rm {gpus}-p {port}:8501 "
        f"--mount type=bind,source={base},target=/models/{name} -e MODEL_NAME={name} {image}"
    )
