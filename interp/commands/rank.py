"""``interp rank``: effective rank (k99/d) of attention vs MLP outputs and the residual stream per layer.

Parses arguments, validates sites and layers before the model loads, and calls
``interp.experiments.rank.run``.
"""
from __future__ import annotations

from ._args import known_n_layers, parse_layer_list, split_list


def add_parser(sub) -> None:
    p = sub.add_parser("rank", help="effective rank (k99/d) of attn_out, mlp_out and resid_post per layer",
                       description="Capture attention outputs, MLP outputs and the residual stream on English "
                       "documentation prose (interp.data.corpus) into an activation store, and report per layer the "
                       "smallest k whose top-k principal components explain 99%% of the variance, divided by d, "
                       "with bootstrap CIs (report.json, report.html).")
    p.add_argument("model", metavar="MODEL", help="packaged model name, .gguf file, local folder or hub id")
    p.add_argument("--out", required=True, help="output folder for the store, report.json and report.html")
    p.add_argument("--sites", nargs="+", default=["attn_out", "mlp_out", "resid_post"],
                   help="site names, space-separated (default attn_out mlp_out resid_post)")
    p.add_argument("--layers", nargs="+", default=["all"], help="'all' or layer indices, space-separated (default all)")
    p.add_argument("--passages", type=int, default=200, help="text passages to read (default 200)")
    p.add_argument("--max-tokens", type=int, default=128, help="tokens per passage (default 128)")
    p.add_argument("--positions", default="1:", help="token positions; default '1:' drops the first token, whose "
                   "attention-sink activations are outliers ('all' keeps it)")
    p.add_argument("--threshold", type=float, default=0.99, help="variance threshold (default 0.99)")
    p.add_argument("--bootstrap", type=int, default=30,
                   help="percentile-bootstrap resamples over test passages for the CI (default 30)")
    p.add_argument("--seed", type=int, default=0, help="seed of the passage split and the bootstrap (default 0)")
    p.add_argument("--seeds", nargs="+", type=int, default=None,
                   help="run once per seed (space-separated, e.g. 0 1 2) and report mean ± spread")
    p.add_argument("--batch-size", type=int, default=8, help="passages per forward pass (default 8)")
    p.set_defaults(func=run)


def run(args) -> int:
    from ..experiments import rank
    from ..loading import load_model

    config = rank.Config(sites=tuple(split_list(args.sites)),
                         layers=parse_layer_list(args.layers, known_n_layers(args.model)),
                         passages=args.passages, max_tokens=args.max_tokens, positions=args.positions,
                         threshold=args.threshold, bootstrap=args.bootstrap, batch_size=args.batch_size,
                         seed=args.seed, seeds=args.seeds)
    config = rank.check_config(config, known_n_layers(args.model))  # fail before the model loads
    model = load_model(args.model)
    result = rank.run(model, config, out=args.out)
    r = result.report
    for n, rel in r["relative_k99"].items():
        print(f"{n:<11} " + " ".join(f"{v:.2f}" for v in rel))
    print(f"layers {r['layers']}; test split: {r['n_test_passages']} passages, {r['n_tokens']} tokens")
    for h in result.headlines:
        value = f"{h.value:.3f}" if isinstance(h.value, float) else h.value
        print(f"  {h.name}: {value} [{h.split}] {h.note}")
    print(f"wrote {args.out}/report.json and report.html")
    return 0
