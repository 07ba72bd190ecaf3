"""Greedy (or sampled) chat completions, optionally under interventions.

Measuring completions (refusal judgement, cross-entropy, KL) lives in ``interp.evaluation``.

Example:
    texts = generate(model, ["Name a prime number."], max_new_tokens=8)
    texts = generate(model, ["How do I pick a lock?"], interventions=everywhere(model, r))
"""
from __future__ import annotations

from typing import Callable, Mapping, Sequence

import torch
from tqdm.auto import tqdm
from transformers.cache_utils import DynamicLayer

from .errors import InterpError  # noqa: F401
from .intervene import weight_edit as _weight_edit
from .prefix import SharedPrefix, cache_arg, length_buckets


class _FiniteLogits:
    """A transformers logits processor that raises when a generation step produced NaN or +inf logits."""

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        bad = torch.isnan(scores).any(-1) | torch.isposinf(scores).any(-1)
        if bad.any():
            raise InterpError(f"generation produced NaN/inf logits (sequence length {input_ids.shape[1]}) in batch "
                              f"rows {torch.nonzero(bad).flatten().tolist()[:10]}: check the model weights, the dtype "
                              f"(float16 overflows are common; try float32) and any interventions")
        return scores


def generate(model, prompts: Sequence[str], max_new_tokens: int = 64, chat: bool = True, system: str | None = None,
             do_sample: bool = False, batch_size: int = 16, progress: bool = False, use_cache: bool = True,
             interventions: Mapping | None = None, weight_edit: bool = True, **gen_kwargs) -> list[str]:
    """Completions (new text only) for prompts, greedy by default, left-padded batches, KV cache on.

    ``interventions`` (``{site: Intervention}``) apply to prompt and generated tokens alike (limit them
    with their ``positions``); per-prompt positions and patch sources are indexed by the prompt's place
    in ``prompts``, whatever batch it runs in. (Inside a ``model.intervene`` block, leave
    ``interventions`` empty: the block's interventions apply.) Ablations that equal a weight edit
    (``everywhere(model, r)``) run as a temporary, exactly undone weight edit instead of hooks, at the
    speed of plain generation (``interp.intervene``); ``weight_edit=False`` keeps every hook.
    """
    enc = model.encode(prompts, chat=chat, system=system)
    return generate_from_ids(model, enc.ids, max_new_tokens, do_sample, batch_size, progress, use_cache,
                             interventions=interventions, weight_edit=weight_edit, **gen_kwargs)


def batch_plan(ids: Sequence[Sequence[int]], batch_size: int) -> list[list[int]]:
    """The prompt indices of each padded batch ``generate_from_ids`` runs: prompts sorted by token length
    (stable), cut into runs of ``batch_size``. Data-parallel generation hands out these same batches, so each
    one is padded exactly as in one process and greedy completions match token for token.

    Example:
        >>> batch_plan([[1, 2, 3], [1], [1, 2]], 2)
        [[1, 2], [0]]
    """
    order = sorted(range(len(ids)), key=lambda i: len(ids[i]))
    return [order[s:s + batch_size] for s in range(0, len(order), batch_size)]


