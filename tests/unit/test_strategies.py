"""Control flow of the pair strategies against a hand-written fake `ModelAccess`.

The fake models are scripted documents: a model continues its own fixed text when the prompt's
assistant turn is a prefix of it (so greedy step-by-step generation is reproducible), one
character is one token, stop strings and max_tokens are applied as a worker would.
"""
from __future__ import annotations

import math
import time
from typing import Callable

import pytest

from router.errors import InvalidRoute, PlanError
from router.strategies import get_strategy
from router.strategies.base import Context
from router.strategies.specreason import SpecReason, digit_probs, judge_score
from router.strategies.specthink import SpeculativeThinking, sentiment
from router.strategies.steps import JUDGE_INSTRUCTION, JUDGE_PREFIX, find_keywords
from router.trace import ModelCallRecord, Trace
from router.types import Completion, ModelInfo, RouteQuery, Scored
from workers.types import PromptInput, TokenLogprob

BOS = 1
Script = Callable[[PromptInput], str]


def assistant_text(prompt: PromptInput) -> str:
    """The open assistant turn the model continues ('' for a fresh generation prompt)."""
    msgs = prompt.messages or ()
    if prompt.continue_final_message and msgs and msgs[-1].role == "assistant":
        return msgs[-1].content
    return ""


def document(doc: str, fallback: str = "") -> Script:
    """A model that continues `doc` (or writes `fallback` once the transcript left `doc`)."""

    def script(prompt: PromptInput) -> str:
        done = assistant_text(prompt).removeprefix("<think>")  # SpecReason's transcript opens a think block
        return doc[len(done):] if doc.startswith(done) else fallback

    return script


def steps_doc(prefix: str, n: int, final: str) -> str:
    """A SpecReason transcript: n steps and a final step, separated by blank lines."""
    return "\n\n".join([f"{prefix} step {i}." for i in range(n)] + [final])


class FakePool:
    """Implements router.strategies.base.ModelAccess with scripted models."""

    def __init__(self, scripts: dict[str, Script], *, judge: dict[int, float] | None = None,
                 tokenizers: dict[str, str] | None = None) -> None:
        self.scripts = scripts
        self.judge = judge or {9: 1.0}          # digit -> probability (renormalised by the strategy)
        self.tokenizers = tokenizers or {}
        self.calls: list[tuple[str, str, PromptInput, object]] = []

    async def generate(self, model, prompt, sampling, *, deadline, on_delta=None):
        full = self.scripts[model](prompt)
        text, finish, stop_string = full, "stop", ""
        cuts = [(full.find(s), s) for s in sampling.stop if s and full.find(s) >= 0]
        if cuts:
            pos, stop_string = min(cuts)
            text = full[:pos]
        if len(text) > sampling.max_tokens:
            text, finish, stop_string = text[: sampling.max_tokens], "length", ""
        self.calls.append((model, "generate", prompt, sampling))
        if on_delta:
            await on_delta(text)
        n = len(text) + (1 if stop_string else 0)
        c = Completion(text=text, token_ids=[ord(ch) for ch in text], finish_reason=finish, prompt_tokens=10,
                       generated_tokens=max(n, 1), stop_string=stop_string)
        return c, ModelCallRecord(model=model, role="", kind="generate", prompt_tokens=10, generated_tokens=c.generated_tokens)

    async def score(self, model, prompt, *, continuation_ids, continuation_text, top_k, candidate_ids, deadline):
        self.calls.append((model, "score", prompt, candidate_ids))
        lp = {ord(str(d)): math.log(p) for d, p in self.judge.items() if p > 0}
        cands = [TokenLogprob(i, chr(i), lp.get(i, -1e9)) for i in candidate_ids]
        top = sorted(cands, key=lambda t: -t.logprob)[:top_k]
        return Scored(continuation=[], top_next=top, candidates=cands, prompt_tokens=20), \
            ModelCallRecord(model=model, role="", kind="score", prompt_tokens=20)

    async def tokenize(self, model, prompt, *, deadline):
        text = prompt.text if prompt.text is not None else "".join(m.content for m in prompt.messages or ())
        return [BOS] + [ord(c) for c in text]

    async def info(self, model, **kw):
        return ModelInfo(model=model, tokenizer_id=self.tokenizers.get(model, model), context_length=8192,
                         has_chat_template=True, backend="fake", device="cpu")

    def generated_by(self, model: str) -> list[PromptInput]:
        return [p for m, kind, p, _ in self.calls if m == model and kind == "generate"]


