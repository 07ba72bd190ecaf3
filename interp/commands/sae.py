"""``interp sae train`` / ``interp sae compare``: SAEs on one site through SAELens, random vs active-subspace init."""
from __future__ import annotations

import dataclasses
import json
from pathlib import Path


def _common(p) -> None:
    p.add_argument("model", help="packaged model name, .gguf file, local folder or hub id")
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
    p.add_argument("--eval-passages", type=int, default=64, help="held-out passages for evaluation (default 64)")
    p.add_argument("--lm-passages", type=int, default=16, help="held-out passages for the spliced LM loss")
    p.add_argument("--max-tokens", type=int, default=128, help="tokens per passage (default 128)")
    p.add_argument("--batch-size", type=int, default=1024, help="SAE batch in tokens (default 1024)")
    p.add_argument("--lr", type=float, default=3e-4, help="learning rate (default 3e-4)")
    p.add_argument("--dead-window", type=int, default=50_000,
                   help="training tokens without firing that make a feature dead (default 50000)")
    p.add_argument("--checkpoint-every", type=int, default=50_000, help="tokens between checkpoints")
    p.add_argument("--seed", type=int, default=0, help="seed for SAE init, data order and active init (default 0)")


def add_parser(sub) -> None:
    p = sub.add_parser("sae", help="train SAEs through SAELens; compare random vs active-subspace init",
                       description="Sparse autoencoders on one site, trained by SAELens' SAETrainer from an "
                       "interp ActivationStore of documentation prose. Runs resume after a kill.")
    ss = p.add_subparsers(dest="sae_command", metavar="SUBCOMMAND", required=True)
    t = ss.add_parser("train", help="train one SAE", description="Train one SAE; writes DIR/<init>/sae "
                      "(SAELens format, SAE.load_from_disk) and DIR/<init>/result.json.")
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
                      "iterator, plus the one-off cost of active-subspace init.")
    _common(b)
    b.set_defaults(func=run_bench)


