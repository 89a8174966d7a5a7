"""Character language models: vocabulary, windows, bits per character, the three zoo models,
training, sampling, gradient norms through time, bad input, the sample command and export."""

import json
import math

import numpy as np
import pytest

import keras

import zoo
from hybrid_keras.sequence import (CharStepper, CharVocabulary, CharWindows, bits_per_character, check_token_ids,
                                   evaluation_windows, gradient_norms_through_time, ngram_bits_per_character,
                                   sample, sample_ids, train_char_model, windows)

agnostic = pytest.mark.backend_agnostic

TEXT = ("def add(a, b):\n    return a + b\n\n\nclass Point:\n    def __init__(self, x, y):\n"
        "        self.x = x\n        self.y = y\n\n") * 6
CELLS = ("char_lstm", "char_gru", "char_rnn")


VOCABULARY = CharVocabulary.fit(TEXT)


def tiny(name, vocabulary, **kwargs):
    return zoo.load(name, vocabulary=vocabulary, **{"units": 8, "layers": 1, "embedding_dim": 4, **kwargs})


@pytest.fixture(scope="module")
def built():
    return {}


def shared_lstm(built):
    """One two-layer LSTM over VOCABULARY for the tests that only read it (built inside the
    first test that asks, after that test's seeding; models are slow to build under JAX)."""
    if "lstm" not in built:
        built["lstm"] = tiny("char_lstm", VOCABULARY, layers=2)
    return built["lstm"]


def numpy_logits(model, token_ids):
    return keras.ops.convert_to_numpy(model(token_ids, training=False))


def test_vocabulary_round_trip_and_unknown_characters(tmp_path):
    vocabulary = CharVocabulary.fit("aabbbc\n", min_count=2)
    assert vocabulary.characters == ("a", "b") and len(vocabulary) == 3  # "c", "\n" seen once: unknown
    ids = vocabulary.encode("abcz\n")
    np.testing.assert_array_equal(ids, [1, 2, 0, 0, 0])
    assert ids.dtype == np.int32
    assert vocabulary.decode(ids) == "ab\ufffd\ufffd\ufffd"
    full = VOCABULARY
    assert full.decode(full.encode(TEXT)) == TEXT
    assert CharVocabulary.fit("aaabbc", max_size=3).characters == ("a", "b")  # the 2 most frequent
    assert CharVocabulary.load(full.save(tmp_path / "vocabulary.json")) == full
    with pytest.raises(ValueError, match="must not repeat"):
        CharVocabulary("aba")


def test_windows_targets_are_the_inputs_shifted_by_one():
    ids = np.arange(50, dtype=np.int32)  # each id is its own position
    data = CharWindows(ids, sequence_length=6, batch_size=3, batches=5, seed=3)
    for index in range(len(data)):
        inputs, targets = data[index]
        assert inputs.shape == targets.shape == (3, 6) and inputs.dtype == np.int32
        np.testing.assert_array_equal(inputs, inputs[:, :1] + np.arange(6))  # contiguous windows
        np.testing.assert_array_equal(targets, inputs + 1)
    starts = data.pass_starts(0)  # one pass: (50 - 6) // 6 windows, non-overlapping, at one offset
    assert len(set(starts)) == len(starts) == 7 and len(set(np.asarray(starts) % 6)) == 1
    assert data.batches_per_pass == 2  # 7 windows make 2 batches of 3; batch 2 starts pass 1
    assert set(data[2][0][:, 0]) <= set(data.pass_starts(1))
    np.testing.assert_array_equal(CharWindows(ids, 6, 3, batches=5, seed=3)[4][0], data[4][0])  # a seed's batches


def test_evaluation_windows_score_every_position_once():
    for length, context, warmup in ((50, 10, 3), (51, 10, 1), (12, 10, 10), (200, 100, 20)):
        scored = [j for start, size in evaluation_windows(length, context, warmup)
                  for j in range(start + warmup, start + size + 1)]
        assert scored == list(range(warmup, length))
        assert all(size <= context for _, size in evaluation_windows(length, context, warmup))


@agnostic
def test_bits_per_character_by_hand():
    vocabulary = VOCABULARY
    size = len(vocabulary)
    model = tiny("char_rnn", size)
    logits = model.get_layer("logits")
    bias = np.random.default_rng(0).normal(size=size).astype("float32")
    logits.set_weights([np.zeros_like(logits.get_weights()[0]), np.zeros(size, "float32")])
    ids = vocabulary.encode(TEXT[:157])
    assert bits_per_character(model, ids, context=20, warmup=5) == pytest.approx(math.log2(size), abs=1e-6)  # uniform
    logits.set_weights([logits.get_weights()[0], bias])  # the same known distribution at every position
    log_p = bias - np.log(np.exp(bias).sum())
    expected = -np.mean(log_p[ids[5:]]) / math.log(2)  # every character from index warmup = 5 on
    assert bits_per_character(model, ids, context=20, warmup=5) == pytest.approx(expected, abs=1e-5)


