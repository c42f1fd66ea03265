"""Real agent frameworks, unchanged but for their base URL, run a tool loop through thinkroute.

Real Ray Serve, the session's real vLLM workers (SmolLM2-135M answers), and the frameworks' own
clients: the OpenAI Agents SDK (`OpenAIChatCompletionsModel` and the default Responses model, both
plain and streamed), LangChain 1.x (`create_agent`, `with_structured_output`) and LlamaIndex's
`OpenAILike` with function calling (in its own environment, .venv-llamaindex: it needs openai<3). Each loop must call the declared tool with valid arguments,
send its result back, and end with the model's answer.

A 135M model does not decide reliably when to call a tool, so each loop forces the first turn with
`tool_choice="required"` (enforced by structured outputs, so the call is always valid) and asks the
answer turn with `tool_choice="none"` (free text), through each framework's own knob for it.
"""
from __future__ import annotations

import dataclasses
import json
import subprocess

import openai
import pytest
from pydantic import BaseModel

from tests.conftest import REPO

pytestmark = pytest.mark.integration

MODEL = "smollm2-135m"
INSTRUCTIONS = "You are a weather assistant. Use the get_weather tool, then answer in one sentence."
QUESTION = "What is the weather in Paris?"


@pytest.fixture(scope="module")
def base_url(openai_base_url):
    return openai_base_url


class WeatherLog:
    """The tool's implementation; records every call it receives."""

    def __init__(self) -> None:
        self.cities: list[str] = []

    def __call__(self, city: str) -> str:
        self.cities.append(city)
        return f"It is 18 degrees Celsius and sunny in {city}."


def _check_loop(log: WeatherLog, answer: str) -> None:
    assert log.cities and all(isinstance(c, str) and c.strip() for c in log.cities), log.cities
    assert isinstance(answer, str) and answer.strip()
    assert "<tool_call>" not in answer


# -- OpenAI Agents SDK -----------------------------------------------------------------------------
def _agents_setup(base_url: str, log: WeatherLog, model):
    agents = pytest.importorskip("agents", reason="openai-agents is not installed in .venv")
    agents.set_tracing_disabled(True)

    @agents.function_tool
    def get_weather(city: str) -> str:
        """Current weather of a city."""
        return log(city)

    class AnswerAfterTheTool(agents.RunHooks):
        """After the tool ran, ask for the answer as text (tool_choice none)."""

        async def on_tool_end(self, context, agent, tool, result):
            agent.model_settings = dataclasses.replace(agent.model_settings, tool_choice="none")

    agent = agents.Agent(name="weather", instructions=INSTRUCTIONS, tools=[get_weather], model=model,
                         reset_tool_choice=False,
                         model_settings=agents.ModelSettings(tool_choice="required", parallel_tool_calls=False,
                                                             temperature=0, max_tokens=64))
    return agents, agent, AnswerAfterTheTool()


def _agents_items(result) -> list[str]:
    return [item.type for item in result.new_items]


@pytest.mark.parametrize("api", ["chat_completions", "responses"])
async def test_openai_agents_sdk_runs_a_tool_loop(base_url, api):
    agents = pytest.importorskip("agents", reason="openai-agents is not installed in .venv")
    client = openai.AsyncOpenAI(base_url=base_url, api_key="unused-on-loopback", max_retries=0, timeout=180)
    if api == "chat_completions":
        model = agents.OpenAIChatCompletionsModel(model=MODEL, openai_client=client)
    else:  # the SDK's default: a model name resolved by its default provider, on the Responses API
        agents.set_default_openai_client(client, use_for_tracing=False)
        agents.set_default_openai_api("responses")
        model = MODEL
    log = WeatherLog()
    agents, agent, hooks = _agents_setup(base_url, log, model)
    result = await agents.Runner.run(agent, QUESTION, hooks=hooks, max_turns=4)
    assert _agents_items(result) == ["tool_call_item", "tool_call_output_item", "message_output_item"]
    assert len(result.raw_responses) == 2
    _check_loop(log, result.final_output)