def make_ctx(pool: FakePool, emit=None) -> Context:
    return Context(pool, {"small": "S", "large": "L"}, Trace(), time.monotonic() + 30, emit=emit)


QUERY = RouteQuery(query="What is 2 + 2?", max_tokens=4000)


# --- SpecReason ------------------------------------------------------------------------------

SMALL_STEPS = steps_doc("small", 3, "So \\boxed{4}.")
LARGE_STEPS = steps_doc("large", 2, "Hence \\boxed{4}.")


async def run_specreason(threshold: float, judge: dict[int, float] | None = None, **knobs):
    pool = FakePool({"S": document(SMALL_STEPS, fallback="A small guess.\n\n"), "L": document(LARGE_STEPS)},
                    judge=judge)
    ctx = make_ctx(pool)
    result = await SpecReason(SpecReason.parse_options({"threshold": threshold, **knobs})).run(QUERY, ctx)
    return result, ctx.trace, pool


async def test_specreason_threshold_0_keeps_every_draft():
    result, trace, pool = await run_specreason(0, judge={0: 1.0})
    assert result.text == SMALL_STEPS
    d = trace.details["specreason"]
    assert d["acceptance_rate"] == 1.0 and d["stop_reason"] == "answer"
    assert [s["accepted"] for s in d["steps"]] == [True] * 4
    assert pool.generated_by("L") == []                    # the large model only judged
    assert [c.step for c in trace.calls if c.kind == "score"] == [0, 1, 2, 3]


async def test_specreason_threshold_10_regenerates_every_step():
    result, trace, pool = await run_specreason(10, judge={9: 1.0})
    # Each regenerated step continues the large model's own transcript, so the text is its own output.
    assert result.text == LARGE_STEPS
    steps = trace.details["specreason"]["steps"]
    assert len(steps) == 3
    assert all(s["accepted"] is False and s["decision"] == "regenerated" and s["drafted"] for s in steps)
    assert trace.details["specreason"]["acceptance_rate"] == 0.0
    # One rejected draft (small generate) and one regeneration (large generate) per step, same step number.
    assert [(c.role, c.kind, c.step) for c in trace.calls] == [
        x for i in range(3) for x in [("small", "generate", i), ("large", "score", i), ("large", "generate", i)]]


async def test_specreason_judge_prompt_and_candidates():
    _, _, pool = await run_specreason(7)
    model, kind, prompt, candidate_ids = next(c for c in pool.calls if c[1] == "score")
    assert model == "L" and candidate_ids == [ord(str(d)) for d in range(10)]
    roles = [m.role for m in prompt.messages]
    assert roles == ["user", "assistant", "user", "assistant"]
    assert prompt.messages[1].content.startswith("<think>") and prompt.messages[1].content.endswith("\n\n")
    assert prompt.messages[2].content == JUDGE_INSTRUCTION
    assert prompt.messages[3].content == JUDGE_PREFIX == "I think the quality score is: "
    assert prompt.continue_final_message and not prompt.add_generation_prompt


@pytest.mark.parametrize("judge, mode, threshold, accepted", [
    ({6: 0.6, 9: 0.4}, "greedy", 7, False),    # argmax digit 6 < 7
    ({6: 0.6, 9: 0.4}, "expected", 7, True),   # 0.6*6 + 0.4*9 = 7.2 >= 7
    ({6: 0.3, 8: 0.7}, "greedy", 7, True),
])
async def test_specreason_score_modes(judge, mode, threshold, accepted):
    _, trace, _ = await run_specreason(threshold, judge=judge, score_mode=mode)
    first = trace.details["specreason"]["steps"][0]
    assert first["accepted"] is accepted
    assert sum(first["digit_probs"]) == pytest.approx(1.0)


