"""IsSameObject pairwise probes (Li et al., arXiv 2510.24709) on a model, with the paper's comparison.

Runs ``interp.experiments.binding`` (texts split into train / validation / test;
probe kind, layer and rank chosen on validation; test texts read once) and
prints the test accuracy per layer on cross-mention pairs (tokens of different
mentions of one entity vs tokens of different entities) beside the majority
baseline, the within-mention pairs (sub-tokens of one mention: adjacency) apart,
then checks this project's targets: the chosen quadratic probe beats the linear
one by >= 5 points on cross-mention pairs; a low-rank probe with r <= 32 is
within 2 points of the full probe (on validation). The paper reports > 90% for
the quadratic probe on patch tokens of self-supervised ViTs (DINOv2, CLIP) on
ADE20K.

Usage:
    HF_HUB_OFFLINE=1 .venv/bin/python probes/binding_probes.py smollm2-135m-instruct --layers 9 15 21 \\
        --seeds 0 1 2 --out runs/binding_smol
"""
from __future__ import annotations

import argparse
import sys


def main(argv: list[str] | None = None) -> int:
    from interp import InterpError, load_model
    from interp.commands.binding import parse_layers, parse_ranks
    from interp.commands.rank import known_n_layers
    from interp.experiments import binding

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("model")
    p.add_argument("--layers", nargs="+", default=["every:3"], help="'all', 'every:N' or layer indices")
    p.add_argument("--task", default="entity", choices=["entity", "word"])
    p.add_argument("--seeds", nargs="+", default=None, help="run once per seed; mean ± spread of the headlines")
    p.add_argument("--out", required=True)
    args = p.parse_args(argv)
    try:
        n_layers = known_n_layers(args.model)
        config = binding.Config(layers=parse_layers(args.layers, n_layers), task=args.task,
                                seeds=parse_ranks(args.seeds, "--seeds") if args.seeds else None)
        binding.check_config(config, n_layers)
        model = load_model(args.model)
        result = binding.run(model, config, out=args.out)
    except InterpError as e:
        print(f"binding_probes: error: {e}", file=sys.stderr)
        return 2
    r = result.report
    print("\n".join(binding.summary_lines(r)))
    print(f"\n{r['model']['model']}: paper (ViT patches, ADE20K): quadratic > 90%, quadratic > diagonal > linear")
    for h in result.headlines:
        verdict = "" if h.met is None else ("  [meets target]" if h.met else "  [misses target]")
        target = f" (target {h.target})" if h.target else ""
        value = f"{h.value:.3f}" if isinstance(h.value, float) else str(h.value)
        print(f"{h.name}: {value}{target} — {h.split}{verdict}" + (f"; {h.note}" if h.note else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
