"""Contrastive steering vectors: from prompt pairs to a steering vector, a strength sweep and its cost.

The recipe of Contrastive Activation Addition (CAA, Rimsky et al. 2024) and of the steering-vectors
library's ``train_steering_vector``: the same prompt is run twice, once followed by a positive answer and
once by a negative one; the residual stream is read at the answer token; the steering vector of a layer is
the mean over pairs of (positive − negative), which for paired data is the difference of the two class
means (``interp.analyzers.refusal.DiffOfMeans``, no model inside). It is added back, scaled by a strength,
with the ``Add`` intervention while the model reads the prompt and generates.

1. data: a JSONL pairs file, one object per line: ``{"prompt": ..., "positive": ..., "negative": ...}``
   (the prompt is chat-formatted; each answer is appended as the first tokens of the reply); split by
   pair into train / validation / test (``interp.protocol.split_groups``);
2. capture: ``site`` (default ``resid_pre``) at every candidate layer, at the last answer token (or the mean
   over the answer tokens, ``read="answer"``), for the train pairs' positive and negative versions;
3. analyzer: ``DiffOfMeans`` over [pairs × 2, layers, d] gives one unnormalized vector per layer;
4. intervention + evaluation, per strength: the answer margin log p(positive) − log p(negative) of each
   pair (``interp.evaluation.sequence_nll``), the fraction of greedy replies that begin with the positive
   (or the negative) answer's first word (``interp.generation.generate``), and the cost: the mean
   cross-entropy of held-out documentation prose (``interp.evaluation.text_ce``) under the same
   intervention, as an increase over the unsteered model and as a perplexity;
5. protocol: the layer and the strength are chosen on the validation pairs (the largest margin gain among
   positive strengths whose cross-entropy increase stays within ``max_ce_increase``); the test pairs and
   other prose passages are then swept once at that layer over every strength;
6. report: the test sweep (behaviour and perplexity per strength), the validation grid, two figures.

Example:
    from interp.experiments import steering
    result = steering.run(model, steering.Config(layers=(9, 12)), out="reports/steering")
    result.report["chosen"], result.report["test_sweep"][0]

The pieces work alone too:
    pairs = steering.read_pairs("data/steering_yes_no.jsonl")
    vectors = steering.steering_vectors(model, pairs[:40], layers=[12])        # {12: tensor [d]}
    with model.intervene({"resid_pre.12": Add(vectors[12], scale=4.0)}):
        model.generate([pairs[50].prompt])
"""
from __future__ import annotations

import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np
import torch
from tqdm.auto import tqdm

from ..analyzers.refusal import DiffOfMeans
from ..data.pairs import Pair, read_pairs  # moved to interp.data; re-exported for old imports
from ..directions import save_direction
from ..errors import InterpError
from ..evaluation import sequence_nll, text_ce
from ..generation import generate
from ..interventions import Add
from ..protocol import protocol_block, split_groups
from ..report import Headline, Result, Stopwatch, write_report
from ..sites import SITE_NAMES

__all__ = ["Config", "Pair", "read_pairs", "steering_vectors", "answer_margins", "classify_replies", "sweep",
           "check_config", "run"]

DATA_DIR = Path(__file__).resolve().parents[2] / "data"
READS = ("last", "answer")


def _answer_ids(model, pairs: Sequence[Pair], chat: bool) -> tuple[list[list[int]], list[list[int]], list[list[int]]]:
    """Token ids of each prompt (chat-formatted), of its positive answer and of its negative answer."""
    heads = model.encode([p.prompt for p in pairs], chat=chat).ids
    tok = model.tokenizer

    def ids(text: str) -> list[int]:
        out = tok(text, add_special_tokens=False)["input_ids"]
        if not out:
            raise InterpError(f"answer {text!r} tokenizes to nothing")
        return out

    return heads, [ids(p.positive) for p in pairs], [ids(p.negative) for p in pairs]


