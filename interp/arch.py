"""Where each site lives inside a Hugging Face model, per architecture.

Supported: llama-family (llama, qwen2, qwen3, mistral), gemma2/gemma3 (norms
after attention and MLP), and gpt2. Adding an architecture means adding one
``BlockLayout``.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Optional

import torch
from torch import nn

from .errors import InterpError
from .sites import Site

HookFn = Callable[[torch.Tensor], Optional[torch.Tensor]]


class StopForward(Exception):
    """Raised by a hook once the last needed layer has run, to end a capture's forward early."""


@dataclass(frozen=True)
class BlockLayout:
    """Attribute paths inside one decoder block."""

    attn_in_norm: str  # its input is resid_pre (after any edit of the block input)
    attn_out: str  # its output is what attention adds to the residual stream
    attn_o_proj: str  # its input is attn_z (heads concatenated)
    mlp_out: str  # its output is what the MLP adds to the residual stream
    mlp_down: str  # its input is mlp_act
    attn_q: str  # the query projection; GPT-2's fused c_attn holds it in its first d_model outputs
    conv1d: bool = False  # projections are GPT-2 Conv1D: weight stored [in, out], residual vectors are its rows
    post_norms: bool = False  # a norm follows the attention and MLP outputs (gemma): attn_out/mlp_out are its outputs
    norm_offset: float = 0.0  # the RMSNorm scales by (norm_offset + weight): gemma stores w and uses 1 + w
    position_embedding: str | None = None  # learned absolute position embedding, path from the HF model's root


LLAMA = BlockLayout("input_layernorm", "self_attn", "self_attn.o_proj", "mlp", "mlp.down_proj", "self_attn.q_proj")
GEMMA = BlockLayout("input_layernorm", "post_attention_layernorm", "self_attn.o_proj",
                    "post_feedforward_layernorm", "mlp.down_proj", "self_attn.q_proj", post_norms=True, norm_offset=1.0)
GPT2 = BlockLayout("ln_1", "attn", "attn.c_proj", "mlp", "mlp.c_proj", "attn.c_attn", conv1d=True,
                   position_embedding="transformer.wpe")

LAYOUTS = {
    "llama": LLAMA, "qwen2": LLAMA, "qwen3": LLAMA, "mistral": LLAMA, "olmo2": LLAMA,
    "gemma2": GEMMA, "gemma3": GEMMA, "gemma3_text": GEMMA,
    "gpt2": GPT2,
}
_LAYER_PATHS = ("model.layers", "transformer.h", "model.language_model.layers", "language_model.model.layers")


def _get(root: nn.Module, path: str) -> nn.Module:
    for part in path.split("."):
        root = getattr(root, part)
    return root


def find_layers(model: nn.Module) -> nn.ModuleList:
    for path in _LAYER_PATHS:
        try:
            layers = _get(model, path)
        except AttributeError:
            continue
        if isinstance(layers, nn.ModuleList):
            return layers
    raise InterpError(f"cannot find the decoder blocks of {type(model).__name__}; looked in {', '.join(_LAYER_PATHS)}")


def layout_for(config) -> BlockLayout:
    model_type = getattr(config, "model_type", "")
    if model_type in LAYOUTS:
        return LAYOUTS[model_type]
    raise InterpError(f"architecture {model_type!r} is not supported yet; supported: {', '.join(sorted(LAYOUTS))}")


def layout(model) -> BlockLayout:
    """The ``BlockLayout`` of an interp ``Model`` on the Hugging Face backend.

    Example:
        >>> from interp.testing import tiny_model
        >>> layout(tiny_model("gpt2")).conv1d
        True
    """
    lay = getattr(model, "_layout", None)
    if lay is None:
        raise InterpError(f"{getattr(model, 'name', 'this model')} has no Hugging Face block layout (backend "
                          f"{getattr(model, 'backend', '?')!r}); load the model with backend='hf'")
    return lay


def blocks(model) -> nn.ModuleList:
    """The decoder blocks of an interp ``Model``, in order."""
    return model._layers


