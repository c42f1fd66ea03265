import dataclasses

import pytest

from workers.kv.keys import FORMAT_VERSION, Namespace, block_hashes, chain_root, hash_block, index_key, kv_key

NS = Namespace(model_id="smollm2-135m", dtype="float32", block_size=4, layout="cpu:blocks-first", weights="0123456789abcdef")


def test_only_full_blocks_are_hashed():
    assert len(block_hashes(list(range(11)), NS)) == 2
    assert block_hashes(list(range(3)), NS) == []
    assert len(block_hashes(list(range(40)), NS, max_blocks=3)) == 3


def test_hashes_are_reproducible_and_chained():
    a = block_hashes([1, 2, 3, 4, 5, 6, 7, 8], NS)
    assert a == block_hashes([1, 2, 3, 4, 5, 6, 7, 8, 9], NS)  # tail ignored
    # same second block after a different first block: different hash (chain)
    b = block_hashes([9, 9, 9, 9, 5, 6, 7, 8], NS)
    assert a[0] != b[0] and a[1] != b[1]
    assert a[1] == hash_block(a[0], [5, 6, 7, 8])
    # shared prefix, diverging later: leading hashes equal
    c = block_hashes([1, 2, 3, 4, 0, 0, 0, 0], NS)
    assert c[0] == a[0] and c[1] != a[1]


@pytest.mark.parametrize("field,value", [("model_id", "gemma3-270m"), ("dtype", "bfloat16"), ("block_size", 8),
                                         ("layout", "cuda:blocks-first"), ("version", FORMAT_VERSION + 1)])
def test_namespace_separates_everything_it_names(field, value):
    other = dataclasses.replace(NS, **{field: value})
    toks = list(range(16))
    assert block_hashes(toks, other)[0] != block_hashes(toks, NS)[0]
    assert kv_key(other, block_hashes(toks, other)[0]) != kv_key(NS, block_hashes(toks, NS)[0])


@pytest.mark.parametrize("field,value", [("weights", "fedcba9876543210"), ("tp_rank", 1)])
def test_weights_fingerprint_and_tp_rank_change_the_value_key_only(field, value):
    """Another checkpoint or another TP shard never reads our KV; the router's index keys stay computable."""
    other = dataclasses.replace(NS, **{field: value})
    h = block_hashes(list(range(16)), NS)[0]
    assert block_hashes(list(range(16)), other)[0] == h
    assert kv_key(other, h) != kv_key(NS, h)
    assert index_key(other, h) == index_key(NS, h)


def test_salt_separates_tenants_and_keeps_the_chain():
    toks = list(range(16))
    plain, a, a2, b = (block_hashes(toks, NS), block_hashes(toks, NS, salt="tenant-a"),
                       block_hashes(toks, NS, salt="tenant-a"), block_hashes(toks, NS, salt="tenant-b"))
    assert a == a2
    assert not set(plain) & set(a) and not set(a) & set(b)
    assert a[1] == hash_block(a[0], toks[4:8]) and a[0] == hash_block(chain_root(NS, "tenant-a"), toks[:4])
    assert chain_root(NS, "") == chain_root(NS, None) == NS.seed


def test_keys_are_distinct_per_kind():
    h = block_hashes(list(range(4)), NS)[0]
    assert kv_key(NS, h).startswith(b"trkv:%d:" % FORMAT_VERSION)
    assert index_key(NS, h).startswith(b"trkvidx:%d:" % FORMAT_VERSION)


def test_bad_namespace_is_rejected():
    with pytest.raises(ValueError, match="block_size"):
        Namespace(model_id="m", dtype="float32", block_size=0, layout="x")
    with pytest.raises(ValueError, match="model_id"):
        Namespace(model_id="", dtype="float32", block_size=16, layout="x")
    with pytest.raises(ValueError, match="tp_rank"):
        Namespace(model_id="m", dtype="float32", block_size=16, layout="x", tp_rank=-1)
