"""The pair strategies on the embedded pair (smollm2-135m small, gemma3-270m large) through real
workers and the real `WorkerPool`.

What is checked: SpecReason at threshold 0 / 10 is exactly the small / large model's own
step-by-step greedy output for the same prompts; the judge score read through `Score` equals a
direct transformers forward pass of the large model on the same token ids (1e-3); Speculative
Thinking hands over only on keywords and records each takeover; CoThink / Hawkeye send the
outline / CoT in the second model's prompt; a worker killed mid-strategy fails the request with
an error naming the model and the step; a three-turn conversation with a system prompt reaches
every call of every pair strategy whole. Over HTTP (real Ray Serve): for every strategy the
streamed deltas concatenate to the non-streamed answer, and a request that tries to set a prompt
template gets a 400 while the router replica's memory stays flat. Token caps are small: the file
is about mechanics.
"""
from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import time

import pytest
import pytest_asyncio

pytestmark = [pytest.mark.integration, pytest.mark.asyncio(loop_scope="module")]

from router.errors import ModelCallError  # noqa: E402
from router.pool import WorkerPool  # noqa: E402
from router.strategies import get_strategy  # noqa: E402
from router.strategies.base import Context, PromptBuilder, fill_template  # noqa: E402
from router.strategies.specreason import DIGITS  # noqa: E402
from router.strategies.steps import SPECREASON_PROMPT, judge_prompt, step_prompt  # noqa: E402
from router.trace import Trace  # noqa: E402
from router.types import RouteQuery  # noqa: E402
from workers.types import ChatMessage, Sampling  # noqa: E402

SMALL, LARGE = "smollm2-135m", "gemma3-270m"
QUESTION = "Tom has 3 apples and buys 5 more. How many apples does he have now?"
MAX_TOKENS = 24        # per answer
STEP_TOKENS = 12       # per SpecReason step: two or three steps per run


# -- workers ----------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def addresses(request) -> dict[str, list[str]]:
    """{model: [address]} of running workers for both models: the session's vLLM workers from
    tests/conftest.py, or (THINKROUTE_TEST_BACKEND=hf|vllm, or no such fixture) workers of that
    backend started here for this module."""
    for name in ([] if os.environ.get("THINKROUTE_TEST_BACKEND") else ["worker_addresses"]):
        try:
            value = request.getfixturevalue(name)
        except pytest.FixtureLookupError:
            continue
        return {m: (a if isinstance(a, list) else [a]) for m, a in dict(value).items()}
    return request.getfixturevalue("_own_workers")


@pytest.fixture(scope="module")
def _own_workers(tmp_path_factory):
    from router.config import load_config
    from router.launcher import LocalCluster

    cfg = load_config()
    cfg.models = {m: cfg.models[m] for m in (SMALL, LARGE)}
    backend = os.environ.get("THINKROUTE_TEST_BACKEND")
    for pool in cfg.models.values():
        pool.replicas, pool.addresses = 1, []
        if backend:
            pool.backend = backend
    cluster = LocalCluster(cfg, tmp_path_factory.mktemp("strategy-workers"))
    try:
        cluster.start_workers(None)
        yield cluster.addresses()
    finally:
        cluster.stop()


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def pool(addresses):
    p = WorkerPool({m: addresses[m] for m in (SMALL, LARGE)})
    yield p
    await p.close()


def make_ctx(pool, timeout: float = 240.0) -> Context:
    return Context(pool, {"small": SMALL, "large": LARGE}, Trace(), time.monotonic() + timeout)


async def run(pool, name: str, options: dict, query: str = QUESTION, max_tokens: int = MAX_TOKENS):
    cls = get_strategy(name)
    ctx = make_ctx(pool)
    result = await cls(cls.parse_options(options)).run(RouteQuery(query=query, max_tokens=max_tokens), ctx)
    return result, ctx.trace


