"""Numeric subspaces of entity attributes (El-Shangiti et al., arXiv 2410.13194), with the paper's comparison.

Runs ``interp numeric`` for one or more attributes and prints, per
attribute, how many entities the model recalls, the entity-held-out PLS R² at
the best layer beside the baselines there, and the flip rates of the PLS
direction vs random directions at the best α and layer, against the paper
(R² > 0.8 on 7B models; PLS flips far more than random) and this project's
targets (R² ≥ 0.6 for two attributes; PLS flips ≥ 3× random).

Usage:
    HF_HUB_OFFLINE=1 .venv/bin/python probes/numeric_subspace.py qwen2.5-coder-0.5b-instruct \\
        --attributes birth_year,latitude --out runs/numeric -- --flip-layers 3,7,10,14 --pairs 48
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def main(argv: list[str] | None = None) -> int:
    from interp.cli import main as interp_main

    argv = list(sys.argv[1:] if argv is None else argv)
    extra = argv[argv.index("--") + 1:] if "--" in argv else []
    argv = argv[: argv.index("--")] if "--" in argv else argv
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                epilog="arguments after -- go to `interp numeric` unchanged")
    p.add_argument("model")
    p.add_argument("--attributes", default="birth_year,latitude", help="comma-separated attribute names")
    p.add_argument("--out", required=True, help="one sub-folder per attribute is written here")
    args = p.parse_args(argv)
    rows = []
    for att in [a.strip() for a in args.attributes.split(",") if a.strip()]:
        out = Path(args.out) / att
        rc = interp_main(["numeric", args.model, "--attribute", att, "--out", str(out), *extra])
        if rc:
            return rc
        rows.append(json.loads((out / "report.json").read_text()))
    print("\npaper: R² > 0.8 (7B models); PLS directions flip answers far more than random ones")
    print("attribute            entities  layer  PLS R²  ridge  pca+lin  shuffled | flip layer  alpha  PLS  random")
    n_good, ratios = 0, []
    for r in rows:
        i = r["layers"].index(r["best_layer"])
        b = r["baselines"]
        n_good += r["best_r2"] >= 0.6
        ratio = r["flip_rate_pls"] / r["flip_rate_random"] if r["flip_rate_random"] > 0 else float("inf")
        ratios.append(ratio)
        print(f"{r['attribute']:<20} {r['n_entities']:>8}  {r['best_layer']:>5}  {r['best_r2']:6.3f}  "
              f"{b['ridge'][i]:5.3f}  {b['pca_linear'][i]:7.3f}  {b['shuffled'][i]:8.3f} | "
              f"{r['best_flip_layer']:>10}  {r['best_flip_alpha']:5}  {r['flip_rate_pls']:.3f}  "
              f"{r['flip_rate_random']:.3f}")
    print(f"R² >= 0.6 for {n_good} attribute(s) (target: 2); flip ratio PLS/random "
          f"{', '.join(f'{x:.1f}' for x in ratios)} (target: >= 3)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
