"""`python -m router.strategies`: print every strategy's knob table (Markdown, from the schemas),
as docs/strategies.md carries them."""
from router.strategies import knob_table_markdown, strategy_names

for _name in strategy_names():
    print(f"### `{_name}`\n\n{knob_table_markdown(_name)}\n")
