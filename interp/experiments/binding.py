"""IsSameObject pairwise binding probes (Li et al., arXiv 2510.24709; ``shared/methods.md`` §4) on an LM's tokens.

1. data: annotated texts (``data/coref_texts.jsonl``) → tokens, with each
   token's entity and mention (character spans mapped through the tokenizer's
   offsets) → balanced same-entity / different-entity pairs of two subsets:
   *cross-mention* (positives: tokens of two different mentions of one entity —
   binding) and *within-mention* (positives: sub-tokens of one mention —
   adjacency); texts split three ways (train / validation / test) with
   ``interp.protocol.split_groups``, unit "text";
2. capture: ``resid_post`` at every token of the chosen layers;
3. fit (train texts): linear, diagonal, full and low-rank ``PairwiseProbe``s
   (bilinear score ÷ √d as in the authors' code) and the cosine/dot
   ``SimilarityBaseline``s per layer;
4. select (validation texts): the quadratic probe kind and layer with the best
   cross-mention accuracy, then a rank sweep of the low-rank probe at that layer
   and the smallest rank within 2 points of the full probe;
5. intervene: project that probe's subspace (or random subspaces of the same
   dimension) out of ``resid_post`` at the chosen layer (``Ablate``);
6. evaluate (test texts, read once at the end): every fitted probe's accuracy on
   cross-mention, within-mention and all pairs, the rank sweep, the ablation
   (probe accuracy, a probe retrained at the next layer on activations captured
   under the ablation, the model's loss on all and on re-mention tokens of the
   test texts, ``evaluation.sequence_nll``);
7. report: the cross-mention result is the headline; every number names its
   split; ``Result.protocol`` says where choices were made. ``Config.seeds``
   repeats it all per seed and reports mean ± spread.

Why texts are the split unit: entities are local to a text (pairs are made
inside one text, negatives from another entity of the same text), so a text is
what the paper's image is; splitting by entity would put the two sides of a
negative pair, and the same tokens, on both sides of the split.

Example:
    from interp.experiments import binding
    result = binding.run(model, binding.Config(layers=[6, 12], epochs=10), out="runs/binding")
    result.report["accuracy_cross"]["lowrank"]    # test accuracy per layer, cross-mention pairs
"""
from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from tqdm.auto import tqdm

from ..analyzers.binding import (BILINEAR_SCALES, PairwiseProbe, SimilarityBaseline, class_balance,
                                 majority_baseline, min_rank_within)
from ..data.binding import load_coref_texts, sample_pairs, tokenize_texts
from ..errors import InterpError
from ..evaluation import sequence_nll
from ..interventions import Ablate
from ..protocol import protocol_block, seed_sweep, split_groups
from ..report import Headline, Result, Stopwatch, write_report

__all__ = ["Config", "run", "check_config", "resolve_layers", "summary_lines", "PROBE_KINDS", "RANKS"]

PROBE_KINDS = ("linear", "diagonal", "full", "lowrank", "cosine", "dot")
QUADRATIC = ("full", "diagonal", "lowrank")
RANKS = (1, 2, 4, 8, 16, 32, 64)
SUBSETS = ("cross", "within", "all")
#: What the paper reports (ViT patch tokens on ADE20K), for the headlines.
PAPER = {"quadratic": "> 0.90 (DINOv2/CLIP patches, ADE20K)", "order": "quadratic > diagonal > linear"}
#: This project's targets: quadratic beats linear by this much at its best layer; a low rank suffices.
TARGET_GAIN, TARGET_RANK = 0.05, 32


