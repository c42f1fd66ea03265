"""`thinkroute` command line: one subcommand per module, each registering itself.

Every command module exposes `register(subparsers) -> None`, which adds its parser and
sets `func` (a callable taking the parsed args and returning an exit code).
"""
from __future__ import annotations

import argparse
import importlib
import sys

#: Command modules, in `--help` order. Adding a command = one module + one line here.
COMMAND_MODULES = [
    "router.commands.worker",
    "router.commands.serve",
    "router.commands.ask",
    "router.commands.bench",
    "router.commands.route_eval",
    "router.commands.collect",
    "router.commands.admin",
    "router.commands.train",
    "router.commands.policy",
    "router.commands.feedback",
]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="thinkroute",
        description=(
            "thinkroute: a multi-model router for reasoning workloads. It sends each query to the cheapest "
            "way of answering it well (a small drafter, a large reasoner, or a speculative-reasoning pair), "
            "steered by one cost/quality dial."
        ),
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    for name in COMMAND_MODULES:
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as e:
            if e.name == name:  # a command not written yet
                continue
            raise
        module.register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return int(args.func(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
