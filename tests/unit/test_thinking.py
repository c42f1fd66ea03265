"""Reasoning modes and budget forcing (workers/thinking.py) against a scripted engine (pure logic)."""
from __future__ import annotations

import asyncio

import pytest

from workers.errors import InvalidRequest
from workers.models import MODELS, THINKING_FAMILIES, thinking_config
from workers.thinking import ThinkingConfig, generate_with_thinking, parse_mode, resolve, supported_modes
from workers.types import Constraint, FinishReason, GenerateChunk, GenerateFinal, Sampling

CFG = ThinkingConfig(start="<t>", end="</t>", modes=["on", "budget", "effort"], effort={"low": 3, "medium": 5, "high": 9})


def encode(text: str) -> list[int]:
    """One id per character (ord), so marker lengths are visible."""
    return [ord(c) for c in text]


class ScriptedEngine:
    """Emits one character-token per chunk from `script`; honours max_tokens and stop strings like vLLM
    (the stop string's tokens are generated, its text is cut out)."""

    def __init__(self, script: str, answer: str) -> None:
        self.scripts = [script, answer]
        self.calls: list[tuple[str, list[int], Sampling]] = []

    async def generate(self, request_id: str, ids: list[int], s: Sampling):
        self.calls.append((request_id, list(ids), s))
        script = self.scripts[min(len(self.calls) - 1, 1)]
        text, stop = "", ""
        for ch in script[:s.max_tokens]:
            text += ch
            stop = next((x for x in s.stop if text.endswith(x)), "")
            if stop:
                break
        n = len(text)
        visible = len(text) - len(stop)  # vLLM holds back a possible stop string and cuts a matched one out
        for i, ch in enumerate(text):
            yield GenerateChunk(text=ch if i < visible else "", token_ids=[ord(ch)])
        finish = FinishReason.STOP if stop or n < s.max_tokens else FinishReason.LENGTH
        yield GenerateChunk(text="", final=GenerateFinal(finish_reason=finish, prompt_tokens=len(ids),
                                                         generated_tokens=n, stop_string=stop))


def run(plan, engine, max_tokens=40, prompt="Q:", **kw):
    async def go():
        chunks = []
        sampling = Sampling(max_tokens=max_tokens, stop=("STOP",), **kw)
        async for c in generate_with_thinking(plan, CFG, "r1", encode(prompt), sampling, generate=engine.generate,
                                              encode=encode, context_length=4096):
            chunks.append(c)
        return chunks
    return asyncio.run(go())


def test_parse_mode_accepts_the_grammar_and_names_it_otherwise():
    assert parse_mode("off") == ("off", "")
    assert parse_mode("budget=512") == ("budget", "512")
    assert parse_mode("effort=high") == ("effort", "high")
    for bad in ["", "budget=0", "budget=-1", "budget=99999", "effort=max", "ON", "on ", "on\n", "budget=1e3", "x" * 100]:
        with pytest.raises(InvalidRequest, match="budget=<N>|budget is"):
            parse_mode(bad)


def test_budget_caps_thinking_then_the_answer_follows():
    engine = ScriptedEngine("abcdefghijklmnop", "42")
    chunks = run(resolve("budget=5", CFG, "m", chat_prompt=True), engine)
    text = "".join(c.text for c in chunks)
    assert text == "<t>abcde</t>\n42"
    final = chunks[-1].final
    assert final.thinking_tokens == 5 and final.generated_tokens == 7
    # thinking call: opened span, capped at the budget, stops at the end marker, no caller stop/constraint
    (_, ids1, s1), (rid2, ids2, s2) = engine.calls
    assert ids1 == encode("Q:<t>") and s1.max_tokens == 5 and s1.stop == ("</t>",)
    # answer call: prompt + thinking + end marker, remaining tokens, the caller's stop strings
    assert ids2 == encode("Q:<t>abcde</t>\n") and s2.max_tokens == 35 and s2.stop == ("STOP",)
    assert rid2 == "r1-answer"
    think_ids = [t for c in chunks[:-1] for t in c.token_ids][:final.thinking_tokens]
    assert len(think_ids) <= 5


def test_the_model_closing_its_span_itself_is_not_closed_twice():
    engine = ScriptedEngine("ab</t>zzzz", "yes")
    chunks = run(resolve("on", CFG, "m", chat_prompt=True), engine)
    assert "".join(c.text for c in chunks) == "<t>ab</t>\nyes"
    assert chunks[-1].final.thinking_tokens == 6  # a, b and the 4 marker tokens the model generated
    assert engine.calls[1][1] == encode("Q:<t>ab</t>\n")


def test_an_open_span_in_the_prompt_is_not_opened_again_and_effort_maps_to_the_family_budget():
    engine = ScriptedEngine("abcdefgh", "ok")
    chunks = run(resolve("effort=low", CFG, "m", chat_prompt=False), engine, prompt="Q:<t>")
    assert "".join(c.text for c in chunks) == "abc</t>\nok"
    assert chunks[-1].final.thinking_tokens == 3