def test_judge_score_math():
    probs = digit_probs([math.log(p) if p else -1e9 for p in [0, 0, 0, 0, 0, 0.5, 0, 0, 0, 0.5]])
    assert judge_score(probs, "expected") == pytest.approx(7.0)
    assert judge_score(probs, "greedy") == 5.0             # ties go to the lower digit


async def test_specreason_first_n_large_and_budget():
    _, trace, pool = await run_specreason(0, first_n_large=1)
    steps = trace.details["specreason"]["steps"]
    assert steps[0]["decision"] == "large_first" and "score" not in steps[0]
    result, trace, _ = await run_specreason(0, token_budget=20)
    assert trace.details["specreason"]["stop_reason"] == "budget" and result.finish_reason == "length"


async def test_specreason_stops_on_repeated_step():
    pool = FakePool({"S": lambda p: "Same again.\n\n", "L": document(LARGE_STEPS)})
    ctx = make_ctx(pool)
    await SpecReason(SpecReason.parse_options({"threshold": 0})).run(QUERY, ctx)
    d = ctx.trace.details["specreason"]
    assert d["stop_reason"] == "repeated_step" and len(d["steps"]) == 2


def test_specreason_rejects_bad_knobs_with_names():
    with pytest.raises(InvalidRoute, match="threshold"):
        SpecReason.parse_options({"threshold": 11})
    with pytest.raises(InvalidRoute, match="Valid knobs"):
        SpecReason.parse_options({"treshold": 5})


# --- Speculative Thinking ---------------------------------------------------------------------

SMALL_THOUGHTS = "First, 2 + 2 is 4.\n\nWait, let me recount: 4.\n\nSo the answer is \\boxed{4}."


async def run_specthink(**knobs):
    pool = FakePool({"S": document(SMALL_THOUGHTS, fallback="Done: \\boxed{4}."),
                     "L": lambda p: " Indeed, four." * 5})   # longer than a takeover: cut at 20 tokens
    ctx = make_ctx(pool)
    result = await SpeculativeThinking(SpeculativeThinking.parse_options(knobs)).run(QUERY, ctx)
    return result, ctx.trace, pool


async def test_specthink_empty_keywords_never_takes_over():
    result, trace, pool = await run_specthink(negative_keywords=[], verify_keywords=[], positive_keywords=[])
    assert result.text == SMALL_THOUGHTS                    # the small model's own text, look-aheads kept
    assert trace.details["specthink"]["takeover_count"] == 0
    assert pool.generated_by("L") == []
    assert trace.details["specthink"]["stop_reason"] == "eos"


async def test_specthink_wait_in_lookahead_hands_over():
    result, trace, pool = await run_specthink()
    takeovers = trace.details["specthink"]["takeovers"]
    assert takeovers[0]["reason"] == "keyword" and takeovers[0]["trigger"] == ["wait"]
    assert takeovers[0]["step"] == 1 and takeovers[0]["lookahead"].startswith("Wait")
    assert takeovers[0]["tokens"] == 20
    assert result.text.startswith("First, 2 + 2 is 4.\n\n Indeed, four. Indee")
    large_calls = [c for c in trace.calls if c.role == "large"]
    assert large_calls and all(c.step == 1 for c in large_calls)
    # Text hand-off: the large model sees the shared transcript as an open assistant turn.
    assert assistant_text(pool.generated_by("L")[0]) == "First, 2 + 2 is 4.\n\n"


async def test_specthink_verify_keyword_extends_the_takeover():
    pool = FakePool({"S": document("A.\n\nLet me check it twice more.", fallback="\\boxed{4}"),
                     "L": lambda p: " Now verify." * 3 if "verify" not in assistant_text(p) else " Fine." * 30})
    ctx = make_ctx(pool)
    await SpeculativeThinking().run(QUERY, ctx)
    reasons = [t["reason"] for t in ctx.trace.details["specthink"]["takeovers"]]
    assert reasons[:2] == ["keyword", "verify"]


