"""Harmfulness vs refusal (Zhao et al., arXiv 2507.11878): the experiment and its headline numbers.

Runs ``interp.experiments.harmfulness`` on a model (writing report.json, report.html and
guard.safetensors to ``--out``) and prints each headline with the split it was computed on, beside the
target (Latent Guard AUROC >= 0.9 on plain test prompts) and what the paper reports. Choices (guard threshold,
the reply-inversion gate, layer and alpha) are made on the validation split; the test split is read once.

Usage:
    HF_HUB_OFFLINE=1 .venv/bin/python probes/harmfulness_vs_refusal.py qwen2.5-coder-0.5b-instruct --out runs/harm05
"""
from __future__ import annotations

import argparse


def main(argv: list[str] | None = None) -> int:
    from interp.experiments import harmfulness
    from interp.loading import load_model

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("model", metavar="MODEL", help="packaged model name, .gguf file, local folder or hub id")
    p.add_argument("--out", required=True, help="the run's folder")
    p.add_argument("--n-fit", type=int, default=100, help="train prompts per class (default 100)")
    p.add_argument("--n-val", type=int, default=40, help="validation prompts per class (default 40)")
    p.add_argument("--n-test", type=int, default=60, help="test prompts per class, read once (default 60)")
    p.add_argument("--n-jailbreak", type=int, default=40, help="jailbreak-wrapped harmful prompts (default 40)")
    p.add_argument("--n-inversion", type=int, default=24, help="reply-inversion prompts per class (default 24)")
    p.add_argument("--seed", type=int, default=0, help="split seed (default 0)")
    p.add_argument("--seeds", type=int, nargs="+", default=None, help="several split seeds: mean +- sd")
    args = p.parse_args(argv)
    cfg = harmfulness.check_config(harmfulness.Config(n_fit=args.n_fit, n_val=args.n_val, n_test=args.n_test,
                                                      n_jailbreak=args.n_jailbreak, n_inversion=args.n_inversion,
                                                      seed=args.seed, seeds=args.seeds))
    result = harmfulness.run(load_model(args.model), cfg, out=args.out)
    for h in result.headlines:
        met = "" if h.met is None else (" (target met)" if h.met else " (target missed)")
        target = f"; target {h.target}{met}" if h.target else ""
        value = "n/a" if h.value is None else f"{h.value:.3f}"
        print(f"{h.name}: {value} [{h.split}{target}]\n    paper: {h.paper}; {h.note}")
    print(result.conclusion)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