def test_total_tokens_stay_within_max_tokens():
    engine = ScriptedEngine("abcdefghij", "answer-that-is-long")
    chunks = run(resolve("on", CFG, "m", chat_prompt=True), engine, max_tokens=8)
    final = chunks[-1].final
    assert final.generated_tokens == 8 and final.thinking_tokens == 8
    assert final.finish_reason == FinishReason.LENGTH and len(engine.calls) == 1
    engine = ScriptedEngine("abcdefghij", "answer-that-is-long")
    final = run(resolve("budget=4", CFG, "m", chat_prompt=True), engine, max_tokens=8)[-1].final
    assert final.generated_tokens == 8 and final.thinking_tokens == 4 and final.finish_reason == FinishReason.LENGTH


def test_constraint_applies_to_the_answer_only():
    engine = ScriptedEngine("abc", "{}")
    run(resolve("budget=2", CFG, "m", chat_prompt=True), engine, constraint=Constraint(regex=".*"))
    assert engine.calls[0][2].constraint is None and engine.calls[1][2].constraint is not None


def test_unsupported_mode_names_model_and_modes():
    with pytest.raises(InvalidRequest, match=r"'m' cannot serve thinking='off': it supports on, budget=<N>, "
                                             r"effort=<low\|medium\|high>"):
        resolve("off", CFG, "m", chat_prompt=True)
    with pytest.raises(InvalidRequest, match="no thinking modes"):
        resolve("on", None, "smollm2-135m", chat_prompt=True)
    assert resolve("", None, "m", chat_prompt=True) is None


def test_off_by_template_switch_or_closed_span():
    qwen3 = THINKING_FAMILIES["qwen3"]
    assert resolve("off", qwen3, "q", chat_prompt=True).template_kwargs == {"enable_thinking": False}
    assert resolve("off", qwen3, "q", chat_prompt=False).prompt_suffix == "<think>\n\n</think>\n\n"
    r1 = THINKING_FAMILIES["deepseek-r1"]
    plan = resolve("off", r1, "r", chat_prompt=True)
    assert plan.template_kwargs == {} and plan.prompt_suffix == "<think>\n\n</think>\n\n"
    with pytest.raises(InvalidRequest, match="supports on, budget"):
        resolve("off", THINKING_FAMILIES["qwq"], "qwq", chat_prompt=True)


def test_config_validation_and_registry_lookup():
    with pytest.raises(ValueError, match="thinking.off"):
        ThinkingConfig(start="<t>", end="</t>", modes=["off"])
    with pytest.raises(ValueError):
        ThinkingConfig(start="<t>", end="</t>", modes=["budget"], effort={"low": 0, "medium": 1, "high": 2})
    assert thinking_config(MODELS["smollm2-135m"]) is None
    assert thinking_config(MODELS["smollm2-135m"], CFG) is CFG
    assert supported_modes(CFG) == ["on", "budget=<N>", "effort=<low|medium|high>"]


def test_router_side_counts_thinking_per_call_per_model_and_in_openai_usage():
    from router.chat.usage import usage_from_trace
    from router.router_wire import result_to_pb
    from router.trace import ModelCallRecord, Trace
    from router.types import RouteResult

    trace = Trace(plan={"strategy": "direct", "models": {"model": "m"}})
    trace.add_call(ModelCallRecord(model="m", role="model", kind="generate", prompt_tokens=10, generated_tokens=20,
                                   thinking_tokens=12))
    trace.add_call(ModelCallRecord(model="m", role="model", kind="generate", prompt_tokens=5, generated_tokens=4))
    d = trace.to_dict()
    assert d["usage"] == [{"model": "m", "prompt_tokens": 15, "cached_prompt_tokens": 0, "generated_tokens": 24,
                           "thinking_tokens": 12, "calls": 2}]
    usage = usage_from_trace(d)
    assert usage["completion_tokens"] == 24 and usage["completion_tokens_details"] == {"reasoning_tokens": 12}
    resp = result_to_pb(RouteResult(request_id="r", text="t", final_answer="t", finish_reason="stop", trace=d))
    assert resp.trace.usage[0].thinking_tokens == 12 and resp.trace.calls[0].thinking_tokens == 12


@pytest.mark.parametrize("value,ok", [("", True), ("off", True), ("budget=32768", True), ("effort=medium", True),
                                      ("budget=32769", False), ("budget=0", False), ("{x}", False), ("on\n", False)])
def test_direct_thinking_knob_is_bounded_by_its_schema(value, ok):
    from router.errors import InvalidRoute
    from router.strategies.direct import Direct

    if ok:
        assert Direct.parse_options({"thinking": value}).thinking == value
    else:
        with pytest.raises(InvalidRoute, match="thinking"):
            Direct.parse_options({"thinking": value})


