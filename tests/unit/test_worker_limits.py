"""workers/limits.py: every repeated or free-form worker field has a bound; past it, INVALID_ARGUMENT
names the field and the bound. At the bound the request passes (the table checks both sides)."""
from __future__ import annotations

import math

import pytest

from thinkroute.v1 import worker_pb2 as pb

from workers import limits as L
from workers.errors import InvalidRequest


def text(n: int) -> pb.Prompt:
    return pb.Prompt(text="x" * n)


def ids(n: int) -> pb.Prompt:
    return pb.Prompt(token_ids=pb.TokenIds(ids=[1] * n))


def chat(n_messages: int, chars_each: int = 1, role: str = "user") -> pb.Prompt:
    return pb.Prompt(chat=pb.ChatPrompt(messages=[pb.ChatMessage(role=role, content="y" * chars_each)] * n_messages))


def gen(prompt: pb.Prompt | None = None, request_id: str = "", **sampling) -> pb.GenerateRequest:
    s = {"max_tokens": 4, **sampling}
    return pb.GenerateRequest(request_id=request_id, prompt=prompt or text(5), sampling=pb.SamplingParams(**s))


def gen_c(**kind) -> pb.GenerateRequest:
    r = gen()
    r.constraint.CopyFrom(pb.GenerateRequest.Constraint(**kind))
    return r


def gen_choice(choices: list[str]) -> pb.GenerateRequest:
    r = gen()
    r.constraint.choice.CopyFrom(pb.GenerateRequest.ChoiceList(choices=choices))
    return r


def score(**kw) -> pb.ScoreRequest:
    return pb.ScoreRequest(prompt=kw.pop("prompt", text(5)), **kw)


def hidden(n_prompts: int = 1, layers=(), pooling=pb.POOLING_LAST_TOKEN) -> pb.HiddenStateRequest:
    return pb.HiddenStateRequest(prompts=[text(3)] * n_prompts, layers=list(layers), pooling=pooling)


