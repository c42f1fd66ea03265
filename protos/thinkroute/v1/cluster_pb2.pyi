from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class ClusterStatsRequest(_message.Message):
    __slots__ = ("pools",)
    POOLS_FIELD_NUMBER: _ClassVar[int]
    pools: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, pools: _Optional[_Iterable[str]] = ...) -> None: ...

class WatchPoolStatsRequest(_message.Message):
    __slots__ = ("pools", "interval_s")
    POOLS_FIELD_NUMBER: _ClassVar[int]
    INTERVAL_S_FIELD_NUMBER: _ClassVar[int]
    pools: _containers.RepeatedScalarFieldContainer[str]
    interval_s: float
    def __init__(self, pools: _Optional[_Iterable[str]] = ..., interval_s: _Optional[float] = ...) -> None: ...

class PoolSignals(_message.Message):
    __slots__ = ("pool", "replicas", "healthy_replicas", "running", "waiting", "kv_cache_usage", "prompt_tokens_per_s", "generated_tokens_per_s", "ttft_p50_ms", "ttft_p95_ms", "itl_p50_ms", "itl_p95_ms", "latency_p50_ms", "latency_p95_ms", "prefix_cache_hit_rate", "plans_per_s", "demand_tokens_per_s", "desired_replicas", "target_replicas")
    POOL_FIELD_NUMBER: _ClassVar[int]
    REPLICAS_FIELD_NUMBER: _ClassVar[int]
    HEALTHY_REPLICAS_FIELD_NUMBER: _ClassVar[int]
    RUNNING_FIELD_NUMBER: _ClassVar[int]
    WAITING_FIELD_NUMBER: _ClassVar[int]
    KV_CACHE_USAGE_FIELD_NUMBER: _ClassVar[int]
    PROMPT_TOKENS_PER_S_FIELD_NUMBER: _ClassVar[int]
    GENERATED_TOKENS_PER_S_FIELD_NUMBER: _ClassVar[int]
    TTFT_P50_MS_FIELD_NUMBER: _ClassVar[int]
    TTFT_P95_MS_FIELD_NUMBER: _ClassVar[int]
    ITL_P50_MS_FIELD_NUMBER: _ClassVar[int]
    ITL_P95_MS_FIELD_NUMBER: _ClassVar[int]
    LATENCY_P50_MS_FIELD_NUMBER: _ClassVar[int]
    LATENCY_P95_MS_FIELD_NUMBER: _ClassVar[int]
    PREFIX_CACHE_HIT_RATE_FIELD_NUMBER: _ClassVar[int]
    PLANS_PER_S_FIELD_NUMBER: _ClassVar[int]
    DEMAND_TOKENS_PER_S_FIELD_NUMBER: _ClassVar[int]
    DESIRED_REPLICAS_FIELD_NUMBER: _ClassVar[int]
    TARGET_REPLICAS_FIELD_NUMBER: _ClassVar[int]
    pool: str
    replicas: int
    healthy_replicas: int
    running: int
    waiting: int
    kv_cache_usage: float
    prompt_tokens_per_s: float
    generated_tokens_per_s: float
    ttft_p50_ms: float
    ttft_p95_ms: float
    itl_p50_ms: float
    itl_p95_ms: float
    latency_p50_ms: float
    latency_p95_ms: float
    prefix_cache_hit_rate: float
    plans_per_s: float
    demand_tokens_per_s: float
    desired_replicas: int
    target_replicas: int
    def __init__(self, pool: _Optional[str] = ..., replicas: _Optional[int] = ..., healthy_replicas: _Optional[int] = ..., running: _Optional[int] = ..., waiting: _Optional[int] = ..., kv_cache_usage: _Optional[float] = ..., prompt_tokens_per_s: _Optional[float] = ..., generated_tokens_per_s: _Optional[float] = ..., ttft_p50_ms: _Optional[float] = ..., ttft_p95_ms: _Optional[float] = ..., itl_p50_ms: _Optional[float] = ..., itl_p95_ms: _Optional[float] = ..., latency_p50_ms: _Optional[float] = ..., latency_p95_ms: _Optional[float] = ..., prefix_cache_hit_rate: _Optional[float] = ..., plans_per_s: _Optional[float] = ..., demand_tokens_per_s: _Optional[float] = ..., desired_replicas: _Optional[int] = ..., target_replicas: _Optional[int] = ...) -> None: ...