class CharTokenizer:
    """One id per character (the scripted engine's convention); a chat template that writes `U:{text}\\nA:`."""

    bos_token_id = None
    chat_template = "stand-in"

    def __len__(self) -> int:
        return 0x110000

    def encode(self, text: str, add_special_tokens: bool = False) -> list[int]:
        return encode(text)

    def decode(self, ids) -> str:
        return "".join(map(chr, ids))

    def apply_chat_template(self, messages, tokenize=False, add_generation_prompt=True, continue_final_message=False,
                            **kwargs):
        assert "enable_thinking" not in kwargs  # the stand-in config has no template switch
        return "".join(f"U:{m['content']}\n" for m in messages) + ("A:" if add_generation_prompt else "")


class ScriptedServingEngine:
    """The `Engine` interface over ScriptedEngine, for the worker server."""

    max_concurrency = 4

    def __init__(self, engine: ScriptedEngine) -> None:
        from workers.types import EngineInfo

        self.scripted = engine
        self.info = EngineInfo(model_id="standin", tokenizer_id="chars", context_length=4096, backend="scripted",
                               device="cpu", dtype="none", has_chat_template=True, vocab_size=0x110000,
                               hidden_size=1, num_layers=1)

    def generate(self, request_id, ids, sampling):
        return self.scripted.generate(request_id, ids, sampling)

    def healthy(self) -> bool:
        return True


async def test_worker_server_forces_the_budget_and_refuses_off_over_grpc():
    """WorkerServicer on a real grpc.aio server, called by the router's WorkerClient: the request's thinking
    value crosses the wire, the server resolves it against its thinking config, counts thinking tokens in
    the final usage, and answers INVALID_ARGUMENT naming the model and modes for `off`."""
    import grpc
    from grpc_health.v1 import health

    from router.worker_client import WorkerClient
    from thinkroute.v1 import worker_pb2_grpc as pb_grpc
    from workers.config import EngineConfig
    from workers.prompts import PromptRenderer
    from workers.server import WorkerServicer
    from workers.types import ChatMessage, PromptInput

    engine = ScriptedServingEngine(ScriptedEngine("thinking-a-long-time", "5 apples"))
    servicer = WorkerServicer(engine, PromptRenderer(CharTokenizer(), chat=True, prepend_bos=False),
                              EngineConfig(model="standin"), "r0", health.HealthServicer(), CFG)
    server = grpc.aio.server()
    pb_grpc.add_WorkerServicer_to_server(servicer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    client = WorkerClient(f"127.0.0.1:{port}")
    prompt = PromptInput(messages=(ChatMessage("user", "apples?"),))
    try:
        msgs = [m async for m in client.generate(prompt, Sampling(max_tokens=30, thinking="budget=6"), timeout=10)]
        assert "".join(m.text_delta for m in msgs) == "<t>thinki</t>\n5 apples"
        usage = msgs[-1].final.usage
        assert (usage.thinking_tokens, usage.generated_tokens) == (6, 14)
        assert engine.scripted.calls[0][1] == encode("U:apples?\nA:<t>")
        with pytest.raises(grpc.aio.AioRpcError) as e:
            [m async for m in client.generate(prompt, Sampling(max_tokens=30, thinking="off"), timeout=10)]
        assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert e.value.details() == ("model 'standin' cannot serve thinking='off': it supports on, budget=<N>, "
                                     "effort=<low|medium|high>")
        with pytest.raises(grpc.aio.AioRpcError) as e:
            [m async for m in client.generate(prompt, Sampling(max_tokens=30, thinking="budget=1; x"), timeout=10)]
        assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "budget=<N>" in e.value.details()
    finally:
        await client.close()
        await server.stop(0)


def test_responses_usage_carries_reasoning_tokens():
    from router.responses_api import response_usage

    out = response_usage({"prompt_tokens": 3, "completion_tokens": 9, "total_tokens": 12,
                          "completion_tokens_details": {"reasoning_tokens": 5}})
    assert out["output_tokens"] == 9 and out["output_tokens_details"] == {"reasoning_tokens": 5}


def test_an_eos_inside_the_span_is_not_carried_into_the_answer_prompt():
    class EosEngine(ScriptedEngine):
        async def generate(self, request_id, ids, s):
            if self.calls:
                async for c in super().generate(request_id, ids, s):
                    yield c
                return
            self.calls.append((request_id, list(ids), s))
            yield GenerateChunk(text="ab", token_ids=[ord("a"), ord("b"), 0])  # 0 = EOS
            yield GenerateChunk(text="", final=GenerateFinal(finish_reason=FinishReason.STOP, prompt_tokens=len(ids),
                                                             generated_tokens=3))
    engine = EosEngine("", "ok")
    chunks = run(resolve("budget=8", CFG, "m", chat_prompt=True), engine)
    assert engine.calls[1][1] == encode("Q:<t>ab</t>\n")
    assert chunks[-1].final.thinking_tokens == 3 and "".join(c.text for c in chunks) == "<t>ab</t>\nok"
