"""``interp bench generate``: tokens/s of generation with all-layer directional ablation.

Plain HF ``generate`` against the same call inside ``model.intervene`` with
``Ablate`` at every block input, attention output and MLP output, and against
TransformerLens' bridge ``generate`` with the same edits as TL hooks. Greedy,
KV cache on, one batch, fixed number of new tokens (EOS ignored), median of
``reps`` after a warm-up.
"""
from __future__ import annotations

import torch

from .capture import _median_time as _median


def bench_generate(model_name: str, batch: int = 8, new_tokens: int = 32, reps: int = 3, seed: int = 0,
                   progress: bool = True) -> dict:
    from ..interventions import everywhere
    from ..loading import load_model

    model = load_model(model_name, progress=progress)
    prompts = ["Write a short story about a lighthouse keeper.", "Explain how rainbows form.",
               "Give me three tips for learning the guitar.", "Describe the city of Paris in spring.",
               "What is the best way to learn a language?", "Summarize the plot of Hamlet.",
               "How do vaccines work?", "Write a poem about the sea."][:batch]
    enc = model.encode(prompts)
    padded = model.pad(enc.ids)
    direction = torch.randn(model.d_model, generator=torch.Generator().manual_seed(seed))
    kwargs = dict(max_new_tokens=new_tokens, min_new_tokens=new_tokens, do_sample=False, top_p=None, top_k=None,
                  temperature=None, pad_token_id=model.tokenizer.pad_token_id)

    def plain():
        with torch.no_grad():
            model.hf.generate(input_ids=padded["input_ids"], attention_mask=padded["attention_mask"], **kwargs)

    def ablated():
        with model.intervene(everywhere(model, direction)) as state:
            state["prompt_width"] = padded["input_ids"].shape[1]  # where the prompt ends, as generate() says it
            plain()

    n_tokens = batch * new_tokens
    plain_s = _median(plain, reps)
    result = {"model": model_name, "batch": batch, "new_tokens": new_tokens, "reps": reps,
              "plain_tok_s": round(n_tokens / plain_s, 2), "ratios": {}, "reasons": {}}
    result["ratios"]["interp_ablate"] = round(plain_s / _median(ablated, reps), 3)
    try:
        result["ratios"]["transformer_lens"] = round(plain_s / _tl(model, padded, direction, kwargs, reps), 3)
    except Exception as e:  # a peer that cannot run gets null and a reason
        result["ratios"]["transformer_lens"] = None
        result["reasons"]["transformer_lens"] = f"{type(e).__name__}: {e}"[:300]
    return result


def _tl(model, padded, direction, kwargs, reps: int) -> float:
    from ..tl_backend import TLModel

    tl = TLModel.from_hf(model.hf, model.tokenizer, model.name, model.source)
    unit = direction / direction.norm()

    def ablate(x, hook):
        return x - (x @ unit)[..., None] * unit

    names = [f"blocks.{layer}.{n}" for layer in range(model.n_layers)
             for n in ("hook_resid_pre", "hook_attn_out", "hook_mlp_out")]

    def run():
        with torch.no_grad(), tl.bridge.hooks(fwd_hooks=[(n, ablate) for n in names]):  # noqa: raw-hook (the peer)
            tl.bridge.generate(padded["input_ids"], max_new_tokens=kwargs["max_new_tokens"], do_sample=False,
                               verbose=False, stop_at_eos=False)

    return _median(run, reps)