async def test_openai_agents_sdk_streams_a_tool_loop_on_the_responses_api(base_url):
    agents = pytest.importorskip("agents", reason="openai-agents is not installed in .venv")
    client = openai.AsyncOpenAI(base_url=base_url, api_key="unused-on-loopback", max_retries=0, timeout=180)
    log = WeatherLog()
    agents, agent, hooks = _agents_setup(base_url, log, agents.OpenAIResponsesModel(model=MODEL, openai_client=client))
    run = agents.Runner.run_streamed(agent, QUESTION, hooks=hooks, max_turns=4)
    deltas = []
    async for event in run.stream_events():
        if event.type == "raw_response_event" and event.data.type == "response.output_text.delta":
            deltas.append(event.data.delta)
    assert _agents_items(run) == ["tool_call_item", "tool_call_output_item", "message_output_item"]
    assert deltas and "".join(deltas) == run.final_output
    _check_loop(log, run.final_output)


# -- LangChain -------------------------------------------------------------------------------------
def _chat_openai(base_url: str):
    lc_openai = pytest.importorskip("langchain_openai", reason="langchain-openai is not installed in .venv")
    return lc_openai.ChatOpenAI(model=MODEL, base_url=base_url, api_key="unused-on-loopback", temperature=0,
                                max_tokens=64, max_retries=0, timeout=180)


def test_langchain_create_agent_runs_a_tool_loop(base_url):
    lc_agents = pytest.importorskip("langchain.agents", reason="langchain 1.x is not installed in .venv")
    from langchain.agents.middleware import wrap_model_call
    from langchain_core.messages import AIMessage, ToolMessage
    from langchain_core.tools import tool

    log = WeatherLog()

    @tool
    def get_weather(city: str) -> str:
        """Current weather of a city."""
        return log(city)

    @wrap_model_call
    def tool_then_answer(request, handler):
        used = any(isinstance(m, ToolMessage) for m in request.messages)
        return handler(request.override(tool_choice="none" if used else "required",
                                        model_settings={**request.model_settings, "parallel_tool_calls": False}))

    agent = lc_agents.create_agent(_chat_openai(base_url), tools=[get_weather], system_prompt=INSTRUCTIONS,
                                   middleware=[tool_then_answer])
    messages = agent.invoke({"messages": [{"role": "user", "content": QUESTION}]})["messages"]
    kinds = [type(m).__name__ for m in messages]
    assert kinds == ["HumanMessage", "AIMessage", "ToolMessage", "AIMessage"], kinds
    call = messages[1].tool_calls[0]
    assert call["name"] == "get_weather" and messages[2].tool_call_id == call["id"]
    assert isinstance(messages[3], AIMessage) and not messages[3].tool_calls
    _check_loop(log, messages[3].content)


class Reading(BaseModel):
    city: str
    celsius: int


@pytest.mark.parametrize("method", ["json_schema", "function_calling"])
def test_langchain_with_structured_output_returns_a_valid_pydantic_object(base_url, method):
    llm = _chat_openai(base_url).with_structured_output(Reading, method=method)
    reading = llm.invoke("Paris has 18 degrees Celsius. Report the city and the temperature.")
    assert isinstance(reading, Reading) and reading.city.strip()


# -- LlamaIndex ------------------------------------------------------------------------------------
LLAMAINDEX_PYTHON = REPO / ".venv-llamaindex" / "bin" / "python"


def test_llamaindex_openai_like_calls_a_function_and_answers(base_url):
    """LlamaIndex needs openai<3: its loop (tests/integration/llamaindex_loop.py) runs in .venv-llamaindex."""
    if not LLAMAINDEX_PYTHON.exists():
        pytest.skip(f"{LLAMAINDEX_PYTHON} is missing: ops/setup.sh creates it (llama-index-llms-openai-like)")
    out = subprocess.run([str(LLAMAINDEX_PYTHON), str(REPO / "tests" / "integration" / "llamaindex_loop.py"),
                          base_url, MODEL], capture_output=True, text=True, timeout=600, cwd=REPO)
    assert out.returncode == 0, out.stderr[-3000:]
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert result["calls"] and all(c["name"] == "get_weather" and c["id"] for c in result["calls"])
    assert set(result["calls"][0]["kwargs"]) == {"city"}
    log = WeatherLog()
    log.cities = result["cities"]
    _check_loop(log, result["answer"])
