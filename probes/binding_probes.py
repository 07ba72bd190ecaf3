"""IsSameObject pairwise probes (Li et al., arXiv 2510.24709) on a model, with the paper's comparison.

Runs ``interp.experiments.binding`` and prints, per layer, the test accuracy of
each probe kind beside the majority-class baseline, then checks this project's
targets: a quadratic probe beats the linear one by >= 5 points at its best
layer; a low-rank probe with r <= 32 is within 2 points of the full probe;
every probe above the majority baseline. The paper reports > 90% for the
quadratic probe on patch tokens of self-supervised ViTs (DINOv2, CLIP) on ADE20K.

Usage:
    HF_HUB_OFFLINE=1 .venv/bin/python probes/binding_probes.py qwen2.5-coder-0.5b-instruct --layers every:3 \\
        --out runs/binding_qwen
"""
from __future__ import annotations

import argparse
import sys


def main(argv: list[str] | None = None) -> int:
    from interp import InterpError, load_model
    from interp.commands.binding import parse_layers
    from interp.commands.rank import known_n_layers
    from interp.experiments import binding

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("model")
    p.add_argument("--layers", nargs="+", default=["every:3"], help="'all', 'every:N' or layer indices")
    p.add_argument("--task", default="entity", choices=["entity", "word"])
    p.add_argument("--out", required=True)
    args = p.parse_args(argv)
    try:
        config = binding.Config(layers=parse_layers(args.layers, known_n_layers(args.model)), task=args.task)
        binding.check_config(config, known_n_layers(args.model))
        model = load_model(args.model)
        r = binding.run(model, config, out=args.out).report
    except InterpError as e:
        print(f"binding_probes: error: {e}", file=sys.stderr)
        return 2
    print("\n".join(binding.summary_lines(r)))
    maj = r["majority_baseline"]
    print(f"\n{r['model']['model']}: paper (ViT patches, ADE20K): quadratic > 90%, quadratic > diagonal > linear")
    best = r["best"]
    gain = 100 * best["quadratic_minus_linear"]
    print(f"quadratic - linear at the best layer ({best['kind']}, layer {best['layer']}): {gain:+.1f} points: "
          f"{'meets' if gain >= 5 else 'misses'} the target (>= 5)")
    r_min = r.get("min_rank_within_2pts")
    print(f"smallest low-rank r within 2 points of full: {r_min}: "
          f"{'meets' if r_min is not None and r_min <= 32 else 'misses'} the target (r <= 32)")
    margins = {k: max(v) - maj for k, v in r["accuracy"].items()}
    print("best-layer margin over the majority baseline (%.3f): " % maj +
          ", ".join(f"{k} {100 * m:+.1f}" for k, m in margins.items()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
