"""``interp bench generate``: tokens/s of generation under interventions, against plain HF ``generate``.

One batch, greedy, KV cache on, a fixed number of new tokens (EOS ignored).
Timed side by side in one process, round-robin (each repetition runs every
contender once, in turn, from a rotating start, garbage collected between
them, so load on a shared machine hits them alike), median of ``reps`` after
a warm-up of each:

- ``plain``: ``model.hf.generate``;
- ``interp_ablate``: the same inside ``model.intervene(everywhere(model, r))``
  as ``interp.generate`` runs it (the ablation as a temporary weight edit, one
  hook left; entering the block, swapping the edited weights in and restoring
  the originals are inside the timing). As in repeated ``generate`` calls with
  one direction, the edit built by the first call is reused (``interp.intervene``
  keeps the last one);
- ``interp_ablate_first_call``: the same with that kept edit released before
  each call, so building it (every output projection read and written) is timed;
- ``interp_ablate_hooks``: the same with every hook (``weight_edit=False``,
  3 per layer), the path before the weight edit;
- ``interp_add``: one ``Add`` at the middle layer's block input;
- ``transformer_lens``: TransformerLens' bridge ``generate`` with the ablation
  as TL hooks;
- ``nnsight``: nnsight's ``generate`` with the ablation written as nnsight
  edits at every step.

Ratios are plain time / contender time (higher is faster; 1.0 = no cost).
"""
from __future__ import annotations

import copy
import gc
import statistics
import time
from typing import Callable

import torch

PROMPTS = ["Write a short story about a lighthouse keeper.", "Explain how rainbows form.",
           "Give me three tips for learning the guitar.", "Describe the city of Paris in spring.",
           "What is the best way to learn a language?", "Summarize the plot of Hamlet.",
           "How do vaccines work?", "Write a poem about the sea."]


def _round_robin(fns: dict[str, Callable[[], object]], reps: int) -> dict[str, float]:
    """Median seconds per contender; each repetition runs every contender once, in turn, starting one
    place later each time (no contender always follows the same one), with the garbage of the one
    before collected outside the timing (else the contender after a peer that allocates much, nnsight,
    pays for that peer's garbage: plain HF measured 11% slower than the hooked runs that way)."""
    for fn in fns.values():
        fn()  # warm-up
    names = list(fns)
    times: dict[str, list[float]] = {k: [] for k in fns}
    for rep in range(reps):
        for k in names[rep % len(names):] + names[:rep % len(names)]:
            gc.collect()
            t = time.perf_counter()
            fns[k]()
            times[k].append(time.perf_counter() - t)
    return {k: statistics.median(v) for k, v in times.items()}


