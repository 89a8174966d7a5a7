"""Zoo models against keras.applications on a GPU, under whatever Keras backend is set.

For VGG16 and MobileNetV2 (random weights, 224x224): the zoo model built with
``include_preprocessing=False`` gets keras.applications' weights layer by layer and
must give the same logits; then inference images/s (``predict_on_batch``, compiled)
and train-step images/s (``train_on_batch``) of the zoo model as users get it (raw
pixels in, normalisation inside) and of keras.applications (fed normalised input),
timed in alternation, fastest round kept. Imports no TensorFlow.
"""

from __future__ import annotations

import numpy as np

from benchmarks.gpu.timing import fastest_seconds

CASES = {
    # name: (zoo kwargs, keras.applications constructor, preprocess_input module, batch, quick batch)
    "vgg16": ({}, "VGG16", "vgg16", 64, 4),
    "mobilenet_v2": ({"alpha": 1.0}, "MobileNetV2", "mobilenet_v2", 128, 8),
}


def run(quick: bool = False, rounds: int = 3, steps: int = 5) -> dict:
    import keras

    import zoo

    if quick:
        rounds, steps = 2, 2
    rng = np.random.default_rng(0)
    results = {}
    for name, (zoo_kwargs, keras_name, module, batch, quick_batch) in CASES.items():
        batch = quick_batch if quick else batch
        keras.utils.set_random_seed(0)
        reference = getattr(keras.applications, keras_name)(weights=None, classifier_activation=None)
        plain = zoo.load(name, include_preprocessing=False, classifier_activation=None, **zoo_kwargs)
        for layer in plain.layers:
            if layer.weights:
                layer.set_weights(reference.get_layer(layer.name).get_weights())
        ours = zoo.load(name, classifier_activation=None, **zoo_kwargs)  # raw pixels in
        ours.set_weights(plain.get_weights())  # the preprocessing layer has no weights
        pixels = rng.integers(0, 256, (batch, 224, 224, 3)).astype("float32")
        # preprocess_input's "caffe" mode flips channels into a negative-stride view, which
        # would cost keras.applications a host-side copy per call: time both on contiguous arrays.
        normalised = np.ascontiguousarray(getattr(keras.applications, module).preprocess_input(pixels.copy()))
        labels = rng.integers(0, 1000, batch)
        expected = np.asarray(reference.predict_on_batch(normalised))
        logits_gap = float(np.max(np.abs(np.asarray(ours.predict_on_batch(pixels)) - expected)))
        for model in (ours, reference):
            model.compile(optimizer=keras.optimizers.SGD(1e-3),
                          loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
            model.predict_on_batch(pixels if model is ours else normalised)  # compile before timing
            model.train_on_batch(pixels if model is ours else normalised, labels)
        timings = {"zoo": {"inference": float("inf"), "train": float("inf")},
                   "keras_applications": {"inference": float("inf"), "train": float("inf")}}
        for _ in range(rounds):  # alternate, so a slow spell does not land on one model
            for key, model, x in (("zoo", ours, pixels), ("keras_applications", reference, normalised)):
                timings[key]["inference"] = min(timings[key]["inference"],
                                                fastest_seconds(lambda: np.asarray(model.predict_on_batch(x)), steps))
                timings[key]["train"] = min(timings[key]["train"],
                                            fastest_seconds(lambda: model.train_on_batch(x, labels), steps))
        entry = {"batch": batch, "max_logit_difference": logits_gap, "max_abs_logit": float(np.max(np.abs(expected)))}
        for key in timings:
            entry[key] = {f"{kind}_images_per_s": batch / seconds for kind, seconds in timings[key].items()}
        entry["ratio"] = {kind: entry["zoo"][kind] / entry["keras_applications"][kind] for kind in entry["zoo"]}
        results[name] = entry
        print(f"[zoo] {name}: logits differ by {logits_gap:.2e} (largest {entry['max_abs_logit']:.2e}); " + ", ".join(
            f"{k} {entry['zoo'][k]:.0f} vs {entry['keras_applications'][k]:.0f} img/s (x{entry['ratio'][k]:.2f})"
            for k in entry["zoo"]), flush=True)
        keras.backend.clear_session()
    return results
