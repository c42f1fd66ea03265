"""A LlamaIndex `OpenAILike` tool loop against a running thinkroute, run in .venv-llamaindex.

LlamaIndex's OpenAI client needs openai<3, so it has its own environment (ops/setup.sh);
tests/integration/test_agents.py runs this file with that environment's Python:

    .venv-llamaindex/bin/python tests/integration/llamaindex_loop.py http://127.0.0.1:8000/v1 smollm2-135m

Prints one JSON object: the tool calls the model made, what the tool received, the answer.
"""
from __future__ import annotations

import json
import sys


def main(base_url: str, model: str) -> dict:
    from llama_index.core.llms import ChatMessage
    from llama_index.core.tools import FunctionTool
    from llama_index.llms.openai_like import OpenAILike

    cities: list[str] = []

    def get_weather(city: str) -> str:
        """Current weather of a city."""
        cities.append(city)
        return f"It is 18 degrees Celsius and sunny in {city}."

    llm = OpenAILike(model=model, api_base=base_url, api_key="unused-on-loopback", is_chat_model=True,
                     is_function_calling_model=True, context_window=2048, max_tokens=64, temperature=0,
                     timeout=180, max_retries=0)
    tool = FunctionTool.from_defaults(fn=get_weather)
    question = "What is the weather in Paris?"
    history = [ChatMessage(role="system", content="You are a weather assistant. Use the get_weather tool, "
                                                  "then answer in one sentence.")]
    first = llm.chat_with_tools([tool], user_msg=question, chat_history=history, tool_required=True)
    calls = llm.get_tool_calls_from_response(first, error_on_no_tool_call=True)
    history += [ChatMessage(role="user", content=question), first.message]
    for call in calls:
        output = tool(**call.tool_kwargs)
        history.append(ChatMessage(role="tool", content=str(output),
                                   additional_kwargs={"tool_call_id": call.tool_id, "name": call.tool_name}))
    answer = llm.chat(history, tool_choice="none")
    return {"calls": [{"name": c.tool_name, "id": c.tool_id, "kwargs": c.tool_kwargs} for c in calls],
            "cities": cities, "answer": answer.message.content}


if __name__ == "__main__":
    print(json.dumps(main(sys.argv[1], sys.argv[2])))