@dataclass
class Config:
    """Settings of the binding-probe experiment; defaults are those of ``interp binding``."""

    layers: Sequence[int] | str = "all"  #: layer indices, "all" or "every:N" (every Nth layer from 0)
    task: str = "entity"  #: "entity": same coreference entity; "word": sub-word tokens of one word
    texts: str | None = None  #: annotated JSONL file; None reads data/coref_texts.jsonl
    n_texts: int | None = None  #: use only the first n texts (None: all)
    kinds: Sequence[str] = PROBE_KINDS  #: probe kinds and similarity baselines fitted per layer
    rank: int = 16  #: rank of the per-layer low-rank probe
    ranks: Sequence[int] = RANKS  #: ranks of the sweep at the chosen layer (those <= d)
    epochs: int = 30  #: training epochs per probe (Adam lr 1e-3, weight decay 0.01)
    bilinear_scale: str = "sqrt_d"  #: full/lowrank score ÷ √d as in the authors' code ("sqrt_d") or not ("none")
    per_anchor: int = 3  #: partners per anchor token and pair kind (cross / within mention), each matched by negatives
    val_fraction: float = 0.2  #: fraction of texts for validation (every choice is made there)
    test_fraction: float = 0.2  #: fraction of texts held out for the reported numbers (read once)
    ablation: bool = True  #: ablate the learned subspace vs random ones (needs "full" in kinds and a sweep)
    n_random: int = 3  #: random subspaces the ablation is compared with
    seed: int = 0  #: seed of pair sampling, the split, probe init and the random subspaces
    seeds: Sequence[int] | None = None  #: run once per seed and report mean ± spread of the headlines
    batch_size: int = 8  #: texts per forward pass
    progress: bool = True  #: show progress bars


def resolve_layers(spec: Sequence[int] | str, n_layers: int | None) -> list[int] | None:
    """"all", "every:N" or layer indices → sorted unique indices (None when it needs n_layers and that is unknown).

    Example:
        >>> resolve_layers("every:3", 8)
        [0, 3, 6]
        >>> resolve_layers([2, 1, 2], 4)
        [1, 2]
    """
    if isinstance(spec, str):
        if spec == "all":
            return None if n_layers is None else list(range(n_layers))
        if spec.startswith("every:"):
            step = spec.split(":", 1)[1]
            if not step.isdigit() or int(step) < 1:
                raise InterpError(f"'every:N' needs a whole number N >= 1, got {spec!r}")
            return None if n_layers is None else list(range(0, n_layers, int(step)))
        raise InterpError(f"layers must be 'all', 'every:N' or layer indices, got {spec!r}")
    layers = list(spec)
    if not layers or any(isinstance(x, bool) or not float(x).is_integer() for x in layers):
        raise InterpError(f"layers must be 'all', 'every:N' or whole-number indices, got {layers}")
    top = f"0..{n_layers - 1}" if n_layers is not None else "0 and up"
    if any(x < 0 or (n_layers is not None and x >= n_layers) for x in layers):
        raise InterpError(f"layers must be 'all', 'every:N' or indices in {top}, got {layers}")
    return sorted({int(x) for x in layers})


def check_config(config: Config, n_layers: int | None = None) -> Config:
    """Validate every knob (before any model is loaded); with ``n_layers`` known, layers are resolved.

    Example:
        >>> check_config(Config(layers="every:10"), n_layers=30).layers
        [0, 10, 20]
    """
    layers = resolve_layers(config.layers, n_layers)
    if config.task not in ("entity", "word"):
        raise InterpError(f"task must be 'entity' or 'word', got {config.task!r}")
    bad = [k for k in config.kinds if k not in PROBE_KINDS]
    if bad or not config.kinds:
        raise InterpError(f"unknown probe kind(s) {bad or '(none given)'}; choose from {', '.join(PROBE_KINDS)}")
    if config.rank < 1 or any(r < 1 for r in config.ranks):
        raise InterpError(f"ranks must be >= 1, got rank {config.rank} and ranks {list(config.ranks)}")
    for name in ("epochs", "per_anchor", "n_random", "batch_size"):
        if getattr(config, name) < 1:
            raise InterpError(f"{name} must be >= 1, got {getattr(config, name)}")
    if config.bilinear_scale not in BILINEAR_SCALES:
        raise InterpError(f"bilinear_scale must be one of {', '.join(BILINEAR_SCALES)}, got {config.bilinear_scale!r}")
    for name in ("val_fraction", "test_fraction"):
        if not 0 < getattr(config, name) < 1:
            raise InterpError(f"{name} must be between 0 and 1, got {getattr(config, name)}")
    if config.val_fraction + config.test_fraction >= 1:
        raise InterpError(f"val_fraction + test_fraction must leave texts to train on, got "
                          f"{config.val_fraction} + {config.test_fraction}")
    if config.n_texts is not None and config.n_texts < 3:
        raise InterpError(f"n_texts must be >= 3 (train, validation and test texts), got {config.n_texts}")
    if config.texts is not None and not Path(config.texts).is_file():
        raise InterpError(f"no annotated texts at {config.texts}; pass the path of a JSONL file with text and "
                          f"entities (see data/coref_texts.jsonl)")
    seeds = None if config.seeds is None else [int(x) for x in config.seeds]
    if seeds is not None and (not seeds or len(set(seeds)) != len(seeds)):
        raise InterpError(f"seeds must be distinct integers, got {config.seeds}")
    return replace(config, layers=layers if layers is not None else config.layers, kinds=tuple(config.kinds),
                   ranks=tuple(config.ranks), seeds=seeds)