async def own_steps(pool, model: str, n_steps: int) -> list[str]:
    """The model's own greedy step-by-step output: the same prompts and stop, no other model."""
    user_msg = fill_template(SPECREASON_PROMPT, problem=QUESTION)
    conv = PromptBuilder(RouteQuery(query=QUESTION))
    steps: list[str] = []
    used = 0
    for _ in range(n_steps):
        c, _ = await pool.generate(model, step_prompt(conv, user_msg, steps),
                                   Sampling(max_tokens=min(STEP_TOKENS, MAX_TOKENS - used), stop=("\n\n",)),
                                   deadline=time.monotonic() + 120)
        steps.append(c.text)
        used += c.generated_tokens
    return steps


# -- SpecReason -------------------------------------------------------------------------------

async def test_specreason_threshold_0_is_the_small_models_own_output(pool):
    result, trace = await run(pool, "specreason", {"threshold": 0, "max_step_tokens": STEP_TOKENS})
    d = trace.details["specreason"]
    assert d["acceptance_rate"] == 1.0
    assert all(s["by"] == "small" for s in d["steps"])
    expected = await own_steps(pool, SMALL, len(d["steps"]))
    assert [s["drafted"] for s in d["steps"]] == expected
    assert result.text == "\n\n".join(expected)
    assert not [c for c in trace.calls if c.role == "large" and c.kind == "generate"]
    assert [c.step for c in trace.calls if c.kind == "score"] == list(range(len(d["steps"])))


async def test_specreason_threshold_10_is_the_large_models_own_output(pool):
    result, trace = await run(pool, "specreason", {"threshold": 10, "max_step_tokens": STEP_TOKENS})
    d = trace.details["specreason"]
    assert d["acceptance_rate"] == 0.0
    assert all(s["decision"] == "regenerated" for s in d["steps"])
    expected = await own_steps(pool, LARGE, len(d["steps"]))
    assert result.text == "\n\n".join(expected)
    # one rejected draft, one judge call and one regeneration per step
    for i in range(len(d["steps"])):
        assert [(c.role, c.kind) for c in trace.calls if c.step == i] == [
            ("small", "generate"), ("large", "score"), ("large", "generate")]


async def test_judge_score_matches_a_transformers_forward_pass(pool):
    torch = pytest.importorskip("torch")
    from transformers import AutoModelForCausalLM

    from workers.convert import materialize
    from workers.models import resolve_model

    user_msg = fill_template(SPECREASON_PROMPT, problem=QUESTION)
    prompt = judge_prompt(PromptBuilder(RouteQuery(query=QUESTION)), user_msg, ["Tom starts with 3 apples.", "He buys 5 more, so 3 + 5 = 8."])
    deadline = time.monotonic() + 120
    ids = await pool.tokenize(LARGE, prompt, deadline=deadline)
    digit_ids = [(await pool.tokenize(LARGE, _text(d), deadline=deadline))[-1] for d in DIGITS]
    ctx = make_ctx(pool)
    scored = await ctx.score("large", prompt, top_k=1, candidate_ids=digit_ids, step=0)
    assert scored.prompt_tokens == len(ids)

    model_dir = materialize(resolve_model(LARGE))
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    with torch.no_grad():
        logits = model(torch.tensor([ids])).logits[0, -1].float()
    ref = torch.log_softmax(logits, -1)[digit_ids].tolist()
    got = [c.logprob for c in scored.candidates]
    assert [c.token_id for c in scored.candidates] == digit_ids
    assert max(abs(a - b) for a, b in zip(got, ref)) < 1e-3
    del model


def _text(t: str):
    from workers.types import PromptInput

    return PromptInput(text=t)


# -- Speculative Thinking ---------------------------------------------------------------------

THOUGHT_TRIGGERS = [". ", "\n"]   # the tiny models rarely write blank lines within a few tokens
SHORT = {"triggers": THOUGHT_TRIGGERS, "lookahead_tokens": 8, "takeover_tokens": 8, "verify_tokens": 0}


async def test_specthink_empty_keywords_never_hand_over(pool):
    result, trace = await run(pool, "specthink", {"negative_keywords": [], "verify_keywords": [],
                                                  "positive_keywords": [], **SHORT})
    d = trace.details["specthink"]
    assert d["takeover_count"] == 0 and d["tokens"]["large"] == 0
    assert {c.role for c in trace.calls} == {"small"}
    assert result.text