def steering_vectors(model, pairs: Sequence[Pair], layers: Sequence[int], site: str = "resid_pre",
                     read: str = "last", chat: bool = True, batch_size: int = 16) -> dict[int, torch.Tensor]:
    """Mean over pairs of (activation after the positive answer − after the negative answer), per layer.

    ``read="last"`` reads the last answer token (steering-vectors' default ``read_token_index=-1``; CAA reads
    the answer letter); ``read="answer"`` averages over all of the answer's tokens. Vectors are float32 [d],
    unnormalized, so ``Add(v, scale=1.0)`` adds the mean difference itself.

    Example:
        vectors = steering_vectors(model, pairs, layers=[6, 12])
        model.generate(["Is snow cold? Answer yes or no."], interventions={"resid_pre.12": Add(vectors[12], 4.0)})
    """
    from ..capture import capture
    from ..model import Encoded

    if read not in READS:
        raise InterpError(f"read must be one of {', '.join(READS)}, got {read!r}")
    if site not in SITE_NAMES:
        raise InterpError(f"unknown site {site!r}; choose from {', '.join(SITE_NAMES)}")
    if not pairs:
        raise InterpError("no pairs to fit a steering vector on")
    layers = [int(x) for x in layers]
    bad = [x for x in layers if not 0 <= x < model.n_layers]
    if bad or not layers:
        raise InterpError(f"layers must be in 0..{model.n_layers - 1}, got {layers}")
    heads, pos, neg = _answer_ids(model, pairs, chat)
    ids = [h + a for h, a in zip(heads, pos)] + [h + a for h, a in zip(heads, neg)]
    answers = pos + neg
    if read == "last":
        positions = "last"
    else:  # every answer token of each sequence
        positions = [list(range(len(s) - len(a), len(s))) for s, a in zip(ids, answers)]
    enc = Encoded(texts=[model.tokenizer.decode(s) for s in ids], ids=ids, spans=[None] * len(ids))
    acts = capture(model, None, [f"{site}.{layer}" for layer in layers], positions, batch_size=batch_size,
                   progress=False, encoded=enc)
    mask = acts.mask.float()[:, :, None]  # [examples, positions, 1]
    X = torch.stack([(acts[f"{site}.{layer}"] * mask).sum(1) / mask.sum(1) for layer in layers], 1)
    y = np.r_[np.ones(len(pairs), dtype=int), np.zeros(len(pairs), dtype=int)]
    # paired and balanced, so the difference of the class means is the mean of the per-pair differences
    direction = DiffOfMeans(positive=1).fit(X, y).direction_  # [layers, d], float64
    return {layer: torch.from_numpy(direction[i]).float() for i, layer in enumerate(layers)}


def answer_margins(model, pairs: Sequence[Pair], interventions: Mapping | None = None, chat: bool = True,
                   batch_size: int = 16) -> np.ndarray:
    """Per pair, log p(positive answer | prompt) − log p(negative answer | prompt) in nats (summed over each
    answer's tokens), optionally under interventions.

    Example:
        answer_margins(model, pairs[:4])       # e.g. array([-3.1, -2.4, -4.0, -1.2]): the model prefers "No"
    """
    heads, pos, neg = _answer_ids(model, pairs, chat)
    ids = [h + a for h, a in zip(heads, pos)] + [h + a for h, a in zip(heads, neg)]
    nll = sequence_nll(model, ids, interventions, batch_size)
    # nll[t] scores token t + 1, so an answer of k tokens is scored by the last k entries
    logp = np.array([-row[len(row) - len(a):].sum().item() for row, a in zip(nll, pos + neg)])
    return logp[:len(pairs)] - logp[len(pairs):]


def _first_word(text: str) -> str:
    words = re.findall(r"\w+", text.lower())
    return words[0] if words else ""


def classify_replies(replies: Sequence[str], pairs: Sequence[Pair]) -> list[str]:
    """``"positive"``, ``"negative"`` or ``"other"`` per reply: whether its first word is the first word of the
    pair's positive or negative answer (case and punctuation ignored).

    Example:
        >>> classify_replies(["Yes, it is.", "no.", "Maybe"], [Pair("q", "Yes", "No")] * 3)
        ['positive', 'negative', 'other']
    """
    out = []
    for reply, p in zip(replies, pairs):
        word, pw, nw = _first_word(reply), _first_word(p.positive), _first_word(p.negative)
        out.append("positive" if word and word == pw else "negative" if word and word == nw else "other")
    return out