async def test_specthink_recap_after_negative_segments():
    pool = FakePool({"S": lambda p: "Wait, no.\n\nWait again.", "L": lambda p: " Wait, still unsure.\n\n" * 20})
    ctx = make_ctx(pool)
    opts = SpeculativeThinking.parse_options({"recap_after_negative": 2, "token_budget": 400})
    result = await SpeculativeThinking(opts).run(QUERY, ctx)
    reasons = [t["reason"] for t in ctx.trace.details["specthink"]["takeovers"]]
    assert "recap" in reasons and "Let me check whether there are some wrong steps:" in result.text
    assert ctx.trace.details["specthink"]["stop_reason"] == "budget"


async def test_specthink_token_handoff_refuses_mismatched_tokenizers():
    strat = SpeculativeThinking(SpeculativeThinking.parse_options({"handoff": "token"}))
    infos = {"small": ModelInfo("smollm2-135m", "HuggingFaceTB/SmolLM2-135M-Instruct", 8192, True, "x", "cpu"),
             "large": ModelInfo("gemma3-270m", "google/gemma-3-270m", 8192, False, "x", "cpu")}
    with pytest.raises(PlanError, match="HuggingFaceTB/SmolLM2-135M-Instruct.*google/gemma-3-270m"):
        await strat.check_plan(infos)
    await SpeculativeThinking().check_plan(infos)           # text hand-off works for any pair
    infos["large"] = ModelInfo("bigger", "HuggingFaceTB/SmolLM2-135M-Instruct", 8192, True, "x", "cpu")
    await strat.check_plan(infos)


async def test_specthink_token_handoff_shares_token_ids():
    pool = FakePool({"S": document(SMALL_THOUGHTS), "L": lambda p: " Indeed, four."})
    ctx = make_ctx(pool)
    opts = SpeculativeThinking.parse_options({"handoff": "token", "negative_keywords": [], "verify_keywords": [],
                                              "positive_keywords": []})
    await SpeculativeThinking(opts).run(QUERY, ctx)
    prompts = pool.generated_by("S")
    assert all(p.token_ids is not None for p in prompts)
    assert prompts[0].token_ids[0] == BOS and list(prompts[0].token_ids).count(BOS) == 1


def test_keywords_and_sentiment():
    assert find_keywords("Checking... yes, wait", ["wait", "check", "yes"]) == ["check", "yes", "wait"]
    assert find_keywords("my eyes", ["yes"]) == []
    o = SpeculativeThinking.Options()
    assert sentiment("Yes, the final answer is 4", o)[0] == 1
    assert sentiment("Wait, yes", o)[0] == -1
    assert sentiment("Then add 3.", o) == (0, [])


def test_specthink_rejects_empty_triggers():
    with pytest.raises(InvalidRoute, match="triggers"):
        SpeculativeThinking.parse_options({"triggers": [""]})


# --- CoThink and Hawkeye -----------------------------------------------------------------------

async def test_cothink_reasoner_prompt_contains_outline_and_streams():
    outline = "1. Add the numbers. 2. Box the sum."
    pool = FakePool({"S": lambda p: outline, "L": lambda p: "2 + 2 = 4, so \\boxed{4}."})
    streamed: list[str] = []

    async def emit(delta: str) -> None:
        streamed.append(delta)

    ctx = make_ctx(pool, emit)
    result = await get_strategy("cothink")().run(QUERY, ctx)
    reasoner_prompt = pool.generated_by("L")[0].messages[-1].content
    assert outline in reasoner_prompt and QUERY.query in reasoner_prompt
    assert "".join(streamed) == result.text == "2 + 2 = 4, so \\boxed{4}."
    d = ctx.trace.details["cothink"]
    assert d["reasoner_prompt"] == reasoner_prompt and d["outline"] == outline
    assert d["outliner_prompt_tokens"] == 10 and d["reasoner_prompt_tokens"] == 10
    assert [(c.role, c.step) for c in ctx.trace.calls] == [("small", 0), ("large", 1)]


