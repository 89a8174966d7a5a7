"""SavedModel export of detection models (the zoo's Faster and Mask R-CNN) for TF Serving.

``hybrid_keras.export_saved_model`` hands a model with ``task == "detection"`` here. The
model takes one fixed input size; the signatures take images of any size and letterbox them
to it (:func:`hybrid_keras.detection.data.letterbox`: longer side fitted, aspect ratio kept,
zero padding at the bottom and right), as the training data was prepared:

======================  ===================================  ==================================
signature               input                                 meaning
======================  ===================================  ==================================
``serving_default``     ``images``: float32 [batch, H, W, 3]   RGB in [0, 255], any H and W (one
                                                               size per request)
``serve_uint8``         ``images``: uint8 [batch, H, W, 3]     the same, as bytes per pixel
``serve_image_bytes``   ``image_bytes``: string [batch]        encoded JPEG/PNG/GIF/BMP, each at
                                                               its own size
======================  ===================================  ==================================

Each returns the TF Object Detection API dictionary: ``detection_boxes`` float32 [batch, M, 4]
normalised ``[ymin, xmin, ymax, xmax]`` of each *original* image, ``detection_scores``,
``detection_classes`` (float32, 1-based: a dataset's 0-based label + 1; 0 on padding rows)
and ``num_detections``; Mask R-CNN adds ``detection_masks`` float32 [batch, M, 28, 28], mask
probabilities inside each box (box-relative, so they hold for the original image's boxes as
they are: ``hybrid_keras.detection.paste_masks`` puts them on the image). The model itself is
traced once and shared by the three signatures.

The export verifies itself as the others do: a fresh TensorFlow-only process serves images of
two sizes through every signature and must reproduce the Keras model to 1e-5.
"""

from __future__ import annotations

import numpy as np

from hybrid_keras.detection.models import DETECTION_OUTPUTS

# Verification sizes (height, width): one wider and one taller than square.
VERIFY_SIZES = ((45, 70), (90, 52))


def _outputs(model) -> tuple[str, ...]:
    """The served output names: the TF OD API dictionary, with ``detection_masks`` for Mask R-CNN."""
    return getattr(model, "detection_outputs", DETECTION_OUTPUTS)


def _serving_functions(model):
    """``(run, serve_uint8, serve_image_bytes)``: the signatures' functions (TensorFlow)."""
    import tensorflow as tf

    from hybrid_keras.detection.data import letterbox, restore_boxes

    height, width, channels = model.image_shape

    @tf.function(input_signature=[tf.TensorSpec((None, height, width, channels), tf.float32)])
    def detect(images):
        return model(images, training=False)

    def finish(outputs, resized_size):
        outputs = dict(outputs)
        outputs["detection_boxes"] = restore_boxes(outputs["detection_boxes"], resized_size, (height, width))
        return outputs

    def run(images):
        padded, resized_size = letterbox(images, (height, width))
        return finish(detect(padded), resized_size)

    def serve_uint8(images):
        return run(tf.cast(images, tf.float32))

    def serve_image_bytes(image_bytes):
        def decode(encoded):
            image = tf.io.decode_image(encoded, channels=channels, expand_animations=False)
            return letterbox(image, (height, width))

        padded, resized_size = tf.map_fn(decode, image_bytes, fn_output_signature=(
            tf.TensorSpec((height, width, channels), tf.float32), tf.TensorSpec((2,), tf.int32)))
        return finish(detect(padded), resized_size)

    return run, serve_uint8, serve_image_bytes


