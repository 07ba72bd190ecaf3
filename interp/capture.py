"""Hook-based capture of activations at named sites and token positions.

Two ways in:

- ``capture``: prompts are sorted by length so batches carry little padding,
  left-padded, run once through the base model (the LM head is skipped, and the
  forward stops after the deepest layer asked for), and only the selected
  positions are copied out inside the hooks, so memory grows with what is
  kept, not with the sequence.
- ``run_with_cache`` (TransformerLens users know the name): one padded batch,
  logits plus every position of every requested site, with the mask, optionally
  with gradients; ``recording`` is the same for any forward you run yourself.

Example:
    acts = capture(model, ["Hi", "Hello there"], "resid_post", "last")
    cache = run_with_cache(model, ["Hi", "Hello there"], ["resid_pre.1", "attn_out.1"])
    cache["resid_pre.1"].shape, cache.logits.shape    # [2, seq, d], [2, seq, vocab]
"""
from __future__ import annotations

import time
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Callable, Iterator, Mapping, Sequence

import torch
from tqdm.auto import tqdm

from . import __version__
from .activations import Activations
from .errors import InterpError
from .activations import prompt_hash
from .arch import StopForward
from .positions import describe, pack, resolve_positions
from .prefix import SharedPrefix
from .sites import Site, SiteLike, expand_sites, parse_site, site_depth


def _reader(key: str, out: dict, state: dict, dtype: torch.dtype, pattern: bool = False):
    def read(x: torch.Tensor):
        rows, idx = state["rows"], state["idx"]
        if pattern:  # [batch, heads, query, key]: pick query rows like any site, keys come along
            x = x.transpose(1, 2)
        batch = torch.arange(idx.shape[0], device=x.device)[:, None]
        picked = x[batch, idx.to(x.device)].detach().to("cpu", dtype)
        if pattern:
            # keys move from padded columns to each prompt's own token indices (key j = token j)
            for b, (r, pad) in enumerate(zip(rows.tolist(), state["pad"])):
                out[key][r, ..., :picked.shape[-1] - pad] = picked[b, ..., pad:]
        else:
            out[key][rows] = picked
        return None
    return read


def _shape(model, site: Site, max_len: int) -> tuple[int, ...]:
    """A site's trailing shape in a capture: an attention pattern has one key per token of the longest prompt."""
    shape = model.site_shape(site)
    return (shape[0], max_len) if site.name == "attn_pattern" else shape


def check_finite(tensors: dict[str, torch.Tensor], mask: torch.Tensor, offset: int = 0) -> None:
    """Raise if any captured (unmasked) value is NaN or infinite, naming site and example."""
    for key, t in tensors.items():
        bad = ~torch.isfinite(t[mask])
        if bad.any():
            rows = torch.nonzero(mask)[bad.reshape(bad.shape[0], -1).any(-1)][:, 0]
            raise InterpError(f"non-finite activations (NaN/inf) at {key} for examples "
                              f"{sorted({int(r) + offset for r in rows})[:10]}: check the model weights and dtype "
                              f"(float16 overflows are common; try dtype=torch.float32)")


