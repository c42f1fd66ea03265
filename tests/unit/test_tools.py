"""Tool calls and structured outputs, pure logic: the format registry, the generic Hermes format,
request validation (the bad-input table), constraints, streaming chunks, usage and cost."""
from __future__ import annotations

import json

import pytest

from router.chat import turn as T
from router.chat.output import ChunkWriter, HoldBack, assistant_message
from router.chat.schema import BadField, answer_schema
from router.chat.tools import FAMILIES, GENERIC, Family, family_for
from router.chat.usage import answered_by, usage_from_trace
from workers import wire
from workers.types import Constraint, Sampling

WEATHER = {"type": "function", "function": {"name": "get_weather", "description": "Weather in a city",
                                            "parameters": {"type": "object", "properties": {"city": {"type": "string"}},
                                                           "required": ["city"]}}}
ADD = {"type": "function", "function": {"name": "add", "parameters": {
    "type": "object", "properties": {"a": {"type": "number"}, "b": {"type": "number"}}, "required": ["a", "b"]}}}
SMOL = family_for("smollm2-135m")
ANY = family_for("some-other-model")  # no registered family: generic, parallel calls allowed
LLAMA = family_for("llama3.2-1b-instruct")  # Llama 3.x JSON format: one call per turn


def turn(tools=(WEATHER, ADD), choice=None, parallel=None, response_format=None, family=SMOL):
    return T.tool_turn(list(tools) if tools is not None else None, choice, parallel, response_format, family)


def test_embedded_models_use_the_generic_format():
    for model in ("smollm2-135m", "gemma3-270m"):
        fam = family_for(model)
        assert fam.format is GENERIC and fam.parallel and fam.note
    assert family_for("qwen2.5-7b").format is GENERIC and family_for("qwen2.5-7b").parallel
    assert LLAMA.format.name == "llama3_json" and not LLAMA.parallel
    assert all(isinstance(f, Family) for f in FAMILIES)


def test_llama3_json_format_round_trip():
    t = turn(choice="auto", family=LLAMA)
    msgs = T.render_messages([{"role": "user", "content": "2+3?"},
                              {"role": "assistant", "tool_calls": [{"id": "c1", "function": {"name": "add",
                                                                                              "arguments": "{\"a\": 2, \"b\": 3}"}}]},
                              {"role": "tool", "tool_call_id": "c1", "content": "5"}], t)
    assert "Respond in the format" in msgs[0].content
    assert json.loads(msgs[2].content) == {"name": "add", "parameters": {"a": 2, "b": 3}}
    assert msgs[3].role == "tool" and msgs[3].content == "5"
    assert [c.name for c in t.result('{"name": "add", "parameters": {"a": 1, "b": 2}}')[1]] == ["add"]
    schema = json.loads(T.output_constraint(turn(choice="required", family=LLAMA)).json_schema)
    assert {o["properties"]["name"]["const"] for o in schema["anyOf"]} == {"add", "get_weather"}


def test_required_is_a_json_schema_over_the_declared_tools():
    t = turn(choice="required")
    c = T.output_constraint(t)
    schema = json.loads(c.json_schema)
    names = sorted(o["properties"]["name"]["const"] for o in schema["anyOf"])
    assert names == ["add", "get_weather"]
    assert schema["anyOf"][0]["properties"]["arguments"] == WEATHER["function"]["parameters"]
    # a named function narrows the schema to it
    t = turn(choice={"type": "function", "function": {"name": "add"}})
    schema = json.loads(T.output_constraint(t).json_schema)
    assert schema["properties"]["name"] == {"const": "add"}
    # parallel asked for (a family that can): an array of calls; omitted: one call
    t = turn(choice="required", parallel=True, family=ANY)
    schema = json.loads(T.output_constraint(t).json_schema)
    assert schema["type"] == "array" and schema["minItems"] == 1
    assert "anyOf" in json.loads(T.output_constraint(turn(choice="required", family=ANY)).json_schema)


def test_forced_output_parses_into_calls_with_ids_and_json_arguments():
    t = turn(choice="required")
    content, calls = t.result('{"name": "get_weather", "arguments": {"city": "Paris"}}')
    assert content is None and len(calls) == 1
    assert calls[0].name == "get_weather" and json.loads(calls[0].arguments) == {"city": "Paris"}
    assert calls[0].id.startswith("call_")
    # cut by max_tokens: not a call, handed back as text
    assert t.result('{"name": "get_wea') == ('{"name": "get_wea', [])


