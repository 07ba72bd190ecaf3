"""Activation patching, DAS and the subspace-patching illusion (Makelov et al., arXiv 2311.17030).

Runs ``interp.experiments.patching`` on a model (writing its report to
``--out`` when given) and prints the headline numbers beside the paper's
(IOI, GPT-2 small): for the MLP hidden layer and the residual stream, on
held-out TEST pairs (templates and names unseen by DAS and by the choices),
the full-component patch, the DAS direction, its rowspace part and its
nullspace part (each along its unit vector), as interp's 0→1 fraction of
effect and, on its own line, as the paper's FLDD; the random-direction
control; the verdict, and the verdict the earlier raw-part patch gave. The
paper finds the MLP direction illusory (FLDD 46.7% → 13.5% on its rowspace
part) and the residual one faithful (140.7% → 127.5%).

Usage:
    HF_HUB_OFFLINE=1 .venv/bin/python probes/patching_illusion.py smollm2-135m-instruct --pairs 24 \
        --das-steps 20 --positions -1
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
    p.add_argument("--seeds", nargs="+", type=int, default=None, help="several seeds: mean ± spread (e.g. 0 1 2)")
    p.add_argument("--split-by", choices=["template", "pair"], default="template",
                   help="'template' (disjoint templates and names per split, default) or 'pair'")
    args = p.parse_args(argv)
    config = patching.check_config(patching.Config(pairs=args.pairs, das_steps=args.das_steps, seed=args.seed,
                                                   positions=tuple(args.positions), seeds=args.seeds,
                                                   split_by=args.split_by))
    result = patching.run(load_model(args.model), config, out=args.out)
    r = result.report
    p_ = r["protocol"]
    print(f"pairs: {p_['n_train']} train (DAS), {p_['n_val']} validation (sweep, layer and head choices), "
          f"{p_['n_test']} test (every number below), split by {p_['split_unit']}")
    print(f"{'site':<16}{'read by':<18}{'full':>8}{'DAS':>8}{'rowspace':>10}{'nullspace':>11}{'random':>8}  verdict")
    for key, s in r["subspaces"].items():
        f, fl = s["fraction_of_effect"], s["fldd"]
        rnd = max(s["random_effect"], default=float("nan"))
        print(f"{s['site']:<16}{s['reader']:<18}{f['full']:>8.3f}{f['das']:>8.3f}{f['rowspace']:>10.3f}"
              f"{f['nullspace']:>11.3f}{rnd:>8.3f}  {s['verdict'].split(':')[0]}  (fraction of effect, 0→1)")
        print(f"{'':<34}{fl['full']:>7.1f}%{fl['das']:>7.1f}%{fl['rowspace']:>9.1f}%{fl['nullspace']:>10.1f}%"
              f"{'':>8}  (FLDD; raw-part patch as before: {s['unnormalized']['verdict'].split(':')[0]})")
        paper = patching.PAPER[key]
        print(f"  paper (GPT-2 small), FLDD: full {paper['full']}, DAS {paper['das']}, rowspace {paper['rowspace']}, "
              f"nullspace {paper['nullspace'] or 'not reported'}")
    print("(DAS on its own training pairs: "
          + ", ".join(f"{s['site']} {s['das_effect_train']:.3f}" for s in r["subspaces"].values()) + ")")
    if "seeds" in r:
        print(f"over seeds {r['seeds']['seeds']} (verdicts {r['seeds']['verdicts']}):")
        for h in result.headlines:
            if isinstance(h.value, float):
                print(f"  {h.name}: {h.value:.3f} {h.note}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
