"""Refusal direction (Arditi et al., arXiv 2406.11717): the experiment, its targets, and candidate diagnostics.

Runs ``interp.experiments.refusal`` on a model (writing its report to ``--out``)
and prints the held-out evaluation against this project's targets (refusal
after ablation <= 0.25 x baseline, harmless refused with +r >= 0.8, CE change
<= 0.05 nats). Two diagnostics use the run's own splits, so they see exactly
the prompts the pipeline used:

- ``--score-layers 15-19``: the full and proxy scores (bypass, induce, KL) of
  every candidate in those layers, written to ``candidate_scores.json``;
- ``--candidate 16,-1``: the held-out evaluation of another candidate than
  the chosen one, on the same held-out prompts.

With ``--reuse`` the search is not run again: the diagnostics read the
earlier run's artifacts in ``--out`` (``splits.json``, ``direction.safetensors``)
and rebuild the candidates from its training prompts.

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


def candidates_from_splits(model, splits: dict, cfg):
    """The difference-of-means candidates of a run's training prompts, [layers, positions, d] (float32)."""
    from interp.analyzers.refusal import candidate_directions

    acts = [model.capture(splits[k], "resid_pre", "post_instruction", batch_size=cfg.batch_size, progress=False)
            for k in ("harmful_train", "harmless_train")]
    return candidate_directions(*acts).float()


def main(argv: list[str] | None = None) -> int:
    from interp.experiments import refusal
    from interp.loading import load_model

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("model", metavar="MODEL", help="packaged model name, .gguf file, local folder or hub id")
    p.add_argument("--out", required=True, help="the run's folder (report, direction, splits)")
    p.add_argument("--kl-max", type=float, default=0.1, help="selection KL filter (default 0.1)")
    p.add_argument("--induce-min", type=float, default=0.0, help="selection induce filter (default 0)")
    p.add_argument("--max-new-tokens", type=int, default=48, help="tokens per greedy completion (default 48)")
    p.add_argument("--reuse", action="store_true",
                   help="do not search again: the diagnostics read splits.json and direction.safetensors in --out")
    p.add_argument("--score-layers", help="score every candidate of these layers, e.g. 15-19")
    p.add_argument("--candidate", help="evaluate this candidate on the held-out prompts too, e.g. 16,-1")
    args = p.parse_args(argv)
    out = Path(args.out)
    layers = tuple(int(x) for x in args.score_layers.split("-")) if args.score_layers else None
    other = tuple(int(x) for x in args.candidate.split(",")) if args.candidate else None
    if args.reuse and not (out / "splits.json").exists():
        p.error(f"--reuse needs an earlier run in {out} (splits.json is missing)")
    cfg = refusal.Config(kl_max=args.kl_max, induce_min=args.induce_min, max_new_tokens=args.max_new_tokens)
    model = load_model(args.model, progress=False)
    print(TARGETS)
    if args.reuse:
        from interp.directions import load_direction

        splits = json.loads((out / "splits.json").read_text())
        _, meta = load_direction(out / "direction.safetensors", model)
        print(f"earlier run in {out}: chosen layer {meta['layer']}, position {meta['position']}")
        cands = candidates_from_splits(model, splits, cfg) if (layers or other) else None
    else:
        result = refusal.run(model, cfg, out)
        ch = result.report["chosen"]
        print(f"chosen layer {ch['layer']}, position {ch['position']}: bypass {ch['bypass']:.2f}, "
              f"induce {ch['induce']:.2f}, KL {ch['kl']:.3f}")
        show("chosen", result.report["evaluation"])
        splits, cands = result.splits, result.candidates
    if not (layers or other):
        return 0

    n_pos = cands.shape[1]
    if layers:
        ids = refusal.refusal_token_ids(model.tokenizer, cfg.refusal_tokens)
        scorer = refusal.CandidateScorer(model, splits["harmful_val"], splits["harmless_val"], ids,
                                         batch_size=cfg.batch_size, proxy_prompts=cfg.proxy_prompts, progress=False)
        rows = {}
        print("layer  pos   bypass  induce      KL | proxy: bypass  induce      KL")
        for layer in range(layers[0], layers[1] + 1):
            for pos in range(n_pos):
                c = cands[layer, pos]
                (b, k), i = scorer.bypass_and_kl(c), scorer.induce(c, layer)
                (pb, pk), pi = scorer.bypass_and_kl(c, proxy=True), scorer.induce(c, layer, proxy=True)
                rows[f"{layer},{pos - n_pos}"] = {"bypass": b, "induce": i, "kl": k, "proxy_bypass": pb,
                                                  "proxy_induce": pi, "proxy_kl": pk}
                print(f"{layer:>5} {pos - n_pos:>4} {b:8.2f} {i:7.2f} {k:7.3f} |        {pb:7.2f} {pi:7.2f} {pk:7.3f}",
                      flush=True)
        (out / "candidate_scores.json").write_text(json.dumps(rows, indent=1))
    if other:
        layer, pos = other
        ev = refusal.evaluate(model, cands[layer, pos], layer, splits["harmful_eval"], splits["harmless_eval"],
                              cfg.max_new_tokens, progress=False)
        show(f"layer {layer}, position {pos}", ev)
    return 0


if __name__ == "__main__":
    sys.exit(main())