def run(model, config: Config | None = None, out=None) -> Result:
    """Fit on train texts, choose on validation texts, report test texts; with ``out``, write the report.

    With ``config.seeds`` the whole measurement runs once per seed (each seed's report under
    ``out/seed_<s>``) and the headlines become mean ± spread over seeds.
    """
    config = check_config(config or Config(), model.n_layers)
    if config.seeds:
        return seed_sweep(run, model, config, out, varies="text split, pair sample and probe init",
                          extra=lambda runs: {"chosen": {s: {k: r.report.get("best", {}).get(k) for k in ("kind", "layer")}
                                                         for s, r in runs.items()}})
    layers, kinds = list(config.layers), list(config.kinds)
    sw = Stopwatch()
    probe_kw = dict(epochs=config.epochs, seed=config.seed, bilinear_scale=config.bilinear_scale)
    select_on = "cross" if config.task == "entity" else "all"  # the word task has no mentions

    # data: texts → tokens with their entity and mention → pairs of two kinds, texts split three ways
    with sw("data"):
        records = load_coref_texts(config.texts)[:config.n_texts]
        tok = tokenize_texts(model, records)
        # position 0 is skipped: its activations are attention-sink outliers, not a token's meaning
        pairs = sample_pairs(tok[config.task], per_anchor=config.per_anchor, seed=config.seed, skip_positions=[0],
                             subgroups=tok["mention"] if config.task == "entity" else None)
        train_frac = 1.0 - config.val_fraction - config.test_fraction
        splits = split_groups(range(len(records)), (train_frac, config.val_fraction, config.test_fraction),
                              seed=config.seed, unit="text")
        train, val, test = (pairs.subset(getattr(splits, s)) for s in ("train", "val", "test"))
        for name, ps in (("train", train), ("validation", val), ("test", test)):
            if len(set(ps.of_kind(select_on).labels.tolist())) < 2:
                raise InterpError(f"the {name} texts gave no usable {select_on} pairs; use more texts")

    # capture: resid_post at every token
    with sw("capture"):
        Xs = _capture(model, tok["texts"], layers, config)

    # fit on train texts: every probe kind per layer
    with sw("fit"):
        fitted = {(k, L): _fit(k, Xs[L], train, config.rank, probe_kw)
                  for L in tqdm(layers, desc="probes per layer", unit="layer", disable=not config.progress)
                  for k in kinds}

    # select on validation texts: kind and layer, then the rank
    with sw("select"):
        val_acc = {s: {k: [_score(fitted[k, L], Xs[L], val, s) for L in layers] for k in kinds} for s in SUBSETS}
        chosen = _choose(val_acc[select_on], layers, kinds)
        sweep, val_sweep, min_rank = {}, {}, None
        if "full" in kinds and chosen:
            L = chosen["layer"]
            for r in tqdm([r for r in config.ranks if r <= Xs[L].shape[1]], desc=f"rank sweep at layer {L}",
                          unit="rank", disable=not config.progress):
                sweep[r] = PairwiseProbe("lowrank", rank=r, **probe_kw).fit(Xs[L], train.pairs, train.labels)
            val_sweep = {r: _score(p, Xs[L], val, select_on) for r, p in sweep.items()}
            i = layers.index(L)
            min_rank = min_rank_within(val_sweep, val_acc[select_on]["full"][i], 0.02)

    # evaluate: every choice is made; now the test texts are read, once, for every number reported
    with sw("test"):
        acc = {s: {k: [_score(fitted[k, L], Xs[L], test, s) for L in layers] for k in kinds} for s in SUBSETS}
        report = {
            "model": model.describe(), "task": config.task, "layers": layers, "site": "resid_post",
            "n_texts": len(records), "n_train_texts": len(splits.train), "n_val_texts": len(splits.val),
            "n_test_texts": len(splits.test), "n_train_pairs": len(train), "n_val_pairs": len(val),
            "n_test_pairs": len(test), "per_anchor": config.per_anchor, "epochs": config.epochs,
            "lowrank_rank": config.rank, "bilinear_scale": config.bilinear_scale, "selected_on": select_on,
            "accuracy": acc["all"], "accuracy_cross": acc["cross"], "accuracy_within": acc["within"],
            "val_accuracy": val_acc["all"], "val_accuracy_cross": val_acc["cross"],
            "val_accuracy_within": val_acc["within"],
            "majority_baseline": majority_baseline(test.labels), "class_balance": class_balance(test.labels),
            "train_class_balance": class_balance(train.labels),
            "pairs": {s: _pair_counts(train, val, test, s) for s in SUBSETS},
        }
        for s in ("cross", "within"):
            ts = test.of_kind(s)
            report[f"majority_baseline_{s}"] = majority_baseline(ts.labels) if len(ts) else None
        if chosen:
            i = layers.index(chosen["layer"])
            k = chosen["kind"]
            lin = acc[select_on].get("linear", [None] * len(layers))[i]
            report["best"] = {"kind": k, "layer": chosen["layer"], "selected_on": f"validation ({select_on} pairs)",
                              "val_accuracy": chosen["val_accuracy"], "accuracy": acc["all"][k][i],
                              "linear_at_that_layer": acc["all"].get("linear", [None] * len(layers))[i],
                              "quadratic_minus_linear": (acc["all"][k][i] - acc["all"]["linear"][i]
                                                         if "linear" in kinds else None),
                              "accuracy_cross": acc["cross"][k][i], "accuracy_within": acc["within"][k][i],
                              "linear_cross": acc["cross"].get("linear", [None] * len(layers))[i],
                              "cross_minus_linear": (acc["cross"][k][i] - lin
                                                     if "linear" in kinds and select_on == "cross" else None)}
            report["best"]["cross_distinct_tokens"] = _distinct_token_accuracy(fitted[k, chosen["layer"]],
                                                                               Xs[chosen["layer"]], test, tok)
        if sweep:
            L = chosen["layer"]
            i = layers.index(L)
            report["rank_sweep"] = {"layer": L, "full": acc[select_on]["full"][i], "subset": select_on,
                                    "accuracy": {str(r): _score(p, Xs[L], test, select_on) for r, p in sweep.items()},
                                    "val_full": val_acc[select_on]["full"][i],
                                    "val_accuracy": {str(r): a for r, a in val_sweep.items()}}
            report["min_rank_within_2pts"] = min_rank
            report["min_rank_selected_on"] = "validation"
    # intervene: the chosen layer's binding subspace (rank from validation) vs random ones, scored on test texts
    if config.ablation and sweep:
        with sw("ablation"):
            L = chosen["layer"]
            r_abl = min_rank or max(val_sweep, key=val_sweep.get)
            later = [x for x in layers if x > L]
            report["ablation"] = _ablation(model, tok, Xs, L, later[0] if later else None, sweep[r_abl], train,
                                           test, splits.test, select_on, config)
    report["seconds"] = round(sw.total, 1)
    protocol = protocol_block(splits, choices=f"probe kind and layer (best {select_on}-pair validation accuracy), "
                              f"minimum rank (validation), ablation layer and rank (validation)",
                              pair_kinds={"cross": "tokens of different mentions of one entity vs different "
                                          "entities (headline)", "within": "sub-tokens of one mention vs "
                                          "different entities (adjacency)"} if config.task == "entity" else None,
                              test_read="once, after every choice")
    return _result(model, config, out, report, sw, protocol)