def export_detection_model(model, path, *, verify: bool = True, verify_inputs=None, verbose: bool = False):
    """Write the detection ``model`` as a TF Serving version directory ``path`` (see the module)
    and, by default, verify it in a fresh process. ``verify_inputs``: a list of uint8 batches
    ``[B, H, W, 3]`` (default: random images at :data:`VERIFY_SIZES`)."""
    import keras
    import tensorflow as tf

    from hybrid_keras.export import _describe_preprocessing, write_archive

    if not getattr(model, "rpn", False):
        raise ValueError(f"{model.name!r} takes its proposals as an input (Fast R-CNN); export serves models that "
                         "propose their own boxes (Faster R-CNN). Received: a model with rpn=False")
    run, serve_uint8, serve_image_bytes = _serving_functions(model)
    channels = model.image_shape[2]
    archive = keras.export.ExportArchive()
    archive.track(model)
    shape = (None, None, None, channels)
    archive.add_endpoint("serving_default", run, [tf.TensorSpec(shape, tf.float32, name="images")])
    archive.add_endpoint("serve_uint8", serve_uint8, [tf.TensorSpec(shape, tf.uint8, name="images")])
    archive.add_endpoint("serve_image_bytes", serve_image_bytes, [tf.TensorSpec((None,), tf.string, name="image_bytes")])
    metadata = {
        "model": model.name, "task": "detection", "outputs": list(_outputs(model)), "classes": model.classes,
        "detection_classes": "1-based: a dataset's 0-based label + 1; 0 on padding rows",
        "image_shape": [None, None, channels], "model_input_shape": list(model.image_shape),
        "resizing": "longer side fitted to the model's input, aspect ratio kept, zero padding bottom/right; "
                    "detection_boxes normalised to the original image",
        "max_detections": model.max_detections, "preprocessing": _describe_preprocessing(model, None),
    }
    check = None
    if verify:
        def check(staging):
            verify_detection_export(model, staging, inputs=verify_inputs, run=run)
    return write_archive(archive, path, metadata, check, verbose=verbose)


def verify_detection_export(model, path, *, inputs=None, seed: int = 0, run=None) -> dict:
    """Serve ``inputs`` (uint8 batches, default random ones at :data:`VERIFY_SIZES`) through every
    signature of the SavedModel at ``path`` in a fresh TensorFlow-only process and compare with
    the Keras model (through ``run``, the export's own letterboxing function, when given: it is
    traced already). Returns ``{signature/output/case: max relative difference}``; raises
    ``ExportVerificationError`` above 1e-5."""
    import tensorflow as tf

    from hybrid_keras.export import (TOLERANCE, ExportVerificationError, max_relative_difference,
                                     serve_in_fresh_process)

    if inputs is None:
        rng = np.random.default_rng(seed)
        inputs = [rng.integers(0, 256, size=(1, h, w, model.image_shape[2]), dtype=np.uint8) for h, w in VERIFY_SIZES]
    run = run or _serving_functions(model)[0]
    signature_inputs, expected = {}, {}
    for case, images in enumerate(inputs):
        images = np.asarray(images)
        if images.dtype != np.uint8 or images.ndim != 4 or images.shape[-1] != model.image_shape[2]:
            raise ValueError(f"inputs must be uint8 batches [B, H, W, {model.image_shape[2]}]. Received: "
                             f"{images.dtype} {images.shape}")
        encoded = np.array([tf.io.encode_png(image).numpy() for image in images], dtype=bytes)
        signature_inputs.update({f"serving_default.images.{case}": images.astype(np.float32),
                                 f"serve_uint8.images.{case}": images,
                                 f"serve_image_bytes.image_bytes.{case}": encoded})
        expected[case] = {name: np.asarray(value) for name, value in run(tf.constant(images, tf.float32)).items()}
    served = serve_in_fresh_process(path, signature_inputs)
    differences = {}
    for key, value in served.items():
        _, name, case = key.split("/")
        differences[key] = max_relative_difference(value, expected[int(case)][name])
    wanted = {f"{signature}/{name}/{case}" for signature in ("serving_default", "serve_uint8", "serve_image_bytes")
              for name in _outputs(model) for case in expected}
    if wanted - set(differences):
        raise ExportVerificationError(f"the SavedModel at {path} lacks outputs {sorted(wanted - set(differences))}")
    worst = max(differences, key=differences.get)
    if differences[worst] > TOLERANCE:
        raise ExportVerificationError(f"{path}: {worst} differs from the Keras model by {differences[worst]:.3g} "
                                      f"(> {TOLERANCE})")
    return differences