async def test_hawkeye_small_prompt_contains_cot():
    cot = "Two plus two makes four."
    pool = FakePool({"L": lambda p: cot, "S": lambda p: " 4"})
    ctx = make_ctx(pool)
    result = await get_strategy("hawkeye")().run(QUERY, ctx)
    large_prompt = pool.generated_by("L")[0].messages[-1].content
    assert large_prompt == ("Question: What is 2 + 2?\nPlease generate a concise chain-of-thought reasoning "
                            "without repeating the question:")
    small_prompt = pool.generated_by("S")[0].messages[-1].content
    assert small_prompt == ("What is 2 + 2?\nTwo plus two makes four.\n"
                            "This is a chain-of-thought that helps you answer. So the answer is:")
    assert result.text == " 4" and ctx.trace.details["hawkeye"]["cot"] == cot


def test_registry_names_the_pair_strategies():
    from router.strategies import strategy_names

    assert {"specreason", "specthink", "cothink", "hawkeye"} <= set(strategy_names())
    for name in ("specreason", "specthink", "cothink", "hawkeye"):
        assert get_strategy(name).roles == ("small", "large")


# --- Knobs: one bounded schema per strategy; templates are configuration ----------------------

import gc  # noqa: E402

import psutil  # noqa: E402

from router.strategies import STRATEGIES, strategy_names  # noqa: E402
from router.strategies.base import describe_knob, fill_template  # noqa: E402
from router.strategies.cothink import CoThink  # noqa: E402

PAIRS = ("specreason", "specthink", "cothink", "hawkeye")


def rss() -> int:
    gc.collect()
    return psutil.Process().memory_info().rss


def test_a_request_cannot_set_a_prompt_template_and_memory_does_not_move():
    before = rss()
    for _ in range(20):
        with pytest.raises(InvalidRoute, match=r"outline_prompt may be set in the router config only"):
            CoThink.parse_options({}, request={"outline_prompt": "{question}{question:>2000000000}"})
    assert rss() - before < 20 * 2**20                      # the format-string request would allocate ~2 GB
    for name, knob in [("cothink", "reasoner_prompt"), ("specthink", "recap_text"), ("direct", "system_prompt")]:
        with pytest.raises(InvalidRoute, match=knob):
            get_strategy(name).parse_options(request={knob: "{question}{outline}"})
    # The same knob from config is accepted (it is configuration).
    assert CoThink.parse_options({"outline_prompt": "Plan: {question}"}).outline_prompt == "Plan: {question}"


async def test_config_templates_are_filled_literally():
    """`{question.__class__.__mro__}` and a format spec in a config template are inserted as written;
    only `{question}` / `{outline}` are replaced, and once (a question holding "{outline}" stays so)."""
    evil = "{question.__class__.__mro__} {question:>2000000000} {{}} {question} {nope}"
    opts = CoThink.parse_options({"outline_prompt": evil, "reasoner_prompt": "{question}|{outline}|{outline!r}"})
    pool = FakePool({"S": lambda p: "OUTLINE", "L": lambda p: "done"})
    query = RouteQuery(query="Q {outline} {question}", max_tokens=100)
    before = rss()
    await CoThink(opts).run(query, make_ctx(pool))
    assert rss() - before < 20 * 2**20
    outliner = pool.generated_by("S")[0].messages[-1].content
    assert outliner == ("{question.__class__.__mro__} {question:>2000000000} {{}} Q {outline} {question} {nope}")
    assert pool.generated_by("L")[0].messages[-1].content == "Q {outline} {question}|OUTLINE|{outline!r}"
    assert fill_template("{a}{b}", a="{b}", b="x") == "{b}x"