# ---------------------------------------------------------------- steps

def _capture(model, texts: Sequence[str], layers: Sequence[int], config: Config,
             interventions: dict | None = None) -> dict[int, torch.Tensor]:
    """resid_post at every token: {layer: [n_tokens, d]}, rows text by text (optionally under interventions)."""
    from contextlib import nullcontext

    with model.intervene(interventions) if interventions else nullcontext():
        acts = model.capture(list(texts), [f"resid_post.{layer}" for layer in layers], positions="all", chat=False,
                             batch_size=config.batch_size, progress=config.progress)
    return {layer: acts.tokens(f"resid_post.{layer}") for layer in layers}


def _fit(kind: str, X: torch.Tensor, train, rank: int, probe_kw: dict):
    """One probe or similarity baseline fitted on the training pairs (all pair kinds)."""
    if kind in ("cosine", "dot"):
        return SimilarityBaseline(kind).fit(X, train.pairs, train.labels)
    return PairwiseProbe(kind, rank=rank if kind == "lowrank" else None, **probe_kw).fit(X, train.pairs, train.labels)


def _score(est, X: torch.Tensor, pairs, subset: str) -> float | None:
    """Accuracy on one subset of pairs ("cross", "within", "all"); None when the subset is empty."""
    ps = pairs.of_kind(subset)
    return est.score(X, ps.pairs, ps.labels) if len(ps) else None


