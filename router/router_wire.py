"""Conversions between thinkroute.v1.Router messages and router types."""
from __future__ import annotations

from typing import Any

from google.protobuf import json_format, struct_pb2

from thinkroute.v1 import router_pb2 as rpb

from router.types import RouteQuery, RouteResult
from workers.types import ChatMessage

_CALL_FIELDS = set(rpb.ModelCall.DESCRIPTOR.fields_by_name)


def query_from_pb(r: rpb.RouteRequest) -> RouteQuery:
    q = RouteQuery(
        query=r.query,
        messages=[ChatMessage(m.role, m.content) for m in r.messages] or None,
        strategy=r.strategy or None,
        model=r.model or None,
        options=json_format.MessageToDict(r.strategy_options) if r.HasField("strategy_options") else {},
        max_tokens=r.max_tokens,
        temperature=r.temperature,
        top_p=r.top_p,
        seed=r.seed if r.HasField("seed") else None,
        stop=list(r.stop),
        dial=r.dial if r.HasField("dial") else None,
        tenant=r.tenant,
        max_cost=r.max_cost,
        max_latency_ms=r.max_latency_ms,
        task=r.task,
        quality_target=r.quality_target if r.HasField("quality_target") else None,
        budget_per_1k=r.budget_per_1k if r.HasField("budget_per_1k") else None,
    )
    if r.request_id:
        q.request_id = r.request_id
    # JSON numbers arrive as floats: give integer-valued knobs back their int type.
    q.options = {k: (int(v) if isinstance(v, float) and v.is_integer() else v) for k, v in q.options.items()}
    return q


def _struct(d: dict[str, Any]) -> struct_pb2.Struct:
    s = struct_pb2.Struct()
    s.update(_jsonable(d))
    return s


def _jsonable(x):
    if isinstance(x, dict):
        return {str(k): _jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_jsonable(v) for v in x]
    if isinstance(x, (str, bool)) or x is None:
        return x
    if isinstance(x, (int, float)):
        return float(x)
    return str(x)


def result_to_pb(r: RouteResult) -> rpb.RouteResponse:
    t = r.trace
    plan = t.get("plan", {})
    trace = rpb.Trace(
        plan=rpb.Plan(strategy=plan.get("strategy", ""), models=plan.get("models", {}), reason=plan.get("reason", ""),
                      dial=plan.get("dial", 0.0), candidates=_struct(plan.get("candidates", {}))),
        calls=[rpb.ModelCall(**{k: v for k, v in c.items() if k in _CALL_FIELDS}) for c in t.get("calls", [])],
        usage=[rpb.ModelUsage(**u) for u in t.get("usage", [])],
        stage_ms=t.get("stage_ms", {}),
        details=_struct({**t.get("details", {}), "options": plan.get("options", {})}),
    )
    return rpb.RouteResponse(request_id=r.request_id, text=r.text, final_answer=r.final_answer,
                             finish_reason=r.finish_reason, trace=trace)


def response_to_dict(resp: rpb.RouteResponse) -> dict[str, Any]:
    return json_format.MessageToDict(resp, preserving_proto_field_name=True, always_print_fields_with_no_presence=True)
