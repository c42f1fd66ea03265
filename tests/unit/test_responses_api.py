"""`POST /v1/responses`: translation to Chat Completions and back, streaming events, errors (no Ray, no workers).

The endpoint tests run the real HTTP app over a hand-written fake RouterCore (the one of
tests/unit/test_http_api.py) and read it with the official `openai` client."""
from __future__ import annotations

import json

import openai
import pytest

from router.http_api import ApiError
from router.responses_api import ChunkTranslator, Echo, chat_to_response, to_chat_request
from tests.unit.test_http_api import make_client

CALL_ITEMS = [
    {"role": "user", "content": "Weather in Paris?"},
    {"type": "function_call", "call_id": "call_1", "name": "get_weather", "arguments": "{\"city\": \"Paris\"}"},
    {"type": "function_call", "call_id": "call_2", "name": "get_time", "arguments": "{}"},
    {"type": "function_call_output", "call_id": "call_1", "output": "18 C"},
    {"type": "function_call_output", "call_id": "call_2", "output": [{"type": "input_text", "text": "noon"}]},
    {"type": "reasoning", "id": "rs_1", "summary": []},
]
TOOL = {"type": "function", "name": "get_weather", "description": "Weather of a city",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
        "strict": True}


# -- request translation ---------------------------------------------------------------------------
def test_input_items_become_the_chat_conversation():
    chat = to_chat_request({"model": "thinkroute", "instructions": "Be brief.", "input": CALL_ITEMS,
                            "tools": [TOOL], "tool_choice": "required", "max_output_tokens": 20, "store": True,
                            "prompt_cache_key": "agent-1", "thinkroute": {"trace": True}})
    assert chat["messages"] == [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Weather in Paris?"},
        {"role": "assistant", "content": None, "tool_calls": [
            {"id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": "{\"city\": \"Paris\"}"}},
            {"id": "call_2", "type": "function", "function": {"name": "get_time", "arguments": "{}"}}]},
        {"role": "tool", "tool_call_id": "call_1", "content": "18 C"},
        {"role": "tool", "tool_call_id": "call_2", "content": "noon"},
    ]
    assert chat["tools"] == [{"type": "function", "function": {k: TOOL[k] for k in ("name", "description",
                                                                                     "parameters", "strict")}}]
    assert chat["tool_choice"] == "required" and chat["max_completion_tokens"] == 20
    assert chat["prompt_cache_key"] == "agent-1" and chat["thinkroute"] == {"trace": True} and not chat["stream"]


def test_string_input_named_tool_choice_and_json_schema_format():
    schema = {"type": "object", "properties": {"a": {"type": "integer"}}}
    chat = to_chat_request({"model": "m", "input": "hi", "tools": [TOOL], "stream": True,
                            "tool_choice": {"type": "function", "name": "get_weather"},
                            "text": {"format": {"type": "json_schema", "name": "A", "schema": schema, "strict": True}}})
    assert chat["messages"] == [{"role": "user", "content": "hi"}]
    assert chat["tool_choice"] == {"type": "function", "function": {"name": "get_weather"}}
    assert chat["response_format"] == {"type": "json_schema", "json_schema": {"name": "A", "schema": schema,
                                                                               "strict": True}}
    assert chat["stream_options"] == {"include_usage": True}
    assert to_chat_request({"model": "m", "input": "x", "text": {"format": {"type": "text"}}}).get("response_format") is None


def test_assistant_text_then_function_call_is_one_assistant_message():
    chat = to_chat_request({"model": "m", "input": [
        {"role": "user", "content": "q"},
        {"type": "message", "role": "assistant", "content": [{"type": "output_text", "text": "Let me check."}]},
        {"type": "function_call", "call_id": "c", "name": "f", "arguments": "{}"}]})
    assert chat["messages"][1] == {"role": "assistant", "content": "Let me check.",
                                   "tool_calls": [{"id": "c", "type": "function", "function": {"name": "f", "arguments": "{}"}}]}


