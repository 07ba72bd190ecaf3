"""Effective rank of attention vs MLP outputs (arXiv 2508.16929), with the paper's comparison.

Runs ``interp.experiments.rank`` on a model for some layers and prints, per
layer, k99/d of attn_out, mlp_out and resid_post and the attention-vs-MLP gap,
against the paper's ≈ 0.6 (attention) vs ≈ 0.9 (MLP, residual) and this
project's target (attention at least 0.15 below MLP).

Usage:
    HF_HUB_OFFLINE=1 .venv/bin/python probes/effective_rank.py smollm2-135m-instruct --layers 0 3 6 9 12 \\
        --passages 300 --out runs/rank_smollm
"""
from __future__ import annotations

import argparse
import sys


def main(argv: list[str] | None = None) -> int:
    from interp.commands.rank import known_n_layers, parse_layer_list
    from interp.experiments import rank
    from interp.loading import load_model

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("model")
    p.add_argument("--layers", nargs="+", default=["all"], help="'all' or layer indices (space-separated)")
    p.add_argument("--passages", type=int, default=300)
    p.add_argument("--max-tokens", type=int, default=128)
    p.add_argument("--out", required=True)
    p.add_argument("--seed", type=int, default=0, help="seed of the passage split and the bootstrap")
    args = p.parse_args(argv)
    config = rank.check_config(rank.Config(layers=parse_layer_list(args.layers, known_n_layers(args.model)),
                                           passages=args.passages, max_tokens=args.max_tokens, seed=args.seed),
                               known_n_layers(args.model))
    r = rank.run(load_model(args.model), config, out=args.out).report
    rel, ci = r["relative_k99"], r["ci"]
    print(f"\n{r['model']['model']}, test split: {r['n_test_passages']} passages, {r['n_tokens']} tokens "
          f"({r['ci_method']}); paper: attention ~0.6, MLP and residual ~0.9")
    print("layer  attn_out (95% CI)         mlp_out (95% CI)          resid_post  mlp-attn")
    gaps = []
    for i, layer in enumerate(r["layers"]):
        gap = rel["mlp_out"][i] - rel["attn_out"][i]
        gaps.append(gap)
        print(f"{layer:>5}  {rel['attn_out'][i]:.3f} ({ci['attn_out'][i][0]:.3f}-{ci['attn_out'][i][1]:.3f})  "
              f"{rel['mlp_out'][i]:.3f} ({ci['mlp_out'][i][0]:.3f}-{ci['mlp_out'][i][1]:.3f})  "
              f"{rel['resid_post'][i]:10.3f}  {gap:8.3f}")
    mean_gap = sum(gaps) / len(gaps)
    verdict = "meets" if mean_gap >= rank.TARGET_GAP else "misses"
    print(f"mean gap {mean_gap:.3f}: {verdict} the target (attention >= {rank.TARGET_GAP} below MLP)")
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except ValueError as e:  # InterpError: a message that names the fix, not a traceback
        print(f"effective_rank: error: {e}", file=sys.stderr)
        sys.exit(2)
