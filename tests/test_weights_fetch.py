"""Fetching weight files: cache hits, hash and size checks, corrupt files removed,
a clear error offline. Downloads use file:// URLs, so no network is needed."""

import hashlib

import numpy as np
import pytest

from zoo.weights import WeightSpec, WeightsError, detect_format, fetch, read_keras_h5


def _spec(path, data, algorithm="sha256", **kw):
    digest = hashlib.new("md5" if algorithm == "md5" else "sha256", data).hexdigest()
    if algorithm == "sha256-prefix":
        digest = digest[:8]
    return WeightSpec(tag="t", url=path.as_uri(), format="torch-pth", source="test", preprocessing="torch",
                      file_hash=digest, hash_algorithm=algorithm, size_bytes=len(data), **kw)


@pytest.fixture
def published(tmp_path):
    """A 'published' file outside the cache, and an empty cache directory."""
    source = tmp_path / "server" / "weights-0123abcd.pth"
    source.parent.mkdir()
    data = np.random.default_rng(0).bytes(4096)
    source.write_bytes(data)
    return source, data, tmp_path / "cache"


@pytest.mark.parametrize("algorithm", ["sha256", "sha256-prefix", "md5"])
def test_download_then_cache_hit(published, algorithm):
    source, data, cache = published
    spec = _spec(source, data, algorithm)
    path = fetch(spec, cache=cache)
    assert path.parent == cache and path.read_bytes() == data
    source.unlink()  # the second call must not need the "network"
    assert fetch(spec, cache=cache) == path


def test_corrupt_cached_file_is_replaced(published):
    source, data, cache = published
    spec = _spec(source, data)
    cache.mkdir()
    (cache / spec.filename).write_bytes(data[:100])  # a truncated earlier download
    assert fetch(spec, cache=cache).read_bytes() == data


def test_wrong_download_is_rejected_and_not_left_in_cache(published):
    source, data, cache = published
    spec = _spec(source, data, "sha256-prefix")
    source.write_bytes(data[::-1])  # the server now serves another file of the same size
    with pytest.raises(WeightsError, match="does not match"):
        fetch(spec, cache=cache)
    assert not (cache / spec.filename).exists()


def test_truncated_download_is_rejected(published):
    source, data, cache = published
    spec = _spec(source, data, "sha256-prefix")
    source.write_bytes(data[:1000])
    with pytest.raises(WeightsError, match="truncated"):
        fetch(spec, cache=cache)
    assert not (cache / spec.filename).exists()


def test_offline_error_names_file_url_and_cache(tmp_path):
    spec = WeightSpec(tag="t", url="http://127.0.0.1:9/weights/vgg-abc.pth", format="torch-pth",
                      source="test", preprocessing="torch")
    with pytest.raises(WeightsError) as error:
        fetch(spec, cache=tmp_path / "cache")
    message = str(error.value)
    assert "vgg-abc.pth" in message and spec.url in message and str(tmp_path / "cache") in message


def test_detect_format_and_h5_reader(tmp_path):
    import keras

    inputs = keras.Input((4,))
    model = keras.Model(inputs, keras.layers.Dense(3, name="fc")(inputs))
    model.save_weights(tmp_path / "m.weights.h5")
    assert detect_format(tmp_path / "m.weights.h5") == "keras-h5"
    (tmp_path / "x.bin").write_bytes(b"nothing")
    with pytest.raises(WeightsError):
        detect_format(tmp_path / "x.bin")
    with pytest.raises(WeightsError):
        read_keras_h5(tmp_path / "x.bin")


def test_spec_rejects_unknown_format():
    with pytest.raises(ValueError, match="format"):
        WeightSpec(tag="t", url="http://x/y", format="onnx", source="s", preprocessing="tf")
