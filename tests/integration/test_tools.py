"""Tool calls and structured outputs end to end, on the real stack: the session's vLLM workers
(SmolLM2-135M, Gemma 3 270M), the hf worker, real Ray Serve with its HTTP proxy, and the official
`openai` client.

- worker contract: a constrained request beside unconstrained ones in the same batch (vLLM issue
  51283 guard); each constraint kind enforced; the hf backend refuses naming itself;
- `tool_choice="required"` / named: a valid call of a declared tool on both embedded models,
  streamed and not; `auto` parses the model's call; `response_format` json_schema valid for its
  schema, streamed and not; tools + response_format;
- the bad-input table over HTTP (400 in OpenAI's shape naming `param`; the server keeps serving);
- a streaming client that disconnects before the first delta cancels the worker's request;
- `model` names who answered and `usage` carries `cost` and a per-model breakdown.
"""
from __future__ import annotations

import asyncio
import json
import re
import socket
import time

import grpc
import httpx
import jsonschema
import openai
import pytest

from tests.conftest import free_port

pytestmark = pytest.mark.integration

WEATHER = {"type": "function", "function": {
    "name": "get_weather", "description": "Get the current weather in a city",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"],
                   "additionalProperties": False}}}
ADD = {"type": "function", "function": {
    "name": "add", "description": "Add two numbers",
    "parameters": {"type": "object", "properties": {"a": {"type": "number"}, "b": {"type": "number"}},
                   "required": ["a", "b"], "additionalProperties": False}}}
TOOLS = [WEATHER, ADD]
PERSON = {"type": "object", "properties": {"name": {"type": "string"}, "age": {"type": "integer"}},
          "required": ["name", "age"], "additionalProperties": False}
MODELS = ["smollm2-135m", "gemma3-270m"]
ASK = [{"role": "user", "content": "What is the weather like in Paris today?"}]


def assert_valid_call(call, tools=TOOLS):
    declared = {t["function"]["name"]: t["function"]["parameters"] for t in tools}
    assert call.type == "function" and call.id.startswith("call_")
    assert call.function.name in declared
    jsonschema.validate(json.loads(call.function.arguments), declared[call.function.name])


# -- the worker contract ---------------------------------------------------------------------------------
def _worker_generate(address, prompt, max_tokens, constraint=None):
    from router.worker_client import WorkerClient
    from workers.types import PromptInput, Sampling

    async def run():
        client = WorkerClient(address)
        parts, final = [], None
        try:
            async for m in client.generate(PromptInput(text=prompt), Sampling(max_tokens=max_tokens, constraint=constraint),
                                           timeout=120):
                parts.append(m.text_delta)
                if m.HasField("final"):
                    final = m.final
        finally:
            await client.close()
        return "".join(parts), final
    return run()


def test_constrained_beside_unconstrained_in_one_batch(smollm2_vllm):
    """vLLM issue 51283 guard: one constrained request must not take down the batch (or the engine)."""
    from workers.types import Constraint

    schema = Constraint(json_schema=json.dumps(PERSON))

    async def batch():
        return await asyncio.gather(
            _worker_generate(smollm2_vllm.address, "Invent a person as JSON:", 48, schema),
            _worker_generate(smollm2_vllm.address, "Once upon a time", 48),
            _worker_generate(smollm2_vllm.address, "The capital of France is", 48),
            _worker_generate(smollm2_vllm.address, "Pick yes or no:", 8, Constraint(choice=("yes", "no"))),
        )

    (js, _), (free1, f1), (free2, f2), (yn, _) = asyncio.run(batch())
    jsonschema.validate(json.loads(js), PERSON)
    assert yn in ("yes", "no")
    assert free1.strip() and free2.strip() and f1.usage.generated_tokens > 0
    # ... and the engine still serves afterwards
    text, final = asyncio.run(_worker_generate(smollm2_vllm.address, "Count: 1, 2, 3,", 8, Constraint(regex=r" [0-9]+")))
    assert re.fullmatch(r" [0-9]+", text), text
    assert smollm2_vllm.proc.poll() is None


def test_grammar_constraint_on_the_worker(smollm2_vllm):
    from workers.types import Constraint

    text, _ = asyncio.run(_worker_generate(smollm2_vllm.address, "Answer:", 16,
                                           Constraint(grammar='root ::= "ok " ("yes" | "no")')))
    assert text in ("ok yes", "ok no")


