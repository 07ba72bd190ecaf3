"""``interp sae train | compare | bench``: SAEs on one site through SAELens, random vs active-subspace init.

Parses arguments, validates the site and layer before the model loads, and
calls ``interp.experiments.sae.run`` (train, compare) or
``interp.bench.sae.bench_sae`` (bench).
"""
from __future__ import annotations

import argparse


def _common(p) -> None:
    p.add_argument("model", metavar="MODEL", help="packaged model name, .gguf file, local folder or hub id")
    p.add_argument("--site", default="attn_out", help="site name (default attn_out)")
    p.add_argument("--layer", type=int, required=True, help="layer index")
    p.add_argument("--out", required=True, help="output folder (stores, runs, report); a rerun resumes")
    p.add_argument("--kind", default="topk", choices=["standard", "topk", "batchtopk", "jumprelu"],
                   help="SAELens architecture (default topk)")
    p.add_argument("--d-sae", type=int, default=None, help="dictionary size (default 8 x d_model)")
    p.add_argument("--k", type=int, default=32, help="active features for topk/batchtopk (default 32)")
    p.add_argument("--l1", type=float, default=5.0, help="L1 coefficient for standard (default 5)")
    p.add_argument("--l0", type=float, default=1.0, help="L0 coefficient for jumprelu (default 1)")
    p.add_argument("--d-active", type=int, default=None, help="active-subspace size (default: measured k99)")
    p.add_argument("--tokens", type=int, default=200_000, help="training tokens (default 200000)")
    p.add_argument("--passages", type=int, default=None,
                   help="corpus passages captured for training (default: enough for --tokens, at most one epoch)")
    p.add_argument("--val-passages", type=int, default=64,
                   help="validation passages: d_active and the decoder norm are chosen on them (default 64)")
    p.add_argument("--eval-passages", type=int, default=64, help="test passages for evaluation (default 64)")
    p.add_argument("--lm-passages", type=int, default=16, help="test passages for the spliced LM loss (default 16)")
    p.add_argument("--b-dec", default="mean", choices=["mean", "zero"],
                   help="decoder bias at init, the same for both inits (default mean, as the official code)")
    p.add_argument("--no-norm-search", action="store_true",
                   help="skip the official decoder-norm search (rows keep SAELens' initial norms)")
    p.add_argument("--max-tokens", type=int, default=128, help="tokens per passage (default 128)")
    p.add_argument("--batch-size", type=int, default=1024, help="SAE batch in tokens (default 1024)")
    p.add_argument("--lr", type=float, default=3e-4, help="learning rate (default 3e-4)")
    p.add_argument("--dead-window", type=int, default=50_000,
                   help="training tokens without firing that make a feature dead (default 50000)")
    p.add_argument("--checkpoint-every", type=int, default=50_000, help="tokens between checkpoints")
    p.add_argument("--seed", type=int, default=0, help="seed for the passage split, SAE init and data order (default 0)")
    p.add_argument("--seeds", nargs="+", type=int, default=None,
                   help="run once per seed (space-separated, e.g. 0 1 2) and report mean ± spread")


def add_parser(sub) -> None:
    p = sub.add_parser("sae", help="train SAEs through SAELens; compare random vs active-subspace init",
                       description="Sparse autoencoders on one site, trained by SAELens' SAETrainer from an "
                       "interp ActivationStore of documentation prose. Runs resume after a kill.")
    ss = p.add_subparsers(dest="sae_command", metavar="SUBCOMMAND", required=True)
    t = ss.add_parser("train", help="train one SAE", description="Train one SAE; writes DIR/<init>/sae "
                      "(SAELens format, SAE.load_from_disk), DIR/<init>/result.json and DIR/report.json.")
    _common(t)
    t.add_argument("--init", default="active", choices=["active", "random"], help="initialization (default active)")
    t.set_defaults(func=run_train)
    c = ss.add_parser("compare", help="random vs active init, same budget and seed",
                      description="Train with random and with active-subspace init on the same activations, "
                      "budget and seed; write report.json (dead_fraction, explained_variance, l0, lm_loss per "
                      "init) and report.html.")
    _common(c)
    c.set_defaults(func=run_compare)
    b = ss.add_parser("bench", help="training tokens/s: interp's store-fed loop vs SAELens' own fit loop",
                      description="Time SAE training on the same activations through interp (train_sae: streamed "
                      "from the store, metrics, checkpoints) and through SAELens' SAETrainer.fit on an in-memory "
                      "iterator, plus the one-off cost of active-subspace init; writes DIR/bench.json.")
    _common(b)
    b.set_defaults(func=run_bench)


def _config(args: argparse.Namespace, inits: tuple[str, ...]):
    """The experiment's Config from the arguments, validated before any model or corpus is loaded."""
    from ..experiments import sae
    from ._args import known_n_layers

    config = sae.Config(site=args.site, layer=args.layer, inits=inits, kind=args.kind, d_sae=args.d_sae, k=args.k,
                        l1=args.l1, l0=args.l0, d_active=args.d_active, tokens=args.tokens, passages=args.passages,
                        val_passages=args.val_passages, eval_passages=args.eval_passages,
                        lm_passages=args.lm_passages, max_tokens=args.max_tokens, b_dec=args.b_dec,
                        norm_search=not args.no_norm_search, batch_size=args.batch_size, lr=args.lr,
                        dead_window=args.dead_window, checkpoint_every=args.checkpoint_every, seed=args.seed,
                        seeds=tuple(args.seeds) if args.seeds else None)
    return sae.check_config(config, known_n_layers(args.model))


def _print(report: dict, init: str) -> None:
    from ..experiments.sae import recovered_text

    lm = report["lm_loss"][init]
    norm = report.get("decoder_norm", {}).get(init)
    print(f"{init:<7} dead {report['dead_fraction'][init]:.3f} (test, {report['eval_tokens']} tokens), dead in training "
          f"{report['dead_fraction_train'][init]:.3f} (last {report['dead_window_tokens_train']} training tokens), EV "
          f"{report['explained_variance'][init]:.4f}, L0 {report['l0'][init]:.1f}"
          + (f", decoder norm {norm:.3f}" if norm is not None else "")
          + f", LM loss {lm['clean']:.3f} -> {lm['spliced']:.3f} (zero-ablated {lm['zero_ablated']:.3f}, recovered "
          f"{recovered_text(lm)})")


def _print_seeds(result) -> None:
    seeds = result.report.get("seeds")
    if seeds:
        print(f"mean ± sd over seeds {seeds['seeds']}:")
        for h in result.headlines:
            print(f"  {h.name}: {h.value:.3f} {h.note}")


def run_train(args) -> int:
    from ..experiments import sae
    from ..loading import load_model

    config = _config(args, (args.init,))
    result = sae.run(load_model(args.model), config, out=args.out)
    _print(result.report, args.init)
    _print_seeds(result)
    print(f"wrote {args.out}/{args.init}/sae (SAELens format), result.json, and report.json / report.html")
    return 0


def run_compare(args) -> int:
    from ..experiments import sae
    from ..loading import load_model

    config = _config(args, ("random", "active"))
    result = sae.run(load_model(args.model), config, out=args.out)
    for init in ("active", "random"):
        _print(result.report, init)
    _print_seeds(result)
    print(f"wrote {args.out}/report.json and report.html")
    return 0


def run_bench(args) -> int:
    from ..bench.sae import bench_sae, print_table
    from ..loading import load_model

    config = _config(args, ("random", "active"))
    print_table(bench_sae(load_model(args.model), config, out=args.out))
    return 0
