"""Attention outputs are low-rank (arXiv 2508.16929, ``shared/methods.md`` §5) as one experiment.

1. data: English documentation prose (``interp.data.corpus.passages_for``),
   each passage cut to ``max_tokens`` tokens, split three ways by passage
   (``interp.protocol.split_groups``, unit "passage");
2. capture: attention outputs, MLP outputs and the residual stream at every
   token but the first (the attention sink), validation and test passages
   into one ``ActivationStore`` each (nothing is fitted, so the training
   passages are not read);
3. fit: ``EffectiveRank`` per site (``fit_store_sites``): k99 and k99/d on
   validation (a dry run: the threshold 0.99 and positions are fixed in
   advance, so nothing is chosen there), then once on test with a percentile
   bootstrap over test passages;
4. report: test k99/d per layer for each site, the attention-vs-MLP gap
   beside the paper's ≈ 0.6 vs ≈ 0.9, the validation numbers beside them,
   the per-layer figure and the eigenvalue spectra; ``seeds`` repeats it all
   per seed (another split and resampling) and reports mean ± spread.

No intervention or model evaluation is involved: the claim is about the
activations themselves.

Example:
    from interp.experiments import rank
    result = rank.run(model, rank.Config(layers=[2, 5], passages=24, max_tokens=64, bootstrap=5))
    result.report["relative_k99"]["attn_out"]   # k99/d per layer
"""
from __future__ import annotations

import tempfile
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Sequence

from ..analyzers.rank import fit_store_sites
from ..data.corpus import passages_for
from ..errors import InterpError
from ..positions import check_spec
from ..protocol import protocol_block, seed_sweep, split_groups
from ..report import Headline, Result, Stopwatch, write_report
from ..sites import SITE_NAMES, Site

__all__ = ["Config", "run", "check_config", "PAPER", "TARGET_GAP"]

#: What the paper reports for k99/d (``shared/methods.md`` §5).
PAPER = {"attn_out": "≈ 0.6", "mlp_out": "≈ 0.9", "resid_post": "≈ 0.9"}
#: This project's target: attention at least this far below the MLP at the same layers.
TARGET_GAP = 0.15


@dataclass
class Config:
    """Settings of the effective-rank measurement; defaults are those of ``interp rank``."""

    sites: tuple[str, ...] = ("attn_out", "mlp_out", "resid_post")  #: site names measured at each layer
    layers: Sequence[int] | None = None  #: layer indices; None measures every layer
    passages: int = 200  #: corpus passages read
    max_tokens: int = 128  #: tokens kept per passage
    positions: str = "1:"  #: token positions captured; "1:" drops the attention-sink first token ("all" keeps it)
    threshold: float = 0.99  #: variance fraction that defines k (0.99 gives k99)
    bootstrap: int = 30  #: percentile-bootstrap resamples over test passages for the CI (0 disables it)
    bootstrap_blocks: int = 40  #: test passages are dealt into this many blocks of whole passages; blocks are resampled
    fractions: tuple[float, float, float] = (0.2, 0.2, 0.6)  #: train / validation / test share of the passages
    seed: int = 0  #: seed of the passage split and the bootstrap
    seeds: Sequence[int] | None = None  #: run once per seed and report mean ± spread of the headlines
    batch_size: int = 8  #: passages per forward pass
    shard_size: int = 64  #: passages per store shard
    progress: bool = True  #: show progress bars


