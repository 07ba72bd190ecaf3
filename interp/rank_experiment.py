"""Effective rank per layer of attention outputs, MLP outputs and the residual stream, on real text.

Streams activations in small chunks into float64 moments (never storing the
capture), keeps a bounded random sample per site for the bootstrap, and
reports k99 / d per layer with its confidence interval.

Example:
    report = rank_per_layer(load_model("smollm2-135m-instruct"), text_corpus(max_passages=200))
    report["relative_k99"]["attn_out"]
"""
from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Sequence

import torch
from tqdm.auto import tqdm

from .analyzers.rank import EffectiveRank, _Moments
from .sites import Site


def truncate(model, texts: Sequence[str], max_tokens: int) -> list[str]:
    """Each text cut to its first ``max_tokens`` tokens."""
    out = []
    for t in texts:
        ids = model.tokenizer(t, add_special_tokens=False)["input_ids"][:max_tokens]
        out.append(model.tokenizer.decode(ids))
    return out


def rank_per_layer(model, texts: Sequence[str], sites: Sequence[str] = ("attn_out", "mlp_out", "resid_post"),
                   threshold: float = 0.99, max_tokens: int = 128, chunk: int = 8, n_bootstrap: int = 30,
                   max_bootstrap_tokens: int = 2000, seed: int = 0, progress: bool = True) -> dict:
    """k at ``threshold`` per site and layer over every token of ``texts`` (first position skipped)."""
    texts = truncate(model, texts, max_tokens)
    keys = [Site(name, layer) for name in sites for layer in range(model.n_layers)]
    moments = {k: _Moments(model.site_shape(k)[-1]) for k in keys}
    samples: dict[Site, torch.Tensor | None] = {k: None for k in keys}
    gen = torch.Generator().manual_seed(seed)
    t0 = time.time()
    for s in tqdm(range(0, len(texts), chunk), desc="rank", disable=not progress):
        acts = model.capture(texts[s:s + chunk], keys, "all", chat=False, batch_size=chunk, progress=False)
        mask = acts.mask.clone()
        mask[:, 0] = False  # the first token's activations are outliers in most models (attention sink)
        for k in keys:
            rows = acts[k][mask]
            moments[k].add(rows)
            pool = rows.double() if samples[k] is None else torch.cat([samples[k], rows.double()])
            samples[k] = pool[torch.randperm(pool.shape[0], generator=gen)[:max_bootstrap_tokens]]
        del acts
    report: dict = {"model": model.describe(), "threshold": threshold, "n_texts": len(texts), "max_tokens": max_tokens,
                    "relative_k99": {}, "k99": {}, "ci": {}, "n_tokens": None}
    for name in sites:
        rel, ks, cis = [], [], []
        for layer in range(model.n_layers):
            k = Site(name, layer)
            est = EffectiveRank(threshold, n_bootstrap, max_bootstrap_tokens, seed=seed)._finish(moments[k], samples[k])
            rel.append(est.relative_k_)
            ks.append(est.k_)
            cis.append(list(est.ci_))
            report["n_tokens"] = est.n_tokens_
        report["relative_k99"][name], report["k99"][name], report["ci"][name] = rel, ks, cis
    report["seconds"] = round(time.time() - t0, 1)
    return report


def write_rank_report(report: dict, out_dir: str | Path) -> None:
    from .plots import layer_lines, write_html

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "report.json").write_text(json.dumps(report, indent=1))
    bands = {n: ([c[0] for c in cis], [c[1] for c in cis]) for n, cis in report["ci"].items()}
    fig = layer_lines(report["relative_k99"], title=f"k{round(report['threshold'] * 100)} / d per layer "
                      f"({report['n_tokens']} tokens)", yaxis="relative rank", bands=bands)
    write_html([fig], out / "report.html", title=f"Effective rank: {report['model']['model']}")
