"""Argument conventions every command shares: the model is the first positional argument, lists are
space-separated.

Example:
    >>> import argparse

from ..errors import InterpError
from ..loading import peek_n_layers as known_n_layers  # noqa: F401  (the layer count, without loading)
    >>> p = argparse.ArgumentParser(); add_model_argument(p, default="smollm2-135m-instruct")
    >>> model_name(p.parse_args([])), model_name(p.parse_args(["m"])), model_name(p.parse_args(["--model", "m"]))
    ('smollm2-135m-instruct', 'm', 'm')
"""
from __future__ import annotations

import argparse

from ..errors import InterpError
from ..loading import peek_n_layers as known_n_layers  # noqa: F401  (the layer count, without loading)

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


DTYPES = ["auto", "float32", "bfloat16", "float16"]


def add_dtype_argument(p: argparse.ArgumentParser, default: str = "float32") -> None:
    """``--dtype`` for the model's weights and activations; ``auto`` is bfloat16 where the machine computes it
    natively (AVX-512 BF16 / AMX CPUs, CUDA with bf16), as the papers' code runs the models, else float32."""
    p.add_argument("--dtype", default=default, choices=DTYPES,
                   help=f"weights and activations dtype (default {default}; auto: bfloat16 where the machine "
                        "computes it natively, else float32)")


def model_name(args: argparse.Namespace) -> str:
    """The model a command was given, by position or by ``--model``, else the command's default."""
    return args.model or getattr(args, "model_option", None) or args.model_default


def split_list(values) -> list[str]:
    """Space-separated argparse values, each of which may still hold the older comma form ('2,5')."""
    if isinstance(values, str):
        values = [values]
    return [v.strip() for item in values for v in item.split(",") if v.strip()]


def parse_layer_list(values, n_layers: int | None) -> list[int] | None:
    """``['all']`` → None (every layer); otherwise integer layer indices, checked against ``n_layers`` if known."""
    items = split_list(values)
    if items == ["all"]:
        return None
    try:
        layers = [int(x) for x in items]
    except ValueError:
        raise InterpError(f"--layers takes 'all' or integer layer indices, got {' '.join(items)!r}") from None
    top = f"0..{n_layers - 1}" if n_layers else "0 and up"
    if not layers or any(x < 0 or (n_layers is not None and x >= n_layers) for x in layers):
        raise InterpError(f"layers must be in {top}, got {' '.join(items)}")
    return layers
