"""Character-level recurrent language models: LSTM, GRU and a plain tanh RNN.

References: A. Graves, "Generating Sequences With Recurrent Neural Networks", 2013 (character
LSTM language models); A. Karpathy, J. Johnson, L. Fei-Fei, "Visualizing and Understanding
Recurrent Networks", ICLR 2016 workshop (LSTM vs GRU vs tanh RNN on characters); S. Hochreiter &
J. Schmidhuber, "Long Short-Term Memory", 1997; K. Cho et al., "Learning Phrase Representations
using RNN Encoder-Decoder", 2014 (the GRU).

One network per cell type: token ids ``[B, T]`` (int32, 0 = the unknown character) -> an
embedding -> ``layers`` recurrent layers (every position's output, ``return_sequences``) with
dropout after each (on the non-recurrent connections only, as Zaremba et al. 2014) -> a Dense
layer of logits over the vocabulary, ``[B, T, V]``. Any ``T``. The layers are Keras' own
``LSTM`` / ``GRU`` / ``SimpleRNN`` (tanh), so the model runs on every backend.

Layer names are stable: ``embedding``, ``rnn_1`` .. ``rnn_<layers>``, ``dropout_1`` ..,
``logits``. :func:`describe` reads the builder's arguments back from a model, and
:mod:`hybrid_keras.sequence` steps the layers' cells one character at a time for sampling.

``weights=`` takes a ``.weights.h5`` saved by ``hybrid_keras.sequence.save_char_model``, which
writes a ``.json`` beside it (model, arguments, vocabulary); arguments left unset (None) are
taken from that file, so ``zoo.load("char_lstm", weights="m.weights.h5")`` rebuilds the saved
network.
"""

from __future__ import annotations

import json
from pathlib import Path

from zoo import common
from zoo.lazy import keras, layers
from zoo.registry import register_model

REFERENCE = "Graves, Generating Sequences With Recurrent Neural Networks, arXiv 1308.0850, 2013"
CELLS = {"char_lstm": "LSTM", "char_gru": "GRU", "char_rnn": "SimpleRNN"}
DEFAULTS = {"units": 256, "layers": 2, "embedding_dim": 64, "dropout": 0.0}
# The cards' parameter counts are for this vocabulary: the CPython 3.11 standard library's
# characters seen 50 times or more in the training split, plus the unknown id.
CARD_VOCABULARY = 97
# A registry card's input_shape is (H, W, C); a sequence model's card gives (default window, 1, 1)
# and says what it takes in its input_label.
CARD_INPUT = (100, 1, 1)
CARD_INPUT_LABEL = "token ids [B, T]"


def _parameters(cell: str, vocabulary: int = CARD_VOCABULARY, units: int = 256, depth: int = 2,
                embedding_dim: int = 64) -> int:
    gates = {"LSTM": 4, "GRU": 3, "SimpleRNN": 1}[cell]
    extra_bias = units * gates if cell == "GRU" else 0  # Keras' GRU (reset_after=True) has two biases
    total, width = vocabulary * embedding_dim, embedding_dim
    for _ in range(depth):
        total += gates * (width * units + units * units + units) + extra_bias
        width = units
    return total + units * vocabulary + vocabulary


def saved_description(weights_path) -> dict:
    """The ``.json`` that ``hybrid_keras.sequence.save_char_model`` writes beside ``weights_path``."""
    path = Path(weights_path)
    description = path.with_suffix("").with_suffix(".json")
    if not description.is_file():
        raise FileNotFoundError(f"a saved character model is a .weights.h5 file with its .json beside it (model, "
                                f"arguments, vocabulary); missing {description}")
    return json.loads(description.read_text())


def _vocabulary_size(vocabulary) -> int:
    size = vocabulary if isinstance(vocabulary, int) and not isinstance(vocabulary, bool) else None
    if size is None and hasattr(vocabulary, "__len__") and not isinstance(vocabulary, (str, bytes)):
        size = len(vocabulary)
    if size is None or size < 2:
        raise ValueError("vocabulary must be a vocabulary size (an int >= 2) or a vocabulary object with len() "
                         f"(hybrid_keras.sequence.CharVocabulary). Received: vocabulary={vocabulary!r}")
    return size


def _build(card, vocabulary, weights, units, layers_count, embedding_dim, dropout, name):
    saved = {}
    if weights is not None:
        if weights.format != common.KERAS_WEIGHTS:
            raise ValueError(f"{card.name} reads .weights.h5 files saved by hybrid_keras.sequence.save_char_model. "
                             f"Received: weights={str(weights.path)!r}")
        saved = saved_description(weights.path)
        if saved.get("model") != card.name:
            raise ValueError(f"{weights.path} holds a {saved.get('model')!r} model, not {card.name!r}")
    arguments = saved.get("arguments", {})

    def pick(key, value):
        return value if value is not None else arguments.get(key, DEFAULTS[key])

    units, layers_count = pick("units", units), pick("layers", layers_count)
    embedding_dim, dropout = pick("embedding_dim", embedding_dim), pick("dropout", dropout)
    if vocabulary is None:
        if "vocabulary" not in saved:
            raise ValueError(f"{card.name} needs vocabulary= (a size, or a hybrid_keras.sequence.CharVocabulary) "
                             "unless weights= names a saved model. Received: vocabulary=None")
        vocabulary = len(saved["vocabulary"]["characters"]) + 1  # + the unknown id 0
    size = _vocabulary_size(vocabulary)
    for key, value in (("units", units), ("layers", layers_count), ("embedding_dim", embedding_dim)):
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise ValueError(f"{key} must be a positive int. Received: {key}={value!r}")
    if not isinstance(dropout, (int, float)) or not 0 <= dropout < 1:
        raise ValueError(f"dropout must be in [0, 1). Received: dropout={dropout!r}")

    cell = getattr(layers, CELLS[card.name])
    token_ids = keras.Input(shape=(None,), dtype="int32", name="token_ids")
    x = layers.Embedding(size, embedding_dim, name="embedding")(token_ids)
    for i in range(1, layers_count + 1):
        x = cell(units, return_sequences=True, name=f"rnn_{i}")(x)
        x = layers.Dropout(dropout, name=f"dropout_{i}")(x)
    logits = layers.Dense(size, name="logits")(x)
    model = keras.Model(token_ids, logits, name=name or card.name)
    return common.load_weights(model, card, weights, converters={})


