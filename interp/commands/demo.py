"""``interp demo``: interp's main job, the refusal direction, on the packaged demo model.

Runs the refusal-direction pipeline (``interp refusal``) with its defaults
and the model's documented selection filters, and prints a short summary;
the report lands in ``--out``. The demo model is Qwen2.5-Coder-1.5B-Instruct,
the packaged model whose refusal direction has the clearer effect.
"""
from __future__ import annotations

from ..packaged import DEMO_MODEL
from ._args import add_dtype_argument, add_model_argument, model_name


def add_parser(sub) -> None:
    p = sub.add_parser("demo", help="the main job: find and test the refusal direction of the packaged demo model",
                       description="Run the refusal-direction pipeline (Arditi et al.) on the packaged demo model "
                       "(Qwen2.5-Coder-1.5B-Instruct, about 12 min on 2 CPU cores with native bfloat16): filter prompts, search "
                       "candidates, evaluate on held-out prompts, and write direction.safetensors, report.json "
                       "and report.html.")
    add_model_argument(p, DEMO_MODEL, help="packaged model name, .gguf file, local folder or hub id "
                       "(qwen2.5-coder-0.5b-instruct runs about three times faster)")
    p.add_argument("--out", default="reports/demo", help="report folder (default reports/demo)")
    add_dtype_argument(p, "auto")
    p.add_argument("--kl-max", type=float, default=None,
                   help="KL filter of the selection (default: the model's documented setting, else interp "
                   "refusal's)")
    p.add_argument("--induce-min", type=float, default=None,
                   help="induce filter of the selection (default: the model's documented setting, else interp "
                   "refusal's)")
    p.set_defaults(func=run)


# Selection filters per packaged model, from the measurements in docs/refusal.md: on the
# 0.5B model no candidate keeps the paper's induce > 0 on 28 + 28 validation prompts (the
# best reach -0.21), and those that bypass refusal move the harmless next-token
# distribution by up to 0.24 in KL. The 1.5B run uses the same filters: under the official
# layer cutoff it chooses layer 21 and meets every target, in float32 and bfloat16 (docs/refusal.md).
DEMO_FILTERS = {"qwen2.5-coder-0.5b-instruct": {"kl_max": 0.2, "induce_min": -0.5},
                "qwen2.5-coder-1.5b-instruct": {"kl_max": 0.2, "induce_min": -0.5}}


def run(args) -> int:
    import argparse

    from .refusal import add_parser as add_refusal_parser
    from .refusal import run as run_refusal

    model = model_name(args)
    filters = {**DEMO_FILTERS.get(model, {}),
               **{k: v for k, v in (("kl_max", args.kl_max), ("induce_min", args.induce_min)) if v is not None}}
    # the refusal command's own parser, so the demo runs exactly its defaults where no filter is set here
    sub = argparse.ArgumentParser().add_subparsers()
    add_refusal_parser(sub)
    argv = [model, "--out", args.out, "--dtype", args.dtype]
    for name, value in filters.items():
        argv += [f"--{name.replace('_', '-')}", str(value)]
    ns = sub.choices["refusal"].parse_args(argv)
    from ..loading import resolve_dtype

    print(f"interp demo: refusal direction of {model} in {str(resolve_dtype(ns.dtype)).replace('torch.', '')} "
          f"(selection filters: KL ≤ {ns.kl_max}, induce ≥ {ns.induce_min})", flush=True)
    return run_refusal(ns)
