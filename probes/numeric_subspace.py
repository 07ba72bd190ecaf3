"""Numeric subspaces of entity attributes (El-Shangiti et al., arXiv 2410.13194), with the paper's comparison.

Runs ``interp.experiments.numeric`` for one or more attributes and prints, per
attribute, how many entities the model recalls, the PLS R² on held-out test
entities at the layer chosen on validation beside the baselines there, and the
test flip rates (any α of the sweep, at the flip layer chosen on validation) of
the PLS direction (``x_weights · scale``, as the paper's code), its read-out
direction (``x_weights / scale``) and random directions, against the paper
(R² > 0.8 on 7B models; PLS flips far more than random) and this project's
targets (R² ≥ 0.6 for two attributes; PLS flips ≥ 3× random).

Usage:
    HF_HUB_OFFLINE=1 .venv/bin/python probes/numeric_subspace.py qwen2.5-coder-0.5b-instruct \\
        --attributes birth_year latitude --out runs/numeric --flip-layers 6 10 --pairs 16 --seeds 0 1 2
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path


def main(argv: list[str] | None = None) -> int:
    from interp.commands._args import split_list
    from interp.errors import InterpError
    from interp.experiments import numeric
    from interp.loading import load_model

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("model")
    p.add_argument("--attributes", nargs="+", default=["birth_year", "latitude"], help="attribute names")
    p.add_argument("--out", required=True, help="one sub-folder per attribute is written here")
    p.add_argument("--max-entities", type=int, default=300)
    p.add_argument("--no-filter", action="store_true", help="probe every entity, not only the recalled ones")
    p.add_argument("--flip-layers", nargs="+", default=None, help="candidate flip layers (default: the experiment's)")
    p.add_argument("--alphas", nargs="+", default=None, help="α sweep (default: the paper's, -30 to 28.5 step 1.5)")
    p.add_argument("--pairs", type=int, default=64, help="comparison prompts per split")
    p.add_argument("--random", type=int, default=3, help="random control directions")
    p.add_argument("--no-flip", action="store_true", help="probing only")
    p.add_argument("--seeds", nargs="+", type=int, default=None, help="report mean ± spread over these seeds")
    args = p.parse_args(argv)
    extra = {}
    try:
        if args.flip_layers:
            extra["flip_layers"] = [int(x) for x in split_list(args.flip_layers)]
        if args.alphas:
            extra["alphas"] = [float(x) for x in split_list(args.alphas)]
    except ValueError:
        print("error: --flip-layers takes integers and --alphas numbers, space-separated", file=sys.stderr)
        return 2
    configs = [numeric.Config(attribute=a, max_entities=args.max_entities, filter_known=not args.no_filter,
                              n_pairs=args.pairs, n_random=args.random, run_flip=not args.no_flip, seeds=args.seeds,
                              **extra) for a in split_list(args.attributes)]
    try:
        for c in configs:  # every attribute's settings are checked before the model loads
            numeric.check_config(c)
        model = load_model(args.model)
        results = [numeric.run(model, c, out=Path(args.out) / c.attribute) for c in configs]
    except InterpError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"\npaper: R² {numeric.PAPER['r2']} (7B models); PLS directions flip answers far more than random ones")
    seeds = f"; R² and flip rates: mean over seeds {args.seeds} (ridge, PCA + linear: the first seed)"
    print("all numbers on test entities; layers chosen on validation" + (seeds if args.seeds else ""))
    print("attribute            entities  layer  PLS R²  ridge  pca+lin  shuffled | flip layer  PLS  read-out  random")
    n_good, ratios = 0, []
    for res in results:
        r, value = res.report, {h.name: h.value for h in res.headlines}
        t = r["test"]
        r2 = value[f"PLS R² of {r['target']}"]
        n_good += r2 >= numeric.TARGETS["r2"]
        line = (f"{r['attribute']:<20} {r['n_entities']:>8}  {r['best_layer']:>5}  {r2:6.3f}  {t['ridge']:5.3f}  "
                f"{t['pca_linear']:7.3f}  {value['R² of PLS on shuffled targets']:8.3f} |")
        if "flip_test" in r:
            pls = value["flip rate, PLS direction (x_weights·scale, as the paper's code)"]
            rnd = value["flip rate, random unit directions"]
            ratios.append(pls / rnd if rnd > 0 else float("inf"))
            line += (f" {r['best_flip_layer']:>10}  {pls:.3f}  "
                     f"{value['flip rate, PLS read-out direction (x_weights/scale)']:8.3f}  {rnd:.3f}")
        print(line)
    print(f"R² >= {numeric.TARGETS['r2']} for {n_good} attribute(s) (target: 2)" + (
        f"; flip ratio PLS/random {', '.join(f'{x:.1f}' for x in ratios)} (target: >= "
        f"{numeric.TARGETS['flip_ratio']:g})" if ratios else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
