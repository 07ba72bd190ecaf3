"""IsSameObject pairwise binding probes (Li et al., arXiv 2510.24709; ``shared/methods.md`` §4) on an LM's tokens.

1. data: annotated texts (``data/coref_texts.jsonl``) → tokens, with each
   token's entity (character spans mapped through the tokenizer's offsets) →
   balanced same-entity / different-entity pairs, held out by text;
2. capture: ``resid_post`` at every token of the chosen layers;
3. fit: linear, diagonal, full and low-rank ``PairwiseProbe``s and the
   cosine/dot ``SimilarityBaseline``s per layer; a rank sweep of the low-rank
   probe at the full probe's best layer;
4. intervene: project the learned binding subspace (or random subspaces of the
   same dimension) out of ``resid_post`` at that layer (``Ablate``);
5. evaluate: probe accuracy on the ablated activations, a probe retrained at the
   next analysed layer on activations captured under the ablation, and the
   model's next-token loss on all tokens and on re-mention tokens
   (``evaluation.sequence_nll``);
6. report: accuracy per layer and kind beside the majority-class baseline, the
   rank sweep, the ablation table.

Example:
    from interp.experiments import binding
    result = binding.run(model, binding.Config(layers=[6, 12], epochs=10), out="runs/binding")
    result.report["accuracy"]["lowrank"]    # held-out accuracy per layer
"""
from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from tqdm.auto import tqdm

from ..analyzers.binding import PairwiseProbe, class_balance, evaluate_kinds, majority_baseline, min_rank_within
from ..data.binding import load_coref_texts, sample_pairs, split_units, tokenize_texts
from ..errors import InterpError
from ..evaluation import sequence_nll
from ..interventions import Ablate
from ..report import Headline, Result, Stopwatch, write_report

__all__ = ["Config", "run", "check_config", "resolve_layers", "summary_lines", "PROBE_KINDS", "RANKS"]

PROBE_KINDS = ("linear", "diagonal", "full", "lowrank", "cosine", "dot")
RANKS = (1, 2, 4, 8, 16, 32, 64)
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
    ranks: Sequence[int] = RANKS  #: ranks of the sweep at the full probe's best layer (those <= d)
    epochs: int = 30  #: training epochs per probe (Adam lr 1e-3, weight decay 0.01, as in the paper)
    per_anchor: int = 3  #: same-entity (and as many different-entity) partners per anchor token
    test_fraction: float = 0.25  #: fraction of texts held out for testing
    ablation: bool = True  #: ablate the learned subspace vs random ones (needs "full" in kinds and a sweep)
    n_random: int = 3  #: random subspaces the ablation is compared with
    seed: int = 0  #: seed of pair sampling, the split, probe init and the random subspaces
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
    if not 0 < config.test_fraction < 1:
        raise InterpError(f"test_fraction must be between 0 and 1, got {config.test_fraction}")
    if config.n_texts is not None and config.n_texts < 2:
        raise InterpError(f"n_texts must be >= 2 (some to train on, some held out), got {config.n_texts}")
    if config.texts is not None and not Path(config.texts).is_file():
        raise InterpError(f"no annotated texts at {config.texts}; pass the path of a JSONL file with text and "
                          f"entities (see data/coref_texts.jsonl)")
    return replace(config, layers=layers if layers is not None else config.layers, kinds=tuple(config.kinds),
                   ranks=tuple(config.ranks))


