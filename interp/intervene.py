"""``model.intervene({...})``: apply interventions to every forward inside a ``with`` block.

Works for plain forwards and for ``model.generate`` with the KV cache on:
a pre-hook on the base model reads each forward's attention mask to know
which columns are padding, which are prompt tokens and which were generated,
so position limits and patches line up whether or not the cache is used.
Hooks are removed on exit, also when the body raises.

Example:
    with model.intervene({"resid_pre.10": Ablate(r), "attn_out.10": Ablate(r)}):
        print(model.generate(["How do I pick a lock?"]))
"""
from __future__ import annotations

import dataclasses
from contextlib import contextmanager
from typing import Callable, Iterator, Mapping, Union

import torch

from .errors import InterpError
from .interventions import Context, Intervention, Lambda, Record
from .sites import SiteLike, parse_site

InterventionLike = Union[Intervention, Callable]


def _context(state: dict, args, kwargs) -> Context:
    x = kwargs.get("input_ids")
    if x is None:
        x = kwargs.get("inputs_embeds")
    if x is None and args:
        x = args[0]
    width = x.shape[1]
    mask = kwargs.get("attention_mask")
    if mask is None or mask.dim() != 2:
        # no padding mask (e.g. one unpadded prompt): the cache says how many tokens came before
        cache = kwargs.get("cache", kwargs.get("past_key_values"))
        past = cache.get_seq_length() if cache is not None else 0
        mask = torch.ones(x.shape[0], past + width, dtype=torch.long, device=x.device)
    total = mask.shape[1]
    prompt_width = state.get("prompt_width")
    if prompt_width is None:
        # a fresh forward, or several tokens continuing a cached prefix (a shared chat-template prefix):
        # all prompt. Decoding steps of a raw hf.generate add one token at a time after the prefill.
        if total == width or width > 1:
            state["prefill_width"] = total
        prompt_width = state.get("prefill_width", total)
    cols = torch.arange(total - width, total, device=x.device)
    pad = (mask[:, :prompt_width] == 0).sum(1)
    rows = state.get("rows")
    if rows is not None and len(rows) != x.shape[0]:
        rows = None
    return Context(token_index=cols[None] - pad[:, None], valid=mask[:, cols].bool(),
                   is_prompt=cols < prompt_width, prompt_lengths=prompt_width - pad, rows=rows)


def _context_on(state: dict, device: torch.device) -> Context:
    """The forward's context on ``device``: a model split across devices (``device_map``) runs later blocks on
    other devices than the embedding, where the context was read; moved once per forward and device."""
    ctx = state["ctx"]
    if ctx.valid.device == device:
        return ctx
    moved = state.setdefault("ctx_on", {})
    if device not in moved:
        moved[device] = dataclasses.replace(ctx, **{f.name: getattr(ctx, f.name).to(device)
                                                    for f in dataclasses.fields(ctx)
                                                    if isinstance(getattr(ctx, f.name), torch.Tensor)})
    return moved[device]


@contextmanager
def intervene(model, interventions: Mapping[SiteLike, InterventionLike]) -> Iterator[dict]:
    """Attach interventions at sites; see the module docstring.

    A plain callable is taken as ``fn(x, ctx) -> x'`` (wrapped in ``Lambda``), the one signature for
    user functions. The yielded state dict may carry ``rows`` (a tensor: which prompt each batch row
    is, for per-prompt positions and patch sources) when you run batches of a longer list yourself.
    """
    if getattr(model, "_intervention_state", None) is not None:
        raise InterpError("model.intervene blocks cannot be nested; put all interventions in one mapping")
    state: dict = {}
    fns = {}
    for key, iv in interventions.items():
        site = parse_site(key, model.n_layers)
        if not isinstance(iv, Intervention):
            if not callable(iv):
                raise InterpError(f"intervention at {site} must be an Intervention or a callable fn(x, ctx)")
            iv = Lambda(iv)
        if site.name == "attn_pattern" and not isinstance(iv, Record):
            raise InterpError(f"{site} is read-only (the attention output is formed inside the attention "
                              f"function): only Record() can sit there; to change attention, edit attn_q, attn_k, "
                              f"attn_v or attn_z")
        iv.check(model.site_shape(site), str(site))

        def fn(x, iv=iv):
            return iv.apply(x, _context_on(state, x.device))
        fns[site] = fn

    def read_context(module, args, kwargs):
        state["ctx"] = _context(state, args, kwargs)
        state["ctx_on"] = {}

    handle = model.hf.base_model.register_forward_pre_hook(read_context, with_kwargs=True)
    model._intervention_state = state
    try:
        with model.hooks(fns):
            yield state
    finally:
        handle.remove()
        model._intervention_state = None
