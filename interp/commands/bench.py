"""``interp bench``: benchmarks that print measured numbers."""
from __future__ import annotations

import json


def add_parser(sub) -> None:
    p = sub.add_parser("bench", help="run a benchmark and print measured numbers",
                       description="Benchmarks print what they measure on this machine; nothing is asserted.")
    which = p.add_subparsers(dest="bench", metavar="BENCH")
    cap = which.add_parser("capture", help="capture cost vs a plain forward, TransformerLens and nnsight",
                           description="Time interp capture (memory and store) against a plain HF forward, "
                           "TransformerLens run_with_cache and nnsight, and the peak RSS of store captures "
                           "of N and 10N prompts.")
    cap.add_argument("--model", default=None, help="model to benchmark (default: the packaged default model)")
    cap.add_argument("--batch", type=int, default=8, help="prompts per batch (default 8)")
    cap.add_argument("--seq", type=int, default=64, help="tokens per prompt (default 64)")
    cap.add_argument("--reps", type=int, default=5, help="timed repetitions, median reported (default 5)")
    cap.add_argument("--rss-n", type=int, default=64, help="N for the peak-RSS store captures (default 64)")
    cap.add_argument("--json", action="store_true", help="print one JSON object")
    cap.set_defaults(func=run_capture)
    p.set_defaults(func=lambda args: p.print_help() or 0)


def run_capture(args) -> int:
    from ..bench_capture import bench_capture, print_table
    from ..packaged import DEFAULT_MODEL

    result = bench_capture(args.model or DEFAULT_MODEL, batch=args.batch, seq=args.seq, reps=args.reps,
                           rss_n=args.rss_n, progress=not args.json)
    if args.json:
        print(json.dumps(result))
    else:
        print_table(result)
    return 0
