"""Reasoning-mode plans: policy candidates that differ only by `thinking` (e.g. `qwen3-8b:no_think` =
`{strategy: direct, model: qwen3-8b, options: {thinking: "off"}}`), checked when the policy starts.

A candidate's knobs are validated against its strategy's options schema (a bad `thinking` value names the
grammar). When the router starts the candidate's workers itself (the pool has `replicas` > 0, no static
`addresses`, no registry discovery) its engine config is the workers' config, so the model's thinking config
is known here (the pool's `thinking:` block, else the model family's, workers/models.py) and a mode the
model cannot serve fails at start, naming the candidate, the model and the modes it supports, instead of
as a 400 on the first request routed to it. Workers started elsewhere decide for themselves (their own
engine config), so no mode check is made for them.
"""
from __future__ import annotations

from typing import TYPE_CHECKING

from router.errors import InvalidRoute

if TYPE_CHECKING:
    from router.config import Config
    from router.plan_schema import CandidatePlan


def check_candidate(config: "Config", name: str, cand: "CandidatePlan") -> None:
    """Raise InvalidRoute naming `policy.candidates.<name>` when its options (e.g. `thinking`) are invalid,
    or when its model, started by this router, cannot serve its `thinking` mode."""
    from router.strategies import get_strategy

    cls = get_strategy(cand.strategy)
    try:
        options = cls.parse_options(config.router.strategies.get(cand.strategy), cand.options)
    except InvalidRoute as e:
        raise InvalidRoute(f"policy.candidates.{name}.options: {e}") from e
    thinking = getattr(options, "thinking", "")
    if not thinking or cls.roles != ("model",):
        return
    model = cand.model or config.router.default_model
    pool = config.models.get(model)
    discovery = getattr(getattr(config.router, "discovery", None), "enabled", False)
    if pool is None or pool.addresses or pool.replicas == 0 or discovery:
        return  # workers started elsewhere: their engine config decides (a refusal is a 400 naming the modes)
    from workers.errors import InvalidRequest
    from workers.models import resolve_model, thinking_config
    from workers.thinking import resolve

    try:
        spec = resolve_model(pool.model or model)
    except Exception:  # noqa: BLE001 - a model this host cannot resolve: the worker reports it at start
        return
    try:
        resolve(thinking, thinking_config(spec, pool.thinking), model, chat_prompt=True)
    except InvalidRequest as e:
        raise InvalidRoute(f"policy.candidates.{name}: {e}") from e