def _add(site: str, layer: int, vector: torch.Tensor, strength: float, positions: str) -> dict:
    return {f"{site}.{layer}": Add(vector, scale=strength, positions=positions)}


def sweep(model, pairs: Sequence[Pair], vector: torch.Tensor, layer: int, strengths: Sequence[float],
          texts: Sequence[str], site: str = "resid_pre", positions: str = "all", replies: bool = True,
          max_new_tokens: int = 4, chat: bool = True, batch_size: int = 16, progress: bool = False) -> list[dict]:
    """One row per strength: behaviour (answer margin, fraction preferring the positive answer, and with
    ``replies`` the fractions of greedy replies opening with the positive / negative answer) and cost (mean
    cross-entropy of ``texts`` in nats/token, its increase over strength 0, and the perplexity).

    Example:
        rows = sweep(model, test_pairs, vectors[12], 12, [-4, 0, 4], passages)
        [(r["strength"], r["positive_rate"], r["ce_increase"]) for r in rows]
    """
    base_ce = text_ce(model, texts, batch_size=batch_size)
    rows = []
    for s in tqdm(list(strengths), desc=f"steer layer {layer}", disable=not progress):
        iv = _add(site, layer, vector, float(s), positions) if s != 0 else None
        margins = answer_margins(model, pairs, iv, chat, batch_size)
        ce = base_ce if iv is None else text_ce(model, texts, iv, batch_size=batch_size)
        row = {"layer": layer, "strength": float(s), "margin": float(margins.mean()),
               "prefers_positive": float((margins > 0).mean()), "ce": ce, "ce_increase": ce - base_ce,
               "perplexity": math.exp(ce)}
        if replies:
            out = generate(model, [p.prompt for p in pairs], max_new_tokens=max_new_tokens, chat=chat,
                           batch_size=batch_size, interventions=iv)
            kinds = classify_replies(out, pairs)
            row.update(positive_rate=kinds.count("positive") / len(kinds),
                       negative_rate=kinds.count("negative") / len(kinds), examples=out[:3])
        rows.append(row)
    return rows


@dataclass
class Config:
    """Settings of the contrastive steering experiment; defaults are those of ``interp steer``."""

    pairs: str = str(DATA_DIR / "steering_yes_no.jsonl")  #: JSONL file of {"prompt", "positive", "negative"}
    site: str = "resid_pre"  #: residual-stream site read and steered
    layers: tuple[int, ...] | None = None  #: candidate layers; None: five spread over the middle of the model
    read: str = "last"  #: "last" answer token, or "answer" (mean over the answer's tokens)
    strengths: tuple[float, ...] = (-8.0, -4.0, -2.0, 0.0, 2.0, 4.0, 8.0)  #: multiples of the mean difference
    positions: str = "all"  #: where Add acts: "all" (prompt and reply), "prompt" or "generated"
    max_ce_increase: float = 0.5  #: cost budget (nats/token on prose) for the strength chosen on validation
    max_new_tokens: int = 4  #: reply tokens generated per prompt (the metric reads the first word)
    ce_passages: int = 16  #: prose passages scored for the cost (validation and test each get their own)
    ce_tokens: int = 64  #: tokens per prose passage
    fractions: tuple[float, float, float] = (0.6, 0.2, 0.2)  #: train / validation / test shares of the pairs
    seed: int = 0  #: seed of the pair split
    chat: bool = True  #: chat-format the prompts
    batch_size: int = 16  #: sequences per forward


def default_layers(n_layers: int) -> list[int]:
    """Five candidate layers between a quarter and three quarters of the depth (CAA finds the middle works)."""
    return sorted({round(n_layers * f) for f in (0.25, 0.375, 0.5, 0.625, 0.75)} & set(range(n_layers)))