def generate_from_ids(model, ids: Sequence[Sequence[int]], max_new_tokens: int = 64, do_sample: bool = False,
                      batch_size: int = 16, progress: bool = False, use_cache: bool = True,
                      interventions: Mapping | None = None, weight_edit: bool = True,
                      batches: Sequence[Sequence[int]] | None = None,
                      on_batch: Callable[[list[int], list[str]], None] | None = None, share_prefix: bool = False,
                      **gen_kwargs) -> list[str]:
    """``generate`` on already tokenized prompts (e.g. a multi-turn chat).

    ``batches`` (lists of indices into ``ids``, default ``batch_plan(ids, batch_size)``) runs only those
    batches (rows outside them stay ""); ``on_batch(rows, texts)`` is called after each one, e.g. to save it.
    ``share_prefix`` runs the token prefix every prompt shares (the chat template's head) once, under the
    interventions, and starts each batch from its KV cache (``interp.prefix``), when every attached
    intervention acts the same on every prompt (``Add``, ``Ablate``, ``Zero``, ``MeanAblate`` at all, prompt
    or generated positions); otherwise whole prompts run. Equal to whole prompts up to float rounding,
    which can flip a near-tie of a greedy choice (more often in bfloat16).
    """
    if interventions:
        with model.intervene(interventions):
            return generate_from_ids(model, ids, max_new_tokens, do_sample, batch_size, progress, use_cache,
                                     weight_edit=weight_edit, batches=batches, on_batch=on_batch,
                                     share_prefix=share_prefix, **gen_kwargs)
    for name, value in (("max_new_tokens", max_new_tokens), ("batch_size", batch_size)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise InterpError(f"{name} must be a positive int, got {value!r}")
    batches = batch_plan(ids, batch_size) if batches is None else [list(b) for b in batches]
    out = [""] * len(ids)
    state = getattr(model, "_intervention_state", None)
    if not do_sample:
        gen_kwargs.update(top_p=None, top_k=None, temperature=None)
    # NaN logits decode to an arbitrary token (often a special one, so an empty string): stop instead
    gen_kwargs["logits_processor"] = list(gen_kwargs.get("logits_processor") or []) + [_FiniteLogits()]
    # the prefix of every prompt, not of the batches run here: a worker given some of them runs the same
    # prefix as one process, so its completions match
    prefix = SharedPrefix.of(model, ids, enabled=share_prefix and use_cache and _same_for_every_prompt(state))
    with _weight_edit(model, weight_edit):
        kv = prefix.cache()  # under the interventions (and the weight edit standing in for them)
        for rows in tqdm(batches, desc="generate", disable=not progress):
            _generate_batch(model, ids, rows, out, state, max_new_tokens, do_sample, use_cache, gen_kwargs,
                            prefix, kv)
            if on_batch is not None:
                on_batch(rows, [out[i] for i in rows])
    return out


def _same_for_every_prompt(state) -> bool:
    """Whether the attached interventions edit every prompt alike, so one prefix cache serves them all."""
    from .interventions import Ablate, Add, Compose, MeanAblate, Zero

    def alike(iv) -> bool:
        if type(iv) is Compose:
            return all(alike(p) for p in iv.parts)
        return type(iv) in (Add, Ablate, Zero, MeanAblate) and isinstance(iv.positions, str)
    return state is None or all(alike(iv) for iv in state.get("interventions", {}).values())


def _generate_batch(model, ids, rows, out, state, max_new_tokens, do_sample, use_cache, gen_kwargs,
                    prefix: SharedPrefix, kv) -> None:
    """One padded batch of ``generate_from_ids``: its texts go to ``out`` at the prompts' places."""
    resumable = use_cache and not do_sample and not set(gen_kwargs) & _NOT_RESUMABLE
    if len(prefix):  # [prefix | left-padded suffixes], the prefix's keys and values cached
        if resumable:  # rows in order of length, so that prefill buckets are contiguous runs of them
            rows = sorted(rows, key=lambda i: len(ids[i]))
        batch = prefix.batch([ids[i] for i in rows])
        head = torch.tensor([prefix.prefix], dtype=torch.long, device=batch["input_ids"].device)
        batch["input_ids"] = torch.cat([head.expand(len(rows), -1), batch["input_ids"]], 1)
        cache = _prefill_in_buckets(model, prefix, kv, ids, rows, state) if resumable else None
        extra = {cache_arg(model.hf): cache if cache is not None else prefix.expand(kv, len(rows))}
    else:
        batch, extra = model.pad([ids[i] for i in rows]), {}
    if state is not None:  # tells the interventions where the prompt ends and which prompts these are
        state["prompt_width"] = batch["input_ids"].shape[1]
        state["rows"] = torch.tensor(rows)
    width = batch["input_ids"].shape[1]
    try:
        with torch.no_grad():
            if resumable:
                new = _generate_dropping_finished(model, batch, rows, state, max_new_tokens, extra, gen_kwargs)
            else:
                new = model.hf.generate(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                                        max_new_tokens=max_new_tokens, do_sample=do_sample, use_cache=use_cache,
                                        pad_token_id=model.tokenizer.pad_token_id, **extra, **gen_kwargs)[:, width:]
    finally:
        if state is not None:
            state.pop("prompt_width", None)
            state.pop("rows", None)
    texts = model.tokenizer.batch_decode(new, skip_special_tokens=True)
    for i, t in zip(rows, texts):
        out[i] = t


def _prefill_in_buckets(model, prefix: SharedPrefix, kv, ids, rows: list, state):
    """The KV cache of a batch's prompts but their last tokens, computed in buckets of similar length.

    Suffix lengths after a chat template's prefix vary a lot (6 to 40 tokens in one batch of instructions);
    one forward over the batch padded to the longest spends most of the prefill on padding. Each bucket
    (``length_buckets``) runs alone, then its cache is padded to the batch's width (zero keys and values
    in the padding columns, which the attention mask hides) and the buckets are joined: the layout of one
    left-padded batch, [prefix | padding | suffix], minus each row's last token, which generation feeds
    first. Equal to the one-batch prefill up to float rounding. None when the cache is not plain
    per-layer tensors (then the caller prefills the whole batch).
    """
    n = len(prefix)
    lengths = [len(ids[i]) - n for i in rows]
    width = max(lengths)
    # `rows` is sorted by length, so the buckets are contiguous runs in its order
    groups = length_buckets(lengths, max_rows=len(rows))
    if len(groups) == 1 or not all(type(layer) is DynamicLayer for layer in getattr(kv, "layers", [None])):
        return None  # one bucket: nothing to gain; another cache type: no tensors to join
    base, parts = model.hf.base_model, []
    try:
        for group in groups:
            sub = [rows[j] for j in group]
            batch = prefix.batch([ids[i] for i in sub])
            cache = prefix.expand(kv, len(sub))
            if batch["input_ids"].shape[1] > 1:
                if state is not None:  # as for the whole batch: prompt width and prompt indices of these rows
                    state["prompt_width"] = n + batch["input_ids"].shape[1]
                    state["rows"] = torch.tensor(sub)
                with torch.no_grad():
                    base(input_ids=batch["input_ids"][:, :-1], attention_mask=batch["attention_mask"][:, :-1],
                         position_ids=batch["position_ids"][:, :-1], use_cache=True, **{cache_arg(base): cache})
            parts.append((cache, width - batch["input_ids"].shape[1]))
    finally:
        if state is not None:
            state.pop("prompt_width", None)
            state.pop("rows", None)
    first = parts[0][0]
    for li, layer in enumerate(first.layers):
        for attr in ("keys", "values"):
            padded = []
            for cache, pad in parts:
                t = getattr(cache.layers[li], attr)  # [rows, heads, n + own width − 1, dim]
                gap = t.new_zeros(t.shape[0], t.shape[1], pad, t.shape[3])
                padded.append(torch.cat([t[:, :, :n], gap, t[:, :, n:]], 2))
            setattr(layer, attr, torch.cat(padded, 0))
    return first


# generate options whose effect depends on how many tokens one call has generated: with them, one call
_NOT_RESUMABLE = {"min_new_tokens", "min_length", "max_length", "streamer", "stopping_criteria", "num_beams",
                  "num_return_sequences", "assistant_model", "prompt_lookup_num_tokens", "past_key_values", "cache"}


def _eos_ids(model) -> torch.Tensor:
    eos = model.hf.generation_config.eos_token_id
    eos = [] if eos is None else [eos] if isinstance(eos, int) else list(eos)
    return torch.tensor(eos, dtype=torch.long)


def _generate_dropping_finished(model, batch: dict, rows: list, state, max_new_tokens: int, extra: dict,
                                gen_kwargs: dict) -> torch.Tensor:
    """Greedy ``hf.generate`` in stretches of 16, 16, 32, 64, ... tokens; between stretches the rows that
    generated an end-of-sequence token leave the batch (and their KV cache rows with them), so a refusal
    that ends after a dozen tokens stops costing compute while the long answers beside it go on.

    Each stretch continues from the cache of the one before (its last token is fed next), and the logits
    processors (e.g. a repetition penalty) see every token so far, as in one call; rows are computed as
    before, only in a smaller batch. Returns the new tokens [rows, ≤ max_new_tokens], ``pad`` after EOS.
    """
    hf, pad = model.hf, model.tokenizer.pad_token_id
    ids, mask = batch["input_ids"], batch["attention_mask"]
    width, eos = ids.shape[1], _eos_ids(model).to(ids.device)
    result = torch.full((ids.shape[0], max_new_tokens), pad, dtype=torch.long, device=ids.device)
    alive = torch.arange(ids.shape[0], device=ids.device)
    cache, done, stretch = extra.get(cache_arg(hf)), 0, 16
    while done < max_new_tokens and len(alive):
        n = min(stretch, max_new_tokens - done)
        kwargs = dict(gen_kwargs, return_dict_in_generate=True)
        if cache is not None:
            kwargs[cache_arg(hf)] = cache
        gen = hf.generate(input_ids=ids, attention_mask=mask, max_new_tokens=n, do_sample=False, use_cache=True,
                          pad_token_id=pad, **kwargs)
        new = gen.sequences[:, ids.shape[1]:]
        result[alive, done:done + new.shape[1]] = new
        done += n
        finished = torch.isin(new, eos).any(1) if len(eos) else torch.zeros(len(alive), dtype=torch.bool)
        if new.shape[1] < n:  # every row ended (generate stops early only then)
            break
        if done >= max_new_tokens:
            break
        keep = (~finished).nonzero().flatten()
        ids, cache = gen.sequences, gen.past_key_values
        mask = torch.cat([mask, torch.ones_like(new)], 1)
        if len(keep) < len(alive):
            ids, mask = ids[keep], mask[keep]
            cache.batch_select_indices(keep)
            if state is not None and "rows" in state:
                state["rows"] = state["rows"][keep.cpu()]
            alive = alive[keep]
        stretch *= 2 if done >= 32 else 1
    return result
