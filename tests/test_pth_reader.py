"""zoo.pth reads what torch.save writes (both formats), without torch, and refuses bad files."""

import collections
import pickle

import numpy as np
import pytest
import torch

from zoo.pth import PthFormatError, load_state_dict


def _state():
    torch.manual_seed(0)
    return collections.OrderedDict(
        conv=torch.randn(4, 3, 3, 3),
        strided=torch.randn(6, 5).t(),  # a non-contiguous view: strides must be honoured
        offset=torch.arange(20, dtype=torch.float32)[5:12],  # a view with a storage offset
        counts=torch.tensor([1, 2, 3], dtype=torch.int64),
        half=torch.randn(5).half(),
        bf16=torch.randn(7).bfloat16(),
        flag=torch.tensor([True, False]),
        scalar=torch.tensor(3.5),
    )


@pytest.mark.parametrize("zip_format", [True, False], ids=["zip", "legacy"])
def test_reads_both_torch_save_formats(tmp_path, zip_format):
    state = _state()
    path = tmp_path / "w.pth"
    torch.save(state, path, _use_new_zipfile_serialization=zip_format)
    loaded = load_state_dict(path)
    assert list(loaded) == list(state)
    for key, tensor in state.items():
        expected = tensor.float().numpy() if tensor.dtype == torch.bfloat16 else tensor.numpy()
        np.testing.assert_array_equal(loaded[key], expected, err_msg=key)
        assert loaded[key].shape == tuple(tensor.shape)


def test_unwraps_checkpoint_dicts(tmp_path):
    state = _state()
    torch.save({"state_dict": state, "epoch": 3}, tmp_path / "c.pth")
    assert set(load_state_dict(tmp_path / "c.pth")) == set(state)


def test_shared_storage_views(tmp_path):
    base = torch.arange(12, dtype=torch.float32)
    torch.save({"a": base[:6].view(2, 3), "b": base[6:]}, tmp_path / "s.pth", _use_new_zipfile_serialization=False)
    loaded = load_state_dict(tmp_path / "s.pth")
    np.testing.assert_array_equal(loaded["a"], np.arange(6, dtype=np.float32).reshape(2, 3))
    np.testing.assert_array_equal(loaded["b"], np.arange(6, 12, dtype=np.float32))


@pytest.mark.parametrize("zip_format", [True, False], ids=["zip", "legacy"])
def test_truncated_file_is_rejected(tmp_path, zip_format):
    path = tmp_path / "w.pth"
    torch.save(_state(), path, _use_new_zipfile_serialization=zip_format)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) - 40])
    with pytest.raises(PthFormatError):
        load_state_dict(path)


def test_refuses_code_in_pickle(tmp_path):
    class Evil:
        def __reduce__(self):
            return (print, ("pwned",))

    path = tmp_path / "evil.pth"
    with open(path, "wb") as f:
        pickle.dump(0x1950A86A20F9469CFC6C, f)
        pickle.dump(1001, f)
        pickle.dump({}, f)
        pickle.dump({"w": Evil()}, f)
    with pytest.raises(PthFormatError, match="builtins.print"):
        load_state_dict(path)


def test_not_a_checkpoint(tmp_path):
    path = tmp_path / "x.pth"
    path.write_bytes(b"hello world, not a checkpoint")
    with pytest.raises(PthFormatError):
        load_state_dict(path)