def capture(model, prompts: Sequence[str], sites, positions="last", *, chat: bool = True,
            system: str | None = None, batch_size: int = 8, dtype: torch.dtype = torch.float32,
            progress: bool = True, encoded=None, share_prefix: bool = False,
            score: Callable[[torch.Tensor], torch.Tensor] | None = None) -> Activations:
    """Capture activations; see ``Model.capture`` for the arguments.

    An ``attn_pattern`` site comes back as [examples, positions, heads, max_len]: each selected query
    position's attention over its prompt's own tokens (key j is token j; zero past the prompt's end).
    With ``share_prefix`` the token prefix all prompts share (a chat template's system prompt) runs
    once and its KV cache serves every batch (``interp.prefix``), when every selected position lies
    after it (otherwise, or for ``attn_pattern`` sites, whole prompts run as usual); the values equal
    a full forward's up to float rounding. ``score`` (a function of a batch's last-position logits,
    [batch, vocab] -> [batch, ...]) runs the forward to the end and returns its values per prompt in
    ``acts.scores``: e.g. a metric that filters prompts, read in the pass that captures them.
    """
    if batch_size < 1:
        raise InterpError(f"batch_size must be >= 1, got {batch_size}")
    if not isinstance(dtype, torch.dtype) or not dtype.is_floating_point:
        raise InterpError(f"dtype must be a floating-point torch dtype (torch.float32, torch.float16, "
                          f"torch.bfloat16), got {dtype!r}")
    site_list: list[Site] = expand_sites(sites, model.n_layers)
    enc = encoded if encoded is not None else model.encode(prompts, chat=chat, system=system)
    per_prompt = resolve_positions(positions, enc.lengths, enc.spans)
    idx, mask = pack(per_prompt)
    n, width = idx.shape
    max_len = max(enc.lengths)
    out = {str(s): torch.zeros((n, width) + _shape(model, s, max_len), dtype=dtype) for s in site_list}
    state: dict = {}
    readers = {s: _reader(str(s), out, state, dtype, s.name == "attn_pattern") for s in site_list}
    order = sorted(range(n), key=lambda i: enc.lengths[i])
    deepest = model.n_layers - 1 if score is not None else max(site_depth(s, model.n_layers) for s in site_list)
    scores: list = [None] * n
    shared = SharedPrefix.of(model, enc.ids, enabled=share_prefix and not any(s.name == "attn_pattern"
                                                                                for s in site_list))
    if len(shared) and not bool((idx[mask] >= len(shared)).all()):
        shared = SharedPrefix(model, [])  # a selected position lies inside the prefix: run whole prompts
    cut = len(shared)
    t0 = time.time()
    kv = shared.cache()  # before the readers attach: the prefix holds no selected position
    with model.hooks(readers, stop_after_layer=deepest), torch.no_grad():
        bar = tqdm(range(0, n, batch_size), desc="capture", unit="batch", disable=not progress or n <= batch_size)
        for start in bar:
            rows = order[start:start + batch_size]
            batch = shared.batch([enc.ids[i] for i in rows])
            width_b = batch["input_ids"].shape[1]
            offsets = torch.tensor([width_b - (enc.lengths[i] - cut) for i in rows])[:, None]
            state["rows"] = torch.tensor(rows)
            state["pad"] = offsets[:, 0].tolist()
            state["idx"] = idx[rows] - cut + offsets  # padded coordinates of the batch (after any prefix)
            try:
                if score is not None:
                    values = score(model.last_logits(batch, cache=shared.expand(kv, len(rows)) if kv is not None
                                                     else None))
                    for i, v in zip(rows, values.detach().cpu()):
                        scores[i] = v
                elif kv is None:
                    model._forward(batch)
                else:
                    model.last_logits(batch, cache=shared.expand(kv, len(rows)))
            except StopForward:
                pass
    for t in out.values():
        t[~mask] = 0
    check_finite(out, mask)
    positions_t = torch.where(mask, idx, torch.full_like(idx, -1))
    meta = {
        "model": model.name, "model_fingerprint": model.fingerprint, "backend": model.backend,
        "sites": [str(s) for s in site_list], "positions": describe(positions), "chat": chat, "system": system,
        "dtype": str(dtype).replace("torch.", ""), "n_examples": n,
        "prompt_hashes": [prompt_hash(t) for t in enc.texts],
        "interp_version": __version__, "seconds": round(time.time() - t0, 3),
    }
    return Activations(out, mask, positions_t, meta, torch.stack(scores) if score is not None and n else None)



# ------------------------------------------------------------------ full-sequence capture

@contextmanager
def recording(model, sites: SiteLike | Sequence[SiteLike], grad: bool = False) -> Iterator[dict[str, torch.Tensor]]:
    """Record whole site tensors ([batch, seq, ...], padded coordinates) of every forward inside the block.

    The dict is keyed by site name (``"resid_pre.3"``) and holds the last forward's tensor. Inside a
    ``model.intervene`` block it records the edited values. Detached copies unless ``grad``.

    Example:
        with recording(model, ["resid_pre.0", "resid_pre.1"]) as rec:
            model.last_logits(batch)
        rec["resid_pre.1"].shape
    """
    site_list = expand_sites(sites, model.n_layers)
    out: dict[str, torch.Tensor] = {}

    def keep(key: str):
        def fn(x: torch.Tensor):
            out[key] = x if grad else x.detach().clone()
        return fn

    with model.hooks({s: keep(str(s)) for s in site_list}):
        yield out


