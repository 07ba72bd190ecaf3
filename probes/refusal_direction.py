"""Refusal direction (Arditi et al., arXiv 2406.11717): the pipeline, its targets, and candidate diagnostics.

Runs ``interp refusal`` on a model (unless ``--reuse`` finds its report in
``--out``) and prints the held-out evaluation against this project's targets
(refusal after ablation <= 0.25 x baseline, harmless refused with +r >= 0.8,
CE change <= 0.05 nats). Two diagnostics read the run's own ``splits.json``,
so they see exactly the prompts the pipeline used:

- ``--score-layers 15-19``: the full and proxy scores (bypass, induce, KL) of
  every candidate in those layers, written to ``candidate_scores.json``;
- ``--candidate 16,-1``: the held-out evaluation of another candidate than
  the chosen one, on the same held-out prompts.

Usage:
    HF_HUB_OFFLINE=1 .venv/bin/python probes/refusal_direction.py qwen2.5-coder-0.5b-instruct --out runs/refusal05 \\
        --kl-max 0.2 --induce-min -0.5 --score-layers 15-19 --candidate 16,-1
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

TARGETS = "targets: ablated <= 0.25 x baseline, harmless +r >= 0.8, CE change <= 0.05 nats"


def verdict(ev: dict) -> str:
    checks = [ev["ablated_refusal"] <= 0.25 * ev["baseline_refusal"], ev["induced_refusal"] >= 0.8,
              ev["ce_delta"] <= 0.05]
    return f"{sum(checks)} of 3 targets met"


def show(name: str, ev: dict) -> None:
    print(f"{name}: harmful refused {ev['baseline_refusal']:.2f} -> ablated {ev['ablated_refusal']:.2f}, "
          f"-r {ev['minus_r_refusal']:.2f}; harmless {ev['baseline_harmless_refusal']:.2f} -> +r "
          f"{ev['induced_refusal']:.2f}; CE change {ev['ce_delta']:+.4f} ({verdict(ev)})")


def candidates_and_scorer(model, splits: dict, cfg):
    from interp.analyzers.refusal import CandidateScorer, candidate_directions, refusal_token_ids

    ids = refusal_token_ids(model.tokenizer, cfg["refusal_tokens"])
    acts = [model.capture(splits[k], "resid_pre", "post_instruction", batch_size=cfg["batch_size"], progress=False)
            for k in ("harmful_train", "harmless_train")]
    scorer = CandidateScorer(model, splits["harmful_val"], splits["harmless_val"], ids,
                             batch_size=cfg["batch_size"], proxy_prompts=cfg["proxy_prompts"], progress=False)
    return candidate_directions(*acts).float(), scorer


def main(argv: list[str] | None = None) -> int:
    from interp.cli import main as interp_main

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("model", help="packaged model name, .gguf file, local folder or hub id")
    p.add_argument("--out", required=True, help="the run's folder (interp refusal --out)")
    p.add_argument("--kl-max", default="0.1", help="selection KL filter passed to interp refusal (default 0.1)")
    p.add_argument("--induce-min", default="0", help="selection induce filter passed to interp refusal (default 0)")
    p.add_argument("--reuse", action="store_true", help="read the report already in --out instead of running")
    p.add_argument("--score-layers", help="score every candidate of these layers, e.g. 15-19")
    p.add_argument("--candidate", help="evaluate this candidate on the held-out prompts too, e.g. 16,-1")
    args = p.parse_args(argv)
    out = Path(args.out)
    if not (args.reuse and (out / "report.json").exists()):
        rc = interp_main(["refusal", args.model, "--out", args.out, "--kl-max", args.kl_max,
                          "--induce-min", args.induce_min])
        if rc:
            return rc
    report = json.loads((out / "report.json").read_text())
    ch = report["chosen"]
    print(f"\n{TARGETS}\nchosen layer {ch['layer']}, position {ch['position']}: bypass {ch['bypass']:.2f}, "
          f"induce {ch['induce']:.2f}, KL {ch['kl']:.3f}")
    show("chosen", report["evaluation"])
    if not (args.score_layers or args.candidate):
        return 0

    from interp.loading import load_model
    from interp.refusal import evaluate

    model = load_model(args.model, progress=False)
    splits = json.loads((out / "splits.json").read_text())
    cands, scorer = candidates_and_scorer(model, splits, report["config"])
    n_pos = cands.shape[1]
    if args.score_layers:
        lo, hi = (int(x) for x in args.score_layers.split("-"))
        rows = {}
        print("layer  pos   bypass  induce      KL | proxy: bypass  induce      KL")
        for layer in range(lo, hi + 1):
            for pos in range(n_pos):
                c = cands[layer, pos]
                (b, k), i = scorer.bypass_and_kl(c), scorer.induce(c, layer)
                (pb, pk), pi = scorer.bypass_and_kl(c, proxy=True), scorer.induce(c, layer, proxy=True)
                rows[f"{layer},{pos - n_pos}"] = {"bypass": b, "induce": i, "kl": k, "proxy_bypass": pb,
                                                  "proxy_induce": pi, "proxy_kl": pk}
                print(f"{layer:>5} {pos - n_pos:>4} {b:8.2f} {i:7.2f} {k:7.3f} |        {pb:7.2f} {pi:7.2f} {pk:7.3f}",
                      flush=True)
        (out / "candidate_scores.json").write_text(json.dumps(rows, indent=1))
    if args.candidate:
        layer, pos = (int(x) for x in args.candidate.split(","))
        ev = evaluate(model, cands[layer, pos], layer, splits["harmful_eval"], splits["harmless_eval"],
                      report["config"]["max_new_tokens"], progress=False)
        show(f"layer {layer}, position {pos}", ev)
    return 0


if __name__ == "__main__":
    sys.exit(main())
