"""Binary value format of one cached KV block. No pickle: a fixed header, a MAC, then raw bytes.

    offset size  field
    0      4     magic b"TRKV"
    4      1     format version (keys.FORMAT_VERSION)
    5      1     dtype code (DTYPES)
    6      1     ndim
    7      1     reserved (0)
    8      4*nd  shape, uint32 little-endian each
    ..     8     payload length in bytes, uint64
    ..     32    HMAC-SHA256(mac_key, len(redis_key) || redis_key || header-before-mac || payload)
    ..     n     payload: the tensor's bytes, C-contiguous, native little-endian

The MAC is keyed by a deployment secret (secrets.MAC_KEY_ENV) and covers the Redis key the
value is stored under, so a value is only accepted under the key it was written for: a block
written straight into Redis by anyone without the secret (even one with a well-formed header,
or a valid block copied to another key) fails verification. It also catches every accidental
corruption or truncation the former CRC did.

`decode` checks every field against what the reader expects (dtype, shape, length) and the
MAC, and raises `CodecError` on any mismatch (`MacMismatch` for a failed MAC): a truncated,
corrupted, forged or foreign value is skipped (counted), never loaded into the KV cache.

Compression: not used. zlib level 1 on float32 SmolLM2 KV blocks saved about 7 % of the
bytes and cost more time than the bytes it saved over loopback (docs/prefix_cache.md).
"""
from __future__ import annotations

import hashlib
import hmac
import struct
import warnings

import torch

from workers.kv.keys import FORMAT_VERSION

MAGIC = b"TRKV"
DTYPES: dict[int, torch.dtype] = {1: torch.float32, 2: torch.float16, 3: torch.bfloat16, 4: torch.float8_e4m3fn, 5: torch.float8_e5m2, 6: torch.uint8}
_CODES = {v: k for k, v in DTYPES.items()}
_FIXED = struct.Struct("<4sBBBB")
_LEN = struct.Struct("<Q")
MAC_SIZE = 32
#: Shortest MAC key accepted (bytes): 128 bits.
MIN_MAC_KEY_BYTES = 16


class CodecError(ValueError):
    """A stored value is not a valid block of the expected dtype and shape."""


class MacMismatch(CodecError):
    """The value's MAC does not verify: forged, written for another key, or corrupted."""


def _check_key(mac_key: bytes) -> None:
    if len(mac_key) < MIN_MAC_KEY_BYTES:
        raise ValueError(f"the KV MAC key must be at least {MIN_MAC_KEY_BYTES} bytes, got {len(mac_key)}")


def _mac(mac_key: bytes, key: bytes, head, payload) -> bytes:
    m = hmac.new(mac_key, struct.pack("<I", len(key)), hashlib.sha256)
    m.update(key)
    m.update(head)
    m.update(payload)
    return m.digest()


def encode(t: torch.Tensor, key: bytes, mac_key: bytes) -> bytes:
    """Serialise a CPU tensor (copied to contiguous if needed), authenticated for Redis key `key`."""
    _check_key(mac_key)
    if t.dtype not in _CODES:
        raise ValueError(f"unsupported KV dtype {t.dtype}; supported: {list(_CODES)}")
    t = t.detach().contiguous().cpu()
    payload = t.view(torch.uint8).numpy().tobytes() if t.numel() else b""
    head = (_FIXED.pack(MAGIC, FORMAT_VERSION, _CODES[t.dtype], t.dim(), 0) + struct.pack(f"<{t.dim()}I", *t.shape)
            + _LEN.pack(len(payload)))
    return head + _mac(mac_key, key, head, payload) + payload


def decode(data: bytes, key: bytes, mac_key: bytes, dtype: torch.dtype | None = None,
           shape: tuple[int, ...] | None = None) -> torch.Tensor:
    """Parse and verify a value read from Redis key `key`; returns a read-only CPU tensor viewing `data`.

    Raises CodecError on a bad magic/version, a dtype or shape other than the expected ones,
    a length mismatch (truncation), and MacMismatch when the MAC does not verify.
    """
    _check_key(mac_key)
    mv = memoryview(data)
    if len(mv) < _FIXED.size:
        raise CodecError(f"value too short ({len(mv)} bytes) for a KV block header")
    magic, version, code, ndim, _ = _FIXED.unpack_from(mv, 0)
    if magic != MAGIC or version != FORMAT_VERSION:
        raise CodecError(f"not a v{FORMAT_VERSION} KV block (magic={bytes(magic)!r}, version={version})")
    if code not in DTYPES:
        raise CodecError(f"unknown dtype code {code}")
    off = _FIXED.size + 4 * ndim + _LEN.size
    if len(mv) < off + MAC_SIZE:
        raise CodecError("value truncated inside the header")
    got_shape = struct.unpack_from(f"<{ndim}I", mv, _FIXED.size)
    (length,) = _LEN.unpack_from(mv, off - _LEN.size)
    body = mv[off + MAC_SIZE:]
    got_dtype = DTYPES[code]
    if dtype is not None and got_dtype != dtype:
        raise CodecError(f"dtype {got_dtype} stored, {dtype} expected")
    if shape is not None and tuple(got_shape) != tuple(shape):
        raise CodecError(f"shape {tuple(got_shape)} stored, {tuple(shape)} expected")
    n = got_dtype.itemsize
    for d in got_shape:
        n *= d
    if length != len(body) or length != n:
        raise CodecError(f"payload is {len(body)} bytes, header says {length}, shape needs {n} (truncated?)")
    if not hmac.compare_digest(_mac(mac_key, key, mv[:off], body), mv[off:off + MAC_SIZE]):
        raise MacMismatch("MAC mismatch (forged, moved or corrupted value)")
    if n == 0:
        return torch.empty(got_shape, dtype=got_dtype)
    with warnings.catch_warnings():
        # NOTE: the tensor only ever feeds a copy into the KV cache; it is never written.
        warnings.filterwarnings("ignore", message=".*not writable.*")
        flat = torch.frombuffer(body, dtype=torch.uint8)
    return flat.view(got_dtype).view(got_shape)