def run(model, config: Config | None = None, out=None) -> Result:
    """Fit the probes per layer, sweep the rank, ablate the binding subspace; with ``out``, write the report."""
    config = check_config(config or Config(), model.n_layers)
    layers, kinds = list(config.layers), list(config.kinds)
    sw = Stopwatch()
    probe_kw = dict(epochs=config.epochs, seed=config.seed)

    # data: texts → tokens with their entity → balanced pairs, split by text
    with sw("data"):
        records = load_coref_texts(config.texts)[:config.n_texts]
        tok = tokenize_texts(model, records)
        # position 0 is skipped: its activations are attention-sink outliers, not a token's meaning
        pairs = sample_pairs(tok[config.task], per_anchor=config.per_anchor, seed=config.seed, skip_positions=[0])
        train_units, test_units = split_units(len(records), config.test_fraction, config.seed)
        train, test = pairs.subset(train_units), pairs.subset(test_units)
        if len(train) == 0 or len(test) == 0 or len(set(test.labels.tolist())) < 2:
            raise InterpError("the split left no usable train or test pairs; use more texts")

    # capture: resid_post at every token
    with sw("capture"):
        Xs = _capture(model, tok["texts"], layers, config)

    # fit: every probe kind per layer, then the rank sweep at the full probe's best layer
    with sw("fit"):
        acc: dict[str, list[float]] = {k: [] for k in kinds}
        for layer in tqdm(layers, desc="probes per layer", unit="layer", disable=not config.progress):
            res = evaluate_kinds(Xs[layer], train.pairs, train.labels, Xs[layer], test.pairs, test.labels,
                                 kinds=kinds, rank=config.rank, **probe_kw)
            for k in kinds:
                acc[k].append(res[k])
        report = {
            "model": model.describe(), "task": config.task, "layers": layers, "site": "resid_post",
            "n_texts": len(records), "n_train_texts": len(train_units), "n_test_texts": len(test_units),
            "n_train_pairs": len(train), "n_test_pairs": len(test), "per_anchor": config.per_anchor,
            "epochs": config.epochs, "lowrank_rank": config.rank, "accuracy": acc,
            "majority_baseline": majority_baseline(test.labels), "class_balance": class_balance(test.labels),
            "train_class_balance": class_balance(train.labels),
        }
        quad = [k for k in ("full", "diagonal", "lowrank") if k in kinds]
        if quad and "linear" in kinds:
            best_q = max(quad, key=lambda k: max(acc[k]))
            i = int(np.argmax(acc[best_q]))
            report["best"] = {"kind": best_q, "layer": layers[i], "accuracy": acc[best_q][i],
                              "linear_at_that_layer": acc["linear"][i],
                              "quadratic_minus_linear": acc[best_q][i] - acc["linear"][i]}
        sweep: dict[int, float] = {}
        if "full" in kinds:
            i = int(np.argmax(acc["full"]))
            L = layers[i]
            X = Xs[L]
            for r in tqdm([r for r in config.ranks if r <= X.shape[1]], desc=f"rank sweep at layer {L}",
                          unit="rank", disable=not config.progress):
                sweep[r] = PairwiseProbe("lowrank", rank=r, **probe_kw).fit(X, train.pairs, train.labels).score(
                    X, test.pairs, test.labels)
            report["rank_sweep"] = {"layer": L, "full": acc["full"][i],
                                    "accuracy": {str(r): a for r, a in sweep.items()}}
            report["min_rank_within_2pts"] = min_rank_within(sweep, acc["full"][i], 0.02)

    # intervene + evaluate: the binding subspace vs random subspaces of the same dimension
    if config.ablation and sweep:
        with sw("ablation"):
            L = report["rank_sweep"]["layer"]
            r_abl = report["min_rank_within_2pts"] or max(sweep, key=sweep.get)
            later = [x for x in layers if x > L]
            report["ablation"] = _ablation(model, tok, Xs, L, later[0] if later else None, r_abl, train, test,
                                           config)
    report["seconds"] = round(sw.total, 1)

    # report
    return _result(model, config, out, report, sw)


# ---------------------------------------------------------------- steps

def _capture(model, texts: Sequence[str], layers: Sequence[int], config: Config,
             interventions: dict | None = None) -> dict[int, torch.Tensor]:
    """resid_post at every token: {layer: [n_tokens, d]}, rows text by text (optionally under interventions)."""
    from contextlib import nullcontext

    with model.intervene(interventions) if interventions else nullcontext():
        acts = model.capture(list(texts), [f"resid_post.{layer}" for layer in layers], positions="all", chat=False,
                             batch_size=config.batch_size, progress=config.progress)
    return {layer: acts.tokens(f"resid_post.{layer}") for layer in layers}


def _losses(model, tok: dict, interventions: dict | None, batch_size: int) -> dict[str, float]:
    """Mean next-token loss (nats) on all tokens and on re-mention tokens (2nd+ mention of an entity)."""
    nll = sequence_nll(model, tok["ids"], interventions, batch_size=batch_size)
    remention = [n[torch.from_numpy(m[1:] >= 1)] for n, m in zip(nll, tok["mention"])]
    return {"all": float(torch.cat(nll).mean()), "remention": float(torch.cat(remention).mean())}


