import pytest
import torch

from workers.kv import codec


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_round_trip_is_exact(dtype):
    t = torch.randn(3, 2, 16, 8).to(dtype)
    out = codec.decode(codec.encode(t), dtype=dtype, shape=(3, 2, 16, 8))
    assert out.dtype == dtype and torch.equal(out, t)


def test_non_contiguous_input_is_encoded_by_value():
    t = torch.randn(4, 6).t()
    assert torch.equal(codec.decode(codec.encode(t)), t)


def _value():
    return codec.encode(torch.arange(64, dtype=torch.float32).reshape(4, 16))


@pytest.mark.parametrize("cut", [3, 10, 30, 100, -1])
def test_truncation_is_detected(cut):
    v = _value()
    with pytest.raises(codec.CodecError):
        codec.decode(v[:cut])


@pytest.mark.parametrize("pos", [0, 5, 12, 30, 60, -1])
def test_any_flipped_byte_is_detected(pos):
    v = bytearray(_value())
    v[pos] ^= 0x40
    with pytest.raises(codec.CodecError):
        codec.decode(bytes(v))


def test_wrong_expected_dtype_or_shape_is_rejected():
    v = _value()
    with pytest.raises(codec.CodecError, match="dtype"):
        codec.decode(v, dtype=torch.float16)
    with pytest.raises(codec.CodecError, match="shape"):
        codec.decode(v, shape=(16, 4))


def test_not_pickle_and_header_is_small():
    v = _value()
    assert v[:4] == b"TRKV" and len(v) == 64 * 4 + 8 + 2 * 4 + 12
