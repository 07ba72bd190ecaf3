"""Where refusals start in long completions: the measurement behind ``refusal-eval``'s ``--max-new-tokens``.

Takes a finished ``interp refusal`` run (its ``direction.safetensors`` and ``splits.json``), generates
``--tokens`` new tokens for the first ``--n`` harmful and harmless prompts of its validation + training
splits (not the test split: this measurement chooses a default), at baseline, with the direction ablated
everywhere (harmful) and with +r at its layer (harmless), and prints per condition how many completions
hold a refusal phrase, at which token the first phrase starts, and how many start after token 48.

Usage:
    HF_HUB_OFFLINE=1 .venv/bin/python probes/late_refusals.py qwen2.5-coder-1.5b-instruct reports/demo \\
        --tokens 256 --n 24 [--conditions harmful_ablated harmless_plus_r] [--dtype auto]
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

CONDITIONS = ("harmful_baseline", "harmful_ablated", "harmless_plus_r")


def main(argv: list[str] | None = None) -> int:
    from interp import Add, load_model
    from interp.directions import load_direction
    from interp.generation import generate
    from interp.interventions import everywhere
    from interp.judges import REFUSAL_PHRASES
    from interp.loading import resolve_dtype

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("model")
    p.add_argument("run", help="folder of an interp refusal run (direction.safetensors, splits.json)")
    p.add_argument("--tokens", type=int, default=256)
    p.add_argument("--n", type=int, default=24, help="prompts per condition")
    p.add_argument("--conditions", nargs="+", default=list(CONDITIONS), choices=CONDITIONS)
    p.add_argument("--dtype", default="auto")
    p.add_argument("--out", help="write the counts and the completions here (JSON)")
    args = p.parse_args(argv)

    run = Path(args.run)
    r, meta = load_direction(run / "direction.safetensors")
    splits = json.loads((run / "splits.json").read_text())
    model = load_model(args.model, dtype=resolve_dtype(args.dtype), progress=False)
    harmful = (splits["harmful_val"] + splits["harmful_train"])[: args.n]
    harmless = (splits["harmless_val"] + splits["harmless_train"])[: args.n]
    setups = {"harmful_baseline": (harmful, {}), "harmful_ablated": (harmful, everywhere(model, r)),
              "harmless_plus_r": (harmless, {f"resid_pre.{meta['layer']}": Add(r)})}

    def first_phrase_token(text: str) -> int | None:
        low = text.lower()
        at = [i for i in (low.find(ph.lower()) for ph in REFUSAL_PHRASES) if i >= 0]
        return len(model.tokenizer(text[:min(at)], add_special_tokens=False).input_ids) if at else None

    out = {}
    for name in args.conditions:
        prompts, ivs = setups[name]
        start = time.perf_counter()
        texts = generate(model, prompts, max_new_tokens=args.tokens, interventions=ivs, share_prefix=True)
        starts = [first_phrase_token(t) for t in texts]
        found = [s for s in starts if s is not None]
        lengths = [len(model.tokenizer(t, add_special_tokens=False).input_ids) for t in texts]
        out[name] = {"n": len(texts), "seconds": round(time.perf_counter() - start, 1), "refused": len(found),
                     "starts_after_48": sorted(s for s in found if s >= 48),
                     "mean_tokens": round(sum(lengths) / len(lengths), 1),
                     "reached_limit": sum(n >= args.tokens - 1 for n in lengths), "completions": texts}
        print(name, json.dumps({k: v for k, v in out[name].items() if k != "completions"}), flush=True)
    if args.out:
        Path(args.out).write_text(json.dumps(out, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