def check_config(config: Config, n_layers: int | None = None) -> list[Pair]:
    """Validate the settings and read the pairs (before any model is loaded); return the pairs."""
    if config.site not in SITE_NAMES:
        raise InterpError(f"unknown site {config.site!r}; choose from {', '.join(SITE_NAMES)}")
    if config.read not in READS:
        raise InterpError(f"read must be one of {', '.join(READS)}, got {config.read!r}")
    if config.positions not in ("all", "prompt", "generated"):
        raise InterpError(f"positions must be all, prompt or generated, got {config.positions!r}")
    if not config.strengths or not any(s > 0 for s in config.strengths):
        raise InterpError(f"strengths need at least one positive value (the one chosen on validation), got "
                          f"{list(config.strengths)}")
    if any(not math.isfinite(s) for s in config.strengths):
        raise InterpError(f"strengths must be finite numbers, got {list(config.strengths)}")
    for name in ("max_new_tokens", "ce_passages", "ce_tokens", "batch_size"):
        if getattr(config, name) < 1:
            raise InterpError(f"{name} must be >= 1, got {getattr(config, name)}")
    if config.layers is not None and n_layers is not None:
        bad = [x for x in config.layers if not 0 <= x < n_layers]
        if bad or not config.layers:
            raise InterpError(f"layers must be in 0..{n_layers - 1}, got {list(config.layers)}")
    pairs = read_pairs(config.pairs)
    if len(pairs) < 5:
        raise InterpError(f"{config.pairs} holds {len(pairs)} pairs; need at least 5 to split into train / "
                          f"validation / test (a few dozen make the numbers meaningful)")
    split_groups(range(len(pairs)), config.fractions, config.seed, unit="pair")  # checks the fractions
    return pairs


