"""``model.intervene({...})``: apply interventions to every forward inside a ``with`` block.

Works for plain forwards and for ``model.generate`` with the KV cache on:
a pre-hook on the base model reads each forward's attention mask to know
which columns are padding, which are prompt tokens and which were generated,
so position limits and patches line up whether or not the cache is used.
Hooks are removed on exit, also when the body raises.

During ``generate`` (``interp.generation``) the ablations that equal a weight
edit run as one: ``Ablate`` at every position of an attention or MLP output
becomes the same projection of that layer's output-projection weights, and
``Ablate`` of a block input whose residual stream can no longer hold the
direction (the embedding output ablated, every attention and MLP output below
edited the same way) is dropped. Their hooks step aside while the edited
tensors are swapped in, and the original weights return bit-identical after
the call (also on an exception). ``everywhere(model, r)`` thus generates with
one hook instead of three per layer.

Example:
    with model.intervene({"resid_pre.10": Ablate(r), "attn_out.10": Ablate(r)}):
        print(model.generate(["How do I pick a lock?"]))
"""
from __future__ import annotations

import dataclasses
from contextlib import contextmanager
from typing import Callable, Iterator, Mapping, Union

import torch

from . import arch
from .errors import InterpError
from .interventions import Ablate, Context, Intervention, Lambda, Record
from .sites import Site, SiteLike, parse_site

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


_INSIDE = ("attn_z", "mlp_act", "ln1", "ln2", "attn_q", "attn_k", "attn_v", "attn_pattern")


def _plain_ablate(iv) -> bool:
    return type(iv) is Ablate and isinstance(iv.positions, str) and iv.positions == "all" and iv.heads is None


def _weight_plan(model, ivs: Mapping[Site, Intervention]) -> tuple[list, set] | None:
    """Which sites' hooks a weight edit can stand in for during generate: ``(targets, sites)`` or None.

    ``targets`` are ``(layer, path, basis)`` for ``ablation_weights``; ``sites`` the hooks they replace.
    """
    from .orthogonalize import can_swap

    if not can_swap(model):
        return None
    lay = arch.layout(model)
    paths = {"attn_out": lay.attn_o_proj, "mlp_out": lay.mlp_down}
    mid_layers = {s.layer for s in ivs if s.name == "resid_mid"}  # its hook reads attn_out as the hooks leave it
    targets, sites = [], set()
    for site, iv in ivs.items():
        if site.name in paths and _plain_ablate(iv) and site.layer not in mid_layers and \
                "weight" in arch.module(model, site.layer, paths[site.name])._parameters:
            targets.append((site.layer, paths[site.name], iv.basis))
            sites.add(site)
    # a block input ablation is a no-op once nothing upstream can write along the basis
    first = ivs.get(Site("resid_pre", 0))
    if first is not None and _plain_ablate(first):
        basis = first.basis
        same = {s for s, iv in ivs.items() if _plain_ablate(iv) and torch.equal(iv.basis, basis)}
        for layer in range(1, model.n_layers):
            below = [s for s in ivs if s.layer == layer - 1]
            # edits inside a block feed projections that are edited after them; anything else may write r
            clean = all(s in sites and s in same or s.name in _INSIDE or
                        s.name == "resid_pre" and s in same for s in below)
            if not (clean and Site("attn_out", layer - 1) in sites & same and Site("mlp_out", layer - 1) in sites & same):
                break
            if Site("resid_pre", layer) in same:
                sites.add(Site("resid_pre", layer))
    return (targets, sites) if sites else None


class _Suspended:
    """Take hooks out of their modules' hook dicts and put them back in the same order."""

    def __init__(self, handles: list):
        self.handles, self.snap = handles, {}

    def __enter__(self):
        for h in self.handles:
            d = h.hooks_dict_ref() if hasattr(h, "hooks_dict_ref") else None
            if d is None or h.id not in d:
                continue
            self.snap.setdefault(id(d), (d, list(d.items())))
            del d[h.id]
        return self

    def __exit__(self, *exc) -> None:
        mine = {h.id for h in self.handles}
        for d, items in self.snap.values():
            now = dict(d)  # hooks added meanwhile stay (after ours); hooks removed meanwhile stay removed
            d.clear()
            for k, v in items:
                if k in now or k in mine:
                    d[k] = now.get(k, v)
            for k, v in now.items():
                d.setdefault(k, v)
        self.snap = {}


