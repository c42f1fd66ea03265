"""The KV namespace a worker publishes in `Info.kv_namespace`.

The router's prefix scorer hashes prompts in the namespace the workers' KV connectors write the
prefix index in; it asks the workers for it (`Info`) instead of rebuilding it from the pool name and
constants, which silently stops matching when a pool's name differs from its model or on another
device. The namespace is computed by the connector's own function (`connector_namespace`).
"""
from __future__ import annotations

from workers.kv.config import CONNECTOR_NAME, RedisKVSettings
from workers.kv.keys import Namespace


def engine_kv_namespace(engine: object) -> Namespace | None:
    """The namespace of `engine`'s Redis KV connector, or None when it runs none (or is not a started vLLM
    engine). Call after `engine.start()`."""
    cfg = getattr(engine, "cfg", None)
    kv = getattr(cfg, "kv_connector", None)
    if not isinstance(kv, dict) or kv.get("kv_connector") != CONNECTOR_NAME:
        return None
    llm = getattr(engine, "_llm", None)
    vllm_config = getattr(llm, "vllm_config", None)
    if vllm_config is None:
        return None
    from workers.kv.connector import connector_namespace

    return connector_namespace(vllm_config, RedisKVSettings.from_extra(kv.get("kv_connector_extra_config")))


def namespace_to_pb(ns: Namespace | None, pb_module) -> object | None:
    """`ns` as a `thinkroute.v1.KvNamespace` message (None stays None)."""
    if ns is None:
        return None
    return pb_module.KvNamespace(model_id=ns.model_id, dtype=ns.dtype, block_size=ns.block_size, layout=ns.layout,
                                 version=ns.version)