def test_malformed_constraint_is_invalid_argument(smollm2_vllm):
    from workers.types import Constraint

    with pytest.raises(grpc.aio.AioRpcError) as e:
        asyncio.run(_worker_generate(smollm2_vllm.address, "x", 4, Constraint(json_schema="{not json")))
    assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "json_schema" in e.value.details()


def test_hf_backend_refuses_constraints_naming_itself(smollm2_hf):
    from workers.types import Constraint

    with pytest.raises(grpc.aio.AioRpcError) as e:
        asyncio.run(_worker_generate(smollm2_hf.address, "x", 4, Constraint(regex="a+")))
    assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "hf backend" in e.value.details()


# -- the HTTP API -------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def stack(worker_addresses):
    """Ray Serve (HTTP proxy) with the embedded config over the session's vLLM workers; anonymous loopback access."""
    import ray
    from ray import serve
    from ray.serve.config import HTTPOptions

    from router.config import load_config
    from router.serve_app import build_app

    # `llama`: a Llama 3.x pool no worker serves, to show a one-call-per-turn family's refusal at the boundary
    config = load_config(overrides={"router.request_timeout_s": 180, "models.llama": {
        "model": "llama3.2-1b-instruct", "replicas": 0, "addresses": [f"127.0.0.1:{free_port()}"]}})
    http_port = free_port()
    ray.init(num_cpus=2, include_dashboard=False, logging_level="WARNING")
    serve.start(http_options=HTTPOptions(host="127.0.0.1", port=http_port))
    serve.run(build_app(config, {**worker_addresses, "llama": config.models["llama"].addresses}), name="thinkroute",
              route_prefix="/")
    try:
        yield {"base": f"http://127.0.0.1:{http_port}", "workers": worker_addresses}
    finally:
        serve.shutdown()
        ray.shutdown()


@pytest.fixture(scope="module")
def client(stack):
    return openai.OpenAI(base_url=stack["base"] + "/v1", api_key="unused-on-loopback", max_retries=0, timeout=300)


@pytest.mark.parametrize("model", MODELS)
def test_required_gives_a_valid_call_of_a_declared_tool_on_each_embedded_model(client, model):
    r = client.chat.completions.create(model=model, messages=ASK, tools=TOOLS, tool_choice="required",
                                       max_tokens=64, temperature=0)
    choice = r.choices[0]
    assert choice.finish_reason == "tool_calls", choice
    assert len(choice.message.tool_calls) == 1
    assert_valid_call(choice.message.tool_calls[0])
    assert r.model == model
    assert r.usage.model_extra["models"][model]["calls"] == 1
    assert r.usage.model_extra["cost"] > 0


@pytest.mark.parametrize("model", MODELS)
def test_required_streamed_sends_id_and_name_first(client, model):
    stream = client.chat.completions.create(model=model, messages=ASK, tools=TOOLS, tool_choice="required",
                                            max_tokens=64, temperature=0, stream=True)
    chunks = list(stream)
    deltas = [c.choices[0].delta for c in chunks if c.choices]
    calls = [d.tool_calls[0] for d in deltas if d.tool_calls]
    assert calls[0].id.startswith("call_") and calls[0].function.name in ("get_weather", "add")
    args = "".join(c.function.arguments or "" for c in calls)
    jsonschema.validate(json.loads(args), {t["function"]["name"]: t for t in TOOLS}[calls[0].function.name]
                        ["function"]["parameters"])
    assert chunks[-1].choices[0].finish_reason == "tool_calls"
    assert chunks[-1].usage is not None and chunks[-1].usage.model_extra["cost"] > 0  # usage without asking
    assert chunks[-1].model == model


def test_named_function_is_called_and_the_loop_continues_with_its_result(client):
    first = client.chat.completions.create(
        model="smollm2-135m", messages=[{"role": "user", "content": "What is 2 plus 3?"}], tools=TOOLS,
        tool_choice={"type": "function", "function": {"name": "add"}}, max_tokens=64)
    call = first.choices[0].message.tool_calls[0]
    assert call.function.name == "add"
    assert_valid_call(call)
    history = [{"role": "user", "content": "What is 2 plus 3?"}, first.choices[0].message.model_dump(exclude_none=True),
               {"role": "tool", "tool_call_id": call.id, "content": "5"}]
    final = client.chat.completions.create(model="smollm2-135m", messages=history, tools=TOOLS, tool_choice="none",
                                           max_tokens=32)
    assert final.choices[0].finish_reason in ("stop", "length") and final.choices[0].message.content
    assert final.choices[0].message.tool_calls is None