def check_config(config: Config, n_layers: int | None = None) -> Config:
    """Validate sites, layers and positions (before any model or corpus is loaded); return the config.

    With ``n_layers`` known, layers are checked against it; ``layers=None`` stays None (every layer).

    Example:
        >>> check_config(Config(layers=[2, 5]), n_layers=30).layers
        [2, 5]
    """
    bad = [s for s in config.sites if s not in SITE_NAMES]
    if bad or not config.sites:
        raise InterpError(f"unknown site name(s) {bad or '(none given)'}; choose from {', '.join(SITE_NAMES)}")
    layers = config.layers
    if layers is not None:
        layers = list(layers)
        if not layers:
            raise InterpError("no layers given; pass layer indices or 'all'")
        if any(isinstance(x, bool) or not float(x).is_integer() for x in layers):
            raise InterpError(f"layers must be whole numbers, got {layers}")
        layers = [int(x) for x in layers]
        top = f"0..{n_layers - 1}" if n_layers else "0 and up"
        if any(x < 0 or (n_layers is not None and x >= n_layers) for x in layers):
            raise InterpError(f"layers must be in {top}, got {layers}")
    check_spec(config.positions)
    if not 0 < config.threshold <= 1:
        raise InterpError(f"threshold must be in (0, 1], got {config.threshold}")
    for name in ("passages", "max_tokens", "batch_size", "shard_size"):
        if getattr(config, name) < 1:
            raise InterpError(f"{name} must be >= 1, got {getattr(config, name)}")
    if config.bootstrap < 0:
        raise InterpError(f"bootstrap must be >= 0, got {config.bootstrap}")
    if config.bootstrap_blocks < 2:
        raise InterpError(f"bootstrap_blocks must be >= 2, got {config.bootstrap_blocks}")
    if config.passages < 3:
        raise InterpError(f"passages must be >= 3 (one each for train, validation and test), got {config.passages}")
    seeds = None if config.seeds is None else [int(x) for x in config.seeds]
    if seeds is not None and (not seeds or len(set(seeds)) != len(seeds)):
        raise InterpError(f"seeds must be distinct integers, got {config.seeds}")
    return replace(config, layers=layers, seeds=seeds)


def run(model, config: Config | None = None, out=None) -> Result:
    """Measure k99/d per layer of each site on test passages; with ``out``, keep the stores there and write the report.

    Without ``out`` the activation stores live in a temporary folder that is deleted at the end.
    With ``config.seeds`` the whole measurement runs once per seed (under ``out/seed_<s>``).
    """
    config = check_config(config or Config(), model.n_layers)
    if config.seeds:
        return seed_sweep(run, model, config, out, varies="passage split and resampling")
    layers = list(range(model.n_layers)) if config.layers is None else config.layers
    keys = [str(Site(n, layer)) for n in config.sites for layer in layers]
    sw = Stopwatch()

    # data: split by passage, so no passage has tokens on two sides
    with sw("data"):
        texts = passages_for(model.tokenizer, config.passages, config.max_tokens)
        splits = split_groups(range(len(texts)), config.fractions, config.seed, unit="passage")

    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(out) if out is not None else Path(tmp)
        # capture
        with sw("capture"):
            stores = {part: model.capture_to_store(splits.take(texts, part), folder / f"store_{part}", keys,
                                                   config.positions, chat=False, batch_size=config.batch_size,
                                                   shard_size=config.shard_size, progress=config.progress)
                      for part in ("val", "test")}
        # fit: validation first (nothing to choose there), then test once
        with sw("fit"):
            val = fit_store_sites(stores["val"], threshold=config.threshold, n_bootstrap=0, seed=config.seed)
            fits = fit_store_sites(stores["test"], threshold=config.threshold, n_bootstrap=config.bootstrap,
                                   n_blocks=config.bootstrap_blocks, seed=config.seed, progress=config.progress)
        n_tokens, n_val_tokens = stores["test"].n_tokens, stores["val"].n_tokens

    # report
    report = {"model": model.describe(), "threshold": config.threshold, "positions": config.positions,
              "n_passages": len(texts), "max_tokens": config.max_tokens, "n_tokens": n_tokens,
              "split": "test", "n_test_passages": len(splits.test),
              "layers": layers, "relative_k99": {}, "k99": {}, "ci": {}, "ci_bias_corrected": {},
              "bootstrap_bias": {},
              "ci_method": (f"percentile bootstrap, {config.bootstrap} resamples of "
                            f"{min(config.bootstrap_blocks, len(splits.test))} blocks of whole test passages"),
              "validation": {"n_tokens": n_val_tokens, "n_passages": len(splits.val), "relative_k99": {}},
              "seconds": round(sw.seconds["capture"] + sw.seconds["fit"], 1)}
    for n in config.sites:
        ests = [fits[str(Site(n, layer))] for layer in layers]
        report["relative_k99"][n] = [e.relative_k_ for e in ests]
        report["k99"][n] = [e.k_ for e in ests]
        report["ci"][n] = [list(e.ci_) for e in ests]
        report["ci_bias_corrected"][n] = [list(e.ci_bias_corrected_) for e in ests]
        report["bootstrap_bias"][n] = [e.bootstrap_bias_ for e in ests]
        report["validation"]["relative_k99"][n] = [val[str(Site(n, layer))].relative_k_ for layer in layers]
    protocol = protocol_block(splits, choices="none: the threshold (0.99) and positions are fixed in advance; "
                                             "validation is measured only as a dry run, test is read once",
                              train_passages_read=False)
    return _result(model, config, out, report, fits, sw, protocol)


