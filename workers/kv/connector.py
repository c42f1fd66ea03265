"""RedisKVConnector: vLLM's KV-connector interface (KVConnectorBase_V1) over Redis.

Loaded by vLLM itself from `kv_transfer_config` (see workers/kv/config.py); no fork or
patch of vLLM. One instance runs in the scheduler (role SCHEDULER) and one in each
worker (role WORKER) of an engine; they talk only through `RedisKVMetadata`, which the
scheduler builds every step and the worker reads in the same step.

Scheduler side, per new request (called from the scheduler's busy loop, so one Redis
round trip at most per call):
  * `get_num_new_matched_tokens`: hash the prompt's full blocks (keys.py; chained from the
    request's `cache_salt` when it has one, so salted tenants share nothing), ask Redis how
    many consecutive blocks after the local prefix-cache hit it holds for every TP rank
    (pipelined EXISTS).
    At most (prompt_len - 1) // block_size blocks: vLLM must compute >= 1 prompt token.
  * `update_state_after_alloc`: remember which paged blocks receive the loaded blocks.
  * `build_connector_meta`: emit loads, and saves of the full prompt blocks this step
    completes that Redis does not have yet - in the request's first step and, with chunked
    prefill, in each later prefill chunk (the request's block ids are tracked across steps until
    its last full prompt block is saved); record the request's blocks as warm on this replica in
    the prefix index (index.py), off-thread.
  * `request_finished`: return `{"remote_cached_prompt_tokens": n}` as the request's
    kv_transfer_params (vLLM puts them on the final RequestOutput).

Worker side, per step (inside execute_model, around the forward pass):
  * `start_load_kv` (before the forward, synchronous): MGET the blocks, verify each with
    the codec (MAC over key and value, dtype, shape); copy good ones into the paged cache with one indexed
    copy per layer; report bad or missing ones (and every later block of that request)
    through `get_block_ids_with_load_errors`, and vLLM recomputes them
    (kv_load_failure_policy="recompute").
  * `wait_for_save` (after the forward): copy the blocks to save out of the paged cache
    (one index_select per layer) and hand them to a background thread that encodes and
    writes them (pipelined SET EX). The queue is bounded in bytes; overflow is dropped.

A stored value is one block, all layers: shape [num_layers, *per_layer_block_shape]
(on CPU: [L, num_kv_heads, block_size, 2 * head_size]), so a block is present or absent
as a whole and is checked by one MAC.

Trust: a value is loaded only when its HMAC-SHA256, keyed by the deployment's secret
(`mac_key_env`, default THINKROUTE_KV_MAC_KEY), verifies over its Redis key and bytes.
Without that secret the connector neither loads nor saves (it logs why once). The value
key's namespace carries the weights fingerprint and this worker's tensor-parallel rank.

Counters: `stats()` on either instance (in-process), and the per-request
kv_transfer_params above, which cross the engine-core process boundary.
"""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any

import torch

from vllm.distributed.kv_transfer.kv_connector.v1.base import (
    KVConnectorBase_V1,
    KVConnectorMetadata,
    KVConnectorRole,
)

from workers.kv import codec
from workers.kv.config import RedisKVSettings
from workers.kv.index import PrefixIndex
from workers.kv.keys import BlockHash, Namespace, block_hashes, kv_key
from workers.kv.secrets import read_secret, redact_url
from workers.kv.store import BackgroundWriter, RedisStore, StoreConfig

if TYPE_CHECKING:
    from vllm.config import VllmConfig
    from vllm.forward_context import ForwardContext
    from vllm.v1.core.kv_cache_manager import KVCacheBlocks
    from vllm.v1.core.sched.output import SchedulerOutput
    from vllm.v1.kv_cache_interface import KVCacheConfig
    from vllm.v1.request import Request

log = logging.getLogger(__name__)

#: Live connector instances in this process, by role name ("scheduler"/"worker").
#: Only meaningful when the engine core runs in-process (VLLM_ENABLE_V1_MULTIPROCESSING=0),
#: as in tests and the benchmark.
INSTANCES: dict[str, "RedisKVConnector"] = {}


