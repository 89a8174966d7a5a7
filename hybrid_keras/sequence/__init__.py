"""Character-level language modelling with the zoo's ``char_lstm``, ``char_gru`` and ``char_rnn``:
a character vocabulary, training windows, training by backpropagation through time with
gradient clipping, bits per character on held-out text, temperature sampling with the
recurrent state carried between steps, SavedModel export, the CPython standard library as a
corpus, count-based baselines, and gradient norms through time (the vanishing gradient).

The vocabulary, corpus and baselines are NumPy only; the other names load Keras on first use.
"""

from hybrid_keras.sequence.baselines import ngram_bits_per_character
from hybrid_keras.sequence.corpus import MAX_CHARACTERS, split_of, stdlib_corpus, stdlib_files
from hybrid_keras.sequence.vocabulary import UNKNOWN_ID, CharVocabulary, check_token_ids

_KERAS_NAMES = {
    "CharWindows": "data", "windows": "data",
    "bits_per_character": "training", "evaluation_windows": "training", "train_char_model": "training",
    "save_char_model": "training", "load_char_model": "training",
    "CharStepper": "sampling", "sample": "sampling", "sample_ids": "sampling",
    "next_char_probabilities": "sampling",
    "gradient_norms_through_time": "gradients",
    "export_char_model": "export",
}

__all__ = ["MAX_CHARACTERS", "UNKNOWN_ID", "CharVocabulary", "check_token_ids", "ngram_bits_per_character", "split_of",
           "stdlib_corpus", "stdlib_files", *sorted(_KERAS_NAMES)]


def __getattr__(name):
    if name in _KERAS_NAMES:
        import importlib

        return getattr(importlib.import_module(f"hybrid_keras.sequence.{_KERAS_NAMES[name]}"), name)
    raise AttributeError(f"module 'hybrid_keras.sequence' has no attribute {name!r}")