class ClusterStats(_message.Message):
    __slots__ = ("pools", "plan_rate", "dial", "timestamp")
    class PlanRateEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: float
        def __init__(self, key: _Optional[str] = ..., value: _Optional[float] = ...) -> None: ...
    POOLS_FIELD_NUMBER: _ClassVar[int]
    PLAN_RATE_FIELD_NUMBER: _ClassVar[int]
    DIAL_FIELD_NUMBER: _ClassVar[int]
    TIMESTAMP_FIELD_NUMBER: _ClassVar[int]
    pools: _containers.RepeatedCompositeFieldContainer[PoolSignals]
    plan_rate: _containers.ScalarMap[str, float]
    dial: float
    timestamp: float
    def __init__(self, pools: _Optional[_Iterable[_Union[PoolSignals, _Mapping]]] = ..., plan_rate: _Optional[_Mapping[str, float]] = ..., dial: _Optional[float] = ..., timestamp: _Optional[float] = ...) -> None: ...

class DesiredReplicas(_message.Message):
    __slots__ = ("pool", "current", "desired", "reason", "demand_tokens_per_s", "capacity_tokens_per_s")
    POOL_FIELD_NUMBER: _ClassVar[int]
    CURRENT_FIELD_NUMBER: _ClassVar[int]
    DESIRED_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    DEMAND_TOKENS_PER_S_FIELD_NUMBER: _ClassVar[int]
    CAPACITY_TOKENS_PER_S_FIELD_NUMBER: _ClassVar[int]
    pool: str
    current: int
    desired: int
    reason: str
    demand_tokens_per_s: float
    capacity_tokens_per_s: float
    def __init__(self, pool: _Optional[str] = ..., current: _Optional[int] = ..., desired: _Optional[int] = ..., reason: _Optional[str] = ..., demand_tokens_per_s: _Optional[float] = ..., capacity_tokens_per_s: _Optional[float] = ...) -> None: ...

class DesiredReplicasResponse(_message.Message):
    __slots__ = ("pools",)
    POOLS_FIELD_NUMBER: _ClassVar[int]
    pools: _containers.RepeatedCompositeFieldContainer[DesiredReplicas]
    def __init__(self, pools: _Optional[_Iterable[_Union[DesiredReplicas, _Mapping]]] = ...) -> None: ...

class SetReplicasRequest(_message.Message):
    __slots__ = ("pool", "replicas")
    POOL_FIELD_NUMBER: _ClassVar[int]
    REPLICAS_FIELD_NUMBER: _ClassVar[int]
    pool: str
    replicas: int
    def __init__(self, pool: _Optional[str] = ..., replicas: _Optional[int] = ...) -> None: ...

class SetReplicasResponse(_message.Message):
    __slots__ = ("pool", "target", "static_replicas", "started", "how")
    POOL_FIELD_NUMBER: _ClassVar[int]
    TARGET_FIELD_NUMBER: _ClassVar[int]
    STATIC_REPLICAS_FIELD_NUMBER: _ClassVar[int]
    STARTED_FIELD_NUMBER: _ClassVar[int]
    HOW_FIELD_NUMBER: _ClassVar[int]
    pool: str
    target: int
    static_replicas: int
    started: _containers.RepeatedScalarFieldContainer[str]
    how: str
    def __init__(self, pool: _Optional[str] = ..., target: _Optional[int] = ..., static_replicas: _Optional[int] = ..., started: _Optional[_Iterable[str]] = ..., how: _Optional[str] = ...) -> None: ...