def _result(model, config: Config, out, report: dict, fits: dict, sw: Stopwatch, protocol: dict) -> Result:
    from .. import plots

    rel, layers = report["relative_k99"], report["layers"]
    split = f"test ({report['n_test_passages']} passages, {report['n_tokens']} tokens)"
    kname = f"k{round(config.threshold * 100)}/d"
    headlines = []
    for n, values in rel.items():
        headlines.append(Headline(f"{n} {kname}, mean over layers {_span(layers)}", sum(values) / len(values), split,
                                  paper=PAPER.get(n), note="per layer: " + " ".join(f"{v:.2f}" for v in values)))
    conclusion = ""
    if "attn_out" in rel and "mlp_out" in rel:
        gaps = [m - a for a, m in zip(rel["attn_out"], rel["mlp_out"])]
        mean_gap = sum(gaps) / len(gaps)
        met = mean_gap >= TARGET_GAP
        headlines.append(Headline(f"mlp_out − attn_out {kname}, mean over layers", mean_gap, split,
                                  target=f"≥ {TARGET_GAP}", paper="≈ 0.3", met=met,
                                  note=f"attention below MLP at {sum(g > 0 for g in gaps)} of {len(gaps)} layers"))
        conclusion = (f"Attention outputs need {sum(rel['attn_out']) / len(layers):.2f} of their dimensions for "
                      f"{config.threshold:.0%} of the variance against {sum(rel['mlp_out']) / len(layers):.2f} for "
                      f"MLP outputs (mean over layers {_span(layers)}); the gap of {mean_gap:.2f} "
                      f"{'meets' if met else 'misses'} the target of {TARGET_GAP}.")
    rows = [{"site": n, "layer": layer, "k99": report["k99"][n][i], "k99/d": rel[n][i],
             "CI low": report["ci"][n][i][0], "CI high": report["ci"][n][i][1],
             "k99/d validation": report["validation"]["relative_k99"][n][i]}
            for n in rel for i, layer in enumerate(layers)]
    figures = {"k99_per_layer": plots.rank_per_layer(report),
               "spectra": plots.rank_spectra({k: f.eigenvalues_ for k, f in fits.items()}, config.threshold)}
    result = Result("rank", report, figures=figures, headlines=headlines, conclusion=conclusion, config=config,
                    timing=dict(sw.seconds, total_s=sw.total), tables={f"{kname} per layer": rows},
                    title=f"Effective rank: {model.name}", protocol=protocol)
    if out is not None:
        write_report(result, out, model=model)
    return result


def _span(layers: Sequence[int]) -> str:
    return ", ".join(map(str, layers)) if len(layers) <= 6 else f"{layers[0]}..{layers[-1]} ({len(layers)} layers)"


