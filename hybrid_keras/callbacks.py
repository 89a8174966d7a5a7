"""Keras callbacks the training helpers and benchmarks share."""

from __future__ import annotations

import time

import keras


class TimeBudget(keras.callbacks.Callback):
    """Stops training once ``seconds`` of fitting have passed (checked after every batch), so
    methods compared "at equal training time" get exactly that."""

    def __init__(self, seconds: float):
        super().__init__()
        self.seconds = float(seconds)

    def on_train_begin(self, logs=None):
        self._start = time.perf_counter()

    def on_train_batch_end(self, batch, logs=None):
        if time.perf_counter() - self._start > self.seconds:
            self.model.stop_training = True