@dataclass
class Cache:
    """What ``run_with_cache`` returns: activations at every position of one padded batch.

    ``acts[site]`` is [batch, seq, ...] in padded coordinates (left padding; ``attention_mask`` says
    which columns are real), except ``attn_pattern`` sites: [batch, heads, query, key], as in
    TransformerLens. ``logits`` is [batch, seq, vocab] or None. Index it by site name, tuple or
    TransformerLens name: ``cache["blocks.3.hook_resid_pre"]``, ``cache["hook_embed"]``.
    """

    acts: dict[str, torch.Tensor]
    logits: torch.Tensor | None
    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    n_layers: int

    def __getitem__(self, site: SiteLike) -> torch.Tensor:
        key = str(parse_site(site, self.n_layers))
        if key not in self.acts:
            raise InterpError(f"site {key} was not cached; cached: {', '.join(self.acts) or 'none'}")
        return self.acts[key]

    def __contains__(self, site) -> bool:
        return str(parse_site(site, self.n_layers)) in self.acts

    def keys(self):
        return self.acts.keys()

    def batch(self) -> dict[str, torch.Tensor]:
        """The padded batch again (input_ids, attention_mask, position_ids), to run it once more."""
        position_ids = (self.attention_mask.long().cumsum(-1) - 1).clamp(min=0)
        return {"input_ids": self.input_ids, "attention_mask": self.attention_mask, "position_ids": position_ids}


def run_with_cache(model, inputs: Sequence[str] | Mapping[str, torch.Tensor], sites: SiteLike | Sequence[SiteLike],
                   *, logits: bool = True, requires_grad: bool = False, chat: bool = True,
                   system: str | None = None) -> Cache:
    """One forward of one padded batch: logits (unless ``logits=False``) and the whole tensor at each site.

    ``inputs`` is a list of prompts (chat-formatted when ``chat``, left-padded together) or a batch
    from ``model.pad``. With ``requires_grad`` the graph is kept, so gradients flow back from the
    logits to the cached activations (attribution methods). Interventions attached with
    ``model.intervene`` apply, and the cache holds their edited values. Without logits the forward
    stops after the deepest cached layer.

    Example:
        cache = run_with_cache(model, ["The capital of France is"], "resid_post", chat=False)
        cache["resid_post.0"].shape    # [1, seq, d_model]
    """
    if isinstance(inputs, Mapping):
        batch = dict(inputs)
        if "input_ids" not in batch or "attention_mask" not in batch:
            raise InterpError("a batch needs input_ids and attention_mask (build it with model.pad(ids))")
        batch.setdefault("position_ids", (batch["attention_mask"].long().cumsum(-1) - 1).clamp(min=0))
    else:
        batch = model.pad(model.encode(inputs, chat=chat, system=system).ids)
    site_list = expand_sites(sites, model.n_layers)
    out_logits = None
    with recording(model, site_list, grad=requires_grad) as rec, torch.set_grad_enabled(requires_grad):
        if logits:
            out_logits = model._forward(batch, logits=True)
        else:
            deepest = max(site_depth(s, model.n_layers) for s in site_list)
            try:
                with model.hooks({}, stop_after_layer=deepest):
                    model._forward(batch)
            except StopForward:
                pass
    mask = batch["attention_mask"].bool()
    for key, t in rec.items():
        if requires_grad and t.requires_grad:
            t.retain_grad()
        elif not torch.isfinite((t.transpose(1, 2) if "attn_pattern" in key else t)[mask]).all():
            raise InterpError(f"non-finite activations (NaN/inf) at {key}: check the model weights and dtype")
    return Cache(rec, out_logits, batch["input_ids"], batch["attention_mask"], model.n_layers)