@dataclass
class BlockTransfer:
    """Blocks of one request to load or save: paged block ids and their chained hashes."""

    req_id: str
    block_ids: list[int]
    hashes: list[BlockHash]


@dataclass
class RedisKVMetadata(KVConnectorMetadata):
    loads: list[BlockTransfer] = field(default_factory=list)
    saves: list[BlockTransfer] = field(default_factory=list)


@dataclass
class _Lookup:
    hashes: list[BlockHash]
    local_blocks: int
    remote_blocks: int
    block_ids: list[int] | None = None
    load_blocks: int = 0
    #: First prompt block not yet saved (or found local/remote); len(hashes) = nothing left to save.
    next_save: int = 0
    #: The request's paged block ids so far (first step's, plus each later step's new ones) while
    #: prompt blocks remain to be saved.
    all_block_ids: list[int] = field(default_factory=list)


@dataclass
class ConnectorStats:
    """In-process counters (monotonic). Scheduler: lookups/matches; worker: loads/saves."""

    requests: int = 0
    matched_tokens: int = 0
    loaded_blocks: int = 0
    loaded_tokens: int = 0
    load_failed_blocks: int = 0
    corrupt_blocks: int = 0
    """Values rejected by the codec (any reason, MAC failures included)."""
    mac_failures: int = 0
    """Values whose MAC did not verify: forged, moved to another key, or corrupted."""
    missing_blocks: int = 0
    load_seconds: float = 0.0
    saved_blocks: int = 0
    save_seconds: float = 0.0


def _tp_rank(role: KVConnectorRole) -> int:
    """This worker's tensor-parallel rank (0 on the scheduler side or before TP is set up)."""
    if role == KVConnectorRole.SCHEDULER:
        return 0
    try:
        from vllm.distributed import get_tensor_model_parallel_rank

        return int(get_tensor_model_parallel_rank())
    except (AssertionError, ImportError, RuntimeError, AttributeError):
        return 0


def _mac_key(env_name: str) -> bytes | None:
    """The MAC key from the environment, or None (logged) when it is unset or too short."""
    value = read_secret(env_name)
    if not value:
        log.error("RedisKVConnector: $%s (the MAC key of shared KV blocks) is not set; the Redis prefix cache "
                  "is OFF (no loads, no saves). `thinkroute serve` generates one; set the same value on every "
                  "worker that shares the cache", env_name)
        return None
    key = value.encode()
    if len(key) < codec.MIN_MAC_KEY_BYTES:
        log.error("RedisKVConnector: $%s is %d bytes, need >= %d; the Redis prefix cache is OFF",
                  env_name, len(key), codec.MIN_MAC_KEY_BYTES)
        return None
    return key


def connector_namespace(vllm_config: "VllmConfig", settings: RedisKVSettings, weights: str = "",
                        tp_rank: int = 0) -> Namespace:
    """The block-hash namespace a RedisKVConnector with `settings` uses under `vllm_config`: the one place
    it is computed (the worker publishes it in `Info.kv_namespace`, workers/kv/published.py)."""
    mc = vllm_config.model_config
    cache_dtype = vllm_config.cache_config.cache_dtype
    dtype = str(mc.dtype).removeprefix("torch.") if cache_dtype in (None, "auto") else str(cache_dtype)
    model_id = settings.model_id or (mc.served_model_name if isinstance(mc.served_model_name, str) else mc.model)
    return Namespace(model_id=model_id, dtype=dtype, block_size=vllm_config.cache_config.block_size,
                     layout=_layout(vllm_config), weights=weights, tp_rank=tp_rank)


def _layout(vllm_config: "VllmConfig") -> str:
    from vllm.platforms import current_platform

    # NOTE: the per-layer view is blocks-first ([B, ...]) on every backend this connector
    # has been run on (CPU_ATTN, LBHNC); register_kv_caches refuses anything else.
    return f"{current_platform.device_type}:blocks-first"