def test_auto_parses_a_call_the_model_writes(client):
    """`auto` leaves the model free; its text is parsed. A one-shot history (a question answered by a call)
    shows SmolLM2 the format, so it writes a call; the response must return it as a parsed tool call."""
    shot = [{"role": "user", "content": "What is the weather in Oslo?"},
            {"role": "assistant", "content": None, "tool_calls": [
                {"id": "call_0", "type": "function", "function": {"name": "get_weather", "arguments": "{\"city\": \"Oslo\"}"}}]},
            {"role": "user", "content": "What is the weather in Paris?"}]
    r = client.chat.completions.create(model="smollm2-135m", messages=shot, tools=TOOLS, tool_choice="auto",
                                       max_tokens=64, temperature=0)
    msg = r.choices[0].message
    assert msg.tool_calls, f"no call parsed from {msg.content!r}"
    assert r.choices[0].finish_reason == "tool_calls"
    assert_valid_call(msg.tool_calls[0])
    assert "<tool_call>" not in (msg.content or "")
    # streamed: the same call arrives as tool-call deltas, none of its text as content
    chunks = list(client.chat.completions.create(model="smollm2-135m", messages=shot, tools=TOOLS, tool_choice="auto",
                                                 max_tokens=64, temperature=0, stream=True))
    assert any(c.choices and c.choices[0].delta.tool_calls for c in chunks)
    assert "<tool_call>" not in "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert chunks[-1].choices[0].finish_reason == "tool_calls"


def test_policy_routes_tool_turns_only_to_plans_that_can_and_says_why(client):
    r = client.chat.completions.create(model="thinkroute:dial=1", messages=ASK, tools=TOOLS, tool_choice="required",
                                       max_tokens=64, extra_body={"thinkroute": {"trace": True}})
    trace = r.model_extra["thinkroute_trace"]
    assert trace["plan"]["strategy"] == "direct"
    assert "tool-calling turn" in trace["plan"]["reason"]
    assert set(trace["plan"]["candidates"]["excluded"]) >= {"specreason", "hawkeye"}
    assert_valid_call(r.choices[0].message.tool_calls[0])


@pytest.mark.parametrize("model", MODELS)
def test_json_schema_response_is_valid_streamed_and_not(client, model):
    fmt = {"type": "json_schema", "json_schema": {"name": "person", "schema": PERSON, "strict": True}}
    msgs = [{"role": "user", "content": "Invent a person with a name and an age."}]
    r = client.chat.completions.create(model=model, messages=msgs, response_format=fmt, max_tokens=64)
    jsonschema.validate(json.loads(r.choices[0].message.content), PERSON)
    chunks = list(client.chat.completions.create(model=model, messages=msgs, response_format=fmt, max_tokens=64,
                                                 stream=True, stream_options={"include_usage": True}))
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    jsonschema.validate(json.loads(text), PERSON)
    assert text == r.choices[0].message.content  # greedy: the same JSON streamed and not
    assert chunks[-1].choices == [] and chunks[-1].usage.model_extra["models"][model]["completion_tokens"] > 0


def test_json_object_and_parse_helper(client):
    r = client.chat.completions.create(model="smollm2-135m", response_format={"type": "json_object"}, max_tokens=256,
                                       messages=[{"role": "user", "content": "Give a cat's name and color as JSON."}])
    assert r.choices[0].finish_reason == "stop", r.choices[0].message.content  # not cut by max_tokens
    assert isinstance(json.loads(r.choices[0].message.content), dict)


def test_tools_with_response_format_answer_either_way(client):
    fmt = {"type": "json_schema", "json_schema": {"name": "person", "schema": PERSON}}
    r = client.chat.completions.create(model="smollm2-135m", messages=ASK, tools=TOOLS, tool_choice="auto",
                                       response_format=fmt, max_tokens=64)
    msg = r.choices[0].message
    if msg.tool_calls:
        assert_valid_call(msg.tool_calls[0])
    else:
        jsonschema.validate(json.loads(msg.content), PERSON)