def _choose(val_acc: dict[str, list], layers: list[int], kinds: list[str]) -> dict | None:
    """The quadratic probe kind and layer with the best validation accuracy (first on ties)."""
    best = None
    for k in (k for k in QUADRATIC if k in kinds):
        for L, a in zip(layers, val_acc[k]):
            if a is not None and (best is None or a > best["val_accuracy"]):
                best = {"kind": k, "layer": L, "val_accuracy": a}
    return best


def _pair_counts(train, val, test, subset: str) -> dict:
    """Pairs and positive fraction per split for one subset: what every accuracy is read against."""
    out = {}
    for name, ps in (("train", train), ("val", val), ("test", test)):
        ps = ps.of_kind(subset)
        out[name] = {"n": len(ps), "class_balance": class_balance(ps.labels) if len(ps) else None}
    return out


def _distinct_token_accuracy(est, X: torch.Tensor, test, tok: dict) -> dict | None:
    """Cross-mention test pairs whose two tokens differ (a repeated name is string match, not binding)."""
    ids = torch.tensor([t for ids in tok["ids"] for t in ids])
    ps = test.of_kind("cross")
    if not len(ps):
        return None
    keep = ids[ps.pairs[:, 0]] != ids[ps.pairs[:, 1]]
    sub = ps.where(keep)
    if len(set(sub.labels.tolist())) < 2:
        return None
    same_pos = float((~keep & (ps.labels == 1)).sum()) / max(1, int((ps.labels == 1).sum()))
    return {"accuracy": est.score(X, sub.pairs, sub.labels), "n": len(sub), "class_balance": class_balance(sub.labels),
            "majority_baseline": majority_baseline(sub.labels), "same_token_fraction_of_positives": same_pos}


def _losses(model, tok: dict, interventions: dict | None, batch_size: int, texts: Sequence[int]) -> dict[str, float]:
    """Mean next-token loss (nats) over ``texts``: all tokens and re-mention tokens (2nd+ mention of an entity)."""
    nll = sequence_nll(model, [tok["ids"][i] for i in texts], interventions, batch_size=batch_size)
    remention = [n[torch.from_numpy(tok["mention"][i][1:] >= 1)] for n, i in zip(nll, texts)]
    return {"all": float(torch.cat(nll).mean()), "remention": float(torch.cat(remention).mean())}