def _ablation(model, tok: dict, Xs: dict, layer: int, later: int | None, rank: int, train, test,
              config: Config) -> dict:
    """Project the binding subspace (span of a rank-``rank`` probe's A and B rows) out of resid_post.``layer``.

    Compared with projecting out ``n_random`` random subspaces of the same
    dimension: the fitted probe's accuracy on ablated activations, a probe
    retrained at the next analysed layer on activations captured under the
    ablation, and the model's loss on the texts (all tokens, re-mention tokens).
    """
    probe_kw = dict(epochs=config.epochs, seed=config.seed)
    X = Xs[layer]
    probe = PairwiseProbe("lowrank", rank=rank, **probe_kw).fit(X, train.pairs, train.labels)
    Q = torch.from_numpy(probe.subspace())
    k, d = Q.shape
    gen = torch.Generator().manual_seed(config.seed + 1)
    randoms = [torch.linalg.qr(torch.randn(d, k, generator=gen, dtype=torch.float64)).Q.T.float()
               for _ in range(config.n_random)]
    site = f"resid_post.{layer}"
    out = {"layer": layer, "probe_rank": rank, "dims_removed": k, "later_layer": later,
           "probe_accuracy": {}, "later_probe_accuracy": {}, "loss": {}}

    def project(X, B):  # the same edit Ablate(B) makes inside the model, on stored activations
        return X - (X @ B.T) @ B

    out["probe_accuracy"]["none"] = probe.score(X, test.pairs, test.labels)
    out["probe_accuracy"]["binding"] = probe.score(project(X, Q), test.pairs, test.labels)
    out["probe_accuracy"]["random"] = float(np.mean([probe.score(project(X, R), test.pairs, test.labels)
                                                     for R in randoms]))
    # a fresh probe on the ablated layer itself: is the relation still decodable from what is left?
    out["retrained_probe_accuracy"] = {
        "binding": PairwiseProbe("lowrank", rank=rank, **probe_kw).fit(project(X, Q), train.pairs, train.labels)
        .score(project(X, Q), test.pairs, test.labels)}
    if later is not None:
        for name, B in {"none": None, "binding": Q, "random": randoms[0]}.items():
            Xl = Xs[later] if B is None else _capture(model, tok["texts"], [later], config, {site: Ablate(B)})[later]
            out["later_probe_accuracy"][name] = PairwiseProbe("lowrank", rank=rank, **probe_kw).fit(
                Xl, train.pairs, train.labels).score(Xl, test.pairs, test.labels)
    out["loss"]["none"] = _losses(model, tok, None, config.batch_size)
    out["loss"]["binding"] = _losses(model, tok, {site: Ablate(Q)}, config.batch_size)
    rand = [_losses(model, tok, {site: Ablate(R)}, config.batch_size) for R in randoms]
    out["loss"]["random"] = {key: float(np.mean([r[key] for r in rand])) for key in rand[0]}
    out["n_random"] = config.n_random
    return out


# ---------------------------------------------------------------- report

def summary_lines(report: dict) -> list[str]:
    """Plain-text table: accuracy per layer for each kind, beside the majority baseline and class balance."""
    kinds = list(report["accuracy"])
    lines = [f"task {report['task']}; test pairs {report['n_test_pairs']} from {report['n_test_texts']} held-out texts; "
             f"class balance {report['class_balance']:.3f}; majority baseline {report['majority_baseline']:.3f}",
             "layer " + " ".join(f"{k:>8}" for k in kinds)]
    for i, layer in enumerate(report["layers"]):
        lines.append(f"{layer:>5} " + " ".join(f"{report['accuracy'][k][i]:8.3f}" for k in kinds))
    if "best" in report:
        b = report["best"]
        lines.append(f"best quadratic: {b['kind']} at layer {b['layer']}: {b['accuracy']:.3f} vs linear "
                     f"{b['linear_at_that_layer']:.3f} (+{100 * b['quadratic_minus_linear']:.1f} points), majority "
                     f"{report['majority_baseline']:.3f}")
    if "rank_sweep" in report:
        rs = report["rank_sweep"]
        lines.append(f"rank sweep at layer {rs['layer']} (full {rs['full']:.3f}): " +
                     ", ".join(f"r={r}: {a:.3f}" for r, a in rs["accuracy"].items()) +
                     f"; smallest r within 2 points: {report['min_rank_within_2pts']}")
    if "ablation" in report:
        a = report["ablation"]
        lines.append(f"ablation at layer {a['layer']} ({a['dims_removed']} dims): probe acc none/binding/random "
                     f"{a['probe_accuracy']['none']:.3f}/{a['probe_accuracy']['binding']:.3f}/"
                     f"{a['probe_accuracy']['random']:.3f}; retrained on ablated "
                     f"{a['retrained_probe_accuracy']['binding']:.3f}")
        if a["later_probe_accuracy"]:
            lp = a["later_probe_accuracy"]
            lines.append(f"  probe retrained at layer {a['later_layer']}: none/binding/random "
                         f"{lp['none']:.3f}/{lp['binding']:.3f}/{lp['random']:.3f}")
        lo = a["loss"]
        lines.append("  loss (all / re-mention tokens): " + "; ".join(
            f"{k} {v['all']:.4f}/{v['remention']:.4f}" for k, v in lo.items()))
    return lines


