"""Where each site lives inside a Hugging Face model, per architecture.

Supported: llama-family (llama, qwen2, qwen3, mistral), gemma2/gemma3 (norms
after attention and MLP), and gpt2. Adding an architecture means adding one
``BlockLayout``.
"""
from __future__ import annotations

import logging
import weakref
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
    attn: str = "self_attn"  # the attention module; under eager attention its output is (out, pattern)
    attn_k: str = "self_attn.k_proj"  # key projection (fused_qkv: the same module as attn_q)
    attn_v: str = "self_attn.v_proj"  # value projection
    mlp_in_norm: str = "post_attention_layernorm"  # the norm in front of the MLP (its output is ln2)
    final_norm: str = "norm"  # the final norm, an attribute of the module that holds the block list
    fused_qkv: bool = False  # q, k and v come out of one projection, in that order (GPT-2's c_attn)


LLAMA = BlockLayout("input_layernorm", "self_attn", "self_attn.o_proj", "mlp", "mlp.down_proj", "self_attn.q_proj")
GEMMA = BlockLayout("input_layernorm", "post_attention_layernorm", "self_attn.o_proj",
                    "post_feedforward_layernorm", "mlp.down_proj", "self_attn.q_proj", post_norms=True, norm_offset=1.0,
                    mlp_in_norm="pre_feedforward_layernorm")
GPT2 = BlockLayout("ln_1", "attn", "attn.c_proj", "mlp", "mlp.c_proj", "attn.c_attn", conv1d=True,
                   position_embedding="transformer.wpe", attn="attn", attn_k="attn.c_attn", attn_v="attn.c_attn",
                   mlp_in_norm="ln_2", final_norm="ln_f", fused_qkv=True)

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


def _layers_path(model: nn.Module) -> str:
    for path in _LAYER_PATHS:
        try:
            layers = _get(model, path)
        except AttributeError:
            continue
        if isinstance(layers, nn.ModuleList):
            return path
    raise InterpError(f"cannot find the decoder blocks of {type(model).__name__}; looked in {', '.join(_LAYER_PATHS)}")


def find_layers(model: nn.Module) -> nn.ModuleList:
    return _get(model, _layers_path(model))


def final_norm(model) -> nn.Module:
    """The final norm of an interp ``Model`` (HF backend): the module whose output is ``ln_final``.

    Example:
        >>> from interp.testing import tiny_model
        >>> type(final_norm(tiny_model("gpt2"))).__name__
        'LayerNorm'
    """
    stack = _layers_path(model.hf).rsplit(".", 1)[0]
    return module(model, None, f"{stack}.{layout(model).final_norm}")


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


_log = logging.getLogger("interp")
# per HF model: [how many attn_pattern hooks want eager attention, the implementation to restore]
_EAGER: "weakref.WeakKeyDictionary[nn.Module, list]" = weakref.WeakKeyDictionary()


class _EagerHandle:
    """Holds eager attention on for one attn_pattern hook; ``remove`` gives it back (counted, so
    several pattern hooks restore the original implementation only when the last one goes)."""

    def __init__(self, hf: nn.Module):
        self.hf = hf
        entry = _EAGER.setdefault(hf, [0, hf.config._attn_implementation])
        if entry[0] == 0:
            entry[1] = hf.config._attn_implementation
            if entry[1] != "eager":
                _log.info("interp: attention switched from %s to eager while attention patterns are hooked "
                          "(sdpa/flash never materialize them); restored afterwards", entry[1])
                hf.set_attn_implementation("eager")
        entry[0] += 1
        self.removed = False

    def remove(self) -> None:
        if self.removed:
            return
        self.removed = True
        entry = _EAGER[self.hf]
        entry[0] -= 1
        if entry[0] == 0 and entry[1] != "eager":
            self.hf.set_attn_implementation(entry[1])


