"""`POST /v1/responses` end to end: real Ray Serve, the session's real vLLM workers, the official `openai` client.

Checks the stateless subset agents use: text answers (plain and streamed: the deltas concatenate to the
plain text), usage equal to the trace, function tools with `tool_choice` (a valid call of a declared
tool), a function call and its output sent back as input items, a JSON-schema text format, and the
clear 400s of what a stateless router cannot do, after which it keeps serving."""
from __future__ import annotations

import json

import openai
import pytest


pytestmark = pytest.mark.integration

WEATHER = {"type": "function", "name": "get_weather", "description": "Current weather of a city.",
           "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"],
                          "additionalProperties": False}, "strict": True}


@pytest.fixture(scope="module")
def base_url(openai_base_url):
    return openai_base_url


@pytest.fixture(scope="module")
def client(base_url):
    return openai.OpenAI(base_url=base_url, api_key="unused-on-loopback", max_retries=0, timeout=180)


def trace_usage(trace) -> tuple[int, int]:
    return (sum(u["prompt_tokens"] for u in trace["usage"]), sum(u["generated_tokens"] for u in trace["usage"]))


def test_text_answer_plain_and_streamed_agree_with_usage_from_the_trace(client):
    kw = dict(model="smollm2-135m", instructions="Answer briefly.", input="Name a prime number.",
              max_output_tokens=12, temperature=0)
    whole = client.responses.create(**kw, extra_body={"thinkroute": {"trace": True}})
    assert whole.status in ("completed", "incomplete") and whole.output_text
    trace = whole.model_extra["thinkroute_trace"]
    assert (whole.usage.input_tokens, whole.usage.output_tokens) == trace_usage(trace)
    events = list(client.responses.create(**kw, stream=True))
    kinds = [e.type for e in events]
    assert kinds[:4] == ["response.created", "response.in_progress", "response.output_item.added",
                         "response.content_part.added"]
    assert kinds[-1] in ("response.completed", "response.incomplete")
    assert [e.sequence_number for e in events] == list(range(len(events)))
    deltas = [e.delta for e in events if e.type == "response.output_text.delta"]
    assert len(deltas) > 1 and "".join(deltas) == whole.output_text
    assert events[-1].response.output_text == whole.output_text
    assert events[-1].response.usage.total_tokens == whole.usage.total_tokens


@pytest.mark.parametrize("model", ["smollm2-135m", "gemma3-270m"])
def test_required_tool_choice_gives_a_valid_call_of_the_declared_tool(client, model):
    resp = client.responses.create(model=model, input="What is the weather in Paris?", tools=[WEATHER],
                                   tool_choice="required", max_output_tokens=64, temperature=0)
    calls = [o for o in resp.output if o.type == "function_call"]
    assert calls and all(c.name == "get_weather" for c in calls), resp.output
    args = json.loads(calls[0].arguments)
    assert set(args) == {"city"} and isinstance(args["city"], str)
    assert calls[0].call_id


def test_streamed_function_call_events(client):
    events = list(client.responses.create(model="smollm2-135m", input="Weather in Rome?", tools=[WEATHER],
                                          tool_choice={"type": "function", "name": "get_weather"},
                                          max_output_tokens=64, stream=True))
    added = [e for e in events if e.type == "response.output_item.added" and e.item.type == "function_call"]
    assert added and added[0].item.name == "get_weather" and added[0].item.call_id
    done = [e for e in events if e.type == "response.function_call_arguments.done"]
    deltas = "".join(e.delta for e in events if e.type == "response.function_call_arguments.delta")
    assert done and done[0].arguments == deltas and "city" in json.loads(deltas)
    final = events[-1].response
    assert [o.type for o in final.output if o.type == "function_call"] == ["function_call"]


def test_a_function_call_and_its_output_come_back_as_input_items(client):
    items = [{"role": "user", "content": "What is the weather in Paris?"},
             {"type": "function_call", "call_id": "call_1", "name": "get_weather", "arguments": "{\"city\": \"Paris\"}"},
             {"type": "function_call_output", "call_id": "call_1", "output": "18 degrees and sunny"}]
    resp = client.responses.create(model="smollm2-135m", input=items, tools=[WEATHER], tool_choice="none",
                                   max_output_tokens=24, temperature=0, extra_body={"thinkroute": {"trace": True}})
    assert resp.output_text and not [o for o in resp.output if o.type == "function_call"]
    assert resp.usage.input_tokens > 20  # the whole conversation, tool result included, reached the model


def test_json_schema_text_format_returns_valid_json(client):
    schema = {"type": "object", "properties": {"city": {"type": "string"}, "celsius": {"type": "integer"}},
              "required": ["city", "celsius"], "additionalProperties": False}
    resp = client.responses.create(model="smollm2-135m", input="Paris is 18 degrees. Give the city and degrees.",
                                   text={"format": {"type": "json_schema", "name": "reading", "schema": schema,
                                                    "strict": True}}, max_output_tokens=48, temperature=0)
    data = json.loads(resp.output_text)
    assert set(data) == {"city", "celsius"} and isinstance(data["celsius"], int)


def test_stateless_refusals_are_400s_and_the_server_keeps_serving(client):
    with pytest.raises(openai.BadRequestError) as err:
        client.responses.create(model="thinkroute", input="hi", previous_response_id="resp_123")
    assert err.value.body["param"] == "previous_response_id" and "stateless" in err.value.body["message"]
    with pytest.raises(openai.BadRequestError) as err:
        client.responses.create(model="thinkroute", input="hi", tools=[{"type": "web_search"}])
    assert err.value.body["param"] == "tools.0.type"
    ok = client.responses.create(model="smollm2-135m", input="hi", max_output_tokens=2, store=True)
    assert ok.status in ("completed", "incomplete")