def _ablation(model, tok: dict, Xs: dict, layer: int, later: int | None, probe: PairwiseProbe, train, test,
              test_texts: Sequence[int], subset: str, config: Config) -> dict:
    """Project the binding subspace (span of the chosen low-rank probe's A and B rows) out of resid_post.``layer``.

    Compared with projecting out ``n_random`` random subspaces of the same
    dimension: the fitted probe's accuracy on ablated activations, a probe
    retrained (train texts) on the ablated layer and at the next analysed layer
    on activations captured under the ablation, each scored on the test texts'
    ``subset`` pairs; and the model's loss on the test texts (all tokens,
    re-mention tokens).
    """
    probe_kw = dict(epochs=config.epochs, seed=config.seed, bilinear_scale=config.bilinear_scale)
    rank = probe.rank
    X = Xs[layer]
    Q = torch.from_numpy(probe.subspace())
    k, d = Q.shape
    gen = torch.Generator().manual_seed(config.seed + 1)
    randoms = [torch.linalg.qr(torch.randn(d, k, generator=gen, dtype=torch.float64)).Q.T.float()
               for _ in range(config.n_random)]
    site = f"resid_post.{layer}"
    te = test.of_kind(subset)
    out = {"layer": layer, "probe_rank": rank, "dims_removed": k, "later_layer": later, "pairs": subset,
           "probe_accuracy": {}, "later_probe_accuracy": {}, "loss": {}, "loss_texts": f"test ({len(test_texts)})"}

    def project(X, B):  # the same edit Ablate(B) makes inside the model, on stored activations
        return X - (X @ B.T) @ B

    def refit(X):
        return PairwiseProbe("lowrank", rank=rank, **probe_kw).fit(X, train.pairs, train.labels).score(
            X, te.pairs, te.labels)

    out["probe_accuracy"]["none"] = probe.score(X, te.pairs, te.labels)
    out["probe_accuracy"]["binding"] = probe.score(project(X, Q), te.pairs, te.labels)
    out["probe_accuracy"]["random"] = float(np.mean([probe.score(project(X, R), te.pairs, te.labels)
                                                     for R in randoms]))
    # a fresh probe on the ablated layer itself: is the relation still decodable from what is left?
    out["retrained_probe_accuracy"] = {"binding": refit(project(X, Q))}
    if later is not None:
        for name, B in {"none": None, "binding": Q, "random": randoms[0]}.items():
            Xl = Xs[later] if B is None else _capture(model, tok["texts"], [later], config, {site: Ablate(B)})[later]
            out["later_probe_accuracy"][name] = refit(Xl)
    out["loss"]["none"] = _losses(model, tok, None, config.batch_size, test_texts)
    out["loss"]["binding"] = _losses(model, tok, {site: Ablate(Q)}, config.batch_size, test_texts)
    rand = [_losses(model, tok, {site: Ablate(R)}, config.batch_size, test_texts) for R in randoms]
    out["loss"]["random"] = {key: float(np.mean([r[key] for r in rand])) for key in rand[0]}
    out["n_random"] = config.n_random
    return out


# ---------------------------------------------------------------- report

def _f(x, spec: str = ".3f") -> str:
    return "–" if x is None else format(x, spec)


def summary_lines(report: dict) -> list[str]:
    """Plain-text table: test accuracy per layer for each kind (headline pairs), beside the majority baseline."""
    if "seeds" in report and "headlines" in report["seeds"]:
        lines = [f"seeds {report['seeds']['seeds']}: mean ± sd (min..max) of each headline"]
        for name, s in report["seeds"]["headlines"].items():
            if s["mean"] is not None:
                lines.append(f"  {name}: {s['mean']:.3f} ± {s['std']:.3f} ({s['min']:.3f}..{s['max']:.3f})")
        return lines + ["first seed:"] + summary_lines({k: v for k, v in report.items() if k != "seeds"})
    sub = report.get("selected_on", "all")
    acc = report["accuracy_cross"] if sub == "cross" else report["accuracy"]
    maj = report.get("majority_baseline_cross") if sub == "cross" else report["majority_baseline"]
    pc = report["pairs"][sub]["test"]
    kinds = list(acc)
    lines = [f"task {report['task']}; {sub} pairs of {report['n_test_texts']} test texts (train "
             f"{report['n_train_texts']}, validation {report['n_val_texts']}): {pc['n']} pairs, class balance "
             f"{_f(pc['class_balance'])}; majority baseline {_f(maj)}",
             "test accuracy (" + sub + " pairs)", "layer " + " ".join(f"{k:>8}" for k in kinds)]
    for i, layer in enumerate(report["layers"]):
        lines.append(f"{layer:>5} " + " ".join(f"{_f(acc[k][i]):>8}" for k in kinds))
    if "best" in report:
        b = report["best"]
        kinds_part = (f"cross-mention {_f(b['accuracy_cross'])} (linear {_f(b['linear_cross'])}), within-mention "
                      f"{_f(b['accuracy_within'])}, " if sub == "cross" else "")
        lines.append(f"chosen on validation: {b['kind']} at layer {b['layer']} (validation {b['val_accuracy']:.3f}); "
                     f"test: {kinds_part}all pairs {b['accuracy']:.3f} (linear {_f(b['linear_at_that_layer'])}); "
                     f"majority {report['majority_baseline']:.3f}")
        d = b.get("cross_distinct_tokens")
        if d:
            lines.append(f"  cross-mention pairs of two different tokens: {d['accuracy']:.3f} on {d['n']} pairs "
                         f"(majority {d['majority_baseline']:.3f}; {100 * d['same_token_fraction_of_positives']:.0f}% "
                         f"of cross positives repeat the same token)")
    if "rank_sweep" in report:
        rs = report["rank_sweep"]
        lines.append(f"rank sweep at layer {rs['layer']} ({rs['subset']} pairs), validation (full "
                     f"{rs['val_full']:.3f}): " + ", ".join(f"r={r}: {a:.3f}" for r, a in rs["val_accuracy"].items()) +
                     f"; smallest r within 2 points: {report['min_rank_within_2pts']}")
        lines.append(f"  test (full {rs['full']:.3f}): " + ", ".join(f"r={r}: {a:.3f}" for r, a in
                                                                      rs["accuracy"].items()))
    if "ablation" in report:
        a = report["ablation"]
        lines.append(f"ablation at layer {a['layer']} ({a['dims_removed']} dims), test {a['pairs']} pairs: probe acc "
                     f"none/binding/random {a['probe_accuracy']['none']:.3f}/{a['probe_accuracy']['binding']:.3f}/"
                     f"{a['probe_accuracy']['random']:.3f}; retrained on ablated "
                     f"{a['retrained_probe_accuracy']['binding']:.3f}")
        if a["later_probe_accuracy"]:
            lp = a["later_probe_accuracy"]
            lines.append(f"  probe retrained at layer {a['later_layer']}: none/binding/random "
                         f"{lp['none']:.3f}/{lp['binding']:.3f}/{lp['random']:.3f}")
        lo = a["loss"]
        lines.append(f"  loss on {a['loss_texts']} texts (all / re-mention tokens): " + "; ".join(
            f"{k} {v['all']:.4f}/{v['remention']:.4f}" for k, v in lo.items()))
    return lines