def bench_generate(model_name, batch: int = 8, new_tokens: int = 32, reps: int = 3, seed: int = 0,
                   progress: bool = True, peers: bool = True) -> dict:
    """Tokens/s of plain generate and ratios of each contender (see the module docstring).

    ``model_name`` may also be a loaded ``Model``; ``peers=False`` skips TransformerLens and nnsight.
    """
    from ..interventions import Add, everywhere
    from ..intervene import release_weight_edit, weight_edit
    from ..loading import load_model

    model = load_model(model_name, progress=progress) if isinstance(model_name, str) else model_name
    prompts = (PROMPTS * (batch // len(PROMPTS) + 1))[:batch]
    padded = model.pad(model.encode(prompts).ids)
    direction = torch.randn(model.d_model, generator=torch.Generator().manual_seed(seed))
    kwargs = dict(max_new_tokens=new_tokens, min_new_tokens=new_tokens, do_sample=False, top_p=None, top_k=None,
                  temperature=None, pad_token_id=model.tokenizer.pad_token_id)
    width = padded["input_ids"].shape[1]
    add_layer = model.n_layers // 2

    def plain():
        with torch.no_grad():
            return model.hf.generate(input_ids=padded["input_ids"], attention_mask=padded["attention_mask"], **kwargs)

    def under(interventions, edit: bool):
        def run():
            with model.intervene(interventions) as state, weight_edit(model, edit):
                state["prompt_width"] = width  # where the prompt ends, as interp.generate tells it
                return plain()
        return run

    def first_call(run):
        def again():
            release_weight_edit(model)
            return run()
        return again

    contenders = {"plain": plain,
                  "interp_ablate": under(everywhere(model, direction), True),
                  "interp_ablate_first_call": first_call(under(everywhere(model, direction), True)),
                  "interp_ablate_hooks": under(everywhere(model, direction), False),
                  "interp_add": under({f"resid_pre.{add_layer}": Add(direction, scale=2.0)}, True)}
    reasons = {}
    if peers:
        for name, make in (("transformer_lens", _tl), ("nnsight", _nnsight)):
            try:
                contenders[name] = make(model, padded, direction, kwargs)
            except Exception as e:  # a peer that cannot run gets null and a reason
                reasons[name] = f"{type(e).__name__}: {e}"[:300]
    # the same tokens from the weight-edited and the hooked ablation: the fast path is the same ablation
    same_tokens = torch.equal(contenders["interp_ablate"](), contenders["interp_ablate_hooks"]())
    secs = _round_robin(contenders, reps)
    plain_s = secs.pop("plain")
    ratios = {k: round(plain_s / v, 3) for k, v in secs.items()}
    ratios.update({k: None for k in reasons})
    name = model_name if isinstance(model_name, str) else model.name
    return {"model": name, "batch": batch, "new_tokens": new_tokens, "reps": reps, "add_layer": add_layer,
            "plain_tok_s": round(batch * new_tokens / plain_s, 2), "seconds": {"plain": round(plain_s, 3),
                                                                             **{k: round(v, 3) for k, v in secs.items()}},
            "ratios": ratios, "reasons": reasons, "ablate_same_tokens_as_hooks": same_tokens}


def _tl(model, padded, direction, kwargs) -> Callable[[], object]:
    from ..tl_backend import TLModel

    # on a copy: the bridge rewires the modules it wraps, which would change what the other contenders run
    tl = TLModel.from_hf(copy.deepcopy(model.hf), model.tokenizer, model.name, model.source)
    unit = direction / direction.norm()

    def ablate(x, hook):
        return x - (x @ unit)[..., None] * unit

    names = [f"blocks.{layer}.{n}" for layer in range(model.n_layers)
             for n in ("hook_resid_pre", "hook_attn_out", "hook_mlp_out")]

    def run():
        with torch.no_grad(), tl.bridge.hooks(fwd_hooks=[(n, ablate) for n in names]):  # noqa: raw-hook (the peer)
            return tl.bridge.generate(padded["input_ids"], max_new_tokens=kwargs["max_new_tokens"], do_sample=False,
                                      verbose=False, stop_at_eos=False)

    return run


def _nnsight(model, padded, direction, kwargs) -> Callable[[], object]:
    import warnings

    from nnsight import LanguageModel

    from .. import arch

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        lm = LanguageModel(model.hf, tokenizer=model.tokenizer)
    unit = direction / direction.norm()
    lay = arch.layout(model)
    blocks = arch.blocks(model)
    path = next(n for n, m in model.hf.named_modules() if m is blocks)
    steps = kwargs["max_new_tokens"]

    def ablate(x):
        return x - (x @ unit)[..., None] * unit

    def envoy(root, path):
        for part in path.split("."):
            root = getattr(root, part)
        return root

    layers_envoy = envoy(lm, path)
    layers = [layers_envoy[i] for i in range(len(blocks))]

    def run():
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            with torch.no_grad(), lm.generate({"input_ids": padded["input_ids"],
                                               "attention_mask": padded["attention_mask"]}, **kwargs) as tracer:
                for _ in tracer.iter[0:steps]:
                    for block in layers:
                        block.input = ablate(block.input)
                        attn, mlp = envoy(block, lay.attn_out), envoy(block, lay.mlp_out)
                        a = attn.output
                        attn.output = (ablate(a[0]),) + tuple(a[1:]) if isinstance(a, tuple) else ablate(a)
                        mlp.output = ablate(mlp.output)
                out = tracer.result.save()
        return out

    return run


def print_table(r: dict) -> None:
    print(f"generate on {r['model']} ({r['batch']} prompts x {r['new_tokens']} new tokens, greedy, median of "
          f"{r['reps']}, round-robin)")
    print(f"  {'plain HF generate':<44}{r['plain_tok_s']:.1f} tok/s (1.000x)")
    labels = {"interp_ablate": "interp, ablation at every layer (weight edit)",
              "interp_ablate_first_call": "interp, the same, building the edit each call",
              "interp_ablate_hooks": "interp, the same with 3 hooks per layer",
              "interp_add": f"interp, Add at resid_pre.{r['add_layer']}",
              "transformer_lens": "TransformerLens bridge, ablation hooks",
              "nnsight": "nnsight generate, ablation edits"}
    for key, label in labels.items():
        v = r["ratios"].get(key)
        print(f"  {label:<48}{f'{v:.3f}x' if v is not None else 'n/a (' + r['reasons'].get(key, '') + ')'}")
    print(f"  weight-edit and hook ablation generate the same tokens: {r['ablate_same_tokens_as_hooks']}")