_DOC = """Build a character-level {cell} language model: token ids ``[B, T]`` -> logits ``[B, T, V]``.

    ``vocabulary``: the vocabulary size V (including the unknown id 0) or a vocabulary object
    (``hybrid_keras.sequence.CharVocabulary``); None with ``weights=`` a saved model: its own.
    ``units``: hidden units per recurrent layer (default 256); ``layers``: 1 or more (default 2);
    ``embedding_dim``: default 64; ``dropout``: after each recurrent layer, default 0.
    ``weights``: None or a ``.weights.h5`` saved by ``hybrid_keras.sequence.save_char_model``
    (arguments left None come from the ``.json`` beside it).
    """


@register_model(
    "char_lstm", task="sequence", family="char_rnn", input_shape=CARD_INPUT, input_label=CARD_INPUT_LABEL,
    reference=REFERENCE, preprocessing="none",
    description="character LSTM language model: int32 token ids [B, T] -> logits [B, T, V] (card: 2x256 units, V=97)",
    parameters=_parameters("LSTM"), reference_implementation="keras.layers.LSTM layers on a character embedding",
    weights_hint="Train one with benchmarks/sequence/char_lm.py (it saves char_lstm.weights.h5 with its vocabulary)",
)
def char_lstm(card, vocabulary=None, weights=None, units=None, layers=None, embedding_dim=None, dropout=None, name=None):
    return _build(card, vocabulary, weights, units, layers, embedding_dim, dropout, name)


@register_model(
    "char_gru", task="sequence", family="char_rnn", input_shape=CARD_INPUT, input_label=CARD_INPUT_LABEL,
    reference=REFERENCE, preprocessing="none",
    description="character GRU language model: int32 token ids [B, T] -> logits [B, T, V] (card: 2x256 units, V=97)",
    parameters=_parameters("GRU"), reference_implementation="keras.layers.GRU layers (reset_after=True) on a character embedding",
    weights_hint="Train one with benchmarks/sequence/char_lm.py (it saves char_gru.weights.h5 with its vocabulary)",
)
def char_gru(card, vocabulary=None, weights=None, units=None, layers=None, embedding_dim=None, dropout=None, name=None):
    return _build(card, vocabulary, weights, units, layers, embedding_dim, dropout, name)


@register_model(
    "char_rnn", task="sequence", family="char_rnn", input_shape=CARD_INPUT, input_label=CARD_INPUT_LABEL,
    reference=REFERENCE, preprocessing="none",
    description="character tanh-RNN language model: int32 token ids [B, T] -> logits [B, T, V] (card: 2x256 units, V=97)",
    parameters=_parameters("SimpleRNN"), reference_implementation="keras.layers.SimpleRNN (tanh) layers on a character embedding",
    weights_hint="Train one with benchmarks/sequence/char_lm.py (it saves char_rnn.weights.h5 with its vocabulary)",
)
def char_rnn(card, vocabulary=None, weights=None, units=None, layers=None, embedding_dim=None, dropout=None, name=None):
    return _build(card, vocabulary, weights, units, layers, embedding_dim, dropout, name)


char_lstm.__doc__ = _DOC.format(cell="LSTM")
char_gru.__doc__ = _DOC.format(cell="GRU")
char_rnn.__doc__ = _DOC.format(cell="tanh RNN (SimpleRNN)")


def recurrent_layers(model) -> list:
    """The model's recurrent layers, ``rnn_1`` first."""
    found = []
    while True:
        try:
            found.append(model.get_layer(f"rnn_{len(found) + 1}"))
        except ValueError:
            return found


def describe(model) -> dict:
    """``{"model": registered name, "arguments": {units, layers, embedding_dim, dropout}, "vocabulary_size": V}``
    read back from a model these builders made (what a saved model's ``.json`` records)."""
    try:
        embedding, logits = model.get_layer("embedding"), model.get_layer("logits")
    except ValueError:
        raise ValueError(f"model must be built by zoo's char_lstm, char_gru or char_rnn (layers 'embedding', "
                         f"'rnn_1', ..., 'logits'). Received: a model named {model.name!r}") from None
    recurrent = recurrent_layers(model)
    kinds = {type(layer).__name__ for layer in recurrent}
    names = [name for name, cell in CELLS.items() if kinds == {cell}]
    if not names:
        raise ValueError(f"model's recurrent layers must all be one of {sorted(set(CELLS.values()))}. "
                         f"Received: {sorted(kinds)}")
    return {"model": names[0],
            "arguments": {"units": recurrent[0].units, "layers": len(recurrent), "embedding_dim": embedding.output_dim,
                          "dropout": float(model.get_layer("dropout_1").rate)},
            "vocabulary_size": int(logits.units)}
