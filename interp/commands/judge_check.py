"""``interp judge-check``: each refusal judge's accuracy, Cohen's κ and confusion matrix against hand labels.

Reads the shipped ``data/judge_labels.jsonl`` (or ``--labels FILE``: one JSON object per line with
``prompt``, ``completion`` and ``label``), runs every judge of ``--judges`` on its pairs and compares.
"""
from __future__ import annotations

import json
import math
import time


def add_parser(sub) -> None:
    p = sub.add_parser("judge-check", help="measure refusal judges against hand-labelled completions",
                       description="Run each judge (substring, model, model:NAME, hf-classifier:ID_OR_FOLDER) on "
                       "a labelled set and print its accuracy, Cohen's kappa and confusion matrix "
                       "(rows: the hand label; columns: the judge's).")
    p.add_argument("--labels", help="JSON-lines file with prompt, completion, label per line "
                   "(default: data/judge_labels.jsonl)")
    p.add_argument("--judges", nargs="+", default=["substring", "model"],
                   help="judges to measure (default: substring model); model:NAME runs another chat model, "
                   "hf-classifier:ID_OR_FOLDER a safety classifier")
    p.add_argument("--limit", type=int, help="only the first N rows (a quick look)")
    p.add_argument("--batch-size", type=int, default=8, help="pairs per forward of a model judge (default 8)")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.set_defaults(func=run)


def run(args) -> int:
    from ..data.prompts import DATA_DIR
    from ..errors import InterpError
    from ..judges import LABELS, ModelJudge, agreement, get_judge, read_labels
    from ._args import split_list

    if args.limit is not None and args.limit < 1:
        raise InterpError(f"--limit must be at least 1, got {args.limit}")
    if args.batch_size < 1:
        raise InterpError(f"--batch-size must be at least 1, got {args.batch_size}")
    rows = read_labels(args.labels or DATA_DIR / "judge_labels.jsonl")[: args.limit]
    specs = split_list(args.judges)
    judges = [get_judge(s) for s in specs]  # bad names and absent classifiers fail before any model loads
    for j in judges:
        if isinstance(j, ModelJudge):
            j.batch_size, j.progress = args.batch_size, not args.json
    prompts, completions = [r["prompt"] for r in rows], [r["completion"] for r in rows]
    truth = [r["label"] for r in rows]
    out = {}
    for spec, j in zip(specs, judges):
        start = time.perf_counter()
        result = agreement(truth, j(prompts, completions))
        result["seconds"] = round(time.perf_counter() - start, 1)
        out[spec] = result
    if args.json:
        print(json.dumps({k: {**v, "kappa": None if math.isnan(v["kappa"]) else v["kappa"]} for k, v in out.items()}))
        return 0
    print(f"{len(rows)} labelled pairs: " + ", ".join(f"{sum(t == x for t in truth)} {x}" for x in LABELS))
    for spec, r in out.items():
        print(f"\n{spec}: accuracy {r['accuracy']:.3f}, Cohen's kappa {r['kappa']:.3f} ({r['seconds']} s)")
        print("  hand \\ judge " + "".join(f"{x:>12}" for x in LABELS))
        for t in LABELS:
            print(f"  {t:<12} " + "".join(f"{r['confusion'][t][x]:>12}" for x in LABELS))
    return 0