async def test_specthink_keyword_in_lookahead_hands_over(pool):
    # Every look-ahead of 20 tokens holds one of these words, so the first trigger hands over.
    common = ["wait", "the", "a", "to", "is", "of", "and", "we"]
    result, trace = await run(pool, "specthink", {"negative_keywords": common, **SHORT})
    takeovers = trace.details["specthink"]["takeovers"]
    assert takeovers, trace.details
    first = takeovers[0]
    assert first["reason"] == "keyword" and first["trigger"] and first["tokens"] > 0
    assert first["text"] in result.text
    large_steps = {c.step for c in trace.calls if c.role == "large"}
    assert first["step"] in large_steps


async def test_specthink_token_handoff_refused_for_the_embedded_pair(pool):
    from router.errors import PlanError

    cls = get_strategy("specthink")
    infos = {"small": await pool.info(SMALL), "large": await pool.info(LARGE)}
    assert infos["small"].tokenizer_id != infos["large"].tokenizer_id
    with pytest.raises(PlanError) as e:
        await cls(cls.parse_options({"handoff": "token"})).check_plan(infos)
    assert infos["small"].tokenizer_id in str(e.value) and infos["large"].tokenizer_id in str(e.value)


# -- CoThink and Hawkeye -----------------------------------------------------------------------

class RecordingPool:
    """Passes calls through to the real pool and keeps each generate prompt."""

    def __init__(self, pool) -> None:
        self.pool, self.prompts = pool, []

    async def generate(self, model, prompt, sampling, **kw):
        self.prompts.append((model, prompt))
        return await self.pool.generate(model, prompt, sampling, **kw)

    def __getattr__(self, name):
        return getattr(self.pool, name)


async def test_cothink_reasoner_prompt_contains_the_outline(pool):
    rec = RecordingPool(pool)
    result, trace = await run(rec, "cothink", {"outline_tokens": 32})
    d = trace.details["cothink"]
    (m1, p1), (m2, p2) = rec.prompts
    assert (m1, m2) == (SMALL, LARGE)
    outline = d["outline"].strip()
    assert outline and outline in p2.messages[-1].content and QUESTION in p2.messages[-1].content
    assert d["reasoner_prompt_tokens"] > 0 and d["outliner_prompt_tokens"] > 0
    assert [(c.role, c.step) for c in trace.calls] == [("small", 0), ("large", 1)]
    assert result.text == d.get("answer", result.text)


async def test_hawkeye_small_prompt_contains_the_cot(pool):
    rec = RecordingPool(pool)
    result, trace = await run(rec, "hawkeye", {"cot_tokens": 32})
    d = trace.details["hawkeye"]
    (m1, p1), (m2, p2) = rec.prompts
    assert (m1, m2) == (LARGE, SMALL)
    assert p1.messages[-1].content.startswith(f"Question: {QUESTION}\nPlease generate a concise chain-of-thought")
    cot = d["cot"].strip()
    assert cot and f"{QUESTION}\n{cot}\nThis is a chain-of-thought" in p2.messages[-1].content
    assert [(c.role, c.step) for c in trace.calls] == [("large", 0), ("small", 1)]


# -- a worker dying mid-strategy ----------------------------------------------------------------

