"""The weights fingerprint that namespaces the Redis prefix cache (workers/convert.py)."""
from workers.convert import FORMAT_VERSION, cache_root, weights_fingerprint


def _checkpoint(d, weights: bytes):
    d.mkdir(parents=True)
    (d / "config.json").write_text('{"model_type": "llama"}')
    (d / "model.safetensors").write_bytes(weights)
    (d / "tokenizer.json").write_text("{}")
    return d


def test_fingerprint_follows_the_weights_not_the_path(tmp_path):
    a = weights_fingerprint(_checkpoint(tmp_path / "a", b"\x01" * 4096))
    same = weights_fingerprint(_checkpoint(tmp_path / "b", b"\x01" * 4096))
    changed = weights_fingerprint(_checkpoint(tmp_path / "c", b"\x01" * 4095 + b"\x02"))
    assert a == same and a != changed and len(a) == 16


def test_a_converted_checkpoint_uses_its_content_key(tmp_path, monkeypatch):
    monkeypatch.setenv("THINKROUTE_CACHE", str(tmp_path))
    d = _checkpoint(cache_root() / "models" / f"smollm2-135m-v{FORMAT_VERSION}-0123456789abcdef", b"x")
    assert weights_fingerprint(d) == "0123456789abcdef"
