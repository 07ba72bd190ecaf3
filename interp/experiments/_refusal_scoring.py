"""Scoring refusal-direction candidates on validation prompts, and the paper's selection rule.

Private to ``interp.experiments.refusal``: this part runs the model, so it is
not an analyzer. Every edit of an activation is an ``Intervention`` applied
through ``model.intervene`` (``everywhere`` for directional ablation, ``Add``
for activation addition); the residual stream is read with
``interp.capture.recording``; the refusal metric and KL come from
``interp.evaluation``.

- ``CandidateScorer``: bypass, induce and KL for any candidate, reusing what
  is shared across candidates (tokenized batches, baseline logits, the cached
  residual stream below each layer, the KV cache of the shared prompt prefix).
- ``select_direction``: the paper's filters and choice (pruned or exhaustive).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Sequence

import torch
from tqdm.auto import tqdm

from ..capture import recording
from ..errors import InterpError
from ..evaluation import kl_div, refusal_metric
from ..interventions import Add, AddPerPrompt, Context, everywhere
from ..prefix import SharedPrefix

#: First tokens of typical refusals, read by the refusal metric (Qwen's refusals begin "I'm sorry" / "As an AI").
REFUSAL_TOKENS = ("I", "As")


def refusal_token_ids(tokenizer, tokens: Sequence[str] = REFUSAL_TOKENS) -> list[int]:
    """Vocabulary ids of refusal-starting tokens; each must be a single token."""
    ids = []
    for t in tokens:
        enc = tokenizer.encode(t, add_special_tokens=False)
        if len(enc) != 1:
            raise InterpError(f"refusal token {t!r} is not a single token in this vocabulary ({enc}); pass "
                              f"refusal tokens that exist, e.g. the first token of the model's refusals")
        ids.append(enc[0])
    return sorted(set(ids))


@dataclass
class Scores:
    """Validation scores of one candidate (NaN where not computed)."""

    bypass: float = float("nan")
    induce: float = float("nan")
    kl: float = float("nan")
    proxy_bypass: float = float("nan")
    proxy_induce: float = float("nan")
    proxy_kl: float = float("nan")


@dataclass
class _PromptSet:
    """Validation prompts tokenized into padded batches, with what every candidate reuses."""

    harmful: list  # [(batch, rows)], sorted by length to keep padding small; tokens after the shared prefix
    harmless: list
    base_harmless: torch.Tensor  # last-position logits on the harmless prompts, in batch order
    resid: list  # per harmless batch: resid_pre of every layer after the prefix, [batch, seq, d] each


class CandidateScorer:
    """Scores refusal-direction candidates on validation prompts.

    Shared work is done once: the validation prompts are tokenized and padded
    once, their baseline last-position logits computed once, and the harmless
    residual stream at every block input cached in the same forward, so the
    induce score of a layer-l candidate runs only blocks l.. (the blocks below
    cannot change). The token prefix every prompt shares (the chat template's
    system prompt and user header: about half the tokens of a Qwen prompt)
    runs once per candidate, batch 1, and its KV cache serves every batch.
    A second, smaller set of ``proxy_prompts`` prompts per class (spread over
    the list) serves the cheap proxy scores of the pruned search.
    """

    def __init__(self, model, harmful_val: Sequence[str], harmless_val: Sequence[str],
                 refusal_ids: Sequence[int], batch_size: int = 16, proxy_prompts: int = 8,
                 progress: bool = True, share_prefix: bool = True):
        self.model, self.refusal_ids, self.progress = model, list(refusal_ids), progress
        every = model.encode(list(harmful_val) + list(harmless_val)).ids
        self.shared = SharedPrefix.of(model, every, enabled=share_prefix)
        self.prefix = self.shared.prefix
        kv = self._prefix_kv()  # unedited, shared by every baseline below
        self.full = self._prompt_set(harmful_val, harmless_val, batch_size, kv)
        self.proxy = self._prompt_set(_spread(harmful_val, proxy_prompts), _spread(harmless_val, proxy_prompts),
                                      batch_size, kv)
        self.base_harmful_metric = torch.cat([refusal_metric(self._logits(b, kv), self.refusal_ids)
                                              for b, _ in self.full.harmful])
        self.base_harmless_metric = refusal_metric(self.full.base_harmless, self.refusal_ids)

    def _batches(self, prompts, batch_size):
        enc = self.model.encode(prompts)
        order = sorted(range(len(prompts)), key=lambda i: enc.lengths[i])
        return [(self.shared.batch([enc.ids[i] for i in order[s:s + batch_size]]), order[s:s + batch_size])
                for s in range(0, len(order), batch_size)]

    def _prefix_kv(self):
        """KV cache of the shared prefix under the interventions attached now (None without a prefix)."""
        return self.shared.cache()

    def _logits(self, batch, kv, **kwargs) -> torch.Tensor:
        if kv is None:
            return self.model.last_logits(batch, **kwargs)
        return self.model.last_logits(batch, cache=self.shared.expand(kv, batch["input_ids"].shape[0]), **kwargs)

    def _prompt_set(self, harmful, harmless, batch_size, kv) -> _PromptSet:
        harmless_batches = self._batches(harmless, batch_size)
        logits, resid = [], []
        for batch, _ in harmless_batches:
            lg, cache = self._logits_and_resid(batch, kv)
            logits.append(lg)
            resid.append(cache)
        return _PromptSet(self._batches(harmful, batch_size), harmless_batches, torch.cat(logits), resid)

    def _logits_and_resid(self, batch, kv) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """Last-position logits and resid_pre of every layer ([batch, seq, d] each), one forward."""
        sites = [f"resid_pre.{layer}" for layer in range(self.model.n_layers)]
        with recording(self.model, sites) as rec, torch.no_grad():
            logits = self._logits(batch, kv)
        return logits, [rec[site] for site in sites]

    def bypass_and_kl(self, direction: torch.Tensor, proxy: bool = False) -> tuple[float, float]:
        """Mean refusal metric on harmful prompts and mean KL on harmless ones, r̂ ablated everywhere.

        With ``proxy`` the small proxy set is read instead of the full one.
        """
        metrics, kls = self.bypass_and_kl_values(direction, proxy)
        return metrics.mean().item(), kls.mean().item()

    def bypass_and_kl_values(self, direction: torch.Tensor, proxy: bool = False, harmful: bool = True,
                             harmless: bool = True) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        """Per-prompt values behind ``bypass_and_kl`` (in batch order); ``harmful=False`` or
        ``harmless=False`` skips that half (its value is None)."""
        ps = self.proxy if proxy else self.full
        metrics, kls = [], []
        with self.model.intervene(everywhere(self.model, direction)), torch.no_grad():
            kv = self._prefix_kv()
            for batch, _ in ps.harmful if harmful else ():
                metrics.append(refusal_metric(self._logits(batch, kv), self.refusal_ids))
            start = 0
            for batch, rows in ps.harmless if harmless else ():
                logits = self._logits(batch, kv)
                kls.append(kl_div(ps.base_harmless[start:start + len(rows)], logits))
                start += len(rows)
        return torch.cat(metrics) if metrics else None, torch.cat(kls) if kls else None

    def induce(self, direction: torch.Tensor, layer: int, proxy: bool = False) -> float:
        """Mean refusal metric on harmless prompts with +r added at ``layer`` (all positions)."""
        return self.induce_values(direction, layer, proxy).mean().item()

    def induce_values(self, direction: torch.Tensor, layer: int, proxy: bool = False) -> torch.Tensor:
        """Per-prompt values behind ``induce`` (in batch order)."""
        ps = self.proxy if proxy else self.full
        add = Add(direction)
        with self.model.intervene({f"resid_pre.{layer}": add}):
            kv = self._prefix_kv()  # the prefix is steered too
        metrics = []
        for (batch, _), resid in zip(ps.harmless, ps.resid):
            # the same edit on the cached block input; only blocks layer.. run on it
            steered = add.apply(resid[layer], _suffix_context(batch, resid[layer].shape[1]))
            logits = self._logits(batch, kv, start_layer=layer, resid=steered)
            metrics.append(refusal_metric(logits, self.refusal_ids))
        return torch.cat(metrics)

    def induce_values_many(self, directions: torch.Tensor, layer: int, proxy: bool = False) -> torch.Tensor:
        """``induce_values`` of several candidates at one layer ([k, d] -> [k, prompts]) as one batch: the
        prefix under each candidate's addition in one forward of k rows, then every batch of suffixes k
        times over (bigger matrix products than k small runs; equal up to float rounding)."""
        ps = self.proxy if proxy else self.full
        k = directions.shape[0]
        if k == 1 or not len(self.shared):
            return torch.stack([self.induce_values(d, layer, proxy) for d in directions])
        with self.model.intervene({f"resid_pre.{layer}": AddPerPrompt(directions)}):
            kv = self.model.prefix_cache(self.prefix, copies=k)  # row c: the prefix steered by candidate c
        out = []
        for (batch, _), resid in zip(ps.harmless, ps.resid):
            b = batch["input_ids"].shape[0]
            stacked = {key: v.repeat(k, *([1] * (v.dim() - 1))) for key, v in batch.items()}  # candidate-major
            ctx = _suffix_context(batch, resid[layer].shape[1])
            steered = torch.cat([Add(d).apply(resid[layer], ctx) for d in directions])
            cache = self.shared.expand(kv, b)  # each candidate's prefix row b times: [c0 x b, c1 x b, ...]
            logits = self.model.last_logits(stacked, cache=cache, start_layer=layer, resid=steered)
            out.append(refusal_metric(logits, self.refusal_ids).reshape(k, b))
        return torch.cat(out, 1)

    def score(self, direction: torch.Tensor, layer: int) -> Scores:
        bypass, kl = self.bypass_and_kl(direction)
        return Scores(bypass=bypass, induce=self.induce(direction, layer), kl=kl)


def _suffix_context(batch: dict, seq: int) -> Context:
    """Where the last ``seq`` columns of a padded batch sit (they follow any cached prefix): for applying an
    intervention to a cached activation by hand."""
    mask = batch["attention_mask"]
    valid = mask[:, -seq:].bool()
    index = (mask.cumsum(-1) - 1).clamp(min=0)[:, -seq:]
    lengths = mask.sum(-1)
    return Context(token_index=index, valid=valid, is_prompt=torch.ones(seq, dtype=torch.bool, device=mask.device),
                   prompt_lengths=lengths)


def _spread(prompts: Sequence[str], n: int) -> list[str]:
    """``n`` prompts taken at even steps through the list (the proxy set)."""
    step = max(1, len(prompts) // max(1, n))
    return list(prompts)[::step][:n]


@dataclass
class Selection:
    """The outcome of a candidate search."""

    layer: int
    position: int  # index into the post-instruction positions (negative: from the end)
    scores: dict = field(default_factory=dict)  # (layer, position) -> Scores
    n_scored: int = 0
    mode: str = "pruned"


def layer_cutoff(n_layers: int, max_layer_frac: float) -> int:
    """The first layer the search drops: ``int(max_layer_frac · n_layers)``, as the official code does.

    The official ``select_direction`` discards every layer ``>= int(n_layers * (1 - 0.2))``; a plain
    ``layer < 0.8·L`` would keep layer 22 of 28 (22 < 22.4), which the paper's code excludes.

    Example:
        >>> layer_cutoff(28, 0.8), layer_cutoff(30, 0.8)
        (22, 24)
    """
    return int(max_layer_frac * n_layers)


def passes(s: Scores, layer: int, n_layers: int, kl_max: float, induce_min: float, max_layer_frac: float) -> bool:
    # the official filter_fn drops kl > threshold and induce < threshold, so the thresholds themselves pass
    return s.induce >= induce_min and s.kl <= kl_max and layer < layer_cutoff(n_layers, max_layer_frac)


def select_direction(scorer: CandidateScorer, candidates: torch.Tensor, mode: str = "pruned",
                     kl_max: float = 0.1, induce_min: float = 0.0, max_layer_frac: float = 0.8,
                     top_k: int = 8) -> Selection:
    """Pick the candidate with the lowest bypass among those passing the filters.

    ``candidates`` is [layers, positions, d]. ``mode="exhaustive"`` scores
    every candidate below ``layer_cutoff(n_layers, max_layer_frac)``. ``mode="pruned"``
    ranks them by the same three scores on the scorer's small proxy set,
    cheapest first: induce for every candidate (it runs only the blocks
    above the candidate's layer), then bypass and KL (one ablated forward)
    for those that plausibly induce. Candidates that plausibly pass both
    filters (within two standard errors of the proxy means) come first,
    lowest proxy bypass first; then the rest, nearest misses first. It takes
    ``top_k`` at a time in that order and stops after the first round in which
    some candidate passes the filters, so a noisy proxy costs time, never a
    candidate: every one is reachable. Within a round, every candidate gets its
    full bypass, and KL and induce are computed lowest bypass first until one
    passes (``_lazy_round``): the same choice as scoring all of them fully.
    """
    if mode not in ("pruned", "exhaustive"):
        raise InterpError(f"mode must be 'pruned' or 'exhaustive', got {mode!r}")
    n_layers, n_pos = candidates.shape[:2]
    # a zero difference (e.g. the embedding of identical template tokens) is no direction
    pool = [(layer, p) for layer in range(layer_cutoff(n_layers, max_layer_frac)) for p in range(n_pos)
            if candidates[layer, p].norm() > 1e-6]
    if not pool:
        raise InterpError(f"no candidate layer is below int({max_layer_frac}·{n_layers}) = "
                          f"{layer_cutoff(n_layers, max_layer_frac)}; raise max_layer_frac")
    scores: dict[tuple[int, int], Scores] = {}
    if mode == "pruned":
        order = _proxy_order(scorer, candidates, pool, scores, kl_max, induce_min)
    else:
        order = pool
    best, n_scored = None, 0
    for start in range(0, len(order), top_k if mode == "pruned" else len(order)):
        chunk = order[start:start + (top_k if mode == "pruned" else len(order))]
        if mode == "pruned":
            best = _lazy_round(scorer, candidates, chunk, scores, n_layers, kl_max, induce_min, max_layer_frac)
            n_scored += len(chunk)
            if best is not None:
                break
            continue
        for key in tqdm(chunk, desc="full scores", disable=not scorer.progress):
            full = scorer.score(candidates[key], key[0])
            proxy = scores.get(key, Scores())
            full.proxy_bypass, full.proxy_induce, full.proxy_kl = proxy.proxy_bypass, proxy.proxy_induce, proxy.proxy_kl
            scores[key] = full
            n_scored += 1
        ok = [k for k in chunk if passes(scores[k], k[0], n_layers, kl_max, induce_min, max_layer_frac)]
        if ok:
            cand = min(ok, key=lambda k: scores[k].bypass)
            if best is None or scores[cand].bypass < scores[best].bypass:
                best = cand
    if best is None:
        # name the nearest misses so the user sees which filter to loosen, and by how much
        full = [k for k, s in scores.items() if not math.isnan(s.kl)]
        near = sorted(full, key=lambda k: ((scores[k].induce < induce_min) + (scores[k].kl > kl_max),
                                           scores[k].bypass))[:3]
        misses = "; ".join(f"layer {k[0]} pos {k[1] - n_pos}: bypass {scores[k].bypass:.2f}, induce "
                           f"{scores[k].induce:.2f}, KL {scores[k].kl:.3f}" for k in near)
        cut = layer_cutoff(n_layers, max_layer_frac)
        raise InterpError(f"no candidate passed the filters (induce ≥ {induce_min}, KL ≤ {kl_max}, layer < "
                          f"int({max_layer_frac}·{n_layers}) = {cut}) among {n_scored} scored; loosen them (kl_max, "
                          f"induce_min, max_layer_frac) or use more or other prompts. Nearest: {misses}")
    return Selection(layer=best[0], position=best[1] - n_pos, scores=scores, n_scored=n_scored, mode=mode)


def _lazy_round(scorer: CandidateScorer, candidates: torch.Tensor, chunk: list, scores: dict, n_layers: int,
                kl_max: float, induce_min: float, max_layer_frac: float):
    """One round of the pruned search's full scores: the round's choice (the lowest full bypass among its
    candidates that pass the filters) or None, computing only what can change that choice.

    Every candidate gets its full bypass (the ablated harmful forward); then, lowest bypass first, the
    KL (the ablated harmless forward) and, where the KL filter holds, the induce score, until the first
    candidate that passes: it has the lowest bypass of those that pass, so the others' KL and induce
    could not change the choice and stay NaN (not computed) in the report.
    """
    for key in tqdm(chunk, desc="full bypass", disable=not scorer.progress):
        bypass, _ = scorer.bypass_and_kl_values(candidates[key], harmless=False)
        old = scores.get(key, Scores())
        scores[key] = Scores(bypass=bypass.mean().item(), proxy_bypass=old.proxy_bypass,
                             proxy_induce=old.proxy_induce, proxy_kl=old.proxy_kl)
    for key in sorted(chunk, key=lambda k: scores[k].bypass):
        _, kls = scorer.bypass_and_kl_values(candidates[key], harmful=False)
        scores[key].kl = kls.mean().item()
        if scores[key].kl <= kl_max and key[0] < layer_cutoff(n_layers, max_layer_frac):
            scores[key].induce = scorer.induce(candidates[key], key[0])
        if passes(scores[key], key[0], n_layers, kl_max, induce_min, max_layer_frac):
            return key
    return None


def _proxy_order(scorer: CandidateScorer, candidates: torch.Tensor, pool: list, scores: dict,
                 kl_max: float, induce_min: float, z: float = 2.0) -> list:
    """The pruned search's order (see ``select_direction``); fills the proxy fields of ``scores``.

    A proxy mean over a few prompts is noisy, so a candidate counts as
    plausibly passing when the filter holds within ``z`` standard errors of
    that mean; the others follow, those that miss by the fewest standard
    errors first.
    """
    miss: dict = {}  # standard errors by which a candidate misses a filter on the proxy (<= 0: plausible)
    by_layer: dict[int, list] = {}
    for key in pool:
        by_layer.setdefault(key[0], []).append(key)
    for layer, keys in tqdm(by_layer.items(), desc="proxy induce (layers)", disable=not scorer.progress):
        many = scorer.induce_values_many(torch.stack([candidates[k] for k in keys]), layer, proxy=True)
        for key, values in zip(keys, many):
            scores[key] = Scores(proxy_induce=values.mean().item())
            miss[key] = (induce_min - values.mean().item()) / _stderr(values) - z
    inducing = [k for k in pool if miss[k] <= 0]
    for key in tqdm(inducing, desc="proxy bypass+KL", disable=not scorer.progress):
        metrics, kls = scorer.bypass_and_kl_values(candidates[key], proxy=True)
        scores[key].proxy_bypass, scores[key].proxy_kl = metrics.mean().item(), kls.mean().item()
        miss[key] = max(miss[key], (kls.mean().item() - kl_max) / _stderr(kls) - z)
    front = sorted((k for k in inducing if miss[k] <= 0), key=lambda k: scores[k].proxy_bypass)
    return front + sorted((k for k in pool if miss[k] > 0), key=lambda k: miss[k])


def _stderr(values: torch.Tensor) -> float:
    return max(values.std().item() / math.sqrt(len(values)), 1e-6) if len(values) > 1 else 1e-6
