from google.protobuf import struct_pb2 as _struct_pb2
from thinkroute.v1 import worker_pb2 as _worker_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class RouteRequest(_message.Message):
    __slots__ = ("request_id", "query", "messages", "strategy", "model", "strategy_options", "max_tokens", "temperature", "top_p", "seed", "stop", "dial", "tenant", "max_cost", "max_latency_ms", "task", "quality_target", "budget_per_1k")
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    QUERY_FIELD_NUMBER: _ClassVar[int]
    MESSAGES_FIELD_NUMBER: _ClassVar[int]
    STRATEGY_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    STRATEGY_OPTIONS_FIELD_NUMBER: _ClassVar[int]
    MAX_TOKENS_FIELD_NUMBER: _ClassVar[int]
    TEMPERATURE_FIELD_NUMBER: _ClassVar[int]
    TOP_P_FIELD_NUMBER: _ClassVar[int]
    SEED_FIELD_NUMBER: _ClassVar[int]
    STOP_FIELD_NUMBER: _ClassVar[int]
    DIAL_FIELD_NUMBER: _ClassVar[int]
    TENANT_FIELD_NUMBER: _ClassVar[int]
    MAX_COST_FIELD_NUMBER: _ClassVar[int]
    MAX_LATENCY_MS_FIELD_NUMBER: _ClassVar[int]
    TASK_FIELD_NUMBER: _ClassVar[int]
    QUALITY_TARGET_FIELD_NUMBER: _ClassVar[int]
    BUDGET_PER_1K_FIELD_NUMBER: _ClassVar[int]
    request_id: str
    query: str
    messages: _containers.RepeatedCompositeFieldContainer[_worker_pb2.ChatMessage]
    strategy: str
    model: str
    strategy_options: _struct_pb2.Struct
    max_tokens: int
    temperature: float
    top_p: float
    seed: int
    stop: _containers.RepeatedScalarFieldContainer[str]
    dial: float
    tenant: str
    max_cost: float
    max_latency_ms: float
    task: str
    quality_target: float
    budget_per_1k: float
    def __init__(self, request_id: _Optional[str] = ..., query: _Optional[str] = ..., messages: _Optional[_Iterable[_Union[_worker_pb2.ChatMessage, _Mapping]]] = ..., strategy: _Optional[str] = ..., model: _Optional[str] = ..., strategy_options: _Optional[_Union[_struct_pb2.Struct, _Mapping]] = ..., max_tokens: _Optional[int] = ..., temperature: _Optional[float] = ..., top_p: _Optional[float] = ..., seed: _Optional[int] = ..., stop: _Optional[_Iterable[str]] = ..., dial: _Optional[float] = ..., tenant: _Optional[str] = ..., max_cost: _Optional[float] = ..., max_latency_ms: _Optional[float] = ..., task: _Optional[str] = ..., quality_target: _Optional[float] = ..., budget_per_1k: _Optional[float] = ...) -> None: ...

class ModelCall(_message.Message):
    __slots__ = ("model", "role", "replica", "kind", "step", "prompt_tokens", "cached_prompt_tokens", "generated_tokens", "latency_ms", "time_to_first_token_ms", "finish_reason", "remote_cached_prompt_tokens", "attempts", "thinking_tokens")
    MODEL_FIELD_NUMBER: _ClassVar[int]
    ROLE_FIELD_NUMBER: _ClassVar[int]
    REPLICA_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    STEP_FIELD_NUMBER: _ClassVar[int]
    PROMPT_TOKENS_FIELD_NUMBER: _ClassVar[int]
    CACHED_PROMPT_TOKENS_FIELD_NUMBER: _ClassVar[int]
    GENERATED_TOKENS_FIELD_NUMBER: _ClassVar[int]
    LATENCY_MS_FIELD_NUMBER: _ClassVar[int]
    TIME_TO_FIRST_TOKEN_MS_FIELD_NUMBER: _ClassVar[int]
    FINISH_REASON_FIELD_NUMBER: _ClassVar[int]
    REMOTE_CACHED_PROMPT_TOKENS_FIELD_NUMBER: _ClassVar[int]
    ATTEMPTS_FIELD_NUMBER: _ClassVar[int]
    THINKING_TOKENS_FIELD_NUMBER: _ClassVar[int]
    model: str
    role: str
    replica: str
    kind: str
    step: int
    prompt_tokens: int
    cached_prompt_tokens: int
    generated_tokens: int
    latency_ms: float
    time_to_first_token_ms: float
    finish_reason: str
    remote_cached_prompt_tokens: int
    attempts: int
    thinking_tokens: int
    def __init__(self, model: _Optional[str] = ..., role: _Optional[str] = ..., replica: _Optional[str] = ..., kind: _Optional[str] = ..., step: _Optional[int] = ..., prompt_tokens: _Optional[int] = ..., cached_prompt_tokens: _Optional[int] = ..., generated_tokens: _Optional[int] = ..., latency_ms: _Optional[float] = ..., time_to_first_token_ms: _Optional[float] = ..., finish_reason: _Optional[str] = ..., remote_cached_prompt_tokens: _Optional[int] = ..., attempts: _Optional[int] = ..., thinking_tokens: _Optional[int] = ...) -> None: ...

