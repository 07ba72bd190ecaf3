"""``interp rank``: effective rank of attention vs MLP outputs per layer."""
from __future__ import annotations


def add_parser(sub) -> None:
    p = sub.add_parser("rank", help="effective rank (k99/d) of attn_out, mlp_out and resid_post per layer",
                       description="Capture attention outputs, MLP outputs and the residual stream on English "
                       "documentation prose (interp.corpus) and report the smallest k whose top-k principal "
                       "components explain 99%% of the variance, divided by d, with bootstrap CIs.")
    p.add_argument("model", help="packaged model name, .gguf file, local folder or hub id")
    p.add_argument("--out", required=True, help="output folder for report.json and report.html")
    p.add_argument("--passages", type=int, default=200, help="text passages to read (default 200)")
    p.add_argument("--max-tokens", type=int, default=128, help="tokens per passage (default 128)")
    p.add_argument("--threshold", type=float, default=0.99, help="variance threshold (default 0.99)")
    p.add_argument("--bootstrap", type=int, default=30, help="bootstrap resamples for the CI (default 30)")
    p.set_defaults(func=run)


def run(args) -> int:
    from ..corpus import text_corpus
    from ..loading import load_model
    from ..rank_experiment import rank_per_layer, write_rank_report

    model = load_model(args.model)
    report = rank_per_layer(model, text_corpus(max_passages=args.passages), threshold=args.threshold,
                            max_tokens=args.max_tokens, n_bootstrap=args.bootstrap)
    write_rank_report(report, args.out)
    for name, rel in report["relative_k99"].items():
        print(f"{name:<11} " + " ".join(f"{r:.2f}" for r in rel))
    print(f"{report['n_tokens']} tokens; wrote {args.out}/report.json and report.html")
    return 0
