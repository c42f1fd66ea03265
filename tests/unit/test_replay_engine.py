"""The replay backend's logic: prompt matching, record loading, streaming (pacing, stops, max_tokens, counts)."""
from __future__ import annotations

import asyncio
import json
import time

import pytest

from workers.config import EngineConfig
from workers.errors import UnknownModel
from workers.models import resolve_model
from workers.prompts import PromptRenderer
from workers.replay_engine import NoRecord, NotServed, ReplayEngine, query_key, user_text
from workers.types import ChatMessage, PromptInput, Sampling

ROWS = [
    {"question": "What is  2 + 2?", "answer": "4",
     "sysA": {"is_correct": True, "solution": "2 + 2 = 4\nA: 4"},
     "think:low": {"is_correct": True, "grade": "correct", "output_tokens": 40, "reasoning_tokens": 35}},
    {"question": "Who wrote Hamlet?", "answer": "Shakespeare",
     "sysA": {"is_correct": False, "solution": "Marlowe"},
     "think:low": {"is_correct": False, "grade": "not_attempted", "output_tokens": 8}},
]


@pytest.fixture()
def outcome_file(tmp_path):
    p = tmp_path / "outcomes.jsonl"
    p.write_text("".join(json.dumps(r) + "\n" for r in ROWS))
    return p


def _engine(outcome_file, model="sysA@replay", **replay):
    cfg = EngineConfig(model=model, backend="replay", replay={"file": str(outcome_file), **replay})
    spec = resolve_model(model)
    from workers.convert import materialize

    eng = ReplayEngine(spec, materialize(spec), cfg)
    eng.load_sync()
    return eng, PromptRenderer(eng.tokenizer, chat=spec.chat, prepend_bos=spec.prepend_bos)


def _run(eng, ids, sampling):
    async def go():
        chunks = [c async for c in eng.generate("r", ids, sampling)]
        return "".join(c.text for c in chunks), chunks
    return asyncio.run(go())


def _user(r, *messages):
    return r.render(PromptInput(messages=tuple(ChatMessage(role, text) for role, text in messages))).token_ids


@pytest.mark.parametrize("rendered,expected", [
    ("Question: a\nb\nAnswer:", "a\nb"),
    ("System: s\n\nUser: q1\n\nAssistant: a1\n\nUser: q2\n\nAssistant:", "q2"),
    ("plain prompt", "plain prompt"),
])
def test_user_text(rendered, expected):
    assert user_text(rendered) == expected


def test_query_key_normalises_whitespace():
    assert query_key("  What is\n 2 +\t2? ") == "What is 2 + 2?"


def test_replay_model_names():
    spec = resolve_model("gpt-4@replay")
    assert spec.name == "gpt-4@replay" and not spec.chat and spec.family == "replay"
    with pytest.raises(UnknownModel):
        resolve_model("@replay")


def test_config_needs_the_replay_block():
    with pytest.raises(ValueError, match="replay"):
        EngineConfig(model="x@replay", backend="replay")
    with pytest.raises(ValueError, match="replay"):
        EngineConfig(model="smollm2-135m", backend="vllm", replay={"file": "f"})


def test_answers_recorded_text_with_real_token_counts(outcome_file):
    eng, r = _engine(outcome_file)
    ids = _user(r, ("user", "What is 2 + 2?"))  # whitespace differs from the file's "What is  2 + 2?"
    text, chunks = _run(eng, ids, Sampling(max_tokens=100))
    final = chunks[-1].final
    assert text == "2 + 2 = 4\nA: 4"
    n = len(eng.tokenizer.encode(text, add_special_tokens=False))
    assert final.generated_tokens == n and final.prompt_tokens == len(ids)
    assert [t for c in chunks for t in c.token_ids] == eng.tokenizer.encode(text, add_special_tokens=False)
    # A system prompt and history do not change the match: the last user turn does.
    text2, _ = _run(eng, _user(r, ("system", "Be brief."), ("user", "What is 2 + 2?")), Sampling(max_tokens=100))
    assert text2 == text


def test_unknown_prompt_is_no_record(outcome_file):
    eng, r = _engine(outcome_file)
    with pytest.raises(NoRecord) as e:
        _run(eng, _user(r, ("user", "What is 3 + 3?")), Sampling(max_tokens=10))
    assert e.value.grpc_code == "NOT_FOUND" and "3 + 3" not in str(e.value)


def test_unknown_system_names_the_choices(outcome_file):
    with pytest.raises(UnknownModel, match="sysA"):
        _engine(outcome_file, model="sysB@replay")


def test_max_tokens_and_stop(outcome_file):
    eng, r = _engine(outcome_file)
    ids = _user(r, ("user", "What is 2 + 2?"))
    text, chunks = _run(eng, ids, Sampling(max_tokens=2))
    assert chunks[-1].final.finish_reason.value == "length" and chunks[-1].final.generated_tokens == 2
    assert "2 + 2 = 4\nA: 4".startswith(text) and len(text) < 10
    text, chunks = _run(eng, ids, Sampling(max_tokens=100, stop=("\n",)))
    assert text == "2 + 2 = 4" and chunks[-1].final.stop_string == "\n"


def test_pacing_and_ttft(outcome_file):
    eng, r = _engine(outcome_file, tokens_per_s=100, ttft_ms=50)
    ids = _user(r, ("user", "What is 2 + 2?"))
    t0 = time.monotonic()
    text, chunks = _run(eng, ids, Sampling(max_tokens=100))
    n = chunks[-1].final.generated_tokens
    elapsed = time.monotonic() - t0
    assert chunks[-1].final.time_to_first_token_ms >= 50
    assert elapsed >= 0.05 + (n - 1) / 100 - 0.01


def test_record_without_solution_reports_recorded_tokens(outcome_file):
    eng, r = _engine(outcome_file, model="think:low@replay")
    text, chunks = _run(eng, _user(r, ("user", "What is 2 + 2?")), Sampling(max_tokens=100))
    assert text == "4" and chunks[-1].final.generated_tokens == 40 and chunks[-1].final.thinking_tokens == 35
    text, chunks = _run(eng, _user(r, ("user", "Who wrote Hamlet?")), Sampling(max_tokens=100))
    assert text == "I don't know." and chunks[-1].final.generated_tokens == 8


def test_score_and_hidden_state_are_not_served(outcome_file):
    eng, _ = _engine(outcome_file)
    for rpc in ("Score", "HiddenState"):
        with pytest.raises(NotServed) as e:
            eng.refuse(rpc)
        assert e.value.grpc_code == "UNIMPLEMENTED"
    eng.refuse("Generate")
