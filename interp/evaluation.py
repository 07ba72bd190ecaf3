"""How experiments measure a model: the one NLL / cross-entropy, KL, logit difference, refusal judgement
and AUROC that every experiment uses. Refusal judges beyond the substring check (an LLM judge, safety
classifiers; three labels: refusal, compliance, incoherent) are ``judge`` / ``get_judge`` from ``interp.judges``.

Functions on tensors (``token_nll``, ``kl_div``, ``logit_diff``, ``refusal_metric``) are pure; the ones
that take a model (``text_ce``, ``completion_ce``) run forwards under optional interventions.

Example:
    >>> import torch
    >>> refusal_score(["I'm sorry, but no.", "Sure! Here it is."])
    0.5
    >>> kl_div(torch.zeros(1, 3), torch.zeros(1, 3)).item()
    0.0
"""
from __future__ import annotations

from contextlib import nullcontext
from typing import Mapping, Sequence

import numpy as np
import torch

from .errors import InterpError
from .intervene import weight_edit
# the refusal judges (substring, LLM, safety classifier) live in interp.judges; the paper's substring check
# is re-exported here, where every experiment has always read it
from .judges import LABELS, REFUSAL_PHRASES, Judge, get_judge, is_refusal, judge  # noqa: F401

# ------------------------------------------------------------------ refusal judgement


def refusal_score(completions: Sequence[str], phrases: Sequence[str] = REFUSAL_PHRASES) -> float:
    """Fraction of completions that contain a refusal phrase (the refusal paper's ``refusal_score``).

    Example:
        >>> refusal_score(["I cannot help with that.", "Here you go"])
        0.5
    """
    if not completions:
        raise InterpError("no completions to score")
    return sum(is_refusal(c, phrases) for c in completions) / len(completions)


def refusal_metric(logits: torch.Tensor, refusal_ids: Sequence[int]) -> torch.Tensor:
    """log p(refusal) − log(1 − p(refusal)) per row of next-token logits [batch, vocab] (float64).

    ``refusal_ids`` are the first tokens of the model's refusals (the refusal paper's metric).
    """
    logits = logits.double()
    ref = torch.zeros(logits.shape[-1], dtype=torch.bool, device=logits.device)
    ref[list(refusal_ids)] = True
    return torch.logsumexp(logits[:, ref], -1) - torch.logsumexp(logits[:, ~ref], -1)


# ------------------------------------------------------------------ distributions

def kl_div(logits_p: torch.Tensor, logits_q: torch.Tensor) -> torch.Tensor:
    """KL(p ‖ q) per row between next-token distributions given as logits [..., vocab] (float64)."""
    if logits_p.shape != logits_q.shape:
        raise InterpError(f"logit shapes differ: {tuple(logits_p.shape)} vs {tuple(logits_q.shape)}")
    lp, lq = torch.log_softmax(logits_p.double(), -1), torch.log_softmax(logits_q.double(), -1)
    return (lp.exp() * (lp - lq)).sum(-1)


def logit_diff(logits: torch.Tensor, answers: torch.Tensor) -> torch.Tensor:
    """logit(answers[:, 0]) − logit(answers[:, 1]) per row of last-position logits [batch, vocab].

    Example:
        >>> logit_diff(torch.tensor([[1.0, 3.0]]), torch.tensor([[1, 0]])).item()
        2.0
    """
    answers = answers.to(logits.device)
    return logits.gather(-1, answers[:, :1]).squeeze(-1) - logits.gather(-1, answers[:, 1:2]).squeeze(-1)


def token_nll(logits: torch.Tensor, input_ids: torch.Tensor, attention_mask: torch.Tensor,
              dtype: torch.dtype = torch.float64) -> tuple[torch.Tensor, torch.Tensor]:
    """Next-token negative log-likelihood of a padded batch.

    Returns ``(nll, valid)``, both [batch, seq − 1]: ``nll[:, t]`` is −log p(token t+1 | ..t), and
    ``valid`` is True where both tokens are real (not padding).

    Example:
        >>> ids = torch.tensor([[0, 1]]); nll, valid = token_nll(torch.zeros(1, 2, 4), ids, torch.ones(1, 2))
        >>> round(nll[valid].item(), 4)   # uniform over 4 tokens
        1.3863
    """
    logp = torch.log_softmax(logits[:, :-1].to(dtype), -1)
    target = input_ids[:, 1:].to(logits.device)
    nll = -logp.gather(-1, target[..., None])[..., 0]
    mask = attention_mask.to(logits.device).bool()
    return nll, mask[:, 1:] & mask[:, :-1]


def _intervening(model, interventions: Mapping | None):
    return model.intervene(interventions) if interventions else nullcontext()


def text_ce(model, texts: Sequence[str], interventions: Mapping | None = None, batch_size: int = 8,
            dtype: torch.dtype = torch.float64) -> float:
    """Mean next-token cross-entropy (nats/token) over plain texts, optionally under interventions."""
    nll = sequence_nll(model, model.encode(texts, chat=False).ids, interventions, batch_size, dtype)
    count = sum(row.numel() for row in nll)
    if count == 0:
        raise InterpError("texts are too short to score (need at least two tokens)")
    return sum(row.sum().item() for row in nll) / count


