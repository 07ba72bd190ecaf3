"""``interp harmfulness`` and ``interp guard fit|score``: harmfulness vs refusal, and the Latent Guard.

They parse and check their arguments (sizes, layers, prompt files, the guard file) before the model
loads, then call ``interp.experiments.harmfulness`` (``run``, ``fit_guard``, ``guard_scores``).
"""
from __future__ import annotations

import json
from pathlib import Path

from ._args import add_dtype_argument


def add_parser(sub) -> None:
    h = sub.add_parser("harmfulness", help="harmfulness vs refusal directions, Latent Guard, reply inversion",
                       description="Zhao et al. 2025 on a model: the harmfulness direction (last instruction "
                       "token) vs the refusal direction (last prompt token, by the model's own refusals) per "
                       "layer, the Latent Guard on plain, jailbreak-wrapped and dangerous-sounding prompts, "
                       "and the reply-inversion steering test. Writes report.json, report.html, guard.safetensors.")
    h.add_argument("model", metavar="MODEL", help="packaged model name, .gguf file, local folder or hub id")
    h.add_argument("--out", required=True, help="output folder")
    h.add_argument("--n-fit", type=int, default=100, help="train prompts per class (default 100)")
    h.add_argument("--n-val", type=int, default=40,
                   help="validation prompts per class: threshold, inversion gate, layer and alpha (default 40)")
    h.add_argument("--n-test", type=int, default=60, help="test prompts per class, read once (default 60)")
    h.add_argument("--n-jailbreak", type=int, default=40, help="jailbreak-wrapped harmful prompts (default 40)")
    h.add_argument("--n-inversion", type=int, default=24,
                   help="validation and test prompts per class for reply inversion (default 24)")
    h.add_argument("--n-dangerous", type=int, default=None,
                   help="dangerous-sounding harmless prompts (default: all 132)")
    h.add_argument("--inversion-answers", nargs=2, metavar=("HARM", "NO_HARM"), default=None,
                   help="the reply-inversion answer words (default: the paper's Certainly No); e.g. Unsafe Safe, "
                        "words that do not open a compliance or refusal reply")
    h.add_argument("--inversion-layers", nargs="+", default=None,
                   help="candidate layers for reply inversion, chosen on validation, space-separated "
                        "(default: every 4th from n_layers/4)")
    h.add_argument("--alphas", nargs="+", default=None,
                   help="candidate multiples of the raw difference of means, positive; the test adds +alpha and "
                        "-alpha (default 2, the official code's)")
    h.add_argument("--min-baseline-accuracy", type=float, default=0.7,
                   help="reply inversion runs only if the unsteered validation accuracy reaches this (default 0.7)")
    h.add_argument("--site", default="resid_pre", choices=["resid_pre", "resid_post"],
                   help="site read and steered: block input (default, as the official code) or resid_post")
    h.add_argument("--max-new-tokens", type=int, default=32,
                   help="tokens per greedy completion used to judge refusal (default 32)")
    h.add_argument("--threshold", type=float, default=0.0, help="guard flags belief score >= this (default 0)")
    h.add_argument("--batch-size", type=int, default=16, help="prompts per forward / generate batch (default 16)")
    add_dtype_argument(h)
    h.add_argument("--seed", type=int, default=0, help="split seed (default 0)")
    h.add_argument("--seeds", nargs="+", type=int, default=None,
                   help="repeat split, fit, choice and test per seed, space-separated; headlines become mean +- sd")
    h.set_defaults(func=run_experiment)

    g = sub.add_parser("guard", help="fit or apply a Latent Guard",
                       description="The Latent Guard flags a prompt as harmful from the model's hidden states.")
    which = g.add_subparsers(dest="guard_command", metavar="ACTION")
    fit = which.add_parser("fit", help="fit a guard on harmful and harmless prompt files",
                           description="Fit centroids of resid_post at the last instruction token, every layer.")
    fit.add_argument("model", metavar="MODEL", help="model whose hidden states the guard reads")
    fit.add_argument("--harmful", required=True, help="harmful prompts, one per line")
    fit.add_argument("--harmless", required=True, help="harmless prompts, one per line")
    fit.add_argument("--out", required=True, help="folder for guard.safetensors")
    fit.add_argument("--threshold", type=float, default=0.0, help="flag when the belief score is >= this (default 0)")
    fit.add_argument("--site", default="resid_pre", choices=["resid_pre", "resid_post"],
                     help="site read at every layer (default resid_pre, the block input)")
    fit.set_defaults(func=run_fit)
    score = which.add_parser("score", help="score prompts with a fitted guard",
                             description="Print one belief score per prompt (higher = more harmful).")
    score.add_argument("guard_dir", help="folder written by interp guard fit (or interp harmfulness)")
    score.add_argument("--prompts", required=True, help="prompts, one per line")
    score.add_argument("--json", action="store_true", help="print a JSON list of scores")
    score.set_defaults(func=run_score)
    g.set_defaults(func=lambda args: g.print_help() or 0)


