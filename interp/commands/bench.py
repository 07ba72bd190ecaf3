"""``interp bench``: benchmarks that print measured numbers."""
from __future__ import annotations

import json
from pathlib import Path

from ..packaged import DEFAULT_MODEL, DEMO_MODEL
from ._args import add_dtype_argument, add_model_argument, model_name, parse_layer_list, split_list


def add_parser(sub) -> None:
    p = sub.add_parser("bench", help="run a benchmark and print measured numbers",
                       description="Benchmarks print what they measure on this machine; nothing is asserted.")
    which = p.add_subparsers(dest="bench", metavar="BENCH")
    cap = which.add_parser("capture", help="capture cost vs a plain forward, TransformerLens and nnsight",
                           description="Time interp capture (memory and store) against a plain HF forward, "
                           "TransformerLens run_with_cache and nnsight, and the peak RSS of store captures "
                           "of N and 10N prompts.")
    add_model_argument(cap, DEFAULT_MODEL)
    cap.add_argument("--batch", type=int, default=8, help="prompts per batch (default 8)")
    cap.add_argument("--seq", type=int, default=64, help="tokens per prompt (default 64)")
    cap.add_argument("--reps", type=int, default=5, help="timed repetitions, median reported (default 5)")
    cap.add_argument("--rss-n", type=int, default=64, help="N for the peak-RSS store captures (default 64)")
    cap.add_argument("--json", action="store_true", help="print one JSON object")
    cap.set_defaults(func=run_capture)
    gen = which.add_parser("generate", help="generation tokens/s under interventions: interp, TransformerLens, "
                           "nnsight vs plain HF", description="Tokens/s of plain HF generate and, timed round-robin "
                           "in the same run, the same under interp's all-layer directional ablation (weight edit, "
                           "and with every hook), a one-layer Add, and TransformerLens' and nnsight's generate "
                           "with the same ablation; ratios are relative to plain HF (higher is faster).")
    add_model_argument(gen, DEFAULT_MODEL)
    gen.add_argument("--batch", type=int, default=8, help="prompts per batch (default 8)")
    gen.add_argument("--new-tokens", type=int, default=32, help="tokens generated per prompt (default 32)")
    gen.add_argument("--reps", type=int, default=3, help="timed repetitions, median reported (default 3)")
    gen.add_argument("--no-peers", action="store_true", help="skip TransformerLens and nnsight")
    gen.add_argument("--json", action="store_true", help="print one JSON object")
    gen.set_defaults(func=run_generate)
    ref = which.add_parser("refusal", help="refusal-direction search: pruned vs exhaustive wall time",
                           description="Time the refusal-direction search on one split in both modes, with each "
                           "stage's share, and check that both modes pick the same candidate.")
    add_model_argument(ref, DEFAULT_MODEL)
    ref.add_argument("--n-train", type=int, default=64, help="training prompts per class (default 64)")
    ref.add_argument("--n-val", type=int, default=28, help="validation prompts per class (default 28)")
    ref.add_argument("--kl-max", type=float, default=0.1, help="KL filter of the selection (default 0.1)")
    ref.add_argument("--induce-min", type=float, default=0.0, help="induce filter of the selection (default 0)")
    ref.add_argument("--out", help="also write the full result (every candidate's scores) to this JSON file")
    ref.add_argument("--top-k", type=int, default=8, help="pruned mode: candidates fully scored per round")
    ref.add_argument("--json", action="store_true", help="print one JSON object")
    ref.set_defaults(func=run_refusal)
    demo = which.add_parser("demo", help="the refusal demo's wall time per stage and each stage's share",
                            description="Run the refusal experiment (what make demo runs; smaller with the "
                            "options below) and print the wall time of each stage (split/filter, candidates, "
                            "scorer set-up, selection, evaluation) and its share of the whole.")
    add_model_argument(demo, DEMO_MODEL)
    demo.add_argument("--out", help="also write the run's report to this folder")
    for flag, typ, help_ in (("--n-train", int, "training prompts per class"),
                             ("--n-val", int, "validation prompts per class"),
                             ("--n-eval", int, "held-out prompts per class"),
                             ("--max-new-tokens", int, "tokens per greedy completion"),
                             ("--top-k", int, "pruned mode: candidates fully scored per round"),
                             ("--proxy-prompts", int, "pruned mode: proxy prompts per class"),
                             ("--kl-max", float, "KL filter of the selection"),
                             ("--induce-min", float, "induce filter of the selection"),
                             ("--seed", int, "shuffling seed")):
        demo.add_argument(flag, type=typ, default=None, help=f"{help_} (default: as interp demo)")
    demo.add_argument("--no-filter", action="store_true", help="do not filter train/val prompts by the baseline")
    add_dtype_argument(demo, "auto")
    demo.add_argument("--json", action="store_true", help="print one JSON object")
    demo.set_defaults(func=run_demo)
    pat = which.add_parser("patching", help="IOI patching sweep: one forward per patch vs stacked patches",
                           description="Time the IOI patching sweep (validation pairs, as interp patch runs it) "
                           "with one forward per patch and stacked (patch x pair rows per forward), alternating in "
                           "one run, and print both medians, their ratio and the largest effect difference.")
    add_model_argument(pat, DEFAULT_MODEL)
    pat.add_argument("--layers", nargs="+", default=["0", "1", "2", "3", "4", "5"],
                     help="layers to sweep (default 0 1 2 3 4 5)")
    pat.add_argument("--sites", nargs="+", default=["resid_pre", "attn_out", "mlp_out", "attn_z"],
                     help="sites to sweep (default resid_pre attn_out mlp_out attn_z)")
    pat.add_argument("--positions", nargs="+", type=int, default=[-1, -2, -3, -4, -5],
                     help="positions from the end (default -1 -2 -3 -4 -5)")
    pat.add_argument("--pairs", type=int, default=32, help="IOI pairs over all splits, as interp patch (default 32)")
    pat.add_argument("--batch-rows", type=int, default=256, help="stacked rows per forward (default 256)")
    pat.add_argument("--reps", type=int, default=3, help="timed repetitions, median reported (default 3)")
    pat.add_argument("--json", action="store_true", help="print one JSON object")
    pat.set_defaults(func=run_patching)
    p.set_defaults(func=lambda args: p.print_help() or 0)