class RedisKVConnector(KVConnectorBase_V1):
    def __init__(self, vllm_config: "VllmConfig", role: KVConnectorRole, kv_cache_config: "KVCacheConfig | None" = None):
        super().__init__(vllm_config=vllm_config, role=role, kv_cache_config=kv_cache_config)
        self.settings = RedisKVSettings.from_extra(self._kv_transfer_config.kv_connector_extra_config)
        s = self.settings
        mc = vllm_config.model_config
        self.block_size = vllm_config.cache_config.block_size
        if s.weights_fingerprint:
            weights = s.weights_fingerprint
        else:
            from workers.convert import weights_fingerprint

            weights = weights_fingerprint(mc.model)
        self.tp_size = int(vllm_config.parallel_config.tensor_parallel_size)
        self.ns = connector_namespace(vllm_config, s, weights=weights, tp_rank=_tp_rank(role))
        #: The value namespaces of every TP rank: a block counts as cached when all ranks hold it.
        self.rank_ns = [replace(self.ns, tp_rank=r) for r in range(self.tp_size)]
        self._mac_key = _mac_key(s.mac_key_env)
        if self._mac_key is None:
            s.load = s.save = False
        self.store = RedisStore(StoreConfig(url=s.redis_url, password_env=s.password_env, tls=s.tls,
                                            tls_ca_file=s.tls_ca_file, tls_cert_file=s.tls_cert_file,
                                            tls_key_file=s.tls_key_file, ttl_s=s.ttl_s,
                                            socket_timeout_s=s.socket_timeout_s, retry_after_s=s.retry_after_s))
        self.index = PrefixIndex(self.store, self.ns, warm_ttl_s=s.warm_ttl_s)
        self.writer = BackgroundWriter(self.store.stats, max_pending_bytes=s.max_pending_save_bytes)
        self.cstats = ConnectorStats()
        # scheduler side
        self._lookups: dict[str, _Lookup] = {}
        self._remote_tokens: dict[str, int] = {}
        # worker side
        self._kv_caches: dict[str, torch.Tensor] = {}
        self._block_shape: tuple[int, ...] | None = None
        self._kv_dtype: torch.dtype | None = None
        self._load_errors: set[int] = set()
        INSTANCES["scheduler" if role == KVConnectorRole.SCHEDULER else "worker"] = self
        log.info("RedisKVConnector(%s) namespace=%s redis=%s replica=%r tls=%s auth=%s", role.name, self.ns,
                 redact_url(s.redis_url), s.replica_id, s.tls or s.redis_url.startswith("rediss://"),
                 "set" if read_secret(s.password_env) else "none")

    # ================================================================ scheduler side
    def get_num_new_matched_tokens(self, request: "Request", num_computed_tokens: int) -> tuple[int | None, bool]:
        prompt = request.prompt_token_ids or []
        bs = self.block_size
        look = self._lookups.get(request.request_id)
        if look is None:
            salt = getattr(request, "cache_salt", None)
            look = _Lookup(hashes=block_hashes(prompt, self.ns, salt=salt), local_blocks=0, remote_blocks=0)
            self._lookups[request.request_id] = look
            self.cstats.requests += 1
        look.local_blocks = num_computed_tokens // bs
        loadable = (len(prompt) - 1) // bs  # vLLM must compute at least one prompt token itself
        look.remote_blocks = 0
        if self.settings.load and loadable > look.local_blocks:
            keys = [kv_key(ns, h) for h in look.hashes[look.local_blocks:loadable] for ns in self.rank_ns]
            look.remote_blocks = self.store.count_leading(keys, group=len(self.rank_ns))
        if look.remote_blocks < self.settings.min_load_blocks:
            return 0, False
        return look.remote_blocks * bs, False

    def update_state_after_alloc(self, request: "Request", blocks: "KVCacheBlocks", num_external_tokens: int) -> None:
        look = self._lookups.get(request.request_id)
        if look is None:
            return
        look.load_blocks = num_external_tokens // self.block_size
        look.block_ids = list(blocks.get_block_ids()[0]) if num_external_tokens > 0 else None

    def build_connector_meta(self, scheduler_output: "SchedulerOutput") -> KVConnectorMetadata:
        meta = RedisKVMetadata()
        warm: list[BlockHash] = []
        for new in scheduler_output.scheduled_new_reqs:
            look = self._lookups.get(new.req_id)
            if look is None:
                continue
            block_ids = list(new.block_ids[0])
            lo = look.local_blocks
            if look.load_blocks:
                n = look.load_blocks
                meta.loads.append(BlockTransfer(new.req_id, block_ids[lo:lo + n], look.hashes[lo:lo + n]))
                self._remote_tokens[new.req_id] = n * self.block_size
                self.cstats.matched_tokens += n * self.block_size
            # Full prompt blocks complete after this step; those Redis lacks get saved.
            done = new.num_computed_tokens + scheduler_output.num_scheduled_tokens.get(new.req_id, 0)
            full = min(len(look.hashes), done // self.block_size)
            first_new = lo + look.remote_blocks
            if self.settings.save and full > first_new:
                meta.saves.append(BlockTransfer(new.req_id, block_ids[first_new:full], look.hashes[first_new:full]))
            warm.extend(look.hashes[:full])
            look.next_save = max(full, first_new)
            look.all_block_ids = block_ids if look.next_save < len(look.hashes) else []
            look.load_blocks = 0
            look.block_ids = None
        cached = scheduler_output.scheduled_cached_reqs
        for i, req_id in enumerate(cached.req_ids):
            look = self._lookups.get(req_id)
            if look is None:
                continue
            new_ids = cached.new_block_ids[i]
            resumed = req_id in cached.resumed_req_ids
            # A request resumed after preemption recomputes from scratch and may load again.
            if look.load_blocks and resumed and new_ids is not None:
                lo, n = look.local_blocks, look.load_blocks
                meta.loads.append(BlockTransfer(req_id, list(new_ids[0])[lo:lo + n], look.hashes[lo:lo + n]))
                look.load_blocks = 0
            if look.next_save >= len(look.hashes):
                continue  # every full prompt block is saved already (or was found)
            # Chunked prefill: a later chunk completes more prompt blocks; save those Redis lacks.
            if new_ids is not None:
                look.all_block_ids = list(new_ids[0]) if resumed else look.all_block_ids + list(new_ids[0])
            done = cached.num_computed_tokens[i] + scheduler_output.num_scheduled_tokens.get(req_id, 0)
            full = min(len(look.hashes), done // self.block_size, len(look.all_block_ids))
            if full > look.next_save:
                if self.settings.save:
                    meta.saves.append(BlockTransfer(req_id, look.all_block_ids[look.next_save:full],
                                                    look.hashes[look.next_save:full]))
                warm.extend(look.hashes[look.next_save:full])
                look.next_save = full
            if look.next_save >= len(look.hashes):
                look.all_block_ids = []
        if warm and self.settings.replica_id:
            rid = self.settings.replica_id
            self.writer.submit(lambda: self.index.record(rid, warm), nbytes=len(warm) * 64)
        return meta

    def request_finished(self, request: "Request", block_ids: list[int]) -> tuple[bool, dict[str, Any] | None]:
        self._lookups.pop(request.request_id, None)
        n = self._remote_tokens.pop(request.request_id, 0)
        return False, {"remote_cached_prompt_tokens": n}

    # ================================================================ worker side
    def register_kv_caches(self, kv_caches: dict[str, torch.Tensor]) -> None:
        shapes = {tuple(t.shape[1:]) for t in kv_caches.values()}
        dtypes = {t.dtype for t in kv_caches.values()}
        nblocks = {t.shape[0] for t in kv_caches.values()}
        expected = getattr(self._kv_cache_config, "num_blocks", None)
        if len(shapes) != 1 or len(dtypes) != 1 or len(nblocks) != 1 or (expected and nblocks != {expected}):
            log.error("RedisKVConnector: KV caches are not uniform blocks-first tensors (shapes %s, dtypes %s, "
                      "blocks %s, expected %s); Redis loads and saves are disabled", shapes, dtypes, nblocks, expected)
            return
        self._kv_caches = dict(kv_caches)
        self._block_shape = (len(kv_caches), *shapes.pop())
        self._kv_dtype = dtypes.pop()

    def start_load_kv(self, forward_context: "ForwardContext", **kwargs: Any) -> None:
        meta = self._get_connector_metadata()
        assert isinstance(meta, RedisKVMetadata)
        if not meta.loads:
            return
        t0 = time.perf_counter()
        for tr in meta.loads:
            if not self._kv_caches or self._mac_key is None:
                self._load_errors.update(tr.block_ids)
                continue
            keys = [kv_key(self.ns, h) for h in tr.hashes]
            values = self.store.mget(keys)
            good: list[torch.Tensor] = []
            for key, v in zip(keys, values):
                if v is None:
                    self.cstats.missing_blocks += 1
                    break
                try:
                    good.append(codec.decode(v, key, self._mac_key, dtype=self._kv_dtype, shape=self._block_shape))
                except codec.CodecError as e:
                    self.cstats.corrupt_blocks += 1
                    if isinstance(e, codec.MacMismatch):
                        self.cstats.mac_failures += 1
                    log.warning("skipping and deleting a bad prefix-cache block %s: %s", key.decode(), e)
                    self.writer.submit(lambda k=key: self.store.delete([k]), nbytes=len(key))
                    break
            n = len(good)
            # One contiguous [kv_heads, block_size, 2*head_size] copy per (layer, block): no
            # intermediate stacked tensor (measured several times faster than stack + index_put on CPU).
            for li, cache in enumerate(self._kv_caches.values()):
                for blk, bid in zip(good, tr.block_ids[:n]):
                    cache[bid].copy_(blk[li], non_blocking=True)
            if n:
                self.cstats.loaded_blocks += n
                self.cstats.loaded_tokens += n * self.block_size
            if n < len(tr.block_ids):
                # The chain is broken at block n: everything from there is recomputed.
                self._load_errors.update(tr.block_ids[n:])
                self.cstats.load_failed_blocks += len(tr.block_ids) - n
        self.cstats.load_seconds += time.perf_counter() - t0

    def wait_for_layer_load(self, layer_name: str) -> None:
        return  # loads are synchronous, all layers, in start_load_kv

    def save_kv_layer(self, layer_name: str, kv_layer: torch.Tensor, attn_metadata: Any, **kwargs: Any) -> None:
        return  # blocks are read once per step, all layers, in wait_for_save

    def wait_for_save(self) -> None:
        meta = self._get_connector_metadata()
        assert isinstance(meta, RedisKVMetadata)
        if not meta.saves or not self._kv_caches or self._mac_key is None:
            return
        t0 = time.perf_counter()
        ids = [b for tr in meta.saves for b in tr.block_ids]
        hashes = [h for tr in meta.saves for h in tr.hashes]
        per_block = self._kv_dtype.itemsize
        for d in self._block_shape:
            per_block *= d
        nbytes = per_block * len(ids)
        if self.writer.pending_bytes + nbytes > self.writer.max_pending_bytes:
            self.store.stats.dropped_writes += 1  # Redis too slow to keep up: skip, don't copy
            return
        idx = torch.tensor(ids, dtype=torch.long, device=next(iter(self._kv_caches.values())).device)
        # One index_select per layer ([n, *block] each): a private copy, so vLLM may reuse the
        # pages right away. Assembling [L, *block] per block happens on the writer thread.
        per_layer = [c.index_select(0, idx).cpu() for c in self._kv_caches.values()]
        keys = [kv_key(self.ns, h) for h in hashes]
        mac_key = self._mac_key

        def job() -> None:
            items = [(k, codec.encode(torch.stack([lay[j] for lay in per_layer]), k, mac_key)) for j, k in enumerate(keys)]
            if self.store.set_many(items):
                self.cstats.saved_blocks += len(items)

        self.writer.submit(job, nbytes)
        self.cstats.save_seconds += time.perf_counter() - t0

    def get_block_ids_with_load_errors(self) -> set[int]:
        out, self._load_errors = self._load_errors, set()
        return out

    def shutdown(self) -> None:
        self.writer.close(timeout_s=10.0)

    # ================================================================ both
    def flush(self, timeout_s: float = 10.0) -> bool:
        """Wait until queued saves and index writes reached Redis (tests, benchmarks)."""
        return self.writer.flush(timeout_s)

    def stats(self) -> dict[str, float]:
        """Connector and store counters, plus bytes queued for Redis."""
        return {**self.cstats.__dict__, **self.store.stats.as_dict(), "pending_save_bytes": self.writer.pending_bytes}
