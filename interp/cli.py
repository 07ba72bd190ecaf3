"""The ``interp`` console command. Every subcommand has ``--help``.

Subcommands live in small modules; each exposes ``add_parser(subparsers)``
that registers itself and sets ``func`` (a callable taking the parsed args
and returning an exit code).
"""
from __future__ import annotations

import argparse
import importlib
import os
import sys

from .errors import InterpError

# modules under interp.commands that register subcommands, in --help order
COMMANDS = ["models", "capture", "demo", "refusal", "harmfulness", "separation", "illusion", "rank", "sae", "chat", "bench", "numeric", "binding"]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="interp", description="Mechanistic interpretability of transformer models: capture activations, "
        "find directions, and ablate, steer or patch models.")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMANDS:
        importlib.import_module(f"interp.commands.{name}").add_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 0
    try:
        return int(args.func(args) or 0)
    except InterpError as e:
        print(f"interp: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