@pytest.mark.parametrize("name", ["direct", *PAIRS])
def test_every_knob_has_a_documented_finite_bound(name):
    cls = get_strategy(name)
    for knob, f in cls.Options.model_fields.items():
        kind, rng = describe_knob(f)
        assert "inf" not in rng and "unbounded" not in rng, f"{name}.{knob} is unbounded: {kind} {rng}"
        assert f.description, f"{name}.{knob} has no description"


def test_docs_table_is_the_schema():
    """docs/strategies.md carries, for every strategy, the knob table generated from its schema."""
    from pathlib import Path

    from router.strategies import knob_table_markdown

    doc = (Path(__file__).resolve().parents[2] / "docs" / "strategies.md").read_text()
    for name in strategy_names():
        assert knob_table_markdown(name) in doc, f"docs/strategies.md: the knob table of {name!r} is stale; " \
                                                  f"regenerate it with `python -m router.strategies`"


@pytest.mark.parametrize("name, knobs, needle", [
    ("specreason", {"max_steps": 500}, r"max_steps: .*\(expected int, \[1, 32\]\); got 500"),
    ("specreason", {"threshold": 11}, r"threshold: .*\[0.0, 10.0\]"),
    ("specthink", {"triggers": ["a"] * 50}, r"triggers: .*\(expected list\[str\], 1-4 items, each 1-16 chars\)"),
    ("specthink", {"triggers": ["x" * 100]}, r"triggers.0: .*at most 16"),
    ("specthink", {"negative_keywords": ["w"] * 1000}, r"negative_keywords: .*0-32 items"),
    ("specthink", {"max_segments": 1000}, r"max_segments: .*\[1, 24\]"),
    ("specthink", {"lookahead_tokens": 0}, r"lookahead_tokens: .*\[1, 1024\]"),
    ("cothink", {"answer_tokens": 10**9}, r"answer_tokens: .*\[0, 32768\]"),
    ("hawkeye", {"cot_tokens": -1}, r"cot_tokens: .*\[1, 8192\]"),
    ("direct", {"thinking_budget": 10**6}, r"thinking_budget: .*\[0, 32768\]"),
])
def test_out_of_range_knobs_name_the_knob_and_the_range(name, knobs, needle):
    with pytest.raises(InvalidRoute, match=needle):
        get_strategy(name).parse_options(request=knobs)


def test_error_for_a_huge_value_is_short():
    with pytest.raises(InvalidRoute) as e:
        get_strategy("specthink").parse_options(request={"triggers": ["x" * 10**7]})
    assert len(str(e.value)) < 2000


async def test_specreason_calls_are_bounded_at_the_largest_knobs():
    pool = FakePool({"S": lambda p: "w\n\n", "L": lambda p: f"step {len(assistant_text(p))}\n\n"}, judge={0: 1.0})
    ctx = make_ctx(pool)
    opts = SpecReason.parse_options(request={"max_steps": 32, "threshold": 10, "max_step_tokens": 64, "token_budget": 32768})
    await SpecReason(opts).run(RouteQuery(query="q", max_tokens=32768), ctx)
    n = len(pool.calls) + 10                                  # + the digit tokenize calls
    assert ctx.trace.details["specreason"]["stop_reason"] == "max_steps"
    assert n == 3 * 32 + 10                                   # at the bound: every step drafted, judged, redone


@pytest.mark.parametrize("handoff", ["text", "token"])
async def test_specthink_calls_are_bounded_at_the_largest_knobs(handoff):
    class Counting(FakePool):
        tokenizes = 0

        async def tokenize(self, model, prompt, *, deadline):
            self.tokenizes += 1
            return await super().tokenize(model, prompt, deadline=deadline)

    # Every segment: a look-ahead with a keyword, a takeover that verifies, a verify extension.
    pool = Counting({"S": lambda p: "wait check\n\nwait", "L": lambda p: "check " * 50})
    ctx = make_ctx(pool)
    opts = SpeculativeThinking.parse_options(request={
        "handoff": handoff, "max_segments": 24, "lookahead_tokens": 20, "takeover_tokens": 6, "verify_tokens": 1,
        "recap_after_negative": 64, "begin_large_tokens": 1, "max_segment_tokens": 64, "token_budget": 32768})
    await SpeculativeThinking(opts).run(RouteQuery(query="q", max_tokens=32768), ctx)
    n = len(pool.calls) + pool.tokenizes
    assert ctx.trace.details["specthink"]["stop_reason"] == "max_segments"
    assert 4 * 24 <= n <= 5 * 24 + 2, n                   # near the bound: the fake makes every step work


