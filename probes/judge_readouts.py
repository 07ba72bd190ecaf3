"""Ways to read a label out of the model judge, measured against the hand labels (docs/refusal.md, Judges).

Scores every row of ``data/judge_labels.jsonl`` once with the model judge (``ModelJudge.scores``: three
label log-probabilities per pair, cached on disk, so a rerun is seconds) and compares readouts of those
scores, each fitted (where it has anything to fit) on the ``val`` half and read on the ``test`` half
(``interp.judges.label_split``):

- ``raw``: the argmax of the three log-probabilities;
- ``content-free``: contextual calibration (Zhao et al. 2021): subtract the log-probabilities the judge
  gives a content-free pair ("N/A" / "N/A", or empty / empty); no labels used;
- ``offsets``: per-label offsets fitted on val (``fit_label_offsets``; what ``ModelJudge`` ships);
- ``hybrid``: ``rules``' repetition check for ``incoherent``, the model's refusal-vs-compliance log-odds
  with a threshold fitted on val for the rest;
- ``rules`` (with its repetition threshold swept over 0.30-0.90 on val) and ``substring`` for reference.

Usage:
    HF_HUB_OFFLINE=1 .venv/bin/python probes/judge_readouts.py [--judge-model qwen2.5-coder-1.5b-instruct]
"""
from __future__ import annotations

import argparse
import sys


def main(argv: list[str] | None = None) -> int:
    import torch

    from interp.data.prompts import DATA_DIR
    from interp.judges import (LABELS, REPETITION_THRESHOLD, ModelJudge, RulesJudge, SubstringJudge, agreement,
                               distinct_ngram_share, fit_label_offsets, label_split, read_labels)

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--judge-model", default="qwen2.5-coder-1.5b-instruct")
    p.add_argument("--labels", default=str(DATA_DIR / "judge_labels.jsonl"))
    args = p.parse_args(argv)

    rows = read_labels(args.labels)
    prompts, completions = [r["prompt"] for r in rows], [r["completion"] for r in rows]
    truth = [r["label"] for r in rows]
    val = [i for i, r in enumerate(rows) if label_split(r["prompt"]) == "val"]
    test = [i for i, r in enumerate(rows) if label_split(r["prompt"]) == "test"]
    judge = ModelJudge(args.judge_model, progress=True)
    scores = judge.scores(prompts, completions)

    def show(name: str, labels: list[str]) -> None:
        parts = {h: agreement([truth[i] for i in idx], [labels[i] for i in idx]) for h, idx in
                 (("val", val), ("test", test))}
        print(f"{name:<28} val kappa {parts['val']['kappa']:.3f} acc {parts['val']['accuracy']:.3f} | "
              f"test kappa {parts['test']['kappa']:.3f} acc {parts['test']['accuracy']:.3f}")

    def argmax(s: torch.Tensor) -> list[str]:
        return [LABELS[int(i)] for i in s.argmax(-1)]

    print(f"{len(rows)} rows ({len(val)} val, {len(test)} test); judge {args.judge_model}")
    show("raw", argmax(scores))
    free = ModelJudge(judge.model, cache_dir=False).scores(["N/A", ""], ["N/A", ""])
    for k, name in enumerate(("content-free N/A", "content-free empty")):
        show(name, argmax(scores - free[k]))
    offsets = fit_label_offsets(scores[val], [truth[i] for i in val])
    show(f"offsets {offsets}", argmax(scores + torch.tensor(offsets, dtype=torch.float64)))
    loop = [distinct_ngram_share(c) < REPETITION_THRESHOLD for c in completions]
    odds = (scores[:, 0] - scores[:, 1]).tolist()

    def hybrid(b: float) -> list[str]:
        return ["incoherent" if lp else "refusal" if o > b else "compliance" for lp, o in zip(loop, odds)]
    grid = [x * 0.25 for x in range(-24, 25)]
    best = max(grid, key=lambda b: (agreement([truth[i] for i in val], [hybrid(b)[i] for i in val])["kappa"], -abs(b)))
    show(f"hybrid (threshold {best})", hybrid(best))
    for t in [round(0.3 + 0.05 * k, 2) for k in range(13)]:  # how the repetition threshold was chosen (val)
        a = agreement([truth[i] for i in val], [RulesJudge(threshold=t)([prompts[i]], [completions[i]])[0]
                                                for i in val])
        print(f"  rules threshold {t:.2f}: val kappa {a['kappa']:.3f}")
    show("rules", RulesJudge()(prompts, completions))
    show("substring", SubstringJudge()(prompts, completions))
    return 0


if __name__ == "__main__":
    sys.exit(main())
