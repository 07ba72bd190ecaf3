"""Logit lens: read each layer's residual stream as a next-token distribution.

Each layer's ``resid_post`` goes through the model's own final norm and unembedding (the path the
last layer takes to the logits), so the last row is the model's prediction exactly and earlier rows
show when it forms (nostalgebraist 2020). Per layer and position we keep the top-k tokens, the rank
and probability of a target token (by default the model's own final prediction) and the KL divergence
KL(final ‖ layer) to the last layer's distribution. Learned translators (tuned lens) are not here.

Example:
    >>> from interp.testing import tiny_model
    >>> lens = logit_lens(tiny_model(), ["The capital of France is"], chat=False, k=3)
    >>> lens.top_ids.shape        # [layers, prompts, positions, k]
    torch.Size([2, 1, 1, 3])
    >>> float(lens.kl_to_final[-1].abs().max()) < 1e-5
    True
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Sequence

import torch
from tqdm.auto import tqdm

from .errors import InterpError


@dataclass
class LensResult:
    """What ``logit_lens`` returns; tensors are indexed [layer, prompt, position, ...].

    ``positions`` is ``"last"`` (one position per prompt) or ``"all"`` (each prompt's tokens from 0,
    padded to the longest prompt; ``mask`` [prompts, positions] says which are real).
    ``target_ids`` [prompts, positions] is the token whose rank and probability are tracked
    (``target_source`` says where it came from). Ranks count from 0 (0 = top-1).
    """

    layers: list[int]
    prompts: list[str]  # as given (before any chat template)
    positions: str
    input_tokens: list[list[str]]  # each prompt's tokens (as the model saw them)
    mask: torch.Tensor  # [prompts, positions] bool
    top_ids: torch.Tensor  # [layers, prompts, positions, k]
    top_probs: torch.Tensor  # [layers, prompts, positions, k]
    target_ids: torch.Tensor  # [prompts, positions]
    target_rank: torch.Tensor  # [layers, prompts, positions]
    target_prob: torch.Tensor  # [layers, prompts, positions]
    kl_to_final: torch.Tensor  # [layers, prompts, positions], nats
    model_top_ids: torch.Tensor  # [prompts, positions]: argmax of the model's own logits
    target_source: str = "model prediction"
    meta: dict = field(default_factory=dict)

    def top_tokens(self, tokenizer, prompt: int = 0, position: int = -1) -> list[list[str]]:
        """Top-k token strings per layer at one prompt and position (index into this result's positions)."""
        ids = self.top_ids[:, prompt, position]
        return [[tokenizer.decode([int(t)]) for t in row] for row in ids]

    def to_dict(self, tokenizer) -> dict:
        """JSON-ready summary: per prompt, for its last analysed position, one row per layer."""
        out = []
        for i, prompt in enumerate(self.prompts):
            j = int(self.mask[i].nonzero().max())  # the last real position of this prompt
            rows = []
            for li, layer in enumerate(self.layers):
                rows.append({
                    "layer": layer,
                    "top_token": tokenizer.decode([int(self.top_ids[li, i, j, 0])]),
                    "top_prob": round(float(self.top_probs[li, i, j, 0]), 6),
                    "target_rank": int(self.target_rank[li, i, j]),
                    "target_prob": round(float(self.target_prob[li, i, j]), 6),
                    "kl_to_final": round(float(self.kl_to_final[li, i, j]), 6),
                })
            out.append({"prompt": prompt, "target": tokenizer.decode([int(self.target_ids[i, j])]),
                        "target_source": self.target_source,
                        "model_prediction": tokenizer.decode([int(self.model_top_ids[i, j])]), "layers": rows})
        return {"model": self.meta.get("model"), "positions": self.positions, "prompts": out}


def target_token_id(tokenizer, target: str | int) -> int:
    """One token id from a token string (it must encode to exactly one token) or an id.

    Example:
        >>> from interp.testing import tiny_tokenizer
        >>> tok = tiny_tokenizer()
        >>> target_token_id(tok, 5)
        5
    """
    if isinstance(target, bool):
        raise InterpError(f"target must be a token string or id, got {target!r}")
    if isinstance(target, int):
        if not 0 <= target < len(tokenizer):
            raise InterpError(f"target token id {target} is outside the vocabulary (0..{len(tokenizer) - 1})")
        return target
    if not isinstance(target, str) or not target:
        raise InterpError(f"target must be a non-empty token string or a token id, got {target!r}")
    ids = tokenizer(target, add_special_tokens=False)["input_ids"]
    if len(ids) != 1:
        pieces = [tokenizer.decode([t]) for t in ids]
        hint = f"; try {' ' + target!r} (leading space)" if not target.startswith(" ") else ""
        raise InterpError(f"target {target!r} is {len(ids)} tokens {pieces}, the lens tracks one token: pass a "
                          f"single token such as {pieces[0]!r}{hint}")
    return ids[0]


def logit_lens(model, prompts: Sequence[str], *, positions: str = "last", target: str | int | Sequence | None = None,
               k: int = 5, layers: Sequence[int] | None = None, chat: bool = False, system: str | None = None,
               batch_size: int = 8, progress: bool = True) -> LensResult:
    """Per-layer next-token distributions from ``resid_post`` through the final norm and unembedding.

    ``positions``: ``"last"`` or ``"all"``. ``target``: a token string or id for every prompt, a list
    of one per prompt, or None to track the model's own prediction at each position. ``layers``:
    which blocks (default all); the KL is always to the model's own final distribution. ``chat`` is
    off by default: the lens usually reads a raw text's next word.

    Example:
        lens = logit_lens(model, ["The Eiffel Tower is in the city of"], target=" Paris", chat=False)
        lens.target_rank[:, 0, 0]       # rank of " Paris" after each layer
        plots.lens_heatmap(lens, model.tokenizer)
    """
    from .arch import final_norm
    from .capture import run_with_cache

    if positions not in ("last", "all"):
        raise InterpError(f"positions must be 'last' or 'all', got {positions!r}")
    if not isinstance(k, int) or isinstance(k, bool) or k < 1:
        raise InterpError(f"k must be a positive integer, got {k!r}")
    if batch_size < 1:
        raise InterpError(f"batch_size must be >= 1, got {batch_size}")
    prompts = [prompts] if isinstance(prompts, str) else list(prompts)
    enc = model.encode(prompts, chat=chat, system=system)
    n = len(enc.ids)
    layer_list = list(range(model.n_layers)) if layers is None else [int(x) for x in layers]
    bad = [x for x in layer_list if not 0 <= x < model.n_layers]
    if bad or not layer_list:
        raise InterpError(f"layers must be in 0..{model.n_layers - 1}, got {list(layers) if layers else layers}")
    if target is None:
        targets = None
    elif isinstance(target, (str, int)):
        targets = [target_token_id(model.tokenizer, target)] * n
    else:
        targets = [target_token_id(model.tokenizer, t) for t in target]
        if len(targets) != n:
            raise InterpError(f"{len(targets)} targets for {n} prompts; give one target or one per prompt")
    norm = final_norm(model)
    width = 1 if positions == "last" else max(enc.lengths)
    L, vocab_k = len(layer_list), min(k, model.hf.get_output_embeddings().weight.shape[0])
    top_ids = torch.zeros(L, n, width, vocab_k, dtype=torch.long)
    top_probs = torch.zeros(L, n, width, vocab_k)
    t_rank = torch.zeros(L, n, width, dtype=torch.long)
    t_prob = torch.zeros(L, n, width)
    kl = torch.zeros(L, n, width)
    t_ids = torch.zeros(n, width, dtype=torch.long)
    model_top = torch.zeros(n, width, dtype=torch.long)
    mask = torch.zeros(n, width, dtype=torch.bool)
    sites = [f"resid_post.{x}" for x in layer_list]
    starts = range(0, n, batch_size)
    for start in tqdm(starts, desc="logit lens", unit="batch", disable=not progress or n <= batch_size):
        rows = list(range(start, min(start + batch_size, n)))
        batch = model.pad([enc.ids[i] for i in rows])
        with torch.no_grad():
            cache = run_with_cache(model, batch, sites)
            am = batch["attention_mask"].bool()
            cols = am
            if positions == "last":  # left padding: the last column is every prompt's last token
                cols = torch.zeros_like(am)
                cols[:, -1] = True
            final = torch.log_softmax(cache.logits.float()[cols], -1)  # [tokens, vocab], tokens in row order
            tgt = final.argmax(-1) if targets is None else torch.tensor(
                [targets[rows[b]] for b, c in enumerate(cols.sum(1).tolist()) for _ in range(c)], device=final.device)
            for li, site in enumerate(sites):
                h = cache[site][cols]
                logp = torch.log_softmax(model.unembed(norm(h)).float(), -1)
                top = logp.topk(vocab_k, -1)
                own = logp.gather(-1, tgt[:, None])[:, 0]
                rank = (logp > own[:, None]).sum(-1)
                div = (final.exp() * (final - logp)).sum(-1)
                _scatter(top_ids[li], top.indices.cpu(), cols, rows, positions)
                _scatter(top_probs[li], top.values.exp().cpu(), cols, rows, positions)
                _scatter(t_rank[li], rank.cpu(), cols, rows, positions)
                _scatter(t_prob[li], own.exp().cpu(), cols, rows, positions)
                _scatter(kl[li], div.clamp(min=0).cpu(), cols, rows, positions)
            _scatter(t_ids, tgt.cpu(), cols, rows, positions)
            _scatter(model_top, final.argmax(-1).cpu(), cols, rows, positions)
            _scatter(mask, torch.ones(int(cols.sum()), dtype=torch.bool), cols, rows, positions)
    tokens = [[model.tokenizer.decode([t]) for t in ids] for ids in enc.ids]
    meta = {"model": model.name, "model_fingerprint": model.fingerprint, "chat": chat, "k": vocab_k}
    return LensResult(layer_list, prompts, positions, tokens, mask, top_ids, top_probs, t_ids, t_rank,
                      t_prob, kl, model_top, "model prediction" if targets is None else "given", meta)


def _scatter(out: torch.Tensor, values: torch.Tensor, cols: torch.Tensor, rows: list[int], positions: str) -> None:
    """Put per-token values (row-major over the selected padded columns) at [prompt, token index].

    With left padding a row's selected columns are its last token ("last") or all its tokens in order
    ("all"), so token j of prompt ``rows[b]`` lands at ``out[rows[b], j]``."""
    at = 0
    for b, c in enumerate(cols.sum(1).tolist()):
        out[rows[b], :c] = values[at:at + c]
        at += c