# --- Streaming: the deltas are the answer, for every strategy -----------------------------------

STREAM_SCRIPTS = {
    "direct": {"M": lambda p: "Direct answer: \\boxed{4}."},
    "specreason": {"S": document(SMALL_STEPS, fallback="A small guess.\n\n"), "L": document(LARGE_STEPS)},
    "specthink": {"S": document(SMALL_THOUGHTS, fallback="Done: \\boxed{4}."), "L": lambda p: " Indeed, four." * 5},
    "cothink": {"S": lambda p: "1. add", "L": lambda p: "2 + 2 = \\boxed{4}"},
    "hawkeye": {"L": lambda p: "add them", "S": lambda p: " 4"},
}


@pytest.mark.parametrize("name", ["direct", *PAIRS])
@pytest.mark.parametrize("threshold", [0, 10])
async def test_streamed_deltas_concatenate_to_the_answer(name, threshold):
    pool = FakePool(STREAM_SCRIPTS[name], judge={9: 1.0} if threshold == 0 else {0: 1.0})
    deltas: list[str] = []

    async def emit(d: str) -> None:
        deltas.append(d)

    models = {"model": "M"} if name == "direct" else {"small": "S", "large": "L"}
    ctx = Context(pool, models, Trace(), time.monotonic() + 30, emit=emit)
    cls = get_strategy(name)
    opts = cls.parse_options(request={"threshold": threshold} if name == "specreason" else {})
    result = await cls(opts).answer(QUERY, ctx)
    assert result.text and "".join(deltas) == result.text
    assert "stream_mismatch" not in ctx.trace.details
    if name in ("specreason", "specthink"):
        assert len(deltas) > 2                                # streamed as the transcript grows, not at the end


async def test_flush_sends_only_the_unstreamed_rest():
    deltas: list[str] = []

    async def emit(d: str) -> None:
        deltas.append(d)

    ctx = make_ctx(FakePool({}), emit)
    await ctx.emit_text("Hello")
    await ctx.flush("Hello, world")
    assert deltas == ["Hello", ", world"]
    await ctx.flush("Goodbye")                                # not a continuation: recorded, not sent
    assert deltas == ["Hello", ", world"] and ctx.trace.details["stream_mismatch"]


# --- The whole conversation reaches every model call ------------------------------------------

from workers.types import ChatMessage  # noqa: E402

CONVERSATION = [
    ChatMessage("system", "You are a terse tutor. SYS-MARK"),
    ChatMessage("user", "What is 1 + 1? FIRST-Q"),
    ChatMessage("assistant", "2. FIRST-A"),
    ChatMessage("user", "And 2 + 2? LAST-Q"),
    ChatMessage("assistant", "Let me use the calculator. TOOL-CALL"),
    ChatMessage("tool", "4 TOOL-RESULT"),
]