class ModelUsage(_message.Message):
    __slots__ = ("model", "prompt_tokens", "cached_prompt_tokens", "generated_tokens", "calls", "thinking_tokens")
    MODEL_FIELD_NUMBER: _ClassVar[int]
    PROMPT_TOKENS_FIELD_NUMBER: _ClassVar[int]
    CACHED_PROMPT_TOKENS_FIELD_NUMBER: _ClassVar[int]
    GENERATED_TOKENS_FIELD_NUMBER: _ClassVar[int]
    CALLS_FIELD_NUMBER: _ClassVar[int]
    THINKING_TOKENS_FIELD_NUMBER: _ClassVar[int]
    model: str
    prompt_tokens: int
    cached_prompt_tokens: int
    generated_tokens: int
    calls: int
    thinking_tokens: int
    def __init__(self, model: _Optional[str] = ..., prompt_tokens: _Optional[int] = ..., cached_prompt_tokens: _Optional[int] = ..., generated_tokens: _Optional[int] = ..., calls: _Optional[int] = ..., thinking_tokens: _Optional[int] = ...) -> None: ...

class Plan(_message.Message):
    __slots__ = ("strategy", "models", "reason", "dial", "candidates")
    class ModelsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    STRATEGY_FIELD_NUMBER: _ClassVar[int]
    MODELS_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    DIAL_FIELD_NUMBER: _ClassVar[int]
    CANDIDATES_FIELD_NUMBER: _ClassVar[int]
    strategy: str
    models: _containers.ScalarMap[str, str]
    reason: str
    dial: float
    candidates: _struct_pb2.Struct
    def __init__(self, strategy: _Optional[str] = ..., models: _Optional[_Mapping[str, str]] = ..., reason: _Optional[str] = ..., dial: _Optional[float] = ..., candidates: _Optional[_Union[_struct_pb2.Struct, _Mapping]] = ...) -> None: ...

class Trace(_message.Message):
    __slots__ = ("plan", "calls", "usage", "stage_ms", "details")
    class StageMsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: float
        def __init__(self, key: _Optional[str] = ..., value: _Optional[float] = ...) -> None: ...
    PLAN_FIELD_NUMBER: _ClassVar[int]
    CALLS_FIELD_NUMBER: _ClassVar[int]
    USAGE_FIELD_NUMBER: _ClassVar[int]
    STAGE_MS_FIELD_NUMBER: _ClassVar[int]
    DETAILS_FIELD_NUMBER: _ClassVar[int]
    plan: Plan
    calls: _containers.RepeatedCompositeFieldContainer[ModelCall]
    usage: _containers.RepeatedCompositeFieldContainer[ModelUsage]
    stage_ms: _containers.ScalarMap[str, float]
    details: _struct_pb2.Struct
    def __init__(self, plan: _Optional[_Union[Plan, _Mapping]] = ..., calls: _Optional[_Iterable[_Union[ModelCall, _Mapping]]] = ..., usage: _Optional[_Iterable[_Union[ModelUsage, _Mapping]]] = ..., stage_ms: _Optional[_Mapping[str, float]] = ..., details: _Optional[_Union[_struct_pb2.Struct, _Mapping]] = ...) -> None: ...

class RouteResponse(_message.Message):
    __slots__ = ("request_id", "text", "final_answer", "finish_reason", "trace")
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    TEXT_FIELD_NUMBER: _ClassVar[int]
    FINAL_ANSWER_FIELD_NUMBER: _ClassVar[int]
    FINISH_REASON_FIELD_NUMBER: _ClassVar[int]
    TRACE_FIELD_NUMBER: _ClassVar[int]
    request_id: str
    text: str
    final_answer: str
    finish_reason: str
    trace: Trace
    def __init__(self, request_id: _Optional[str] = ..., text: _Optional[str] = ..., final_answer: _Optional[str] = ..., finish_reason: _Optional[str] = ..., trace: _Optional[_Union[Trace, _Mapping]] = ...) -> None: ...

class RouteStreamResponse(_message.Message):
    __slots__ = ("text_delta", "final")
    TEXT_DELTA_FIELD_NUMBER: _ClassVar[int]
    FINAL_FIELD_NUMBER: _ClassVar[int]
    text_delta: str
    final: RouteResponse
    def __init__(self, text_delta: _Optional[str] = ..., final: _Optional[_Union[RouteResponse, _Mapping]] = ...) -> None: ...

class SetDialRequest(_message.Message):
    __slots__ = ("dial", "tenant")
    DIAL_FIELD_NUMBER: _ClassVar[int]
    TENANT_FIELD_NUMBER: _ClassVar[int]
    dial: float
    tenant: str
    def __init__(self, dial: _Optional[float] = ..., tenant: _Optional[str] = ...) -> None: ...