def _floats(values, what: str) -> tuple[float, ...]:
    from ..errors import InterpError
    from ._args import split_list

    try:
        return tuple(float(v) for v in split_list(values))
    except ValueError:
        raise InterpError(f"{what} takes numbers, space-separated, got {' '.join(split_list(values))!r}") from None


def config_from_args(args):
    """The experiment's Config from the command line, checked against the model's depth when it is known."""
    from ..experiments.harmfulness import Config, check_config
    from ._args import known_n_layers, parse_layer_list

    n_layers = known_n_layers(args.model)
    layers = None if args.inversion_layers is None else parse_layer_list(args.inversion_layers, n_layers)
    given = {"alphas": _floats(args.alphas, "--alphas")} if args.alphas is not None else {}
    if args.inversion_answers is not None:
        given["inversion_answers"] = tuple(args.inversion_answers)
    cfg = Config(n_fit=args.n_fit, n_val=args.n_val, n_test=args.n_test, n_jailbreak=args.n_jailbreak,
                 n_inversion=args.n_inversion, n_dangerous=args.n_dangerous, inversion_layers=layers, seed=args.seed,
                 seeds=args.seeds, site=args.site, min_baseline_accuracy=args.min_baseline_accuracy,
                 max_new_tokens=args.max_new_tokens, threshold=args.threshold, batch_size=args.batch_size, **given)
    return check_config(cfg, n_layers)


def run_experiment(args) -> int:
    from ..experiments.harmfulness import run
    from ..loading import load_model, resolve_dtype

    cfg = config_from_args(args)
    result = run(load_model(args.model, dtype=resolve_dtype(args.dtype)), cfg, out=args.out)
    r = result.report
    for fam, g in r["guard"].items():
        print(f"{fam:<32} guard AUROC {g['guard_auroc']:.3f} acc {g['guard_accuracy']:.3f} | refusal AUROC "
              f"{g['refusal_auroc']:.3f} | keywords AUROC {g['keyword_auroc']:.3f}  [test]")
    cos = r["cosine"]
    print("cos(harmfulness, refusal) per layer [train]:", " ".join(f"{c:.2f}" for c in cos))
    for h in result.headlines:
        value = "n/a" if h.value is None else f"{h.value:.3f}"
        print(f"{h.name}: {value} [{h.split}] {h.note}")
    print(f"wrote {args.out}/report.json, report.html, guard.safetensors ({r['seconds']} s)")
    return 0


def run_fit(args) -> int:
    from ..data.prompts import read_prompt_file
    from ..experiments.harmfulness import fit_guard
    from ..loading import load_model

    harmful, harmless = read_prompt_file(args.harmful), read_prompt_file(args.harmless)  # checked before loading
    model = load_model(args.model)
    guard, train_accuracy = fit_guard(model, harmful, harmless, threshold=args.threshold, progress=True,
                                      site=args.site)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    guard.save(out / "guard.safetensors", {"model": args.model, "model_fingerprint": model.fingerprint,
                                            "site": args.site, "position": "instruction_last"})
    print(json.dumps({"out": str(out / "guard.safetensors"), "n_harmful": len(harmful), "n_harmless": len(harmless),
                      "train_accuracy": train_accuracy}))
    return 0


def run_score(args) -> int:
    from ..analyzers.harmfulness import LatentGuard
    from ..data.prompts import read_prompt_file
    from ..errors import InterpError
    from ..experiments.harmfulness import guard_scores
    from ..loading import load_model

    guard, meta = LatentGuard.load(Path(args.guard_dir) / "guard.safetensors")
    prompts = read_prompt_file(args.prompts)
    if "model" not in meta:
        raise InterpError(f"{args.guard_dir}/guard.safetensors does not say which model it reads; refit it with "
                          f"interp guard fit")
    model = load_model(meta["model"], progress=not args.json)
    if meta.get("model_fingerprint") not in (None, model.fingerprint):
        raise InterpError(f"the guard was fitted on another model ({meta.get('model_fingerprint')}) than "
                          f"{meta['model']} loads now ({model.fingerprint})")
    scores, flags = guard_scores(model, guard, prompts, site=meta.get("site", "resid_post"))  # the fitted site
    if args.json:
        print(json.dumps([round(float(s), 6) for s in scores]))
    else:
        for s, flag in zip(scores, flags):
            print(f"{s:+.4f}  {'HARMFUL' if flag else 'ok'}")
    return 0
