"""The trace's conversions stay exact when made cheaper, and the codec bench (ops/bench/codec.py) runs."""
from __future__ import annotations

import dataclasses
import sys
from pathlib import Path

from router.router_wire import response_to_dict, result_to_pb
from router.trace import ModelCallRecord, Trace, call_dict
from router.types import RouteResult


def a_trace() -> Trace:
    t = Trace(plan={"strategy": "direct", "models": {"model": "m"}, "reason": "fixed", "dial": 0.5,
                    "candidates": {}, "options": {"thinking": ""}})
    t.add_call(ModelCallRecord(model="m", role="model", kind="generate", replica="127.0.0.1:1", prompt_tokens=37,
                               cached_prompt_tokens=32, generated_tokens=1, latency_ms=0.25,
                               time_to_first_token_ms=0.125, finish_reason="length"))
    t.add_call(ModelCallRecord(model="m", role="model", kind="tokenize"))
    t.stage_ms.update(plan=0.5, execute=1.5, total=2.0)
    t.details["router_replica"] = "r1"
    return t


def test_call_dict_is_asdict_field_for_field_in_order():
    for c in a_trace().calls:
        assert list(call_dict(c).items()) == list(dataclasses.asdict(c).items())


def test_the_trace_dict_and_the_grpc_reply_are_what_asdict_gave():
    t = a_trace()
    d = t.to_dict()
    assert d["calls"] == [dataclasses.asdict(c) for c in t.calls]
    result = RouteResult(request_id="r", text="42", final_answer="42", finish_reason="length", trace=d)
    reply = response_to_dict(result_to_pb(result))
    assert reply["trace"]["calls"][0]["prompt_tokens"] == 37 and reply["trace"]["calls"][0]["replica"] == "127.0.0.1:1"
    d["calls"][0]["prompt_tokens"] = 0  # a copy: the record itself is not shared with the dict
    assert t.calls[0].prompt_tokens == 37


def test_the_codec_bench_runs_every_stage():
    sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "ops" / "bench"))
    import codec

    out = codec.measure(n=3, repeat=1)
    assert len(out["stages"]) == 8 and all(s["us"] > 0 for s in out["stages"]) and out["route_in_process_us"] > 0