@pytest.mark.parametrize("body, param, needle", [
    ({"input": "x", "previous_response_id": "resp_1"}, "previous_response_id", "stateless"),
    ({"input": "x", "conversation": "conv_1"}, "conversation", "stateless"),
    ({"input": "x", "background": True}, "background", "background"),
    ({"input": [{"type": "item_reference", "id": "msg_1"}]}, "input.0.type", "stateless"),
    ({"input": [{"type": "web_search_call", "id": "ws"}]}, "input.0.type", "supported input items"),
    ({"input": [{"role": "user", "content": [{"type": "input_image", "image_url": "x"}]}]}, "input.0.content.0.type",
     "text parts"),
    ({"input": [{"role": "robot", "content": "x"}]}, "input.0.role", "valid roles"),
    ({"input": [{"type": "function_call_output", "output": "x"}]}, "input.0.call_id", "call_id"),
    ({"input": "x", "tools": [{"type": "web_search"}]}, "tools.0.type", "only function tools"),
    ({"input": "x", "tools": [TOOL], "tool_choice": {"type": "allowed_tools"}}, "tool_choice", "not supported"),
    ({"input": "x", "text": {"format": {"type": "grammar"}}}, "text.format.type", "not supported"),
    ({"input": "x", "text": {"format": {"type": "json_schema", "name": "A"}}}, "text.format.schema", "required"),
    ({"input": []}, "input", "non-empty"),
    ({"input": "x", "frequency_penalty": 1}, "frequency_penalty", "unknown field"),
])
def test_bad_input_is_a_400_naming_the_field(body, param, needle):
    with pytest.raises(ApiError) as err:
        to_chat_request({"model": "thinkroute", **body})
    assert err.value.status == 400 and err.value.param == param and needle in err.value.message


# -- response translation --------------------------------------------------------------------------
def test_chat_completion_with_tool_calls_becomes_function_call_items():
    chat = {"id": "chatcmpl-1", "created": 5, "model": "smollm2-135m", "thinkroute_plan": "direct smollm2-135m",
            "choices": [{"index": 0, "finish_reason": "tool_calls", "message": {
                "role": "assistant", "content": None,
                "tool_calls": [{"id": "call_9", "type": "function",
                                "function": {"name": "get_weather", "arguments": "{\"city\":\"Rome\"}"}}]}}],
            "usage": {"prompt_tokens": 30, "completion_tokens": 9, "total_tokens": 39,
                      "prompt_tokens_details": {"cached_tokens": 16}, "cost": 1e-6}}
    resp = chat_to_response(chat, Echo({"model": "thinkroute", "tools": [TOOL]}))
    assert resp["object"] == "response" and resp["status"] == "completed" and resp["model"] == "smollm2-135m"
    assert [(o["type"], o["call_id"], o["name"], o["arguments"]) for o in resp["output"]] == [
        ("function_call", "call_9", "get_weather", "{\"city\":\"Rome\"}")]
    assert resp["usage"]["input_tokens"] == 30 and resp["usage"]["output_tokens"] == 9
    assert resp["usage"]["input_tokens_details"]["cached_tokens"] == 16 and resp["usage"]["cost"] == 1e-6
    assert resp["thinkroute_plan"] == "direct smollm2-135m" and resp["tools"] == [TOOL]


def test_chunk_stream_with_text_then_two_tool_calls_gives_the_semantic_events():
    tr = ChunkTranslator(Echo({"model": "thinkroute"}))
    events = tr.start()
    chunks = [
        {"choices": [{"index": 0, "delta": {"role": "assistant", "content": ""}}]},
        {"choices": [{"index": 0, "delta": {"content": "Checking"}}]},
        {"choices": [{"index": 0, "delta": {"tool_calls": [
            {"index": 0, "id": "call_a", "type": "function", "function": {"name": "f", "arguments": ""}}]}}]},
        {"choices": [{"index": 0, "delta": {"tool_calls": [{"index": 0, "function": {"arguments": "{\"x\":"}}]}}]},
        {"choices": [{"index": 0, "delta": {"tool_calls": [{"index": 0, "function": {"arguments": "1}"}}]}}]},
        {"choices": [{"index": 0, "delta": {"tool_calls": [
            {"index": 1, "id": "call_b", "type": "function", "function": {"name": "g", "arguments": "{}"}}]}}]},
        {"choices": [{"index": 0, "delta": {}, "finish_reason": "tool_calls"}], "model": "smollm2-135m"},
        {"choices": [], "usage": {"prompt_tokens": 3, "completion_tokens": 4, "total_tokens": 7}},
    ]
    for c in chunks:
        events += tr.chunk(c)
    events += tr.finish_events()
    kinds = [e["type"] for e in events]
    assert kinds == [
        "response.created", "response.in_progress",
        "response.output_item.added", "response.content_part.added", "response.output_text.delta",
        "response.output_text.done", "response.content_part.done", "response.output_item.done",
        "response.output_item.added", "response.function_call_arguments.delta",
        "response.function_call_arguments.delta",
        "response.output_item.added", "response.function_call_arguments.delta",
        "response.function_call_arguments.done", "response.output_item.done",
        "response.function_call_arguments.done", "response.output_item.done",
        "response.completed"]
    assert [e["sequence_number"] for e in events] == list(range(len(events)))
    final = events[-1]["response"]
    assert [o["type"] for o in final["output"]] == ["message", "function_call", "function_call"]
    assert final["output"][0]["content"][0]["text"] == "Checking"
    assert (final["output"][1]["call_id"], final["output"][1]["arguments"]) == ("call_a", "{\"x\":1}")
    assert final["usage"]["total_tokens"] == 7 and final["model"] == "smollm2-135m"
    added = [e for e in events if e["type"] == "response.output_item.added"][1]
    assert added["item"]["name"] == "f" and added["item"]["call_id"] == "call_a"  # id and name in the first event