def test_count_baselines_by_hand():
    train, test = np.array([1, 1, 2, 1, 2, 2, 1, 1], np.int32), np.array([1, 2, 2, 0], np.int32)
    # Unigram with add-1: counts 0: 0, 1: 5, 2: 3 of 8; scored test positions 1..3 (warmup 1).
    unigram = -np.mean(np.log([(3 + 1) / 11, (3 + 1) / 11, (0 + 1) / 11])) / math.log(2)
    assert ngram_bits_per_character(train, test, 3, order=1, k=1.0, warmup=1) == pytest.approx(unigram)
    # Bigram with add-0.5: after 1 (4 times): 1 x2, 2 x2; after 2 (3 times): 1 x2, 2 x1.
    bigram = -np.mean(np.log([(2 + .5) / (4 + 1.5), (1 + .5) / (3 + 1.5), (0 + .5) / (3 + 1.5)])) / math.log(2)
    assert ngram_bits_per_character(train, test, 3, order=2, k=0.5, warmup=1) == pytest.approx(bigram)


@agnostic
@pytest.mark.parametrize("name", CELLS)
def test_model_shapes_and_stepping(name, built):
    model = shared_lstm(built) if name == "char_lstm" else tiny(name, VOCABULARY)  # 2 layers, 1 layer
    size = len(VOCABULARY)
    ids = np.random.default_rng(1).integers(0, size, (2, 6)).astype("int32")
    logits = numpy_logits(model, ids)
    assert logits.shape == (2, 6, size) and model.input_shape == (None, None)  # any length
    stepper = CharStepper(model)  # the cells with carried states give the full model's logits
    states, stepped = stepper.initial_states(2), []
    for t in range(6):
        step_logits, states = stepper.step(ids[:, t], states)
        stepped.append(keras.ops.convert_to_numpy(step_logits))
    np.testing.assert_allclose(np.stack(stepped, axis=1), logits, atol=1e-5)


def test_cards_count_the_parameters():
    for name in CELLS:
        assert zoo.load(name, vocabulary=97).count_params() == zoo.model_card(name).parameters


# Every cell trains under TensorFlow; the LSTM on every backend (the cells share the training code).
@pytest.mark.parametrize("name", [pytest.param("char_lstm", marks=agnostic), "char_gru", "char_rnn"])
def test_training_steps_lower_the_loss(name):
    vocabulary = VOCABULARY
    ids = vocabulary.encode(TEXT)
    model = tiny(name, vocabulary, units=16)
    inputs, targets = windows(ids, 12, [0, 40, 80, 120])

    def loss():  # mean cross-entropy on fixed windows, in NumPy
        logits = numpy_logits(model, inputs).astype(np.float64)
        log_p = logits - np.log(np.exp(logits).sum(axis=-1, keepdims=True))
        return -np.mean(np.take_along_axis(log_p, targets[..., None], axis=-1))

    before = loss()
    history = train_char_model(model, ids, steps=3, batch_size=8, sequence_length=12, learning_rate=0.03,
                               global_clipnorm=1.0, seed=0, run_eagerly=keras.backend.backend() != "jax")
    # (eager: tracing TensorFlow's step costs more than 3 steps; JAX compiles every eager op instead)
    assert history["step"] == [3] and np.isfinite(history["train_bpc"][0])
    assert loss() < before - 0.1, (before, loss())


@agnostic
def test_sampling_is_seeded_and_greedy_is_the_argmax(built):
    vocabulary, model = VOCABULARY, shared_lstm(built)
    first = sample(model, vocabulary, prime="def ", length=8, temperature=1.0, seed=5)
    assert len(first) == 8 and first == sample(model, vocabulary, prime="def ", length=8, temperature=1.0, seed=5)
    assert first != sample(model, vocabulary, prime="def ", length=8, temperature=1.0, seed=6)
    prime = vocabulary.encode("def ")[None, :]
    greedy = sample_ids(model, prime, 6, temperature=0)
    text = np.concatenate([prime, greedy], axis=1)
    full = numpy_logits(model, text[:, :-1])  # the whole prefix run at once
    np.testing.assert_array_equal(greedy[0], np.argmax(full[0, prime.shape[1] - 1:], axis=-1))


