"""``interp lens``: the logit lens on a prompt file (per layer: top token, target rank and probability, KL to
the final layer)."""
from __future__ import annotations

import json

from ..errors import InterpError
from ._args import add_model_argument, model_name, parse_layer_list


def add_parser(sub) -> None:
    p = sub.add_parser("lens", help="logit lens: per-layer next-token predictions of a prompt file",
                       description="Read each layer's residual stream (resid_post) through the model's final norm "
                       "and unembedding at each prompt's last token: the top token, the rank and probability of "
                       "a target token (default: the model's own prediction) and the KL divergence to the final "
                       "layer's distribution, per layer.")
    add_model_argument(p)
    p.add_argument("--prompts", required=True, help="text file, one prompt per line (or .jsonl with 'prompt')")
    p.add_argument("--target", default=None, metavar="TOKEN",
                   help="token to track (one token, e.g. ' Paris' with its leading space); default: the model's "
                   "own final prediction for each prompt")
    p.add_argument("--layers", nargs="+", default=["all"], help="layers to read, space-separated, or all (default)")
    p.add_argument("--k", type=int, default=5, help="top tokens kept per layer (default 5)")
    p.add_argument("--chat", action="store_true", help="apply the chat template (default: the raw text, so the "
                   "lens predicts the prompt's next word)")
    p.add_argument("--batch-size", type=int, default=8, help="prompts per forward pass (default 8)")
    p.add_argument("--json", action="store_true", help="print one JSON object (per prompt, one row per layer)")
    p.set_defaults(func=run)


def run(args) -> int:
    from ..data.prompts import read_prompt_file
    from ..lens import logit_lens, target_token_id
    from ..loading import load_model

    # what the command line can get wrong fails before the model load
    if args.k < 1:
        raise InterpError(f"--k must be at least 1, got {args.k}")
    if args.batch_size < 1:
        raise InterpError(f"--batch-size must be at least 1, got {args.batch_size}")
    if args.target is not None and not args.target:
        raise InterpError("--target is empty; give one token, e.g. --target ' Paris'")
    prompts = read_prompt_file(args.prompts)
    name = model_name(args)
    from ._args import known_n_layers

    layers = parse_layer_list(args.layers, known_n_layers(name))
    model = load_model(name)
    target = None if args.target is None else target_token_id(model.tokenizer, args.target)
    lens = logit_lens(model, prompts, target=target, k=args.k, layers=layers, chat=args.chat,
                      batch_size=args.batch_size)
    result = lens.to_dict(model.tokenizer)
    if args.json:
        print(json.dumps(result, ensure_ascii=False))
        return 0
    for item in result["prompts"]:
        print(f"{item['prompt']!r} -> model predicts {item['model_prediction']!r}; target {item['target']!r} "
              f"({item['target_source']})")
        print(f"  {'layer':>5}  {'top token':<16} {'p(top)':>7}  {'rank':>6}  {'p(target)':>9}  {'KL to final':>11}")
        for r in item["layers"]:
            print(f"  {r['layer']:>5}  {r['top_token']!r:<16} {r['top_prob']:>7.3f}  {r['target_rank']:>6}  "
                  f"{r['target_prob']:>9.4f}  {r['kl_to_final']:>11.3f}")
    return 0