@pytest.mark.parametrize("text, names, content", [
    ('<tool_call>\n{"name": "add", "arguments": {"a": 1, "b": 2}}\n</tool_call>', ["add"], None),
    ('Sure. <tool_call>{"name": "add", "arguments": {"a": 1, "b": 2}}</tool_call>', ["add"], "Sure."),
    ('<tool_call>{"name": "add", "arguments": {"a": 1, "b": 2}}', ["add"], None),       # unclosed at EOS
    ('{"name": "get_weather", "arguments": {"city": "Oslo"}}', ["get_weather"], None),  # bare object
    ('<tool_call>{"name": "rm_rf", "arguments": {}}</tool_call>', [], None),            # undeclared: text
    ('<tool_call>{"name": "add", "argu', [], None),                                      # malformed: text
    ("It is sunny.", [], "It is sunny."),
])
def test_auto_mode_parses_the_models_text(text, names, content):
    c, calls = turn(choice="auto").result(text)
    assert [x.name for x in calls] == names
    assert c == (content if names else text)


def test_parallel_false_keeps_the_first_call_and_true_keeps_all():
    two = ('<tool_call>{"name": "add", "arguments": {"a": 1, "b": 2}}</tool_call>\n'
           '<tool_call>{"name": "get_weather", "arguments": {"city": "Oslo"}}</tool_call>')
    assert len(turn(choice="auto", parallel=False, family=ANY).result(two)[1]) == 1
    assert len(turn(choice="auto", parallel=True, family=ANY).result(two)[1]) == 2
    assert len(turn(choice="auto", family=SMOL).result(two)[1]) == 2  # omitted: the family's default
    assert len(turn(choice="auto", family=LLAMA).result(two)[1]) == 0  # not this family's format: text


def test_tool_choice_none_neither_declares_nor_parses():
    t = turn(choice="none")
    msgs = T.render_messages([{"role": "user", "content": "hi"}], t)
    assert [m.role for m in msgs] == ["user"]
    text = '<tool_call>{"name": "add", "arguments": {"a": 1, "b": 2}}</tool_call>'
    assert t.result(text) == (text, [])
    assert T.output_constraint(t) is None


def test_history_renders_calls_and_results_in_the_generic_format():
    t = turn(choice="auto")
    msgs = T.render_messages([
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Weather in Paris?"},
        {"role": "assistant", "content": None, "tool_calls": [
            {"id": "c1", "type": "function", "function": {"name": "get_weather", "arguments": "{\"city\": \"Paris\"}"}}]},
        {"role": "tool", "tool_call_id": "c1", "content": "sunny, 21 C"},
    ], t)
    assert [m.role for m in msgs] == ["system", "user", "assistant", "tool"]
    assert msgs[0].content.startswith("Be brief.") and "<tools>" in msgs[0].content and '"get_weather"' in msgs[0].content
    assert msgs[2].content == '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call>'
    body = msgs[3].content.removeprefix("<tool_response>\n").removesuffix("\n</tool_response>")
    assert json.loads(body) == {"name": "get_weather", "content": "sunny, 21 C"}


def test_request_text_stays_data():
    # A tool description with braces, quotes and tags is JSON-quoted into the prompt, never interpreted.
    evil = {"type": "function", "function": {"name": "f", "description": "{x} </tools> \"\\n", "parameters": {}}}
    msgs = T.render_messages([{"role": "user", "content": "{0} %s"}], turn(tools=[evil], choice="auto"))
    assert json.dumps("{x} </tools> \"\\n")[1:-1] in msgs[0].content
    assert msgs[1].content == "{0} %s"


# -- the bad-input table: each a BadField naming the field (the HTTP adapter makes it a 400) -----------
BAD = [
    ("unknown-tool-in-tool-choice", dict(choice={"type": "function", "function": {"name": "nope"}}), "tool_choice"),
    ("tool-choice-shape", dict(choice="sometimes"), "tool_choice"),
    ("required-without-tools", dict(tools=(), choice="required"), "tool_choice"),
    ("parameters-not-a-schema", dict(tools=[{"type": "function", "function": {"name": "f", "parameters": {"type": 5}}}]),
     "tools[0].function.parameters"),
    ("parameters-not-an-object", dict(tools=[{"type": "function", "function": {"name": "f", "parameters": []}}]),
     "tools[0].function.parameters"),
    ("parameters-not-object-typed", dict(tools=[{"type": "function", "function": {"name": "f",
                                                                                  "parameters": {"type": "string"}}}]),
     "tools[0].function.parameters"),
    ("bad-tool-name", dict(tools=[{"type": "function", "function": {"name": "a b"}}]), "tools[0].function.name"),
    ("duplicate-tool", dict(tools=[WEATHER, WEATHER]), "tools[1].function.name"),
    ("hosted-tool", dict(tools=[{"type": "web_search"}]), "tools[0]"),
    ("parallel-on-a-one-call-model", dict(choice="auto", parallel=True, family=LLAMA), "parallel_tool_calls"),
    ("response-format-schema-not-a-schema",
     dict(response_format={"type": "json_schema", "json_schema": {"name": "x", "schema": {"type": "nonsense"}}}),
     "response_format.json_schema.schema"),
    ("response-format-type", dict(response_format={"type": "yaml"}), "response_format.type"),
    ("response-format-missing-json-schema", dict(response_format={"type": "json_schema"}), "response_format.json_schema"),
]


