"""Run prompts that share a token prefix once for the prefix, then only their own tokens.

A chat template puts the same system prompt and user header in front of every
prompt: on Qwen that is 24 of the ~45 tokens of a typical instruction, so about
half of every forward recomputes the same keys and values. ``SharedPrefix``
runs that prefix once (batch 1, under whatever interventions are attached),
and each batch then carries only the tokens after it: left-padded suffixes
whose attention mask also spans the prefix and whose positions continue from
it. The result equals a full forward up to float rounding (about 1e-5 in the
logits of a float32 model; tests/test_prefix.py).

Example:
    sp = SharedPrefix.of(model, ids)                  # ids: token lists from model.encode(...).ids
    kv = sp.cache()                                   # the prefix's KV cache, once
    batch = sp.batch([ids[0], ids[1]])                # suffixes only
    logits = model.last_logits(batch, cache=sp.expand(kv, 2))
"""
from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Sequence

import torch


def cache_arg(module) -> str:
    """The forward's keyword for a KV cache: transformers 5 renamed ``past_key_values`` to ``cache``."""
    import inspect

    return "cache" if "cache" in inspect.signature(module.forward).parameters else "past_key_values"


def shared_prefix(ids: Sequence[Sequence[int]]) -> list[int]:
    """The longest token prefix of every list that still leaves each at least one token of its own.

    Example:
        >>> shared_prefix([[1, 2, 3, 4], [1, 2, 5]])
        [1, 2]
        >>> shared_prefix([[1, 2], [1, 2]])   # each keeps its last token
        [1]
    """
    if not ids:
        return []
    n = 0
    while all(len(x) > n + 1 for x in ids) and len({x[n] for x in ids}) == 1:
        n += 1
    return list(ids[0][:n])


@dataclass
class SharedPrefix:
    """The prefix shared by a set of prompts and how to batch the rest of them (see the module docstring).

    ``prefix`` is empty when the prompts share nothing, the model's backend has no KV-cache fast path,
    or sharing is switched off; ``batch`` and ``expand`` then fall back to plain full-prompt batches.
    """

    model: object
    prefix: list[int]

    @classmethod
    def of(cls, model, ids: Sequence[Sequence[int]], enabled: bool = True, min_tokens: int = 2) -> "SharedPrefix":
        """The shared prefix of ``ids`` (none when shorter than ``min_tokens``: not worth a cache)."""
        prefix = shared_prefix(ids) if enabled and getattr(model, "backend", "hf") == "hf" and len(ids) > 1 else []
        return cls(model, prefix if len(prefix) >= min_tokens else [])

    def __len__(self) -> int:
        return len(self.prefix)

    def cache(self):
        """The prefix's KV cache under the interventions attached now (None without a prefix)."""
        return self.model.prefix_cache(self.prefix) if self.prefix else None

    def batch(self, ids: Sequence[Sequence[int]]) -> dict[str, torch.Tensor]:
        """A padded batch of the tokens after the prefix, its mask spanning the prefix too."""
        n = len(self.prefix)
        batch = self.model.pad([list(x[n:]) for x in ids])
        if n:  # the suffixes follow the cached prefix: the mask spans both, positions continue from it
            mask = batch["attention_mask"]
            batch["attention_mask"] = torch.cat([torch.ones_like(mask[:, :1]).expand(-1, n), mask], 1)
            batch["position_ids"] = batch["position_ids"] + n
        return batch

    def expand(self, kv, rows: int):
        """A copy of the prefix cache repeated for ``rows`` prompts (a forward extends its cache in place)."""
        if kv is None:
            return None
        kv = copy.deepcopy(kv)
        kv.batch_repeat_interleave(rows)
        return kv


@dataclass
class LeadingColumns:
    """The KV cache of a padded batch's first ``cut`` columns, for edits that start at column ``cut`` or later.

    A forward edited only from some token on (a patch at the last positions, a steering vector added at
    one entity's token) computes the same keys and values as the unedited run for every column before
    it. ``LeadingColumns.of(model, batch, cut)`` runs those columns once; ``rest(rows)`` is the batch's
    remaining columns for the given rows (which may repeat, e.g. one row per edit), with a copy of the
    cache selected to match. ``cut`` 0, or a backend without the KV-cache fast path, gives no cache and
    ``rest`` returns the whole rows.

    Example:
        lead = LeadingColumns.of(model, batch, cut=batch["input_ids"].shape[1] - 3)
        sub, kw = lead.rest(torch.tensor([0, 1, 0, 1]))      # each prompt twice, last 3 columns only
        logits = model.last_logits(sub, **kw)
    """

    batch: dict
    cut: int
    kv: object = None

    @classmethod
    def of(cls, model, batch: dict[str, torch.Tensor], cut: int) -> "LeadingColumns":
        if cut <= 0 or getattr(model, "backend", "hf") != "hf":
            return cls(batch, 0)
        from transformers import DynamicCache

        kv = DynamicCache()
        model.last_logits({k: v[:, :cut] for k, v in batch.items()}, cache=kv)  # fills kv in place
        return cls(batch, cut, kv)

    def rest(self, rows: torch.Tensor) -> tuple[dict[str, torch.Tensor], dict]:
        """The columns from ``cut`` on of ``rows`` (mask spanning all columns) and ``last_logits`` kwargs."""
        sub = {k: v[rows.to(v.device)] for k, v in self.batch.items()}
        if self.kv is None:
            return sub, {}
        kv = copy.deepcopy(self.kv)  # a forward extends its cache in place
        kv.batch_select_indices(rows)
        return ({"input_ids": sub["input_ids"][:, self.cut:], "attention_mask": sub["attention_mask"],
                 "position_ids": sub["position_ids"][:, self.cut:]}, {"cache": kv})


def length_buckets(lengths: Sequence[int], max_rows: int, overhead: int = 64) -> list[list[int]]:
    """Indices of ``lengths`` grouped into padded batches of similar length, to waste little on padding.

    Rows are sorted by length and cut where a new batch costs less than the padding it saves: the cut
    minimizes Σ (rows × longest) + ``overhead`` × batches (a forward's fixed cost, in tokens), with at most
    ``max_rows`` rows a batch. One long prompt among short ones then runs alone instead of padding them.

    Example:
        >>> length_buckets([3, 40, 4, 41], max_rows=4, overhead=8)
        [[0, 2], [1, 3]]
    """
    order = sorted(range(len(lengths)), key=lambda i: lengths[i])
    n = len(order)
    best = [0.0] + [float("inf")] * n  # best[j]: cost of the first j rows (sorted)
    cut = [0] * (n + 1)
    for j in range(1, n + 1):
        longest = lengths[order[j - 1]]
        for i in range(max(0, j - max_rows), j):
            cost = best[i] + (j - i) * longest + overhead
            if cost < best[j]:
                best[j], cut[j] = cost, i
    groups, j = [], n
    while j > 0:
        groups.append(order[cut[j]:j])
        j = cut[j]
    return groups[::-1]
