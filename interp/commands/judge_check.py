"""``interp judge-check``: each refusal judge's accuracy, Cohen's κ and confusion matrix against hand labels.

Reads the shipped ``data/judge_labels.jsonl`` (or ``--labels FILE``: one JSON object per line with
``prompt``, ``completion`` and ``label``), runs every judge of ``--judges`` on its pairs and compares, over
all rows and over the ``val`` and ``test`` halves (``interp.judges.label_split``, by prompt). ``--fit-offsets``
fits a model judge's per-label offsets on the val half first.
"""
from __future__ import annotations

import json
import math
import time


def add_parser(sub) -> None:
    p = sub.add_parser("judge-check", help="measure refusal judges against hand-labelled completions",
                       description="Run each judge (substring, rules, model, model:NAME, hf-classifier:ID_OR_FOLDER) on "
                       "a labelled set and print its accuracy, Cohen's kappa and confusion matrix "
                       "(rows: the hand label; columns: the judge's), over the whole set and over its val and test "
                       "halves (split by prompt; judges' settings are chosen on val).")
    p.add_argument("--labels", help="JSON-lines file with prompt, completion, label per line "
                   "(default: data/judge_labels.jsonl)")
    p.add_argument("--judges", nargs="+", default=["substring", "rules", "model"],
                   help="judges to measure (default: substring rules model); model:NAME runs another chat model, "
                   "hf-classifier:ID_OR_FOLDER a safety classifier")
    p.add_argument("--limit", type=int, help="only the first N rows (a quick look)")
    p.add_argument("--batch-size", type=int, default=8, help="pairs per forward of a model judge (default 8)")
    p.add_argument("--fit-offsets", action="store_true",
                   help="for model judges: fit the per-label offsets on the val half (interp.judges."
                   "fit_label_offsets) and report with them; the test half's numbers are then the honest ones")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.set_defaults(func=run)


def run(args) -> int:
    from ..data.prompts import DATA_DIR
    from ..errors import InterpError
    from ..judges import (LABELS, ModelJudge, agreement, fit_label_offsets, get_judge, label_split,
                          read_labels)
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
    halves = [label_split(p) for p in prompts]
    val = [i for i, h in enumerate(halves) if h == "val"]
    if args.fit_offsets and not val:
        raise InterpError("--fit-offsets needs rows in the val half (interp.judges.label_split); this labelled "
                          "set has none: add rows with other prompts")
    out = {}
    for spec, j in zip(specs, judges):
        start = time.perf_counter()
        if args.fit_offsets and isinstance(j, ModelJudge):  # fitted on the val half only
            scores = j.scores(prompts, completions)
            j.offsets = fit_label_offsets(scores[val], [truth[i] for i in val])
            labels = j.labels_from_scores(scores)
        else:
            labels = j(prompts, completions)
        result = agreement(truth, labels)
        result["seconds"] = round(time.perf_counter() - start, 1)
        if isinstance(j, ModelJudge):
            result["offsets"] = list(j.offsets)
        # the same numbers per half: judges' settings are chosen on val, their agreement is read on test
        result["splits"] = {part: agreement([t for t, h in zip(truth, halves) if h == part],
                                            [x for x, h in zip(labels, halves) if h == part])
                            for part in ("val", "test") if part in halves}
        out[spec] = result
    if args.json:
        def clean(v: dict) -> dict:  # NaN κ (one label everywhere) is null in JSON
            return {**v, "kappa": None if math.isnan(v["kappa"]) else v["kappa"]}

        print(json.dumps({k: {**clean(v), "splits": {h: clean(x) for h, x in v["splits"].items()}}
                          for k, v in out.items()}))
        return 0
    print(f"{len(rows)} labelled pairs: " + ", ".join(f"{sum(t == x for t in truth)} {x}" for x in LABELS))
    for spec, r in out.items():
        print(f"\n{spec}: accuracy {r['accuracy']:.3f}, Cohen's kappa {r['kappa']:.3f} ({r['seconds']} s)")
        if "offsets" in r:
            print("  label offsets " + ", ".join(f"{x} {o:+.2f}" for x, o in zip(LABELS, r["offsets"])))
        print("  " + "; ".join(f"{h} half ({x['n']} rows): accuracy {x['accuracy']:.3f}, kappa {x['kappa']:.3f}"
                               for h, x in r["splits"].items()))
        print("  hand \\ judge " + "".join(f"{x:>12}" for x in LABELS))
        for t in LABELS:
            print(f"  {t:<12} " + "".join(f"{r['confusion'][t][x]:>12}" for x in LABELS))
    return 0
