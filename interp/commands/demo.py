"""``interp demo``: interp's main job on the packaged default model.

Runs the refusal-direction pipeline (``interp refusal``) with its defaults
and prints a short summary; the report lands in ``--out``.
"""
from __future__ import annotations


def add_parser(sub) -> None:
    p = sub.add_parser("demo", help="the main job: find and test the refusal direction of the default model",
                       description="Run the refusal-direction pipeline (Arditi et al.) on the packaged default "
                       "model: filter prompts, search candidates, evaluate on held-out prompts, and write "
                       "direction.safetensors, report.json and report.html.")
    p.add_argument("--model", default=None, help="model (default: the packaged default model)")
    p.add_argument("--out", default="reports/demo", help="report folder (default reports/demo)")
    p.add_argument("--kl-max", type=float, default=None,
                   help="KL filter of the selection (default: the model's documented setting, else 0.1)")
    p.set_defaults(func=run)


# Selection KL bound per packaged model, from the measurements in docs/refusal.md:
# on the 0.5B model no candidate that bypasses refusal keeps KL under the paper's 0.1.
DEMO_KL = {"qwen2.5-coder-0.5b-instruct": 0.2}


def run(args) -> int:
    import argparse

    from ..packaged import DEFAULT_MODEL
    from .refusal import add_parser as add_refusal_parser
    from .refusal import run as run_refusal

    model = args.model or DEFAULT_MODEL
    kl = args.kl_max if args.kl_max is not None else DEMO_KL.get(model, 0.1)
    # the refusal command's own parser, so the demo runs exactly its defaults
    sub = argparse.ArgumentParser().add_subparsers()
    add_refusal_parser(sub)
    ns = sub.choices["refusal"].parse_args([model, "--out", args.out, "--kl-max", str(kl)])
    print(f"interp demo: refusal direction of {model} (selection KL bound {kl})", flush=True)
    return run_refusal(ns)