# (name, check, request at the bound (passes), request past it (fails), field named in the error)
TABLE = [
    ("request_id", L.check_generate, gen(request_id="r" * L.MAX_REQUEST_ID_CHARS),
     gen(request_id="r" * (L.MAX_REQUEST_ID_CHARS + 1)), "request_id"),
    ("prompt.text", L.check_generate, gen(text(L.MAX_PROMPT_CHARS)), gen(text(L.MAX_PROMPT_CHARS + 1)), "prompt.text"),
    ("prompt.token_ids", L.check_generate, gen(ids(L.MAX_PROMPT_TOKEN_IDS)), gen(ids(L.MAX_PROMPT_TOKEN_IDS + 1)),
     "prompt.token_ids.ids"),
    ("chat.messages", L.check_generate, gen(chat(L.MAX_MESSAGES)), gen(chat(L.MAX_MESSAGES + 1)),
     "prompt.chat.messages"),
    ("chat.content total", L.check_generate, gen(chat(4, L.MAX_PROMPT_CHARS // 4)),
     gen(chat(4, L.MAX_PROMPT_CHARS // 4 + 1)), "content"),
    ("chat.role", L.check_generate, gen(chat(1, role="r" * L.MAX_ROLE_CHARS)),
     gen(chat(1, role="r" * (L.MAX_ROLE_CHARS + 1))), "messages[0].role"),
    ("max_tokens low", L.check_generate, gen(max_tokens=1), gen(max_tokens=0), "sampling.max_tokens"),
    ("max_tokens high", L.check_generate, gen(max_tokens=L.MAX_TOKENS), gen(max_tokens=L.MAX_TOKENS + 1),
     "sampling.max_tokens"),
    ("temperature high", L.check_generate, gen(temperature=L.MAX_TEMPERATURE), gen(temperature=1e30),
     "sampling.temperature"),
    ("temperature nan", L.check_generate, gen(temperature=0.0), gen(temperature=math.nan), "sampling.temperature"),
    ("temperature neg", L.check_generate, gen(temperature=0.0), gen(temperature=-0.5), "sampling.temperature"),
    ("top_p", L.check_generate, gen(top_p=1.0), gen(top_p=1.01), "sampling.top_p"),
    ("top_p nan", L.check_generate, gen(top_p=0.0), gen(top_p=math.nan), "sampling.top_p"),
    ("stop count", L.check_generate, gen(stop=["s"] * L.MAX_STOP), gen(stop=["s"] * (L.MAX_STOP + 1)),
     "sampling.stop"),
    ("stop length", L.check_generate, gen(stop=["s" * L.MAX_STOP_CHARS]), gen(stop=["s" * (L.MAX_STOP_CHARS + 1)]),
     "sampling.stop[0]"),
    ("stop empty", L.check_generate, gen(stop=["a"]), gen(stop=["a", ""]), "sampling.stop[1]"),
    ("constraint.json_schema", L.check_generate, gen_c(json_schema="s" * L.MAX_CONSTRAINT_CHARS),
     gen_c(json_schema="s" * (L.MAX_CONSTRAINT_CHARS + 1)), "constraint.json_schema"),
    ("constraint.grammar", L.check_generate, gen_c(grammar="g" * L.MAX_CONSTRAINT_CHARS),
     gen_c(grammar="g" * (L.MAX_CONSTRAINT_CHARS + 1)), "constraint.grammar"),
    ("constraint.regex", L.check_generate, gen_c(regex="r" * L.MAX_REGEX_CHARS),
     gen_c(regex="r" * (L.MAX_REGEX_CHARS + 1)), "constraint.regex"),
    ("constraint.choice count", L.check_generate, gen_choice(["c"] * L.MAX_CHOICES),
     gen_choice(["c"] * (L.MAX_CHOICES + 1)), "constraint.choice.choices"),
    ("constraint.choice empty", L.check_generate, gen_choice(["c"]), gen_choice([]), "constraint.choice.choices"),
    ("constraint.choice length", L.check_generate, gen_choice(["c" * L.MAX_CHOICE_CHARS]),
     gen_choice(["c" * (L.MAX_CHOICE_CHARS + 1)]), "constraint.choice.choices[0]"),
    ("score.continuation_text", L.check_score, score(continuation_text="c" * L.MAX_PROMPT_CHARS),
     score(continuation_text="c" * (L.MAX_PROMPT_CHARS + 1)), "continuation_text"),
    ("score.continuation_ids", L.check_score,
     score(continuation_ids=pb.TokenIds(ids=[1] * L.MAX_PROMPT_TOKEN_IDS)),
     score(continuation_ids=pb.TokenIds(ids=[1] * (L.MAX_PROMPT_TOKEN_IDS + 1))), "continuation_ids"),
    ("score.top_k", L.check_score, score(top_k=L.MAX_TOP_K), score(top_k=L.MAX_TOP_K + 1), "top_k"),
    ("score.top_k neg", L.check_score, score(top_k=0), score(top_k=-1), "top_k"),
    ("score.candidate_ids", L.check_score, score(candidate_ids=[1] * L.MAX_CANDIDATE_IDS),
     score(candidate_ids=[1] * (L.MAX_CANDIDATE_IDS + 1)), "candidate_ids"),
    ("score.prompt", L.check_score, score(prompt=text(L.MAX_PROMPT_CHARS)), score(prompt=text(L.MAX_PROMPT_CHARS + 1)),
     "prompt.text"),
    ("hidden.prompts", L.check_hidden_state, hidden(L.MAX_HIDDEN_STATE_PROMPTS),
     hidden(L.MAX_HIDDEN_STATE_PROMPTS + 1), "prompts"),
    ("hidden.prompts empty", L.check_hidden_state, hidden(1), hidden(0), "prompts"),
    ("hidden.prompt size", L.check_hidden_state, pb.HiddenStateRequest(prompts=[text(L.MAX_PROMPT_CHARS)]),
     pb.HiddenStateRequest(prompts=[text(3), text(L.MAX_PROMPT_CHARS + 1)]), "prompts[1].text"),
    ("hidden.layers", L.check_hidden_state, hidden(layers=range(L.MAX_LAYERS)), hidden(layers=range(L.MAX_LAYERS + 1)),
     "layers"),
    ("hidden.pooling", L.check_hidden_state, hidden(pooling=pb.POOLING_MEAN), hidden(pooling=7), "pooling"),
    ("hidden.poolings count", L.check_hidden_state,
     pb.HiddenStateRequest(prompts=[text(3)], poolings=[pb.POOLING_MEAN] * L.MAX_POOLINGS),
     pb.HiddenStateRequest(prompts=[text(3)], poolings=[pb.POOLING_MEAN] * (L.MAX_POOLINGS + 1)), "poolings"),
    ("hidden.poolings value", L.check_hidden_state, pb.HiddenStateRequest(prompts=[text(3)], poolings=[1, 0]),
     pb.HiddenStateRequest(prompts=[text(3)], poolings=[1, 9]), "poolings[1]"),
    ("hidden.max_tokens", L.check_hidden_state, pb.HiddenStateRequest(prompts=[text(3)], max_tokens=0),
     pb.HiddenStateRequest(prompts=[text(3)], max_tokens=-1), "max_tokens"),
]


@pytest.mark.parametrize("name,check,ok,bad,field", TABLE, ids=[t[0] for t in TABLE])
def test_bound_passes_at_the_limit_and_fails_past_it_naming_the_field(name, check, ok, bad, field):
    check(ok)
    with pytest.raises(InvalidRequest) as err:
        check(bad)
    assert field in str(err.value)
    assert err.value.grpc_code == "INVALID_ARGUMENT"


def test_every_bound_is_in_the_module_docstring():
    for name in ("MAX_PROMPT_CHARS", "MAX_PROMPT_TOKEN_IDS", "MAX_MESSAGES", "MAX_TOKENS", "MAX_TEMPERATURE",
                 "MAX_STOP", "MAX_STOP_CHARS", "MAX_TOP_K", "MAX_CANDIDATE_IDS", "MAX_HIDDEN_STATE_PROMPTS",
                 "MAX_LAYERS", "MAX_POOLINGS", "MAX_CONSTRAINT_CHARS", "MAX_REGEX_CHARS", "MAX_CHOICES",
                 "MAX_CHOICE_CHARS"):
        assert name in L.__doc__, name


def test_layer_range_against_the_model():
    L.check_layers_range([0, 30, -31, -1], 30)
    with pytest.raises(InvalidRequest, match="out of range"):
        L.check_layers_range([31], 30)
    with pytest.raises(InvalidRequest, match="out of range"):
        L.check_layers_range([-32], 30)