def _result(model, config: Config, out, report: dict, sw: Stopwatch, protocol: dict) -> Result:
    from .. import plots

    r = report
    sub = r["selected_on"]
    label = "cross-mention" if sub == "cross" else "all-pairs"
    pc = r["pairs"][sub]["test"]
    test_split = (f"test texts ({r['n_test_texts']} of {r['n_texts']}), {pc['n']} {sub} pairs, class balance "
                  f"{_f(pc['class_balance'], '.2f')}")
    maj = r["majority_baseline_cross"] if sub == "cross" else r["majority_baseline"]
    headlines = []
    best = r.get("best")
    if best:
        k, L = best["kind"], best["layer"]
        value = best["accuracy_cross"] if sub == "cross" else best["accuracy"]
        lin = best["linear_cross"] if sub == "cross" else best["linear_at_that_layer"]
        headlines.append(Headline(f"{label} accuracy, chosen probe", value, test_split, paper=PAPER["quadratic"],
                                  note=f"{k} at layer {L}, chosen on validation texts ({best['val_accuracy']:.3f}); "
                                       f"majority baseline {_f(maj)}"))
        if lin is not None:
            headlines.append(Headline(f"linear probe, {label}, chosen layer", lin, test_split,
                                      note="scores tokens one at a time: chance by design"))
            headlines.append(Headline(f"chosen − linear, {label}", value - lin, test_split,
                                      target=f"≥ {TARGET_GAIN}", paper=PAPER["order"], met=value - lin >= TARGET_GAIN))
        headlines.append(Headline(f"majority-class baseline, {label}", maj, test_split))
        if sub == "cross":
            pw = r["pairs"]["within"]["test"]
            headlines.append(Headline("within-mention accuracy, chosen probe", best["accuracy_within"],
                                      f"test texts, {pw['n']} within-mention pairs",
                                      note="sub-tokens of one mention: adjacency, not binding; majority "
                                           f"{_f(r['majority_baseline_within'])}"))
            headlines.append(Headline("all-pairs accuracy, chosen probe", best["accuracy"],
                                      f"test texts, {r['n_test_pairs']} pairs (cross + within)",
                                      note="the number reported before cross- and within-mention pairs were "
                                           "told apart"))
            d = best.get("cross_distinct_tokens")
            if d:
                headlines.append(Headline("cross-mention accuracy on pairs of two different tokens, chosen probe",
                                          d["accuracy"], f"test texts, {d['n']} cross-mention pairs",
                                          note=f"majority {d['majority_baseline']:.3f}; drops the "
                                               f"{100 * d['same_token_fraction_of_positives']:.0f}% of positives "
                                               f"that repeat one token (string match)"))
    if "rank_sweep" in r:
        r_min = r["min_rank_within_2pts"]
        rs = r["rank_sweep"]
        headlines.append(Headline("smallest low-rank r within 2 points of full", r_min,
                                  f"validation texts ({r['n_val_texts']}), {sub} pairs", target=f"≤ {TARGET_RANK}",
                                  met=r_min is not None and r_min <= TARGET_RANK,
                                  note=f"layer {rs['layer']}; ranks tried: " + ", ".join(rs["accuracy"]) +
                                       (f"; test accuracy at r={r_min}: {rs['accuracy'][str(r_min)]:.3f} vs full "
                                        f"{rs['full']:.3f}" if r_min is not None else "")))
    if "ablation" in r:
        a = r["ablation"]
        pa, lo = a["probe_accuracy"], a["loss"]
        headlines.append(Headline("probe accuracy after ablating the binding subspace", pa["binding"], test_split,
                                  note=f"layer {a['layer']}, {a['dims_removed']} dims; none {pa['none']:.3f}; random "
                                       f"subspaces {pa['random']:.3f}"))
        headlines.append(Headline("loss on re-mention tokens, binding subspace ablated (nats)",
                                  lo["binding"]["remention"], f"test texts ({r['n_test_texts']})",
                                  note=f"none {lo['none']['remention']:.4f}; random {lo['random']['remention']:.4f}"))
    conclusion = ""
    if best:
        value = best["accuracy_cross"] if sub == "cross" else best["accuracy"]
        lin = best["linear_cross"] if sub == "cross" else best["linear_at_that_layer"]
        conclusion = (f"Chosen on validation texts: the {best['kind']} probe at layer {best['layer']}. On held-out "
                      f"test texts it tells same-{r['task']} token pairs from different ones ({label} pairs) with "
                      f"{_f(value)} accuracy against {_f(lin)} for the linear probe and a majority baseline of "
                      f"{_f(maj)}.")
        if sub == "cross":
            conclusion += (f" Within one mention (sub-tokens, adjacency) it reaches {_f(best['accuracy_within'])}; "
                           f"that part is not binding.")
        if "ablation" in r:
            pa = r["ablation"]["probe_accuracy"]
            conclusion += (f" Removing the probe's {r['ablation']['dims_removed']}-dim subspace drops it to "
                           f"{pa['binding']:.3f}; random subspaces of that size leave {pa['random']:.3f}.")
    figures = {"accuracy_per_layer": plots.binding_accuracy(r)}
    if "rank_sweep" in r:
        figures["rank_sweep"] = plots.binding_rank_sweep(r["rank_sweep"])
    tables = {f"test accuracy per layer ({s} pairs)": [
        {"layer": layer, **{k: v[j] for k, v in r[key].items()}} for j, layer in enumerate(r["layers"])]
        for s, key in (("cross", "accuracy_cross"), ("within", "accuracy_within"), ("all", "accuracy"))
        if any(x is not None for v in r[key].values() for x in v)}
    tables["validation accuracy per layer (where choices were made)"] = [
        {"layer": layer, **{k: v[j] for k, v in r["val_accuracy_cross" if sub == "cross" else "val_accuracy"].items()}}
        for j, layer in enumerate(r["layers"])]
    tables["pairs per split"] = [{"pairs": s, "split": name, **c} for s, per in r["pairs"].items()
                                 for name, c in per.items()]
    if "ablation" in r:
        a = r["ablation"]
        tables["ablation"] = [{"subspace": name, "probe accuracy": a["probe_accuracy"].get(name),
                               f"retrained at layer {a['later_layer']}": a["later_probe_accuracy"].get(name),
                               "loss, all tokens": a["loss"][name]["all"],
                               "loss, re-mention tokens": a["loss"][name]["remention"]}
                              for name in ("none", "binding", "random")]
    result = Result("binding", report, figures=figures, headlines=headlines, conclusion=conclusion, config=config,
                    timing=dict(sw.seconds, total_s=sw.total), tables=tables,
                    title=f"IsSameObject probes: {model.name}", protocol=protocol)
    if out is not None:
        write_report(result, out, model=model)
    return result


