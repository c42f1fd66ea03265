"""Binary value format of one cached KV block. No pickle: a fixed header, then raw bytes.

    offset size  field
    0      4     magic b"TRKV"
    4      1     format version (keys.FORMAT_VERSION)
    5      1     dtype code (DTYPES)
    6      1     ndim
    7      1     reserved (0)
    8      4*nd  shape, uint32 little-endian each
    ..     8     payload length in bytes, uint64
    ..     4     CRC-32 of header-before-crc + payload
    ..     n     payload: the tensor's bytes, C-contiguous, native little-endian

`decode` checks every field against what the reader expects (dtype, shape) and the CRC,
and raises `CodecError` on any mismatch: a truncated, corrupted or foreign value is
skipped (counted as a miss), never loaded into the KV cache.

Compression: not used. zlib level 1 on float32 SmolLM2 KV blocks saved about 7 % of the
bytes and cost more time than the bytes it saved over loopback (docs/prefix_cache.md).
"""
from __future__ import annotations

import struct
import warnings
import zlib

import torch

from workers.kv.keys import FORMAT_VERSION

MAGIC = b"TRKV"
DTYPES: dict[int, torch.dtype] = {1: torch.float32, 2: torch.float16, 3: torch.bfloat16, 4: torch.float8_e4m3fn, 5: torch.float8_e5m2, 6: torch.uint8}
_CODES = {v: k for k, v in DTYPES.items()}
_FIXED = struct.Struct("<4sBBBB")
_TAIL = struct.Struct("<QI")


class CodecError(ValueError):
    """A stored value is not a valid block of the expected dtype and shape."""


def encode(t: torch.Tensor) -> bytes:
    """Serialise a CPU tensor (copied to contiguous if needed)."""
    if t.dtype not in _CODES:
        raise ValueError(f"unsupported KV dtype {t.dtype}; supported: {list(_CODES)}")
    t = t.detach().contiguous().cpu()
    payload = t.view(torch.uint8).numpy().tobytes() if t.numel() else b""
    head = _FIXED.pack(MAGIC, FORMAT_VERSION, _CODES[t.dtype], t.dim(), 0) + struct.pack(f"<{t.dim()}I", *t.shape)
    crc = zlib.crc32(payload, zlib.crc32(head))
    return head + _TAIL.pack(len(payload), crc) + payload


def decode(data: bytes, dtype: torch.dtype | None = None, shape: tuple[int, ...] | None = None) -> torch.Tensor:
    """Parse and verify a value; returns a read-only CPU tensor viewing `data`.

    Raises CodecError on a bad magic/version, a dtype or shape other than the expected
    ones, a length mismatch (truncation) or a checksum mismatch (corruption).
    """
    mv = memoryview(data)
    if len(mv) < _FIXED.size:
        raise CodecError(f"value too short ({len(mv)} bytes) for a KV block header")
    magic, version, code, ndim, _ = _FIXED.unpack_from(mv, 0)
    if magic != MAGIC or version != FORMAT_VERSION:
        raise CodecError(f"not a v{FORMAT_VERSION} KV block (magic={bytes(magic)!r}, version={version})")
    if code not in DTYPES:
        raise CodecError(f"unknown dtype code {code}")
    off = _FIXED.size + 4 * ndim
    if len(mv) < off + _TAIL.size:
        raise CodecError("value truncated inside the header")
    got_shape = struct.unpack_from(f"<{ndim}I", mv, _FIXED.size)
    length, crc = _TAIL.unpack_from(mv, off)
    body = mv[off + _TAIL.size :]
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
    if zlib.crc32(body, zlib.crc32(mv[:off])) != crc:
        raise CodecError("checksum mismatch (corrupted value)")
    if n == 0:
        return torch.empty(got_shape, dtype=got_dtype)
    with warnings.catch_warnings():
        # NOTE: the tensor only ever feeds a copy into the KV cache; it is never written.
        warnings.filterwarnings("ignore", message=".*not writable.*")
        flat = torch.frombuffer(body, dtype=torch.uint8)
    return flat.view(got_dtype).view(got_shape)
