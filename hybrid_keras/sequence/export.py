"""A character model as a TF Serving SavedModel: the next character's distribution."""

from __future__ import annotations

import numpy as np

import keras

from hybrid_keras.sequence.vocabulary import CharVocabulary


def export_char_model(model, path, *, vocabulary: CharVocabulary | None = None, verify: bool = True,
                      verbose: bool = False):
    """Write a character model (token ids ``[B, T]`` -> logits ``[B, T, V]``) as a SavedModel at
    the version directory ``path``; by default verify it in a fresh TensorFlow-only process.

    Signatures ``next_char_probabilities`` and ``serving_default`` (the same function):
    ``token_ids`` int32 ``[B, T]`` (any T >= 1) -> ``probabilities`` float32 ``[B, V]`` (softmax of
    the last position's logits: the character after each row) and ``logits`` ``[B, V]``. A
    client samples by appending its choice and calling again (the window is re-run; the
    served model keeps no state). ``vocabulary``: written to the metadata
    (``assets.extra/hybrid_keras.json``), so a client can encode and decode characters.
    Returns the path written.
    """
    import tensorflow as tf

    from hybrid_keras.export import check_served, serve_in_fresh_process, write_archive

    if not isinstance(model, keras.Model) or len(model.output_shape) != 3:
        raise ValueError(f"model must be a keras.Model mapping token ids [B, T] to logits [B, T, V]. "
                         f"Received: {getattr(model, 'output_shape', type(model).__name__)}")
    size = int(model.output_shape[-1])
    if vocabulary is not None and len(vocabulary) != size:
        raise ValueError(f"vocabulary has {len(vocabulary)} ids but the model predicts {size}. Received: {vocabulary!r}")

    def next_char(token_ids):
        logits = model(token_ids, training=False)[:, -1, :]
        return {"probabilities": keras.ops.softmax(logits, axis=-1), "logits": logits}

    spec = [tf.TensorSpec((None, None), tf.int32, name="token_ids")]
    archive = keras.export.ExportArchive()
    archive.track(model)
    archive.add_endpoint("next_char_probabilities", next_char, spec)
    archive.add_endpoint("serving_default", next_char, spec)
    metadata = {"model": model.name, "task": "sequence", "vocabulary_size": size,
                "signatures": {"next_char_probabilities": ["probabilities", "logits"]},
                "vocabulary": vocabulary.to_json() if vocabulary is not None else None,
                "unknown_id": 0}

    def check(staging):
        rng = np.random.default_rng(0)
        cases = [rng.integers(0, size, (2, 7)).astype(np.int32), rng.integers(0, size, (3, 1)).astype(np.int32)]
        inputs, expected = {}, {}
        for case, token_ids in enumerate(cases):
            outputs = next_char(token_ids)
            for signature in ("next_char_probabilities", "serving_default"):
                inputs[f"{signature}.token_ids.{case}"] = token_ids
                for name, value in outputs.items():
                    expected[f"{signature}/{name}/{case}"] = keras.ops.convert_to_numpy(value)
        check_served(serve_in_fresh_process(staging, inputs), expected, staging)

    return write_archive(archive, path, metadata, check if verify else None, verbose=verbose)