def _result(model, config: Config, out, report: dict, sw: Stopwatch) -> Result:
    from .. import plots

    r = report
    split = (f"held-out texts ({r['n_test_texts']} of {r['n_texts']}, {r['n_test_pairs']} pairs, class balance "
             f"{r['class_balance']:.2f})")
    maj = r["majority_baseline"]
    headlines = []
    best = r.get("best")
    at = best["layer"] if best else r["layers"][int(np.argmax(next(iter(r["accuracy"].values()))))]
    i = r["layers"].index(at)
    for kind, accs in r["accuracy"].items():
        quadratic = kind in ("full", "diagonal", "lowrank")
        headlines.append(Headline(f"{kind} accuracy at layer {at}", accs[i], split,
                                  paper=PAPER["quadratic"] if quadratic else None,
                                  note=f"best over layers {max(accs):.3f}; majority baseline {maj:.3f}"))
    headlines.append(Headline("majority-class baseline", maj, split))
    if best:
        gain = best["quadratic_minus_linear"]
        headlines.append(Headline(f"{best['kind']} − linear at layer {at}", gain, split, target=f"≥ {TARGET_GAIN}",
                                  paper=PAPER["order"], met=gain >= TARGET_GAIN))
    if "rank_sweep" in r:
        r_min = r["min_rank_within_2pts"]
        headlines.append(Headline(f"smallest low-rank r within 2 points of full (layer {r['rank_sweep']['layer']})",
                                  r_min, split, target=f"≤ {TARGET_RANK}",
                                  met=r_min is not None and r_min <= TARGET_RANK,
                                  note="ranks tried: " + ", ".join(r["rank_sweep"]["accuracy"])))
    if "ablation" in r:
        a = r["ablation"]
        pa, lo = a["probe_accuracy"], a["loss"]
        headlines.append(Headline(f"probe accuracy after ablating the {a['dims_removed']}-dim binding subspace "
                                  f"(layer {a['layer']})", pa["binding"], split,
                                  note=f"none {pa['none']:.3f}; random subspaces {pa['random']:.3f}"))
        headlines.append(Headline("loss on re-mention tokens, binding subspace ablated (nats)",
                                  lo["binding"]["remention"], f"all {r['n_texts']} texts",
                                  note=f"none {lo['none']['remention']:.4f}; random {lo['random']['remention']:.4f}"))
    conclusion = ""
    if best:
        conclusion = (f"At layer {at} the {best['kind']} probe tells same-{r['task']} token pairs from different ones "
                      f"with {best['accuracy']:.3f} held-out accuracy against {best['linear_at_that_layer']:.3f} for "
                      f"the linear probe and a majority baseline of {maj:.3f}.")
        if "ablation" in r:
            pa = r["ablation"]["probe_accuracy"]
            conclusion += (f" Removing the probe's {r['ablation']['dims_removed']}-dim subspace drops it to "
                           f"{pa['binding']:.3f}; random subspaces of that size leave {pa['random']:.3f}.")
    figures = {"accuracy_per_layer": plots.binding_accuracy(r)}
    if "rank_sweep" in r:
        figures["rank_sweep"] = plots.binding_rank_sweep(r["rank_sweep"])
    tables = {"held-out accuracy per layer": [{"layer": layer, **{k: v[j] for k, v in r["accuracy"].items()},
                                               "majority": maj} for j, layer in enumerate(r["layers"])]}
    if "ablation" in r:
        a = r["ablation"]
        tables["ablation"] = [{"subspace": name, "probe accuracy": a["probe_accuracy"].get(name),
                               f"retrained at layer {a['later_layer']}": a["later_probe_accuracy"].get(name),
                               "loss, all tokens": a["loss"][name]["all"],
                               "loss, re-mention tokens": a["loss"][name]["remention"]}
                              for name in ("none", "binding", "random")]
    result = Result("binding", report, figures=figures, headlines=headlines, conclusion=conclusion, config=config,
                    timing=dict(sw.seconds, total_s=sw.total), tables=tables,
                    title=f"IsSameObject probes: {model.name}")
    if out is not None:
        write_report(result, out, model=model)
    return result