def run(model, config: Config | None = None, out: str | Path | None = None) -> Result:
    """Steering vectors from the train pairs, layer and strength chosen on validation, the strength sweep on
    test; with ``out``, write the report there."""
    from .. import plots
    from ..data.corpus import passages_for

    cfg = config or Config()
    sw = Stopwatch()

    # data: pairs split by pair; prose passages for the cost, disjoint between validation and test
    pairs = check_config(cfg, model.n_layers)
    splits = split_groups(range(len(pairs)), cfg.fractions, cfg.seed, unit="pair")
    train, val, test = (splits.take(pairs, s) for s in ("train", "val", "test"))
    layers = list(cfg.layers) if cfg.layers is not None else default_layers(model.n_layers)
    with sw("data"):
        prose = passages_for(model.tokenizer, 2 * cfg.ce_passages, max_tokens=cfg.ce_tokens)
    val_texts, test_texts = prose[:cfg.ce_passages], prose[cfg.ce_passages:]

    # capture + analyzer: one mean-difference vector per candidate layer, from the train pairs only
    with sw("fit"):
        vectors = steering_vectors(model, train, layers, cfg.site, cfg.read, cfg.chat, cfg.batch_size)

    # choose on validation: cheap scoring (answer margins and prose CE, no generation), positive strengths only
    positive = sorted({float(s) for s in cfg.strengths if s > 0})
    with sw("validation"):
        grid = []
        for layer in tqdm(layers, desc="validation layers", disable=len(layers) < 2):
            grid += sweep(model, val, vectors[layer], layer, [0.0] + positive, val_texts, cfg.site, cfg.positions,
                          replies=False, chat=cfg.chat, batch_size=cfg.batch_size)
    base_margin = next(r["margin"] for r in grid if r["strength"] == 0)
    for r in grid:
        r["margin_gain"] = r["margin"] - base_margin
    steered = [r for r in grid if r["strength"] > 0]
    within = [r for r in steered if r["ce_increase"] <= cfg.max_ce_increase]
    best = max(within, key=lambda r: r["margin_gain"]) if within else min(steered, key=lambda r: r["ce_increase"])
    layer, strength = best["layer"], best["strength"]

    # test, read once: every strength at the chosen layer, with greedy replies
    with sw("test"):
        rows = sweep(model, test, vectors[layer], layer, sorted({float(s) for s in cfg.strengths} | {0.0}),
                     test_texts, cfg.site, cfg.positions, replies=True, max_new_tokens=cfg.max_new_tokens,
                     chat=cfg.chat, batch_size=cfg.batch_size, progress=True)
    at = {r["strength"]: r for r in rows}
    zero, chosen = at[0.0], at[strength]
    opposite = at.get(-strength)

    # report
    protocol = protocol_block(splits, choices=f"layer and strength: the largest validation margin gain among "
                              f"positive strengths with prose CE increase <= {cfg.max_ce_increase} nats",
                              cost_text="validation and test each score their own prose passages")
    test_split = f"test: {len(test)} pairs (seed {cfg.seed}); layer {layer} and strength {strength:g} chosen on " \
                 f"validation ({len(val)} pairs)"
    headlines = [
        Headline(f"replies opening with the positive answer, strength {strength:g} (unsteered)",
                 chosen["positive_rate"], test_split, note=f"unsteered {zero['positive_rate']:.3f}"
                 + (f"; at strength {-strength:g}: {opposite['positive_rate']:.3f}" if opposite else "")),
        Headline(f"answer margin log p(positive) − log p(negative), strength {strength:g}", chosen["margin"],
                 test_split, note=f"unsteered {zero['margin']:.3f} nats"),
        Headline(f"prose cross-entropy increase, strength {strength:g} (nats/token)", chosen["ce_increase"],
                 f"{len(test_texts)} held-out prose passages of {cfg.ce_tokens} tokens",
                 target=f"<= {cfg.max_ce_increase} (chosen on validation)",
                 note=f"perplexity {zero['perplexity']:.2f} → {chosen['perplexity']:.2f}",
                 met=chosen["ce_increase"] <= cfg.max_ce_increase),
    ]
    if not within:
        headlines[0].note += f"; no positive strength stayed within {cfg.max_ce_increase} nats on validation, so " \
                             f"the cheapest was taken"
    report = {"model": model.describe(), "pairs": {"file": cfg.pairs, "n": len(pairs), "n_train": len(train),
                                                   "n_val": len(val), "n_test": len(test)},
              "site": cfg.site, "read": cfg.read, "positions": cfg.positions, "layers": layers,
              "vector_norms": {str(k): float(v.norm()) for k, v in vectors.items()},
              "chosen": {"layer": layer, "strength": strength, "within_budget": bool(within),
                         "val_margin_gain": best["margin_gain"], "val_ce_increase": best["ce_increase"]},
              "test_sweep": rows, "validation_grid": grid, "protocol": protocol,
              "seconds": round(sw.total, 1)}
    figures = {"sweep": plots.steering_sweep(rows, title=f"Steering at {cfg.site}.{layer} (test pairs)"),
               "validation": plots.steering_layers(grid)}
    conclusion = (f"Adding {strength:g}× the mean difference at {cfg.site}.{layer} moved replies opening with the "
                  f"positive answer from {zero['positive_rate']:.2f} to {chosen['positive_rate']:.2f} on "
                  f"{len(test)} test pairs (answer margin {zero['margin']:.2f} → {chosen['margin']:.2f} nats), at a "
                  f"prose cross-entropy cost of {chosen['ce_increase']:+.3f} nats/token.")
    result = Result("steering", report, figures=figures, headlines=headlines, conclusion=conclusion, config=cfg,
                    timing=dict(sw.seconds, total_s=sw.total),
                    tables={"test sweep": [{k: v for k, v in r.items() if k != "examples"} for r in rows],
                            "validation grid": grid},
                    title=f"Contrastive steering: {model.name}", protocol=protocol,
                    artifacts={"steering_vector.safetensors": lambda p: save_direction(
                        p, vectors[layer], {"model": model.name, "layer": layer, "site": f"{cfg.site}.{layer}",
                                            "strength": strength, "pairs": cfg.pairs, "read": cfg.read})})
    if out is not None:
        write_report(result, out, model=model)
    return result

