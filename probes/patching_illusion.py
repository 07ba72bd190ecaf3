"""Activation patching, DAS and the subspace-patching illusion (Makelov et al., arXiv 2311.17030).

Runs ``interp.experiments.patching`` on a model (writing its report to
``--out`` when given) and prints the headline numbers beside the paper's
(IOI, GPT-2 small): for the MLP hidden layer and the residual stream, the
fraction of effect on held-out pairs of the full-component patch, the DAS
direction, its rowspace part and its nullspace part, and the verdict. The
paper finds the MLP direction illusory (46.7% → 13.5% on its rowspace part)
and the residual one faithful (140.7% → 127.5%).

Usage:
    HF_HUB_OFFLINE=1 .venv/bin/python probes/patching_illusion.py smollm2-135m-instruct --pairs 16 --das-steps 20
"""
from __future__ import annotations

import argparse
import sys


def main(argv: list[str] | None = None) -> int:
    from interp.experiments import patching
    from interp.loading import load_model

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("model", metavar="MODEL", help="packaged model name, .gguf file, local folder or hub id")
    p.add_argument("--out", default=None, help="write report.json and report.html here (default: print only)")
    p.add_argument("--pairs", type=int, default=32, help="clean/corrupted IOI pairs (default 32)")
    p.add_argument("--das-steps", type=int, default=60, help="DAS optimizer steps (default 60)")
    p.add_argument("--positions", nargs="+", type=int, default=[-1, -2, -3, -4, -5],
                   help="sweep positions from the end (default -1 -2 -3 -4 -5)")
    p.add_argument("--seed", type=int, default=0, help="seed (default 0)")
    args = p.parse_args(argv)
    config = patching.check_config(patching.Config(pairs=args.pairs, das_steps=args.das_steps, seed=args.seed,
                                                   positions=tuple(args.positions)))
    result = patching.run(load_model(args.model), config, out=args.out)
    r = result.report
    print(f"logit difference: clean {r['sweep']['clean_metric']:.2f}, corrupted {r['sweep']['corrupted_metric']:.2f}")
    print(f"{'site':<16}{'read by':<18}{'full':>8}{'DAS':>8}{'rowspace':>10}{'nullspace':>11}  verdict")
    for key, s in r["subspaces"].items():
        f = s["fraction_of_effect"]
        print(f"{s['site']:<16}{s['reader']:<18}{f['full']:>8.1%}{f['das']:>8.1%}{f['rowspace']:>10.1%}"
              f"{f['nullspace']:>11.1%}  {s['verdict'].split(':')[0]}")
        paper = patching.PAPER[key]
        print(f"  paper (GPT-2 small): full {paper['full']}, DAS {paper['das']}, rowspace {paper['rowspace']}, "
              f"nullspace {paper['nullspace'] or 'not reported'}")
    print("(fractions on held-out pairs; DAS on training pairs: "
          + ", ".join(f"{s['site']} {s['das_effect_train']:.1%}" for s in r["subspaces"].values()) + ")")
    return 0


if __name__ == "__main__":
    sys.exit(main())
