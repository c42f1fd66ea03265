"""Chained, seeded block hashes of token ids: the keys of the Redis prefix cache.

A prompt is cut into full blocks of `block_size` tokens (a partial tail block is never
hashed: it cannot be shared). Block i's hash covers block i's tokens *and* block i-1's
hash, so equal hashes mean equal whole prefixes, and a prefix hit is a walk from block 0
(as vLLM's `kv_cache_utils.hash_block_tokens` and LMCache do). The chain is seeded by a
`Namespace` (format version, model id, dtype, block size, KV layout), so blocks from a
different model, dtype or layout can never collide with ours, and a format change is a
version bump, not a flush. An optional per-tenant *salt* (vLLM's `cache_salt`) is mixed
into the root: tenants with different salts share no block hash, hence no cached prefix.

The KV value key (`kv_key`) adds what only the workers know to the namespace: the weights
fingerprint (workers/convert.py `weights_fingerprint`: after a model upgrade the old
weights' KV is never served) and the tensor-parallel rank (each rank stores its own shard).
The prefix index key (`index_key`) does not: the router, which computes it from the prompt,
knows neither, and a stale index entry only costs a misrouted affinity, never a wrong answer.

Unlike vLLM's in-engine hashes (seeded per process unless PYTHONHASHSEED is set), these
are reproducible across processes and machines: workers write them, the router's prefix
scorer recomputes them from the prompt's token ids.
"""
from __future__ import annotations

import hashlib
from array import array
from dataclasses import dataclass
from typing import NewType, Sequence

#: Bump when the key scheme or the value format (codec.py) changes.
FORMAT_VERSION = 2

#: 16 bytes of BLAKE2b: 2^-64 birthday bound at 2^32 blocks, plenty for a cache.
BlockHash = NewType("BlockHash", bytes)
_DIGEST = 16


@dataclass(frozen=True)
class Namespace:
    """What a cached KV block depends on besides its tokens."""

    model_id: str
    """Stable model name shared by every replica (e.g. `smollm2-135m`), not a local path."""
    dtype: str
    """KV cache dtype, e.g. `float32`."""
    block_size: int
    """Tokens per block (vLLM `cache_config.block_size`)."""
    layout: str
    """KV layout descriptor, e.g. `cpu:LBHNC`; different layouts never share blocks."""
    version: int = FORMAT_VERSION
    weights: str = ""
    """Fingerprint of the weights (workers/convert.py `weights_fingerprint`); part of `kv_key` only."""
    tp_rank: int = 0
    """Tensor-parallel rank whose KV shard a value holds; part of `kv_key` only."""

    def __post_init__(self) -> None:
        if self.block_size <= 0:
            raise ValueError(f"block_size must be a positive number of tokens, got {self.block_size}")
        if not self.model_id:
            raise ValueError("model_id must be a non-empty, replica-independent model name")
        if self.tp_rank < 0:
            raise ValueError(f"tp_rank must be >= 0, got {self.tp_rank}")

    @property
    def seed(self) -> BlockHash:
        """The chain's root hash (the 'parent' of block 0)."""
        text = f"thinkroute-kv/v{self.version}/{self.model_id}/{self.dtype}/{self.block_size}/{self.layout}"
        return BlockHash(hashlib.blake2b(text.encode(), digest_size=_DIGEST).digest())

    @property
    def tag(self) -> str:
        """Short printable id of the token-level namespace, used in index key names."""
        return self.seed.hex()[:8]

    @property
    def kv_tag(self) -> str:
        """Printable id of the value namespace: `seed` plus weights fingerprint and TP rank."""
        text = b"%s/weights=%s/tp=%d" % (self.seed, self.weights.encode(), self.tp_rank)
        return hashlib.blake2b(text, digest_size=8).hexdigest()


def chain_root(ns: Namespace, salt: str | None = None) -> BlockHash:
    """The parent of block 0: the namespace seed, mixed with the salt when there is one."""
    if not salt:
        return ns.seed
    return BlockHash(hashlib.blake2b(ns.seed + b"/salt/" + salt.encode(), digest_size=_DIGEST).digest())


def hash_block(parent: BlockHash, tokens: Sequence[int]) -> BlockHash:
    """Hash one block's token ids (as little-endian uint32) chained on its parent's hash."""
    h = hashlib.blake2b(parent, digest_size=_DIGEST)
    h.update(array("I", tokens).tobytes())
    return BlockHash(h.digest())


def block_hashes(token_ids: Sequence[int], ns: Namespace, max_blocks: int | None = None,
                 salt: str | None = None) -> list[BlockHash]:
    """Chained hashes of the full blocks of `token_ids` (at most `max_blocks`), rooted at `chain_root(ns, salt)`."""
    bs = ns.block_size
    n = len(token_ids) // bs
    if max_blocks is not None:
        n = min(n, max_blocks)
    out: list[BlockHash] = []
    parent = chain_root(ns, salt)
    for i in range(n):
        parent = hash_block(parent, token_ids[i * bs : (i + 1) * bs])
        out.append(parent)
    return out


def kv_key(ns: Namespace, h: BlockHash) -> bytes:
    """Redis key of a block's KV value."""
    return b"trkv:%d:%s:%s" % (ns.version, ns.kv_tag.encode(), h.hex().encode())


def index_key(ns: Namespace, h: BlockHash) -> bytes:
    """Redis key of a block's warm-replica index entry (a hash replica -> last-seen time)."""
    return b"trkvidx:%d:%s:%s" % (ns.version, ns.tag.encode(), h.hex().encode())
