"""Argument conventions every command shares: the model is the first positional argument, lists are
space-separated.

Example:
    >>> import argparse
    >>> p = argparse.ArgumentParser(); add_model_argument(p, default="smollm2-135m-instruct")
    >>> model_name(p.parse_args([])), model_name(p.parse_args(["m"])), model_name(p.parse_args(["--model", "m"]))
    ('smollm2-135m-instruct', 'm', 'm')
"""
from __future__ import annotations

import argparse

MODEL_HELP = "packaged model name, .gguf file, local folder or hub id"


def add_model_argument(p: argparse.ArgumentParser, default: str | None = None, help: str = MODEL_HELP) -> None:
    """``MODEL`` as the first positional argument; optional (with ``--model`` kept as the older form)
    when the command has a default model."""
    if default is None:
        p.add_argument("model", metavar="MODEL", help=help)
        return
    p.add_argument("model", metavar="MODEL", nargs="?", default=None, help=f"{help} (default: {default})")
    p.add_argument("--model", dest="model_option", metavar="MODEL", default=None, help="the same as MODEL (older form)")
    p.set_defaults(model_default=default)


def model_name(args: argparse.Namespace) -> str:
    """The model a command was given, by position or by ``--model``, else the command's default."""
    return args.model or getattr(args, "model_option", None) or args.model_default