def _pattern_hook(fn: HookFn, site: Site):
    def hook(module, args, out):
        w = out[1] if isinstance(out, tuple) and len(out) > 1 else None
        if not isinstance(w, torch.Tensor):
            raise InterpError(f"{site}: the attention returned no pattern (its implementation does not materialize "
                              f"one); load the model with attn_implementation='eager'")
        y = fn(w)
        if y is not None and y is not w:
            raise InterpError(f"{site} is read-only: the attention output is computed inside the attention "
                              f"function, so an edited pattern would not flow on; edit attn_q/attn_k/attn_v or "
                              f"attn_z instead")
        return None
    return hook


def _qkv_hook(fn: HookFn, heads: int, span: tuple[int, int] | None):
    """An output hook on a q/k/v projection handing ``fn`` [.., heads, d_head]; with ``span`` =
    (offset, width) the projection is fused (GPT-2's c_attn) and this site is those columns."""

    def edit(y: torch.Tensor):
        part = y if span is None else y[..., span[0]:span[0] + span[1]]
        new = fn(part.unflatten(-1, (heads, -1)))
        if new is None:
            return None
        new = new.flatten(-2)
        if span is None:
            return new
        return torch.cat([y[..., :span[0]], new, y[..., span[0] + span[1]:]], dim=-1)
    return _output_hook(edit)


def register_site_hook(model, site: Site, fn: HookFn, prepend: bool = False) -> list:
    """Register ``fn`` at any site of an interp ``Model`` (HF backend); return the handles.

    Besides ``register_hf_hook``'s sites: ``embed`` / ``pos_embed`` (embedding module outputs),
    ``ln1`` / ``ln2`` / ``ln_final`` (norm outputs, weight applied), ``attn_q`` / ``attn_k`` /
    ``attn_v`` (projection outputs as [.., heads, d_head]; k and v per KV head under GQA) and
    ``attn_pattern`` ([batch, heads, query, key], read-only). Hooking ``attn_pattern`` switches the
    model to eager attention until the returned handle is removed, since sdpa and flash attention
    never form the pattern.

    Example:
        >>> from interp.testing import tiny_model
        >>> m = tiny_model("gpt2")
        >>> hs = register_site_hook(m, Site("embed", None), lambda x: None)
        >>> for h in hs: h.remove()
    """
    lay = layout(model)
    name = site.name
    kw = {"prepend": prepend}
    if site.layer is None:
        if name == "embed":
            mod = model.hf.get_input_embeddings()
        elif name == "pos_embed":
            if lay.position_embedding is None:
                raise InterpError(f"{model.architecture} has no learned position embedding (its positions are rotary, "
                                  f"applied to q and k inside attention), so there is no pos_embed site; use embed")
            mod = module(model, None, lay.position_embedding)
        elif name == "ln_final":
            mod = final_norm(model)
        else:
            raise InterpError(f"no hook for site {site}")
        return [mod.register_forward_hook(_output_hook(fn), **kw)]
    block = blocks(model)[site.layer]
    if name in ("ln1", "ln2"):
        path = lay.attn_in_norm if name == "ln1" else lay.mlp_in_norm
        return [_get(block, path).register_forward_hook(_output_hook(fn), **kw)]
    if name in ("attn_q", "attn_k", "attn_v"):
        heads = model.n_heads if name == "attn_q" else model.site_shape(site)[0]
        path = {"attn_q": lay.attn_q, "attn_k": lay.attn_k, "attn_v": lay.attn_v}[name]
        span = None
        if lay.fused_qkv:
            width = model.n_heads * model.d_head
            span = ({"attn_q": 0, "attn_k": width, "attn_v": 2 * width}[name], width)
        return [_get(block, path).register_forward_hook(_qkv_hook(fn, heads, span), **kw)]
    if name == "attn_pattern":
        handle = _get(block, lay.attn).register_forward_hook(_pattern_hook(fn, site), **kw)
        return [handle, _EagerHandle(model.hf)]
    return register_hf_hook(block, lay, site, fn, model.n_heads, prepend)


def count_hooks(model: nn.Module) -> int:
    """Total forward (pre-)hooks on every submodule: a leak check."""
    return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in model.modules())