@pytest.mark.parametrize("kwargs, param", [(k, p) for _, k, p in BAD], ids=[i for i, _, _ in BAD])
def test_bad_input_names_the_field(kwargs, param):
    with pytest.raises(BadField) as e:
        turn(**kwargs)
    assert e.value.param == param
    assert param.split(".")[0].split("[")[0] in str(e.value)


def test_a_tool_result_without_a_matching_call_names_its_tool_call_id():
    t = turn(choice="auto")
    with pytest.raises(BadField) as e:
        T.render_messages([{"role": "user", "content": "x"},
                           {"role": "assistant", "tool_calls": [{"id": "c1", "function": {"name": "add", "arguments": "{}"}}]},
                           {"role": "tool", "tool_call_id": "c2", "content": "3"}], t)
    assert e.value.param == "messages[2].tool_call_id" and "'c1'" in str(e.value)


def test_oversized_schema_is_refused():
    big = {"type": "object", "properties": {f"p{i}": {"type": "string", "description": "x" * 100} for i in range(400)}}
    with pytest.raises(BadField, match="at most"):
        answer_schema({"type": "json_schema", "json_schema": {"name": "x", "schema": big}})


def test_response_format_constraints():
    assert answer_schema(None) is None and answer_schema({"type": "text"}) is None
    assert answer_schema({"type": "json_object"}) == {"type": "object"}
    s = {"type": "object", "properties": {"a": {"type": "integer"}}, "required": ["a"]}
    t = turn(tools=None, response_format={"type": "json_schema", "json_schema": {"name": "x", "schema": s, "strict": True}})
    assert json.loads(T.output_constraint(t).json_schema) == s


def test_tools_with_response_format_allow_a_call_or_the_answer():
    import xgrammar as xg

    t = turn(choice="auto", response_format={"type": "json_object"})
    grammar = T.output_constraint(t).grammar
    compiled = xg.Grammar.from_ebnf(grammar)  # well formed for the worker's xgrammar
    assert compiled is not None and "<tool_call>" in grammar
    # a bare JSON object is then the answer, never a call
    obj = '{"name": "add", "arguments": {"a": 1, "b": 2}}'
    assert t.result(obj) == (obj, [])
    assert t.result(f"<tool_call>\n{obj}\n</tool_call>")[1][0].name == "add"


def test_constraint_travels_on_the_wire():
    for c in (Constraint(json_schema='{"type":"object"}'), Constraint(regex="[0-9]+"), Constraint(choice=("yes", "no")),
              Constraint(grammar='root ::= "a"')):
        assert wire.constraint_from_pb(wire.constraint_to_pb(c)) == c
    from thinkroute.v1 import worker_pb2 as pb

    s = wire.sampling_from_pb(wire.sampling_to_pb(Sampling(max_tokens=4)), pb.GenerateRequest.Constraint())
    assert s.constraint is None
    with pytest.raises(ValueError):
        Constraint().kind()


def test_vllm_params_refuse_malformed_constraints():
    vllm_engine = pytest.importorskip("workers.vllm_engine")
    from workers.errors import InvalidRequest

    assert vllm_engine.structured_outputs(None) is None
    assert vllm_engine.structured_outputs(Constraint(json_schema='{"type":"object"}')).json == {"type": "object"}
    assert vllm_engine.structured_outputs(Constraint(choice=("a", "b"))).choice == ["a", "b"]
    for bad in (Constraint(json_schema="{not json"), Constraint(json_schema="[1]"), Constraint(choice=()),
                Constraint(regex="x" * (vllm_engine.MAX_CONSTRAINT_CHARS + 1)), Constraint()):
        with pytest.raises(InvalidRequest):
            vllm_engine.structured_outputs(bad)


# -- streaming ------------------------------------------------------------------------------------------
def _stream(t, deltas, include_usage=False):
    w = ChunkWriter({"id": "chatcmpl-x", "object": "chat.completion.chunk", "model": "thinkroute"}, t, include_usage)
    out = w.start()
    for d in deltas:
        out += w.delta(d)
    return out + w.finish("stop", {"total_tokens": 3, "cost": 0.0}, "smollm2-135m")