async def test_worker_killed_mid_strategy_names_model_and_step(pool, tmp_path):
    """A second small-model worker (hf backend: quick to load) serves the small role; it is killed
    right after SpecReason's first draft, so the second draft fails."""
    import subprocess
    import sys

    ready = tmp_path / "ready"
    log = open(tmp_path / "worker.log", "w")
    proc = subprocess.Popen([sys.executable, "-m", "router.cli", "worker", "--model", SMALL, "--backend", "hf",
                             "--ready-file", str(ready)], stdout=log, stderr=subprocess.STDOUT,
                            start_new_session=True)
    try:
        deadline = time.monotonic() + 240
        while not ready.exists():
            assert proc.poll() is None, (tmp_path / "worker.log").read_text()[-2000:]
            assert time.monotonic() < deadline, "the killable worker did not start in 240 s"
            await asyncio.sleep(0.5)
        doomed = WorkerPool({SMALL: [ready.read_text().strip()], LARGE: [r.address for r in pool.replicas[LARGE]]},
                            max_attempts=2)

        class KillAfterFirstDraft(RecordingPool):
            async def generate(self, model, prompt, sampling, **kw):
                out = await super().generate(model, prompt, sampling, **kw)
                if model == SMALL and proc.poll() is None:
                    os.killpg(proc.pid, signal.SIGKILL)
                    proc.wait(timeout=30)
                return out

        ctx = Context(KillAfterFirstDraft(doomed), {"small": SMALL, "large": LARGE}, Trace(), time.monotonic() + 60)
        cls = get_strategy("specreason")
        start = time.monotonic()
        with pytest.raises(ModelCallError) as e:
            await cls(cls.parse_options({"threshold": 0, "max_step_tokens": 8})).run(
                RouteQuery(query=QUESTION, max_tokens=200), ctx)
        assert time.monotonic() - start < 60
        msg = str(e.value)
        assert SMALL in msg and "role small" in msg and "step 1" in msg, msg
        await doomed.close()
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)


# -- the whole conversation reaches the workers --------------------------------------------------

SYSTEM = "You are a careful math tutor. Answer in one short paragraph."
CONVERSATION = [
    ChatMessage("system", SYSTEM),
    ChatMessage("user", "What is 2 + 2?"),
    ChatMessage("assistant", "2 + 2 = 4."),
    ChatMessage("user", QUESTION),
]
PAIR_OPTIONS = {
    "specreason": {"threshold": 5, "max_step_tokens": 8},
    "specthink": {"negative_keywords": ["wait", "the", "a", "is"], "begin_large_tokens": 4, **SHORT},
    "cothink": {"outline_tokens": 16},
    "hawkeye": {"cot_tokens": 16},
}


class CallRecorder(RecordingPool):
    """Passes calls to the real pool; keeps (model, prompt, prompt tokens the worker reported)."""

    def __init__(self, pool) -> None:
        super().__init__(pool)
        self.seen: list[tuple[str, object, int]] = []

    async def generate(self, model, prompt, sampling, **kw):
        c, rec = await self.pool.generate(model, prompt, sampling, **kw)
        self.seen.append((model, prompt, c.prompt_tokens))
        return c, rec

    async def score(self, model, prompt, **kw):
        s, rec = await self.pool.score(model, prompt, **kw)
        self.seen.append((model, prompt, s.prompt_tokens))
        return s, rec


@pytest.mark.parametrize("name", list(PAIR_OPTIONS))
async def test_a_three_turn_conversation_reaches_every_call_whole(pool, name):
    """Each prompt the workers got holds the system prompt, the first exchange and the last question
    (inside the strategy's own turn), and the worker's own prompt-token count for it equals its
    tokenization of that whole prompt (so nothing was cut on the way)."""
    rec = CallRecorder(pool)
    cls = get_strategy(name)
    ctx = Context(rec, {"small": SMALL, "large": LARGE}, Trace(), time.monotonic() + 240)
    query = RouteQuery(messages=list(CONVERSATION), max_tokens=MAX_TOKENS)
    await cls(cls.parse_options(request=PAIR_OPTIONS[name])).answer(query, ctx)
    assert len(rec.seen) >= 2
    single = {}
    for model, prompt, prompt_tokens in rec.seen:
        msgs = list(prompt.messages)
        assert msgs[:3] == CONVERSATION[:3], (name, msgs[:3])
        assert msgs[3].role == "user" and QUESTION in msgs[3].content
        assert prompt_tokens == len(await pool.tokenize(model, prompt, deadline=time.monotonic() + 60))
        if model not in single:   # the same strategy turn without the history is shorter
            alone = type(prompt)(messages=tuple(msgs[3:]), add_generation_prompt=prompt.add_generation_prompt,
                                 continue_final_message=prompt.continue_final_message)
            single[model] = len(await pool.tokenize(model, alone, deadline=time.monotonic() + 60))
            assert prompt_tokens > single[model]
    assert {m for m, _, _ in rec.seen} == {SMALL, LARGE}


# -- over HTTP: real Ray Serve, the same workers ---------------------------------------------------

