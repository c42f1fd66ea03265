import pytest
import torch

from workers.kv import codec

KEY = b"trkv:2:abcd:0001"
MAC = b"k" * 32


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_round_trip_is_exact(dtype):
    t = torch.randn(3, 2, 16, 8).to(dtype)
    out = codec.decode(codec.encode(t, KEY, MAC), KEY, MAC, dtype=dtype, shape=(3, 2, 16, 8))
    assert out.dtype == dtype and torch.equal(out, t)


def test_non_contiguous_input_is_encoded_by_value():
    t = torch.randn(4, 6).t()
    assert torch.equal(codec.decode(codec.encode(t, KEY, MAC), KEY, MAC), t)


def _value():
    return codec.encode(torch.arange(64, dtype=torch.float32).reshape(4, 16), KEY, MAC)


@pytest.mark.parametrize("cut", [3, 10, 30, 100, -1])
def test_truncation_is_detected(cut):
    v = _value()
    with pytest.raises(codec.CodecError):
        codec.decode(v[:cut], KEY, MAC)


@pytest.mark.parametrize("pos", [0, 5, 12, 30, 60, -1])
def test_any_flipped_byte_is_detected(pos):
    v = bytearray(_value())
    v[pos] ^= 0x40
    with pytest.raises(codec.CodecError):
        codec.decode(bytes(v), KEY, MAC)


def test_wrong_expected_dtype_or_shape_is_rejected():
    v = _value()
    with pytest.raises(codec.CodecError, match="dtype"):
        codec.decode(v, KEY, MAC, dtype=torch.float16)
    with pytest.raises(codec.CodecError, match="shape"):
        codec.decode(v, KEY, MAC, shape=(16, 4))


def test_not_pickle_and_header_is_small():
    v = _value()
    assert v[:4] == b"TRKV" and len(v) == 64 * 4 + 8 + 2 * 4 + 8 + codec.MAC_SIZE


def test_a_well_formed_value_without_the_secret_is_rejected():
    """What an attacker with Redis write access can build: right header, right length, any MAC."""
    t = torch.zeros(4, 16)
    forged = codec.encode(t, KEY, b"attacker-guessed-key")
    with pytest.raises(codec.MacMismatch):
        codec.decode(forged, KEY, MAC, dtype=torch.float32, shape=(4, 16))
    # the former format's integrity check (a CRC) is computable by anyone: no longer accepted either
    v = bytearray(_value())
    v[-4:] = b"\0\0\0\0"
    with pytest.raises(codec.MacMismatch):
        codec.decode(bytes(v), KEY, MAC)


def test_a_valid_value_moved_to_another_key_is_rejected():
    with pytest.raises(codec.MacMismatch):
        codec.decode(_value(), b"trkv:2:abcd:0002", MAC)


def test_short_mac_keys_are_refused():
    with pytest.raises(ValueError, match="at least 16 bytes"):
        codec.encode(torch.zeros(2), KEY, b"short")
