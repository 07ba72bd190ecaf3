"""``interp capture``: capture activations for a prompt file into an ActivationStore."""
from __future__ import annotations

import json

from ..errors import InterpError


def add_parser(sub) -> None:
    p = sub.add_parser("capture", help="capture activations of a prompt file to disk",
                       description="Run prompts through a model and stream activations at the chosen sites and "
                       "positions to an ActivationStore (safetensors shards + manifest). Re-running the same "
                       "command resumes an interrupted capture.")
    p.add_argument("model", help="packaged model name, .gguf file, local folder or hub id")
    p.add_argument("--prompts", required=True, help="text file, one prompt per line (or .jsonl with 'prompt')")
    p.add_argument("--sites", nargs="+", default=["resid_post"],
                   help="sites: a name for every layer (resid_post), one layer (resid_post.5) or a "
                   "TransformerLens name (blocks.5.hook_resid_post); default: resid_post")
    p.add_argument("--positions", default="last",
                   help="last, all, instruction_last, post_instruction, instruction, an int, or a slice such as "
                   "--positions=-5: (write it with = so it is not read as an option)")
    p.add_argument("--out", required=True, help="output folder of the ActivationStore")
    p.add_argument("--plain", action="store_true", help="do not apply the chat template")
    p.add_argument("--batch-size", type=int, default=8, help="prompts per forward pass (default 8)")
    p.add_argument("--shard-size", type=int, default=256, help="prompts per shard on disk (default 256)")
    p.add_argument("--dtype", default="float32", choices=["float32", "float16", "bfloat16"],
                   help="dtype of the stored activations (default float32)")
    p.add_argument("--overwrite", action="store_true", help="replace a store made with other settings")
    p.add_argument("--workers", type=int, default=1,
                   help="processes on this machine, each with its own copy of the model (one GPU each when CUDA "
                   "is there), launched with torchrun; they write one store. On a cluster run `torchrun ... -m "
                   "interp capture ...` instead (see docs/scale.md). Default 1")
    p.set_defaults(func=run)


def worker_argv(args) -> list[str]:
    """The command line each torchrun worker runs: this one without --workers."""
    argv = ["capture", args.model, "--prompts", args.prompts, "--sites", *args.sites,
            f"--positions={args.positions}", "--out", args.out, "--batch-size", str(args.batch_size),
            "--shard-size", str(args.shard_size), "--dtype", args.dtype]
    return argv + ["--plain"] * args.plain + ["--overwrite"] * args.overwrite


def parse_positions(text: str):
    """A command-line position spec: an int, a name or a slice string, checked before any model loads."""
    from ..positions import check_spec

    return check_spec(text)


def run(args) -> int:
    import torch

    from ..data.prompts import read_prompt_file as read_lines
    from .. import distributed
    from ..loading import load_model, precheck_sites

    # everything the command line can get wrong fails here, before a model load of several seconds
    for name in ("batch_size", "shard_size", "workers"):
        if getattr(args, name) < 1:
            raise InterpError(f"--{name.replace('_', '-')} must be at least 1, got {getattr(args, name)}")
    prompts = read_lines(args.prompts)
    precheck_sites(args.model, args.sites)
    positions = parse_positions(args.positions)
    if args.workers > 1 and not distributed.launched():
        return distributed.launch(worker_argv(args), args.workers)
    # under torchrun (from --workers or launched by hand) each worker captures its share of the shards
    rank, _ = distributed.init()
    model = load_model(args.model, device=distributed.worker_device() if distributed.launched() else None,
                       progress=rank == 0)
    store = distributed.capture_to_store_parallel(
        model, prompts, args.out, args.sites, positions, chat=not args.plain, batch_size=args.batch_size,
        shard_size=args.shard_size, dtype=getattr(torch, args.dtype), overwrite=args.overwrite)
    if rank != 0:
        return 0
    print(json.dumps({"out": str(store.path), "examples": store.n_examples, "tokens": store.n_tokens,
                      "shards": len(store), "sites": len(store.sites)}))
    return 0