def completion_ce(model, prompts: Sequence[str], completions: Sequence[str], interventions: Mapping | None = None,
                  batch_size: int = 8, chat: bool = True, share_prefix: bool = False) -> float:
    """Mean cross-entropy (nats/token) of completions given their (chat-formatted) prompts.

    With ``share_prefix`` the token prefix every prompt shares (the chat template's head) runs once
    (``interp.prefix``); equal up to float rounding.
    """
    if len(prompts) != len(completions):
        raise InterpError(f"{len(prompts)} prompts but {len(completions)} completions")
    heads = [model.encode([p], chat=chat).ids[0] for p in prompts]
    ids = [h + model.tokenizer(c, add_special_tokens=False)["input_ids"] for h, c in zip(heads, completions)]
    if share_prefix:
        from .prefix import SharedPrefix, length_buckets

        shared = SharedPrefix.of(model, heads)
        if len(shared):
            total, count = 0.0, 0
            # an all-layer ablation runs as the weight edit generate uses (interp.intervene): no hooks
            with _intervening(model, interventions), weight_edit(model), torch.no_grad():
                kv, n = shared.cache(), len(shared)
                # rows of similar length batched together: completions end at different lengths, and one
                # batch padded to its longest row spends a third of its forward on padding
                for group in length_buckets([len(r) for r in ids], max_rows=batch_size):
                    rows = [ids[i] for i in group]
                    batch = shared.batch(rows)
                    h = model.final_hidden(batch, cache=shared.expand(kv, len(rows)))
                    width = batch["input_ids"].shape[1]
                    picks, targets = [], []
                    for j, (row, head) in enumerate(zip(rows, [heads[i] for i in group])):
                        # column c holds token n + c of the row's suffix: completion tokens len(head).. are
                        # predicted from the columns of tokens len(head) − 1 .. len(row) − 2
                        first = width - (len(row) - n) + (len(head) - 1 - n)
                        picks += [(j, c) for c in range(first, width - 1)]
                        targets += row[len(head):]
                    if not picks:
                        continue
                    jj, cc = torch.tensor(picks).T
                    # the LM head only where a completion token is scored; log-softmax in float32
                    logits = model.unembed(h[jj, cc]).float()
                    tgt = torch.tensor(targets, device=logits.device)
                    nll = torch.logsumexp(logits, -1) - logits.gather(-1, tgt[:, None])[:, 0]
                    total, count = total + nll.double().sum().item(), count + nll.numel()
            if count == 0:
                raise InterpError("no completion tokens to score")
            return total / count
    # row[t] scores token t + 1, so a completion starting at token len(head) is scored from len(head) − 1 on
    scored = [row[len(h) - 1:] for row, h in zip(sequence_nll(model, ids, interventions, batch_size), heads)]
    count = sum(row.numel() for row in scored)
    if count == 0:
        raise InterpError("no completion tokens to score")
    return sum(row.sum().item() for row in scored) / count


# ------------------------------------------------------------------ classification

def auroc(scores, labels) -> float:
    """Area under the ROC curve of ``scores`` for binary ``labels`` (NaN when only one class is present).

    Example:
        >>> auroc([0.1, 0.9, 0.8], [0, 1, 1])
        1.0
    """
    from sklearn.metrics import roc_auc_score

    labels = np.asarray(labels)
    scores = np.asarray(scores, dtype=float)
    if labels.shape[0] != scores.shape[0]:
        raise InterpError(f"{scores.shape[0]} scores but {labels.shape[0]} labels")
    if len(set(labels.tolist())) < 2:
        return float("nan")
    return float(roc_auc_score(labels, scores))


def sequence_nll(model, token_ids: Sequence[Sequence[int]], interventions: Mapping | None = None,
                 batch_size: int = 8, dtype: torch.dtype = torch.float64) -> list[torch.Tensor]:
    """Per token sequence, −log p(token t+1 | ..t) for each of its tokens but the first ([len − 1], float64, CPU).

    The ids are used as given (no chat template, no re-tokenization), left-padded in batches in the
    order given, optionally under interventions; per-token losses let a caller average over any subset
    of tokens (e.g. second mentions of an entity).

    Example:
        nll = sequence_nll(model, [model.encode(["Hello there"], chat=False).ids[0]])
        nll[0].mean()    # = text_ce(model, ["Hello there"])
    """
    out: list[torch.Tensor] = []
    with _intervening(model, interventions), torch.no_grad():
        for s in range(0, len(token_ids), batch_size):
            rows = [list(ids) for ids in token_ids[s:s + batch_size]]
            batch = model.pad(rows)
            nll, _ = token_nll(model.run(batch), batch["input_ids"], batch["attention_mask"], dtype)
            width = batch["input_ids"].shape[1]
            out.extend(nll[j, width - len(ids):].cpu() for j, ids in enumerate(rows))
    return out
