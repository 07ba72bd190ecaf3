"""``interp rank``: effective rank (k99/d) of attention vs MLP outputs and the residual stream per layer."""
from __future__ import annotations

import json
import time
from pathlib import Path


def add_parser(sub) -> None:
    p = sub.add_parser("rank", help="effective rank (k99/d) of attn_out, mlp_out and resid_post per layer",
                       description="Capture attention outputs, MLP outputs and the residual stream on English "
                       "documentation prose (interp.data.corpus) into an activation store, and report per layer the "
                       "smallest k whose top-k principal components explain 99%% of the variance, divided by d, "
                       "with bootstrap CIs (report.json, report.html).")
    p.add_argument("model", help="packaged model name, .gguf file, local folder or hub id")
    p.add_argument("--out", required=True, help="output folder for the store, report.json and report.html")
    p.add_argument("--sites", default="attn_out,mlp_out,resid_post", help="comma-separated site names")
    p.add_argument("--layers", default="all", help="'all', or comma-separated layer indices (default all)")
    p.add_argument("--passages", type=int, default=200, help="text passages to read (default 200)")
    p.add_argument("--max-tokens", type=int, default=128, help="tokens per passage (default 128)")
    p.add_argument("--positions", default="1:", help="token positions; default '1:' drops the first token, whose "
                   "attention-sink activations are outliers ('all' keeps it)")
    p.add_argument("--threshold", type=float, default=0.99, help="variance threshold (default 0.99)")
    p.add_argument("--bootstrap", type=int, default=30, help="bootstrap resamples for the CI (default 30)")
    p.add_argument("--batch-size", type=int, default=8, help="passages per forward pass (default 8)")
    p.set_defaults(func=run)


def run(args) -> int:
    from ..analyzers.rank import fit_store_sites
    from ..data.corpus import passages_for
    from ..errors import InterpError
    from ..loading import load_model
    from ..plots import write_html
    from ..sites import Site

    model = load_model(args.model)
    names = [s.strip() for s in args.sites.split(",") if s.strip()]
    layers = list(range(model.n_layers)) if args.layers == "all" else [int(x) for x in args.layers.split(",")]
    if any(not 0 <= layer < model.n_layers for layer in layers):
        raise InterpError(f"layers must be in 0..{model.n_layers - 1}, got {args.layers}")
    texts = passages_for(model.tokenizer, args.passages, args.max_tokens)
    out = Path(args.out)
    t0 = time.time()
    store = model.capture_to_store(texts, out / "store", [str(Site(n, layer)) for n in names for layer in layers],
                                   args.positions, chat=False, batch_size=args.batch_size, shard_size=64)
    fits = fit_store_sites(store, threshold=args.threshold, n_bootstrap=args.bootstrap, progress=True)
    report = {"model": model.describe(), "threshold": args.threshold, "positions": args.positions,
              "n_passages": len(texts), "max_tokens": args.max_tokens, "n_tokens": store.n_tokens,
              "layers": layers, "relative_k99": {}, "k99": {}, "ci": {}, "seconds": None}
    for n in names:
        ests = [fits[str(Site(n, layer))] for layer in layers]
        report["relative_k99"][n] = [e.relative_k_ for e in ests]
        report["k99"][n] = [e.k_ for e in ests]
        report["ci"][n] = [list(e.ci_) for e in ests]
    report["seconds"] = round(time.time() - t0, 1)
    (out / "report.json").write_text(json.dumps(report, indent=1))
    write_html([rank_figure(report)], out / "report.html", title=f"Effective rank: {model.name}",
               intro=f"k{round(args.threshold * 100)}/d per layer on {store.n_tokens} tokens of documentation "
               f"prose; bands: {args.bootstrap}-resample bootstrap 95% CI over tokens.")
    for n, rel in report["relative_k99"].items():
        print(f"{n:<11} " + " ".join(f"{r:.2f}" for r in rel))
    print(f"layers {layers}; {store.n_tokens} tokens; wrote {out}/report.json and report.html")
    return 0


def rank_figure(report: dict):
    """Relative rank vs layer, one line per site, CI bands."""
    import plotly.graph_objects as go

    fig = go.Figure()
    xs = report["layers"]
    for n, ys in report["relative_k99"].items():
        lo, hi = zip(*report["ci"][n])
        fig.add_trace(go.Scatter(x=xs + xs[::-1], y=list(hi) + list(lo)[::-1], fill="toself", opacity=0.2,
                                 line={"width": 0}, showlegend=False, hoverinfo="skip", name=f"{n} CI"))
        fig.add_trace(go.Scatter(x=xs, y=ys, mode="lines+markers", name=n))
    fig.update_layout(title=f"k{round(report['threshold'] * 100)} / d per layer ({report['n_tokens']} tokens)",
                      xaxis_title="layer", yaxis_title="relative rank", template="plotly_white")
    return fig