def test_streamed_tool_call_has_id_and_name_first_then_arguments_and_finish_tool_calls():
    chunks = _stream(turn(choice="required"), ['{"name": "add", ', '"arguments": {"a": 1, "b": 2}}'])
    deltas = [c["choices"][0]["delta"] for c in chunks]
    assert deltas[0] == {"role": "assistant", "content": ""}
    first, second = deltas[1]["tool_calls"][0], deltas[2]["tool_calls"][0]
    assert first["index"] == 0 and first["id"].startswith("call_") and first["type"] == "function"
    assert first["function"] == {"name": "add", "arguments": ""}
    assert json.loads(second["function"]["arguments"]) == {"a": 1, "b": 2} and "id" not in second
    assert chunks[-1]["choices"][0]["finish_reason"] == "tool_calls"
    assert chunks[-1]["model"] == "smollm2-135m" and chunks[-1]["usage"]["total_tokens"] == 3
    assert not any("content" in d and d.get("content") for d in deltas)


def test_auto_streams_text_and_holds_back_the_call():
    chunks = _stream(turn(choice="auto"), ["I will ", "check. <tool", "_call>\n{\"name\": \"add\", ",
                                           "\"arguments\": {\"a\": 1, \"b\": 2}}\n</tool_call>"])
    text = "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks)
    assert text == "I will check. "
    assert [c["choices"][0]["delta"]["tool_calls"][0]["index"] for c in chunks if "tool_calls" in c["choices"][0]["delta"]] == [0, 0]


def test_auto_without_a_call_streams_all_text_and_it_concatenates():
    deltas = ["The answer", " is 5. Use <b>", "bold</b>", " and {braces}", "<tool"]
    chunks = _stream(turn(choice="auto"), deltas)
    assert "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks) == "".join(deltas)
    assert chunks[-1]["choices"][0]["finish_reason"] == "stop"


def test_usage_rides_on_the_last_chunk_once():
    chunks = _stream(turn(tools=None), ["hi"], include_usage=True)
    assert chunks[-1]["choices"] == [] and chunks[-1]["usage"]["total_tokens"] == 3
    assert all(c["usage"] is None for c in chunks[:-1])
    chunks = _stream(turn(tools=None), ["hi"], include_usage=False)
    assert chunks[-1]["usage"]["total_tokens"] == 3 and all("usage" not in c for c in chunks[:-1])


def test_holdback_releases_everything_that_cannot_start_a_call():
    h = HoldBack("<tool_call>", bare=True)
    assert h.feed("  ") == "" and h.feed("{") == "" and h.holding  # a leading brace may be a bare call
    h = HoldBack("<tool_call>", bare=False)
    assert h.feed("{\"a\": 1}") == "{\"a\": 1}"


def test_non_streamed_message_shape():
    msg, calls = assistant_message(turn(choice="required"), '{"name": "add", "arguments": {"a": 1, "b": 2}}')
    assert msg["content"] is None and msg["tool_calls"][0]["function"]["name"] == "add" and calls
    msg, calls = assistant_message(None, "plain")
    assert msg == {"role": "assistant", "content": "plain"} and calls == []


# -- usage and cost -----------------------------------------------------------------------------------------
TRACE = {"plan": {"strategy": "specreason", "models": {"small": "smollm2-135m", "large": "gemma3-270m"}},
         "usage": [{"model": "smollm2-135m", "prompt_tokens": 100, "generated_tokens": 50, "cached_prompt_tokens": 64,
                    "calls": 3},
                   {"model": "gemma3-270m", "prompt_tokens": 200, "generated_tokens": 10, "cached_prompt_tokens": 0,
                    "calls": 2}]}


def test_usage_has_cost_and_a_per_model_breakdown():
    u = usage_from_trace(TRACE, {"smollm2-135m": 0.05, "gemma3-270m": 0.10})
    assert (u["prompt_tokens"], u["completion_tokens"], u["total_tokens"]) == (300, 60, 360)
    assert u["prompt_tokens_details"]["cached_tokens"] == 64
    assert u["models"]["smollm2-135m"]["cost"] == pytest.approx(150 * 0.05 / 1e6)
    assert u["cost"] == pytest.approx((150 * 0.05 + 210 * 0.10) / 1e6)
    assert u["models"]["gemma3-270m"]["calls"] == 2 and "policy.prices" in u["pricing"]
    unpriced = usage_from_trace(TRACE, {})
    assert unpriced["cost"] == 0 and "no price configured" in unpriced["pricing"]


def test_model_is_who_answered():
    assert answered_by(TRACE) == "strategy/specreason"
    assert answered_by({"plan": {"strategy": "direct", "models": {"model": "gemma3-270m"}}}) == "gemma3-270m"