def _setup(args):
    from ..data.corpus import passages_for
    from ..loading import load_model
    from ..sae_training import SAETrainConfig
    from ..sites import Site

    model = load_model(args.model)
    site = str(Site(args.site, args.layer))
    n_train = args.passages or -(-args.tokens // (args.max_tokens - 1))
    train_texts = passages_for(model.tokenizer, n_train, args.max_tokens)
    eval_texts = passages_for(model.tokenizer, args.eval_passages, args.max_tokens, offset=n_train)
    out = Path(args.out)
    kw = dict(chat=False, shard_size=128, batch_size=8)
    train_store = model.capture_to_store(train_texts, out / "store_train", site, "1:", **kw)
    eval_store = model.capture_to_store(eval_texts, out / "store_eval", site, "1:", **kw)
    cfg = SAETrainConfig(kind=args.kind, d_sae=args.d_sae or 8 * model.d_model, k=args.k, l1_coefficient=args.l1,
                         l0_coefficient=args.l0, d_active=args.d_active, lr=args.lr, batch_size=args.batch_size,
                         total_tokens=args.tokens, dead_window_tokens=args.dead_window,
                         checkpoint_every_tokens=args.checkpoint_every, seed=args.seed)
    return model, site, train_store, eval_store, eval_texts[:args.lm_passages], cfg, out


def _train_and_evaluate(model, site, train_store, eval_store, lm_texts, cfg, out: Path) -> dict:
    from sae_lens import SAE

    from ..sae_training import evaluate, spliced_lm_loss, train_sae

    summary = train_sae(train_store, site, out / cfg.init, cfg)
    sae = SAE.load_from_disk(out / cfg.init / "sae")
    result = {"init": cfg.init, "site": site, "config": dataclasses.asdict(cfg), "init_info": summary["init_info"],
              "train_tokens_in_store": train_store.n_tokens,
              "eval": evaluate(sae, eval_store.load().tokens(site)),
              "lm_loss": spliced_lm_loss(model, sae, site, lm_texts),
              "dead_fraction_train": summary["dead_fraction_train"],
              "dead_window_tokens_train": summary["dead_window_tokens"],
              "tokens_per_second": summary["tokens_per_second"], "history": summary["history"]}
    (out / cfg.init / "result.json").write_text(json.dumps(result, indent=1))
    return result


def _print(r: dict) -> None:
    e, lm = r["eval"], r["lm_loss"]
    print(f"{r['init']:<7} dead {e['dead_fraction']:.3f} (held-out {e['window_tokens']} tokens), dead in training "
          f"{r['dead_fraction_train']:.3f} (last {r['dead_window_tokens_train']} tokens), EV "
          f"{e['explained_variance']:.4f}, L0 {e['l0']:.1f}, LM loss {lm['clean']:.3f} -> {lm['spliced']:.3f} "
          f"(zero-ablated {lm['zero_ablated']:.3f}, recovered {lm['loss_recovered']:.3f})")


def run_train(args) -> int:
    model, site, train_store, eval_store, lm_texts, cfg, out = _setup(args)
    r = _train_and_evaluate(model, site, train_store, eval_store, lm_texts,
                            dataclasses.replace(cfg, init=args.init), out)
    _print(r)
    print(f"wrote {out / args.init}/sae (SAELens format) and result.json")
    return 0


def run_compare(args) -> int:
    from ..plots import write_html

    model, site, train_store, eval_store, lm_texts, cfg, out = _setup(args)
    results = {init: _train_and_evaluate(model, site, train_store, eval_store, lm_texts,
                                         dataclasses.replace(cfg, init=init), out) for init in ("random", "active")}
    inits = ("active", "random")
    report = {
        "model": model.describe(), "site": site, "kind": cfg.kind, "d_sae": cfg.d_sae,
        "train_tokens": cfg.total_tokens, "train_tokens_in_store": train_store.n_tokens,
        "dead_definition": f"a feature that never fires on the {eval_store.n_tokens} held-out tokens",
        "dead_fraction": {i: results[i]["eval"]["dead_fraction"] for i in inits},
        "explained_variance": {i: results[i]["eval"]["explained_variance"] for i in inits},
        "l0": {i: results[i]["eval"]["l0"] for i in inits},
        "dead_fraction_train": {i: results[i]["dead_fraction_train"] for i in inits},
        "dead_window_tokens_train": results["active"]["dead_window_tokens_train"],
        "lm_loss": {i: results[i]["lm_loss"] for i in inits},
        "d_active": results["active"]["init_info"]["d_active"],
        "active_init_seconds": results["active"]["init_info"]["seconds"],
        "tokens_per_second": {i: results[i]["tokens_per_second"] for i in inits},
    }
    (out / "report.json").write_text(json.dumps(report, indent=1))
    write_html(compare_figures(results), out / "report.html", title=f"SAE init: {model.name} {site}",
               intro=f"{cfg.kind} SAE, d_sae {cfg.d_sae}, {cfg.total_tokens} training tokens, seed {cfg.seed}; "
               f"{report['dead_definition']}; active init d_active = {report['d_active']}.")
    for i in inits:
        _print(results[i])
    print(f"wrote {out}/report.json and report.html")
    return 0


def compare_figures(results: dict) -> list:
    """Dead fraction, explained variance and L0 against training tokens, one line per init."""
    import plotly.graph_objects as go

    figs = []
    for metric, title in (("dead_fraction", "dead fraction (training window)"),
                          ("explained_variance", "explained variance (training batch)"), ("l0", "L0")):
        fig = go.Figure()
        for init, r in results.items():
            fig.add_trace(go.Scatter(x=[h["tokens"] for h in r["history"]], y=[h[metric] for h in r["history"]],
                                     mode="lines", name=init))
        fig.update_layout(title=title, xaxis_title="training tokens", yaxis_title=metric, template="plotly_white")
        figs.append(fig)
    return figs


def run_bench(args) -> int:
    from ..sae_training import benchmark

    model, site, train_store, _, _, cfg, out = _setup(args)
    r = benchmark(train_store, site, cfg, out / "bench")
    (out / "bench.json").write_text(json.dumps(r, indent=1))
    print(f"{cfg.kind} d_sae {cfg.d_sae}, batch {cfg.batch_size}, {r['tokens']} tokens of {site}:")
    print(f"  interp train_sae (store -> SAETrainer.step, metrics, checkpoints): {r['interp_tokens_per_s']:.0f} "
          f"tokens/s wall ({r['interp_step_tokens_per_s']:.0f} in the steps alone)")
    print(f"  SAELens SAETrainer.fit on an in-memory iterator:               {r['saelens_fit_tokens_per_s']:.0f} "
          f"tokens/s")
    print(f"  active-subspace init: {r['active_init_seconds']:.2f} s once (SVD of {r['active_init_tokens']} tokens, "
          f"d_active {r['active_init_d_active']})")
    return 0