@pytest.fixture(scope="module")
def http_base(addresses):
    """The router as a Ray Serve app on a free loopback HTTP port (no API keys: loopback clients)."""
    import ray
    from ray import serve
    from ray.serve.config import HTTPOptions

    from router.config import load_config
    from router.serve_app import build_app
    from tests.conftest import free_port

    config = load_config(overrides={"router.request_timeout_s": 240})
    port = free_port()
    ray.init(num_cpus=2, include_dashboard=False, logging_level="WARNING")
    try:
        serve.start(http_options=HTTPOptions(host="127.0.0.1", port=port))
        serve.run(build_app(config, {m: addresses[m] for m in (SMALL, LARGE)}), name="thinkroute", route_prefix="/")
        yield f"http://127.0.0.1:{port}"
    finally:
        serve.shutdown()
        ray.shutdown()


HTTP_OPTIONS = {"direct": {}, **PAIR_OPTIONS}


@pytest.mark.parametrize("name", list(HTTP_OPTIONS))
def test_http_streamed_deltas_concatenate_to_the_plain_answer(http_base, name):
    import openai

    client = openai.OpenAI(base_url=http_base + "/v1", api_key="unused-on-loopback", max_retries=0, timeout=300)
    kw = dict(model=f"strategy/{name}", messages=[{"role": "user", "content": QUESTION}], max_tokens=MAX_TOKENS,
              temperature=0, seed=7, extra_body={"thinkroute": {"options": HTTP_OPTIONS[name]}})
    plain = client.chat.completions.create(**kw).choices[0].message.content
    deltas = [c.choices[0].delta.content for c in client.chat.completions.create(stream=True, **kw)
              if c.choices and c.choices[0].delta.content]
    assert plain, f"{name}: empty non-streamed answer"
    assert "".join(deltas) == plain, (name, deltas, plain)


def _replica_processes():
    import psutil

    out = []
    for p in psutil.process_iter(["cmdline", "name"]):
        title = " ".join(p.info.get("cmdline") or []) + " " + (p.info.get("name") or "")
        if "ServeReplica" in title and "router" in title:
            out.append(p)
    return out


def test_http_template_knob_is_refused_and_the_replica_memory_stays_flat(http_base):
    """`{"outline_prompt": "{question}{question:>2000000000}"}` is a 400 naming the knob; the router
    replica's peak RSS, sampled every 5 ms during the requests, stays within 64 MiB of where it was."""
    import threading

    import httpx

    replicas = _replica_processes()
    assert replicas, "no Ray Serve router replica process found"
    base = {p.pid: p.memory_info().rss for p in replicas}
    peak = dict(base)
    stop = threading.Event()

    def sample():
        while not stop.is_set():
            for p in replicas:
                try:
                    peak[p.pid] = max(peak[p.pid], p.memory_info().rss)
                except Exception:  # noqa: BLE001 - a vanished process shows up as a failed request
                    pass
            stop.wait(0.005)

    t = threading.Thread(target=sample, daemon=True)
    t.start()
    try:
        for knobs in ({"outline_prompt": "{question}{question:>2000000000}"},
                      {"reasoner_prompt": "{question.__class__.__mro__}{outline}"}):
            r = httpx.post(http_base + "/v1/chat/completions", timeout=120, json={
                "model": "strategy/cothink", "messages": [{"role": "user", "content": QUESTION}], "max_tokens": 8,
                "thinkroute": {"options": knobs}})
            assert r.status_code == 400, r.text
            knob = next(iter(knobs))
            assert knob in r.json()["error"]["message"] and "config only" in r.json()["error"]["message"]
    finally:
        stop.set()
        t.join()
    grew = {pid: (peak[pid] - base[pid]) / 2**20 for pid in base}
    assert max(grew.values()) < 64, f"router replica RSS grew by {grew} MiB"
    ok = httpx.post(http_base + "/v1/chat/completions", timeout=300, json={
        "model": "strategy/cothink", "messages": [{"role": "user", "content": QUESTION}], "max_tokens": 8,
        "thinkroute": {"options": {"outline_tokens": 8}}})
    assert ok.status_code == 200 and ok.json()["choices"][0]["message"]["content"]