def module(model, layer: int | None, path: str) -> nn.Module:
    """The submodule at ``path`` inside block ``layer``, or from the HF model's root when ``layer`` is None.

    ``path`` is usually a ``BlockLayout`` field, e.g. ``module(model, 3, layout(model).mlp_down)``.
    """
    root = model.hf if layer is None else blocks(model)[layer]
    try:
        return _get(root, path)
    except AttributeError as e:
        where = "the model" if layer is None else f"block {layer}"
        raise InterpError(f"{where} of {getattr(model, 'name', 'this model')} has no module {path!r}") from e


def weights_edited(model) -> None:
    """Tell ``model`` its weights were edited in place, so facts cached from them (the fingerprint) are redone."""
    model._fingerprint = None


def _first(x):
    return x[0] if isinstance(x, tuple) else x


def _replace_first(out, y):
    return (y,) + tuple(out[1:]) if isinstance(out, tuple) else y


def _output_hook(fn: HookFn):
    def hook(module, args, out):
        y = fn(_first(out))
        return None if y is None else _replace_first(out, y)
    return hook


def _input_hook(fn: HookFn, heads: int | None = None):
    """A forward pre-hook that hands ``fn`` the module's first input."""

    def hook(module, args, kwargs):
        from_kwargs = not args
        x = kwargs["hidden_states"] if from_kwargs else args[0]
        view = x.unflatten(-1, (heads, -1)) if heads else x
        y = fn(view)
        if y is None:
            return None
        y = y.flatten(-2) if heads else y
        if from_kwargs:
            return args, {**kwargs, "hidden_states": y}
        return (y,) + tuple(args[1:]), kwargs
    return hook


def register_hf_hook(block: nn.Module, layout: BlockLayout, site: Site, fn: HookFn, n_heads: int,
                     prepend: bool = False) -> list:
    """Register ``fn`` at ``site`` inside ``block``; return the torch hook handles.

    ``fn`` gets the site's tensor ([batch, seq, d], or [batch, seq, heads,
    d_head] for attn_z) and returns a replacement or None to leave it alone.
    With ``prepend`` it runs before hooks already attached to the same module.
    """
    name = site.name
    kw = {"prepend": prepend}
    if name == "resid_pre":
        return [block.register_forward_pre_hook(_input_hook(fn), with_kwargs=True, **kw)]
    if name == "resid_post":
        return [block.register_forward_hook(_output_hook(fn), **kw)]
    if name == "attn_out":
        return [_get(block, layout.attn_out).register_forward_hook(_output_hook(fn), **kw)]
    if name == "mlp_out":
        return [_get(block, layout.mlp_out).register_forward_hook(_output_hook(fn), **kw)]
    if name == "mlp_act":
        return [_get(block, layout.mlp_down).register_forward_pre_hook(_input_hook(fn), with_kwargs=True, **kw)]
    if name == "attn_z":
        return [_get(block, layout.attn_o_proj).register_forward_pre_hook(_input_hook(fn, n_heads), with_kwargs=True, **kw)]
    if name == "resid_mid":
        return _resid_mid_hooks(block, layout, fn, prepend)
    raise InterpError(f"no hook for site {site}")


def _resid_mid_hooks(block: nn.Module, layout: BlockLayout, fn: HookFn, prepend: bool = False) -> list:
    """resid_mid = resid_pre + attn_out. No module sees it as one tensor that
    also flows on, so we rebuild it: remember the block input (as the
    attention norm sees it), add the attention output, and turn an edit of
    resid_mid into the same edit of what attention adds (exact)."""
    stash: dict[str, torch.Tensor] = {}

    def remember(module, args, kwargs):
        stash["pre"] = kwargs["hidden_states"] if not args else args[0]

    def edit(attn_out: torch.Tensor):
        mid = stash.pop("pre") + attn_out
        y = fn(mid)
        return None if y is None else attn_out + (y - mid)

    return [
        _get(block, layout.attn_in_norm).register_forward_pre_hook(remember, with_kwargs=True),
        _get(block, layout.attn_out).register_forward_hook(_output_hook(edit), prepend=prepend),
    ]


def count_hooks(model: nn.Module) -> int:
    """Total forward (pre-)hooks on every submodule: a leak check."""
    return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in model.modules())
