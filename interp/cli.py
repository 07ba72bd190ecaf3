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
COMMANDS = ["models", "capture", "demo", "refusal", "harmfulness", "separation", "illusion", "rank", "sae", "chat", "bench", "numeric", "binding", "judge_check", "steer", "lens"]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="interp", description="Mechanistic interpretability of transformer models: capture activations, "
        "find directions, and ablate, steer or patch models.")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMANDS:
        importlib.import_module(f"interp.commands.{name}").add_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run one command; user errors print one line ``interp: error: ...`` and exit 2.

    ``--debug`` (anywhere on the line) or ``INTERP_DEBUG=1`` prints the full
    traceback as well. Any other exception is a bug and propagates with its
    traceback; Ctrl-C exits 130.
    """
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    argv = list(sys.argv[1:] if argv is None else argv)
    head = argv[:argv.index("--")] if "--" in argv else argv
    debug = "--debug" in head or os.environ.get("INTERP_DEBUG", "") not in ("", "0")
    if "--debug" in head:
        argv.remove("--debug")
    parser = build_parser()
    parser.add_argument("--debug", action="store_true", help="on an error, also print the Python traceback")
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 0

    def fail(code: int, text: str) -> int:
        if debug:
            import traceback

            traceback.print_exc()
        print(" ".join(text.split("\n")), file=sys.stderr)
        return code

    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        return fail(130, "interp: interrupted")
    except (InterpError, OSError) as e:  # bad input or the file system: the message says what to fix
        return fail(2, f"interp: error: {e}")
    # anything else is a bug in interp: it propagates with its traceback (exit 1)


if __name__ == "__main__":
    sys.exit(main())