BAD = [
    ("unknown-tool-in-tool-choice", {"tools": TOOLS, "tool_choice": {"type": "function", "function": {"name": "nope"}}},
     "tool_choice"),
    ("schema-not-a-json-schema", {"response_format": {"type": "json_schema", "json_schema": {
        "name": "x", "schema": {"type": "integerish"}}}}, "response_format.json_schema.schema"),
    ("tool-parameters-not-a-json-schema", {"tools": [{"type": "function", "function": {
        "name": "f", "parameters": {"properties": 3}}}]}, "tools[0].function.parameters"),
    ("tool-message-without-matching-call", {"messages": [
        {"role": "user", "content": "hi"},
        {"role": "assistant", "content": None, "tool_calls": [{"id": "call_a", "type": "function",
                                                                "function": {"name": "add", "arguments": "{}"}}]},
        {"role": "tool", "tool_call_id": "call_b", "content": "3"}], "tools": TOOLS}, "messages[2].tool_call_id"),
    ("parallel-tool-calls-on-a-one-call-model", {"model": "llama", "tools": TOOLS, "parallel_tool_calls": True},
     "parallel_tool_calls"),
    ("tools-on-a-pair-strategy", {"model": "strategy/specreason", "tools": TOOLS}, "tools"),
]


@pytest.mark.parametrize("extra, param", [(e, p) for _, e, p in BAD], ids=[i for i, _, _ in BAD])
def test_bad_input_is_a_400_naming_the_field_and_serving_goes_on(stack, client, extra, param):
    body = {"model": "smollm2-135m", "messages": ASK, "max_tokens": 8, **extra}
    r = httpx.post(stack["base"] + "/v1/chat/completions", json=body, timeout=120)
    assert r.status_code == 400, r.text
    err = r.json()["error"]
    assert err["param"] == param and err["type"] == "invalid_request_error" and err["message"]
    with pytest.raises(openai.BadRequestError):  # the official client sees the same
        client.chat.completions.create(**body)
    ok = client.chat.completions.create(model="smollm2-135m", messages=ASK, max_tokens=4)
    assert ok.choices[0].message.content is not None


def _load(address: str):
    from thinkroute.v1 import worker_pb2 as wpb
    from thinkroute.v1 import worker_pb2_grpc as wpb_grpc

    with grpc.insecure_channel(address) as ch:
        return wpb_grpc.WorkerStub(ch).Load(wpb.LoadRequest(), timeout=5)


def test_streaming_client_disconnect_before_the_first_delta_aborts_the_worker_request(stack):
    """A forced call whose argument must be long keeps the worker busy for many seconds and sends the client
    no delta until it ends; the client hangs up after the worker started: the worker's request must go."""
    address = stack["workers"]["smollm2-135m"][0]
    essay = {"type": "function", "function": {"name": "write", "parameters": {
        "type": "object", "properties": {"text": {"type": "string", "minLength": 3000}}, "required": ["text"]}}}
    body = {"model": "smollm2-135m", "stream": True, "max_tokens": 1500, "tools": [essay], "tool_choice": "required",
            "messages": [{"role": "user", "content": "Write a very long story about the sea."}]}
    assert _load(address).running == 0
    host, port = stack["base"].removeprefix("http://").split(":")
    payload = json.dumps(body).encode()
    sock = socket.create_connection((host, int(port)), timeout=30)
    sock.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                 + f"Content-Length: {len(payload)}\r\n\r\n".encode() + payload)
    t0 = time.monotonic()
    while _load(address).running == 0:
        assert time.monotonic() - t0 < 60, "the worker never started the request"
        time.sleep(0.05)
    sock.setblocking(False)
    try:
        received = sock.recv(65536)
    except BlockingIOError:
        received = b""
    assert b"tool_calls" not in received  # no delta of the answer has reached the client
    sock.close()  # hang up
    hung_up = time.monotonic()
    while _load(address).running > 0:
        assert time.monotonic() - hung_up < 10, "the worker kept generating after the client went away"
        time.sleep(0.05)
    freed = time.monotonic() - hung_up
    # Left alone, the request runs far longer: >= 3000 characters of JSON string on a CPU.
    assert freed < 10, freed
    ok = httpx.post(stack["base"] + "/v1/chat/completions", json={"model": "smollm2-135m", "messages": ASK,
                                                                  "max_tokens": 4}, timeout=120)
    assert ok.status_code == 200