def run_capture(args) -> int:
    from ..bench.capture import bench_capture, print_table

    result = bench_capture(model_name(args), batch=args.batch, seq=args.seq, reps=args.reps,
                           rss_n=args.rss_n, progress=not args.json)
    if args.json:
        print(json.dumps(result))
    else:
        print_table(result)
    return 0


def run_demo(args) -> int:
    from ..bench.demo import bench_demo, print_table
    from .demo import DEMO_FILTERS
    from .refusal import check_args

    check_args(args)
    name = model_name(args)
    keys = ("n_train", "n_val", "n_eval", "max_new_tokens", "top_k", "proxy_prompts", "kl_max", "induce_min", "seed")
    config = {**DEMO_FILTERS.get(name, {}), **{k: getattr(args, k) for k in keys if getattr(args, k) is not None}}
    if args.no_filter:
        config["filter_train"] = False
    r = bench_demo(name, config, out=args.out, progress=not args.json, dtype=args.dtype)
    if args.json:
        print(json.dumps(r))
    else:
        print_table(r)
    return 0


def run_refusal(args) -> int:
    from ..bench.refusal import bench_refusal

    r = bench_refusal(model_name(args), args.n_train, args.n_val, args.kl_max, args.top_k,
                      induce_min=args.induce_min, progress=not args.json)
    if args.out:
        Path(args.out).write_text(json.dumps(r, indent=1))
    if args.json:
        print(json.dumps(r))
        return 0
    print(f"refusal search on {r['model']} ({r['n_train']}+{r['n_train']} train, {r['n_val']}+{r['n_val']} val, "
          f"{r['n_candidates']} candidates)")
    for mode in ("pruned", "exhaustive"):
        m = r[mode]
        shares = ", ".join(f"{k[:-2]} {v:.0%}" for k, v in m["stage_share"].items())
        print(f"  {mode:<10} {m['wall_s']:7.1f} s  ({m['fully_scored']} fully scored; choice layer "
              f"{m['choice'][0]}, position {m['choice'][1]}; {shares})")
    print(f"  same choice: {r['same_choice']}")
    return 0


def run_generate(args) -> int:
    from ..bench.generate import bench_generate, print_table

    r = bench_generate(model_name(args), args.batch, args.new_tokens, args.reps, progress=not args.json,
                       peers=not args.no_peers)
    if args.json:
        print(json.dumps(r))
        return 0
    print_table(r)
    return 0


def run_patching(args) -> int:
    from ..bench.patching import bench_patching, print_table

    r = bench_patching(model_name(args), layers=parse_layer_list(args.layers, None), sites=split_list(args.sites),
                       positions=args.positions, pairs=args.pairs, reps=args.reps, batch_rows=args.batch_rows,
                       progress=not args.json)
    if args.json:
        print(json.dumps(r))
    else:
        print_table(r)
    return 0
