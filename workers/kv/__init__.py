"""Shared prompt prefixes in Redis: a vLLM KV connector, its keys, value codec, store and index.

Enable with `workers.kv.config.redis_kv_transfer_config(...)` as `EngineConfig.kv_connector`.
Only `keys`, `index`, `store` and `config` are importable without vLLM (the router uses them).
"""
