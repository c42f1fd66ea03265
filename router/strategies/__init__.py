"""Strategy registry: name -> class. Adding a strategy = one module + one line in
`register_builtin_strategies`. The same names are used in config, the CLI's `--strategy`
choices, the gRPC `strategy` field and the OpenAI `strategy/<name>` model names."""
from __future__ import annotations

from router.errors import NotFound
from router.strategies.base import Context, Strategy, StrategyOptions, StrategyResult

STRATEGIES: dict[str, type[Strategy]] = {}


def register(cls: type[Strategy]) -> type[Strategy]:
    STRATEGIES[cls.name] = cls
    return cls


def register_builtin_strategies() -> None:
    from router.strategies.direct import Direct

    register(Direct)
    # Pair strategies (tracker issue 3) register here when present.
    for module, cls_name in [
        ("router.strategies.specreason", "SpecReason"),
        ("router.strategies.specthink", "SpeculativeThinking"),
        ("router.strategies.cothink", "CoThink"),
        ("router.strategies.hawkeye", "Hawkeye"),
    ]:
        try:
            mod = __import__(module, fromlist=[cls_name])
        except ModuleNotFoundError as e:
            if e.name == module:
                continue
            raise
        register(getattr(mod, cls_name))


def get_strategy(name: str) -> type[Strategy]:
    if not STRATEGIES:
        register_builtin_strategies()
    try:
        return STRATEGIES[name]
    except KeyError:
        raise NotFound(f"unknown strategy {name!r}; available strategies are {sorted(STRATEGIES)}") from None


def strategy_names() -> list[str]:
    if not STRATEGIES:
        register_builtin_strategies()
    return sorted(STRATEGIES)


def knob_table_markdown(name: str) -> str:
    """The knob table of strategy `name` as Markdown, generated from its `Options` schema (the one
    place knobs are validated); docs/strategies.md carries it (`python -m router.strategies`)."""
    rows = get_strategy(name).Options.knob_table()
    cols = ["knob", "type", "range", "default", "set by", "description"]
    out = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for r in rows:
        cells = [f"`{r['knob']}`", r["type"], r["range"], f"`{r['default']}`", r["set by"], r["description"]]
        out.append("| " + " | ".join(c.replace("|", "\\|").replace("\n", " ") for c in cells) + " |")
    return "\n".join(out)


__all__ = ["Context", "Strategy", "StrategyOptions", "StrategyResult", "STRATEGIES", "get_strategy", "knob_table_markdown",
           "strategy_names"]