@agnostic
def test_gradient_norms_of_a_linear_rnn_match_numpy():
    rng = np.random.default_rng(2)
    units, steps = 4, 7
    cell = keras.layers.SimpleRNNCell(units, activation=None, use_bias=False)
    cell.build((3, 5))
    recurrent = (rng.normal(size=(units, units)) * 0.6).astype("float32")
    cell.set_weights([rng.normal(size=(5, units)).astype("float32"), recurrent])
    g = rng.normal(size=(3, units)).astype("float32")
    norms = gradient_norms_through_time(cell, rng.normal(size=(3, steps, 5)).astype("float32"),
                                        lambda h: keras.ops.sum(h * keras.ops.convert_to_tensor(g), axis=-1))
    # h_t = x_t K + h_{t-1} U, so d loss / d h_{T-k} = g (U^T)^k.
    expected = np.stack([np.linalg.norm(g @ np.linalg.matrix_power(recurrent.T, steps - 1 - t), axis=-1)
                         for t in range(steps)], axis=1)
    np.testing.assert_allclose(norms, expected, rtol=1e-4)


@agnostic
def test_bad_input_is_refused_clearly(built):
    model, size = shared_lstm(built), len(VOCABULARY)
    ids = np.ones((2, 5), np.int32)
    with pytest.raises(ValueError, match=r"token_ids must be integer token ids of shape \[batch, time\]"):
        check_token_ids(ids[0])
    with pytest.raises(ValueError, match=r"prime_ids must be integer token ids of shape \[batch, time\]. Received"):
        sample_ids(model, ids[..., None], 3)
    with pytest.raises(ValueError, match=rf"must lie in \[0, {size}\).*Received: ids from 1 to {size}"):
        bits_per_character(model, np.array([1, 2, size, 1, 1, 1], np.int32), context=4, warmup=1)
    with pytest.raises(ValueError, match="temperature must be a number >= 0.*Received: temperature=-0.5"):
        sample_ids(model, ids, 3, temperature=-0.5)
    with pytest.raises(ValueError, match="vocabulary must be a vocabulary size"):
        zoo.load("char_lstm", vocabulary=1)
    with pytest.raises(ValueError):
        model(np.ones((2, 5, 3), np.int32))  # Keras' own input check: token ids are [B, T]


def test_sample_command_prints_text(tmp_path, capsys, built):
    from hybrid_keras import cli
    from hybrid_keras.sequence import load_char_model, save_char_model

    vocabulary, model = VOCABULARY, shared_lstm(built)
    path = save_char_model(model, vocabulary, tmp_path / "lstm.weights.h5")
    saved = json.loads((tmp_path / "lstm.json").read_text())
    assert saved["model"] == "char_lstm" and saved["arguments"] == {"units": 8, "layers": 2, "embedding_dim": 4,
                                                                    "dropout": 0.0}
    loaded, loaded_vocabulary = load_char_model(path)
    assert loaded_vocabulary == vocabulary
    ids = vocabulary.encode(TEXT[:30])[None, :]
    np.testing.assert_allclose(numpy_logits(loaded, ids), numpy_logits(model, ids), atol=1e-6)
    assert cli.main(["sample", str(path), "--prime", "def ", "--length", "12", "--temperature", "0.8",
                     "--seed", "3"]) == 0
    expected = "def " + sample(model, vocabulary, prime="def ", length=12, temperature=0.8, seed=3)
    assert capsys.readouterr().out == expected + "\n"
    with pytest.raises(SystemExit, match="temperature"):
        cli.main(["sample", str(path), "--temperature", "-1"])


def test_export_serves_next_character_probabilities(tmp_path, built):
    from hybrid_keras.export import serve_in_fresh_process
    from hybrid_keras.sequence import export_char_model, next_char_probabilities

    vocabulary, model = VOCABULARY, shared_lstm(built)
    path = export_char_model(model, tmp_path / "1", vocabulary=vocabulary, verify=False)
    metadata = json.loads((path / "assets.extra" / "hybrid_keras.json").read_text())
    assert CharVocabulary.from_json(metadata["vocabulary"]) == vocabulary
    ids = np.stack([vocabulary.encode("class P"), vocabulary.encode("def add")])
    served = serve_in_fresh_process(path, {"next_char_probabilities.token_ids.0": ids,
                                           "serving_default.token_ids.0": ids[:1, :3]})
    probabilities = served["next_char_probabilities/probabilities/0"]
    assert probabilities.shape == (2, len(vocabulary))
    np.testing.assert_allclose(probabilities, next_char_probabilities(model, ids), atol=1e-6)
    np.testing.assert_allclose(served["next_char_probabilities/logits/0"], numpy_logits(model, ids)[:, -1], atol=1e-5)
    np.testing.assert_allclose(served["serving_default/probabilities/0"], next_char_probabilities(model, ids[:1, :3]),
                               atol=1e-6)