def test_stream_error_after_start_is_response_failed():
    tr = ChunkTranslator(Echo({"model": "m"}))
    tr.start()
    tr.chunk({"choices": [{"index": 0, "delta": {"content": "a"}}]})
    (event,) = tr.chunk({"error": {"message": "model 'x': down", "type": "service_unavailable", "code": "unavailable"}})
    assert event["type"] == "response.failed" and event["response"]["error"]["code"] == "unavailable"


# -- the endpoint over the real HTTP app -----------------------------------------------------------
@pytest.fixture
def app():
    client, core = make_client()
    return client, core, openai.OpenAI(base_url="http://testserver/v1", api_key="x", http_client=client, max_retries=0)


def test_endpoint_answers_with_a_response_object_the_openai_client_reads(app):
    client, core, oa = app
    resp = oa.responses.create(model="thinkroute", input="hi", instructions="Be brief.", max_output_tokens=3,
                               store=True, extra_headers={"x-session-id": "agent-42"})
    assert resp.output_text == "Hello world" and resp.status == "incomplete"  # the fake core stops at length
    assert resp.incomplete_details.reason == "max_output_tokens"
    assert resp.usage.input_tokens == 17 and resp.usage.input_tokens_details.cached_tokens == 4
    q = core.queries[-1]
    assert [(m.role, m.content) for m in q.messages] == [("system", "Be brief."), ("user", "hi")]
    assert q.max_tokens == 3 and q.session == "agent-42"


def test_endpoint_streams_events_the_openai_client_reads(app):
    _, core, oa = app
    events = list(oa.responses.create(model="thinkroute", input="hi", stream=True,
                                      extra_body={"thinkroute": {"session": "agent-7"}}))
    kinds = [e.type for e in events]
    assert kinds[:2] == ["response.created", "response.in_progress"] and kinds[-1] == "response.incomplete"
    deltas = [e.delta for e in events if e.type == "response.output_text.delta"]
    assert deltas == ["Hel", "lo", " world"]
    assert events[-1].response.output_text == "Hello world" and events[-1].response.usage.total_tokens == 22
    assert core.queries[-1].session == "agent-7"


def test_endpoint_errors_keep_openai_shape_and_status(app):
    client, core, _ = app
    r = client.post("/v1/responses", json={"model": "thinkroute", "input": "x", "previous_response_id": "resp_1"})
    assert r.status_code == 400 and r.json()["error"]["param"] == "previous_response_id"
    r = client.post("/v1/responses", content=b"{nope")
    assert r.status_code == 400 and r.json()["error"]["code"] == "invalid_json"
    r = client.post("/v1/responses", json={"model": "no-such-model", "input": "x"})
    assert r.status_code == 404 and "available models" in r.json()["error"]["message"]
    r = client.post("/v1/responses", json={"model": "thinkroute", "input": "x"}, headers={"x-session-id": "a\tb"})
    assert r.status_code == 400 and "x-session-id" in r.json()["error"]["message"]
    assert not core.queries  # none of these reached the router
    ok = client.post("/v1/responses", json={"model": "thinkroute", "input": "x"})
    assert ok.status_code == 200 and json.loads(ok.text)["output"][0]["type"] == "message"  # still serving