class GetDialRequest(_message.Message):
    __slots__ = ("tenant",)
    TENANT_FIELD_NUMBER: _ClassVar[int]
    tenant: str
    def __init__(self, tenant: _Optional[str] = ...) -> None: ...

class DialResponse(_message.Message):
    __slots__ = ("dial", "tenant")
    DIAL_FIELD_NUMBER: _ClassVar[int]
    TENANT_FIELD_NUMBER: _ClassVar[int]
    dial: float
    tenant: str
    def __init__(self, dial: _Optional[float] = ..., tenant: _Optional[str] = ...) -> None: ...

class ReloadPolicyRequest(_message.Message):
    __slots__ = ("artifact",)
    ARTIFACT_FIELD_NUMBER: _ClassVar[int]
    artifact: str
    def __init__(self, artifact: _Optional[str] = ...) -> None: ...

class ReloadPolicyResponse(_message.Message):
    __slots__ = ("artifact", "source", "version", "plans", "model_id", "feature_source")
    ARTIFACT_FIELD_NUMBER: _ClassVar[int]
    SOURCE_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    PLANS_FIELD_NUMBER: _ClassVar[int]
    MODEL_ID_FIELD_NUMBER: _ClassVar[int]
    FEATURE_SOURCE_FIELD_NUMBER: _ClassVar[int]
    artifact: str
    source: str
    version: int
    plans: _containers.RepeatedScalarFieldContainer[str]
    model_id: str
    feature_source: str
    def __init__(self, artifact: _Optional[str] = ..., source: _Optional[str] = ..., version: _Optional[int] = ..., plans: _Optional[_Iterable[str]] = ..., model_id: _Optional[str] = ..., feature_source: _Optional[str] = ...) -> None: ...

class FeedbackRequest(_message.Message):
    __slots__ = ("request_id", "score", "correct", "task")
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    SCORE_FIELD_NUMBER: _ClassVar[int]
    CORRECT_FIELD_NUMBER: _ClassVar[int]
    TASK_FIELD_NUMBER: _ClassVar[int]
    request_id: str
    score: float
    correct: bool
    task: str
    def __init__(self, request_id: _Optional[str] = ..., score: _Optional[float] = ..., correct: _Optional[bool] = ..., task: _Optional[str] = ...) -> None: ...

class FeedbackResponse(_message.Message):
    __slots__ = ("request_id", "plan", "task", "outcomes", "p_correct_before", "p_correct_after")
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    PLAN_FIELD_NUMBER: _ClassVar[int]
    TASK_FIELD_NUMBER: _ClassVar[int]
    OUTCOMES_FIELD_NUMBER: _ClassVar[int]
    P_CORRECT_BEFORE_FIELD_NUMBER: _ClassVar[int]
    P_CORRECT_AFTER_FIELD_NUMBER: _ClassVar[int]
    request_id: str
    plan: str
    task: str
    outcomes: int
    p_correct_before: float
    p_correct_after: float
    def __init__(self, request_id: _Optional[str] = ..., plan: _Optional[str] = ..., task: _Optional[str] = ..., outcomes: _Optional[int] = ..., p_correct_before: _Optional[float] = ..., p_correct_after: _Optional[float] = ...) -> None: ...

class PoolStatsRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class PoolStats(_message.Message):
    __slots__ = ("model", "replicas", "healthy_replicas", "running", "queued", "generated_tokens_per_s", "p50_latency_ms", "p95_latency_ms", "desired_replicas")
    MODEL_FIELD_NUMBER: _ClassVar[int]
    REPLICAS_FIELD_NUMBER: _ClassVar[int]
    HEALTHY_REPLICAS_FIELD_NUMBER: _ClassVar[int]
    RUNNING_FIELD_NUMBER: _ClassVar[int]
    QUEUED_FIELD_NUMBER: _ClassVar[int]
    GENERATED_TOKENS_PER_S_FIELD_NUMBER: _ClassVar[int]
    P50_LATENCY_MS_FIELD_NUMBER: _ClassVar[int]
    P95_LATENCY_MS_FIELD_NUMBER: _ClassVar[int]
    DESIRED_REPLICAS_FIELD_NUMBER: _ClassVar[int]
    model: str
    replicas: int
    healthy_replicas: int
    running: int
    queued: int
    generated_tokens_per_s: float
    p50_latency_ms: float
    p95_latency_ms: float
    desired_replicas: int
    def __init__(self, model: _Optional[str] = ..., replicas: _Optional[int] = ..., healthy_replicas: _Optional[int] = ..., running: _Optional[int] = ..., queued: _Optional[int] = ..., generated_tokens_per_s: _Optional[float] = ..., p50_latency_ms: _Optional[float] = ..., p95_latency_ms: _Optional[float] = ..., desired_replicas: _Optional[int] = ...) -> None: ...

class PoolStatsResponse(_message.Message):
    __slots__ = ("pools",)
    POOLS_FIELD_NUMBER: _ClassVar[int]
    pools: _containers.RepeatedCompositeFieldContainer[PoolStats]
    def __init__(self, pools: _Optional[_Iterable[_Union[PoolStats, _Mapping]]] = ...) -> None: ...