class _WeightEdit:
    """The weight-edit stand-in for some of a block's hooks (see the module docstring); re-entrant per call."""

    def __init__(self, model, targets: list, handles: list):
        self.model, self.targets, self.handles = model, targets, handles
        self.edits = None  # built on first use, kept for the block's lifetime

    @contextmanager
    def active(self) -> Iterator[None]:
        from .orthogonalize import swapped_weights

        if self.edits is None:
            self.edits = _cached_edits(self.model, self.targets)
        with swapped_weights(self.edits), _Suspended(self.handles):
            yield


def _edit_key(model, targets: list) -> list:
    """What a built weight edit depends on: each target's layer, module, basis, and the weight it edits
    (its identity and in-place version, so ``orthogonalize`` or a training step invalidates the edit)."""
    key = []
    for layer, path, basis in targets:
        lin = arch.module(model, layer, path)
        params = [p for p in (lin.weight, getattr(lin, "bias", None)) if p is not None]
        key.append((layer, path, basis.detach().clone(), [(id(p), p._version, p.data_ptr()) for p in params]))
    return key


def _same_key(a: list, b: list) -> bool:
    return len(a) == len(b) and all(x[:2] == y[:2] and x[3] == y[3] and x[2].shape == y[2].shape and
                                    torch.equal(x[2], y[2].to(x[2].device)) for x, y in zip(a, b))


def _cached_edits(model, targets: list) -> list:
    """The edited weights for ``targets``, reusing the last edit built for this model when it is the same.

    Building the edit reads and writes every output projection (a second of a 32-token generate on
    the 0.5B model on 2 CPU cores); repeated ``generate`` calls with one direction, the interactive use,
    pay it once. Only the last edit is kept (memory: the edited projections' size, the same that
    generation holds while it runs); ``release_weight_edit(model)`` frees it.
    """
    from .orthogonalize import ablation_weights

    key = _edit_key(model, targets)
    cached = getattr(model, "_weight_edit_cache", None)
    if cached is not None and _same_key(cached[0], key):
        return cached[1]
    model._weight_edit_cache = None  # free the old edit before building the new one
    edits = ablation_weights(model, targets)
    model._weight_edit_cache = (key, edits)
    return edits


def release_weight_edit(model) -> None:
    """Free the weight edit ``generate`` keeps from its last ablation (see ``_cached_edits``).

    Example:
        generate(model, prompts, interventions=everywhere(model, r))
        release_weight_edit(model)   # the edited projections' memory is returned
    """
    model._weight_edit_cache = None


@contextmanager
def weight_edit(model, enabled: bool = True) -> Iterator[bool]:
    """Inside ``model.intervene``: run the body with the block's weight-edit stand-in (see the module
    docstring) in place of the hooks it replaces. Yields whether one was applied. ``generate`` uses it.

    Example:
        with model.intervene(everywhere(model, r)), weight_edit(model):
            model.hf.generate(**batch)        # one hook instead of 3 per layer; weights restored after
    """
    state = getattr(model, "_intervention_state", None)
    fast = state.get("weight_edit") if state is not None and enabled else None
    if fast is None:
        yield False
        return
    with fast.active():
        yield True


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
    fns, ivs = {}, {}
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
        fns[site], ivs[site] = fn, iv

    def read_context(module, args, kwargs):
        state["ctx"] = _context(state, args, kwargs)
        state["ctx_on"] = {}

    state["interventions"] = ivs  # what is attached (generate checks whether a shared prefix cache fits them)
    plan = _weight_plan(model, ivs)
    handles: dict[Site, list] = {}
    handle = model.hf.base_model.register_forward_pre_hook(read_context, with_kwargs=True)
    model._intervention_state = state
    try:
        for site, fn in fns.items():
            handles[site] = model._register(site, fn)
        if plan is not None:
            targets, sites = plan
            state["weight_edit"] = _WeightEdit(model, targets, [h for s in sites for h in handles[s]])
        yield state
    finally:
        for hs in handles.values():
            for h in hs:
                h.remove()
        handle.remove()
        model._intervention_state = None
