"""Conversions between `thinkroute.v1` protobuf messages and `workers.types` dataclasses.

Used by the worker server (proto -> types) and by the router's worker client (types -> proto).
"""
from __future__ import annotations

from thinkroute.v1 import worker_pb2 as pb

from workers.types import (
    ChatMessage,
    Constraint,
    FinishReason,
    GenerateFinal,
    Pooling,
    PromptInput,
    Sampling,
    TokenLogprob,
)

FINISH_TO_PB = {
    FinishReason.STOP: pb.FINISH_REASON_STOP,
    FinishReason.LENGTH: pb.FINISH_REASON_LENGTH,
    FinishReason.ABORT: pb.FINISH_REASON_ABORT,
}
FINISH_FROM_PB = {v: k for k, v in FINISH_TO_PB.items()}


def prompt_from_pb(p: pb.Prompt) -> PromptInput:
    kind = p.WhichOneof("kind")
    if kind == "text":
        return PromptInput(text=p.text)
    if kind == "token_ids":
        return PromptInput(token_ids=tuple(p.token_ids.ids))
    if kind == "chat":
        return PromptInput(
            messages=tuple(ChatMessage(m.role, m.content) for m in p.chat.messages),
            add_generation_prompt=p.chat.add_generation_prompt,
            continue_final_message=p.chat.continue_final_message,
        )
    return PromptInput()  # nothing set: rejected by the renderer with a message


def prompt_to_pb(p: PromptInput) -> pb.Prompt:
    if p.text is not None:
        return pb.Prompt(text=p.text)
    if p.token_ids is not None:
        return pb.Prompt(token_ids=pb.TokenIds(ids=list(p.token_ids)))
    return pb.Prompt(chat=pb.ChatPrompt(
        messages=[pb.ChatMessage(role=m.role, content=m.content) for m in (p.messages or ())],
        add_generation_prompt=p.add_generation_prompt,
        continue_final_message=p.continue_final_message,
    ))


def sampling_from_pb(s: pb.SamplingParams, constraint: pb.GenerateRequest.Constraint | None = None) -> Sampling:
    return Sampling(
        max_tokens=s.max_tokens,
        temperature=s.temperature,
        top_p=s.top_p if s.top_p > 0 else 1.0,
        seed=s.seed if s.HasField("seed") else None,
        stop=tuple(s.stop),
        constraint=constraint_from_pb(constraint) if constraint is not None else None,
    )


def constraint_from_pb(c: pb.GenerateRequest.Constraint) -> Constraint | None:
    """The request's structured-output constraint; None when no kind is set."""
    kind = c.WhichOneof("kind")
    if kind is None:
        return None
    if kind == "choice":
        return Constraint(choice=tuple(c.choice.choices))
    return Constraint(**{kind: getattr(c, kind)})


def constraint_to_pb(c: Constraint) -> pb.GenerateRequest.Constraint:
    kind = c.kind()
    if kind == "choice":
        return pb.GenerateRequest.Constraint(choice=pb.GenerateRequest.ChoiceList(choices=list(c.choice or ())))
    return pb.GenerateRequest.Constraint(**{kind: getattr(c, kind)})


def sampling_to_pb(s: Sampling) -> pb.SamplingParams:
    msg = pb.SamplingParams(max_tokens=s.max_tokens, temperature=s.temperature, top_p=s.top_p, stop=list(s.stop))
    if s.seed is not None:
        msg.seed = s.seed
    return msg


def final_to_pb(f: GenerateFinal) -> pb.GenerateFinal:
    return pb.GenerateFinal(
        finish_reason=FINISH_TO_PB[f.finish_reason],
        stop_string=f.stop_string,
        usage=pb.Usage(
            prompt_tokens=f.prompt_tokens,
            cached_prompt_tokens=f.cached_prompt_tokens,
            generated_tokens=f.generated_tokens,
            remote_cached_prompt_tokens=f.remote_cached_prompt_tokens,
            thinking_tokens=f.thinking_tokens,
        ),
        time_to_first_token_ms=f.time_to_first_token_ms,
        total_time_ms=f.total_time_ms,
    )


def finish_name(code: int) -> str:
    return FINISH_FROM_PB.get(code, FinishReason.STOP).value


def logprobs_to_pb(items: list[TokenLogprob]) -> list[pb.TokenLogprob]:
    return [pb.TokenLogprob(token_id=t.token_id, token=t.token, logprob=t.logprob) for t in items]


def logprobs_from_pb(items) -> list[TokenLogprob]:
    return [TokenLogprob(t.token_id, t.token, t.logprob) for t in items]


def pooling_from_pb(p: int) -> Pooling:
    return Pooling.MEAN if p == pb.POOLING_MEAN else Pooling.LAST_TOKEN