@pytest.mark.parametrize("chat, responses", [
    ("tools[0].function.name", "tools[0].name"), ("tools.1.function.parameters", "tools[1].parameters"),
    ("tool_choice.function.name", "tool_choice.name"), ("response_format.json_schema.schema", "text.format.schema"),
    ("response_format", "text.format"), ("messages[3].tool_call_id", "input"),
    ("max_completion_tokens", "max_output_tokens"), ("model", "model"), (None, None)])
def test_chat_error_params_are_named_in_responses_terms(chat, responses):
    from router.responses_api import responses_param

    assert responses_param(chat) == responses


def test_a_caller_without_a_valid_key_gets_401_before_the_body_is_read():
    from router.config import load_config
    from router.tenants import key_digests
    from tests.unit.test_http_api import TENANTS

    client, core = make_client(TENANTS, key_digests(load_config(overrides=TENANTS).auth, {"ACME_KEY": "acme-key"}))
    bad = client.post("/v1/responses", content=b"{not json", headers={"authorization": "Bearer nope"})
    assert bad.status_code == 401 and bad.json()["error"]["code"] == "invalid_api_key"
    ok = client.post("/v1/responses", json={"model": "thinkroute", "input": "hi"},
                     headers={"authorization": "Bearer acme-key"})
    assert ok.status_code == 200 and core.queries[-1].tenant == "acme"


# -- a tool loop over the endpoint (fake core: a forced turn answers with a call, others with text) ---------
class ToolCore:
    """A RouterCore double: a turn with an output constraint (a forced tool call) gets the call as JSON."""

    def __init__(self, inner) -> None:
        self.inner, self.pool, self.queries = inner, inner.pool, inner.queries

    async def route(self, query, emit=None):
        constrained = getattr(query, "constraint", None) is not None
        text = json.dumps({"name": "get_weather", "arguments": {"city": "Paris"}}) if constrained else "Sunny."
        result = await self.inner.route(query)  # records the query, builds the trace
        if emit is not None:
            await emit(text)
        result.text, result.finish_reason = text, "stop"
        return result


@pytest.fixture
def tool_app():
    client, core = make_client()
    _frontend(client).core = ToolCore(core)  # the same app, with the tool-calling double behind it
    return client, core


def _frontend(client):
    route = next(r for r in client.app.routes if getattr(r, "path", "") == "/v1/responses")
    return route.endpoint.__self__.frontend


@pytest.mark.parametrize("stream", [False, True])
def test_required_tool_choice_comes_back_as_a_function_call_item(tool_app, stream):
    client, core = tool_app
    oa = openai.OpenAI(base_url="http://testserver/v1", api_key="x", http_client=client, max_retries=0)
    kw = dict(model="smollm2-135m", input="Weather in Paris?", tools=[TOOL], tool_choice="required",
              parallel_tool_calls=False)
    if stream:
        events = list(oa.responses.create(**kw, stream=True))
        added = [e for e in events if e.type == "response.output_item.added"]
        assert added[0].item.type == "function_call" and added[0].item.name == "get_weather"
        resp = events[-1].response
    else:
        resp = oa.responses.create(**kw)
    (call,) = resp.output
    assert call.type == "function_call" and call.name == "get_weather" and json.loads(call.arguments) == {"city": "Paris"}
    assert call.call_id and resp.status == "completed"


async def test_the_agents_sdk_runs_its_tool_loop_over_the_endpoint(tool_app):
    agents = pytest.importorskip("agents")
    import httpx

    client, core = tool_app
    http = httpx.AsyncClient(transport=httpx.ASGITransport(app=client.app, client=("127.0.0.1", 5000)))
    oa = openai.AsyncOpenAI(base_url="http://testserver/v1", api_key="x", http_client=http, max_retries=0)
    agents.set_tracing_disabled(True)
    seen = []

    @agents.function_tool
    def get_weather(city: str) -> str:
        """Current weather of a city."""
        seen.append(city)
        return "18 C"

    agent = agents.Agent(name="w", instructions="Use the tool.", tools=[get_weather],
                         model=agents.OpenAIResponsesModel(model="smollm2-135m", openai_client=oa),
                         model_settings=agents.ModelSettings(tool_choice="required"))
    result = await agents.Runner.run(agent, "Weather in Paris?", max_turns=3)
    assert seen == ["Paris"] and result.final_output == "Sunny."
    second = core.queries[-1].messages  # the tool call and its result went back as history
    assert [m.role for m in second][:2] == ["system", "user"] and len(second) >= 4