@pytest.mark.parametrize("name", ["direct", *PAIRS])
async def test_every_prompt_carries_the_whole_conversation_and_stop_reaches_the_answer(name):
    pool = FakePool(STREAM_SCRIPTS[name] if name != "direct" else {"M": lambda p: "4"})
    models = {"model": "M"} if name == "direct" else {"small": "S", "large": "L"}
    ctx = Context(pool, models, Trace(), time.monotonic() + 30)
    query = RouteQuery(messages=list(CONVERSATION), max_tokens=400, stop=["STOP-HERE"])
    cls = get_strategy(name)
    await cls(cls.parse_options()).answer(query, ctx)
    prompts = [(p, s) for m, kind, p, s in pool.calls if kind in ("generate", "score")]
    assert prompts
    for prompt, _ in prompts:
        msgs = list(prompt.messages)
        # system, first exchange and the tool exchange are there, in order, around the strategy's own turn
        assert msgs[:3] == CONVERSATION[:3]
        assert msgs[3].role == "user" and "LAST-Q" in msgs[3].content
        assert msgs[4:6] == CONVERSATION[4:6]
    answer_calls = [s for m, kind, p, s in pool.calls if kind == "generate"]
    if name in ("cothink", "hawkeye"):
        answer_calls = answer_calls[-1:]                      # the outline / CoT is not the answer
    assert all("STOP-HERE" in s.stop for s in answer_calls)


async def test_a_caller_stop_string_ends_the_pair_transcripts():
    pool = FakePool({"S": document("One.\n\nTwo END three.\n\nFour.", fallback="x"), "L": document("never")},
                    judge={9: 1.0})
    ctx = make_ctx(pool)
    q = RouteQuery(query="q", max_tokens=400, stop=["END"])
    result = await SpecReason(SpecReason.parse_options(request={"threshold": 0})).run(q, ctx)
    assert result.text == "One.\n\nTwo " and ctx.trace.details["specreason"]["stop_reason"] == "stop_string"
    pool = FakePool({"S": document("One.\n\nTwo END three.\n\nFour.", fallback="x"), "L": lambda p: "never"})
    ctx = make_ctx(pool)
    opts = SpeculativeThinking.parse_options(request={"negative_keywords": [], "verify_keywords": [],
                                                      "positive_keywords": []})
    result = await SpeculativeThinking(opts).run(q, ctx)
    assert result.text == "One.\n\nTwo " and ctx.trace.details["specthink"]["stop_reason"] == "stop_string"
    assert result.finish_reason == "stop"


def test_rendered_text_is_the_question_alone_or_the_whole_conversation():
    assert RouteQuery(query="What is 2 + 2?").rendered_text() == "What is 2 + 2?"
    text = RouteQuery(messages=list(CONVERSATION)).rendered_text()
    for m in CONVERSATION:
        assert m.content in text
    assert text.startswith("System: You are a terse tutor.")


@pytest.mark.parametrize("name", ["direct", *PAIRS])
def test_http_adapter_streams_the_plain_answer_for_every_strategy(name):
    """The OpenAI adapter and RouterCore over scripted models: streamed deltas == the plain answer
    (the real-stack version is tests/integration/test_strategies.py)."""
    import json

    from fastapi.testclient import TestClient

    from router.config import load_config
    from router.http_api import OpenAIFrontend, build_http_app
    from router.service import RouterCore

    class Pool(FakePool):
        async def score(self, model, prompt, *, cache_salt="", **kw):
            return await super().score(model, prompt, **kw)

    config = load_config()
    core = RouterCore(config, {m: ["127.0.0.1:1"] for m in config.models})
    small, large = config.router.roles["small"], config.router.roles["large"]
    core.pool = Pool({small: document(SMALL_STEPS, fallback="x\n\n"), large: document(LARGE_STEPS)}, judge={9: 1.0})
    client = TestClient(build_http_app(OpenAIFrontend(core, config, {})), client=("127.0.0.1", 5555))
    body = {"model": f"strategy/{name}", "messages": [{"role": "user", "content": "q"}], "max_tokens": 400}
    plain = client.post("/v1/chat/completions", json=body)
    assert plain.status_code == 200, plain.text
    text = plain.json()["choices"][0]["message"]["content"]
    deltas = []
    for event in client.post("/v1/chat/completions", json={**body, "stream": True}).text.split("\n\n"):
        if event.startswith("data: {"):
            choices = json.loads(event[6:]).get("choices") or [{}]
            deltas.append(choices[0].get("delta", {}).get("content") or "")
    assert text and "".join(deltas) == text
    if name in ("specreason", "specthink"):
        assert len([d for d in deltas if d]) > 1
