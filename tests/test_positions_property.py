"""Property test for positions (issue 16): any prompt, any chat template, any position spec.

Two properties:

1. a prompt captured alone and inside a left-padded batch of other prompts
   gives the same activations at the same tokens (padding is never read);
2. instruction positions always lie inside the user's text, and cover it.

With Hypothesis installed the cases come from its strategies (shrinking a
failure to a small example); without it, from a seeded random generator over
the same space (``N_CASES`` cases), so the test runs either way.
"""
from __future__ import annotations

import copy
import random

import numpy as np
import pytest
import torch

from interp import InterpError
from interp.model import Model
from interp.positions import NAMED

N_CASES = 120
SITES = ["resid_post.1", "attn_out.0"]
# pieces that collide with template text ("assistant", "<|im_start|>", "model") or stress the tokenizer
PIECES = ["assistant", "user", "a", "end", "start", "model", "system", "<|im_start|>", "<|im_end|>", "\n", " ",
          "  ", "\t", "Hello", "bread", "sea", "?", "!", "é", "中文", "🙂", "1234", "<start_of_turn>", "</s>", "{{", "}}",
          "'", '"', "\\n"]
TEMPLATES = {
    "chatml": None,  # the tiny tokenizer's own
    "llama3": ("{% for m in messages %}<|start_header_id|>{{ m['role'] }}<|end_header_id|>\n\n{{ m['content'] }}"
               "<|eot_id|>{% endfor %}{% if add_generation_prompt %}<|start_header_id|>assistant<|end_header_id|>"
               "\n\n{% endif %}"),
    "gemma-trim": ("{% for m in messages %}<start_of_turn>{{ 'model' if m['role'] == 'assistant' else m['role'] }}\n"
                   "{{ m['content'] | trim }}<end_of_turn>\n{% endfor %}"
                   "{% if add_generation_prompt %}<start_of_turn>model\n{% endif %}"),
    "default-system": ("{% if messages[0]['role'] != 'system' %}<|im_start|>system\nYou are a helpful assistant."
                       "<|im_end|>\n{% endif %}{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}"
                       "<|im_end|>\n{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"),
    "zephyr": ("{% for m in messages %}<|{{ m['role'] }}|>\n{{ m['content'] }}</s>\n{% endfor %}"
               "{% if add_generation_prompt %}<|assistant|>\n{% endif %}"),
}


@pytest.fixture(scope="module")
def models():
    """One tiny random llama (with room for long byte-level prompts) under each template."""
    from transformers import AutoModelForCausalLM

    from interp.testing import tiny_config, tiny_tokenizer

    base = tiny_tokenizer()
    cfg = tiny_config("llama", vocab_size=len(base))
    cfg.max_position_embeddings = 1024
    torch.manual_seed(0)
    hf = AutoModelForCausalLM.from_config(cfg, dtype=torch.float32, attn_implementation="eager")
    out = {}
    for name, template in TEMPLATES.items():
        tok = copy.deepcopy(base)
        if template is not None:
            tok.chat_template = template
        out[name] = Model(hf, tok, f"tiny-{name}")
    return out


def random_prompt(rng: random.Random) -> str:
    while True:
        p = "".join(rng.choice(PIECES) for _ in range(rng.randint(1, 8)))
        if p.strip():
            return p


def random_spec(rng: random.Random, n: int):
    """A position spec valid for a prompt of n tokens (per-prompt kinds are for one prompt)."""
    kind = rng.choice(["named", "int", "slice", "range", "lists", "list-mask", "numpy-mask", "tensor-mask",
                       "shared-list"])
    if kind == "named":
        return rng.choice(NAMED)
    if kind == "int":
        return rng.randint(-n, n - 1)
    if kind == "slice":
        a = rng.randint(-n, n - 1)
        return f"{a}:" if rng.random() < 0.5 else f":{a}" if a not in (0, -n) else "-1:"
    if kind == "range":
        a = rng.randint(-n, -1)
        return range(a, 0)
    if kind == "shared-list":
        return sorted(rng.sample(range(n), rng.randint(1, min(n, 4))))
    picks = sorted(rng.sample(range(n), rng.randint(1, min(n, 5))))
    if kind == "lists":
        return [picks]
    mask = [k in picks for k in range(n)]
    if kind == "list-mask":
        return [mask]
    if kind == "numpy-mask":
        return np.array([mask])
    return torch.tensor([mask])


def check_case(models, template: str, prompt: str, others: list[str], row: int, seed: int, system: str | None):
    m = models[template]
    rng = random.Random(seed)
    enc = m.encode([prompt], system=system)
    n = enc.lengths[0]
    spec = random_spec(rng, n)
    try:
        single = m.capture([prompt], SITES, spec, system=system, progress=False)
    except InterpError as e:  # only an empty selection may be refused (e.g. ":-n" selects nothing)
        assert "no positions selected" in str(e) or "post_instruction is empty" in str(e), (spec, str(e))
        return
    batch = others[:row] + [prompt] + others[row:]
    full = m.capture(batch, SITES, "all", system=system, progress=False)
    idx = single.positions[0][single.mask[0]]
    assert full.mask[row].sum() == n  # the batch row holds exactly this prompt's tokens
    for site in SITES:
        torch.testing.assert_close(single[site][0][single.mask[0]], full[site][row, idx], atol=2e-5, rtol=1e-4,
                                   msg=lambda msg: f"{template} {prompt!r} {spec!r}: {msg}")

    # property 2: the instruction span covers the user's text and nothing outside it
    text, (a, b) = m.format_chat(prompt, system)
    user = prompt.strip() if template == "gemma-trim" else prompt
    assert text[a:b] == user
    start, end = enc.spans[0]
    offsets = m.tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)["offset_mapping"]
    assert 0 <= start < end <= n
    for t in range(start, end):
        assert offsets[t][0] < b and offsets[t][1] > a, (template, prompt, t)
    covered = set()
    for t in range(start, end):
        covered.update(range(max(a, offsets[t][0]), min(b, offsets[t][1])))
    assert covered == set(range(a, b)), (template, prompt)
    last = m.capture([prompt], SITES[0], "instruction_last", system=system, progress=False)
    assert last.positions[0, 0] == end - 1


try:
    from hypothesis import given, settings
    from hypothesis import strategies as st

    HAVE_HYPOTHESIS = True
except ImportError:  # pragma: no cover - hypothesis is optional
    HAVE_HYPOTHESIS = False


if HAVE_HYPOTHESIS:
    prompts_st = st.lists(st.sampled_from(PIECES), min_size=1, max_size=8).map("".join).filter(lambda s: s.strip())

    @settings(max_examples=N_CASES, deadline=None)
    @given(template=st.sampled_from(sorted(TEMPLATES)), prompt=prompts_st,
           others=st.lists(prompts_st, min_size=0, max_size=4), row=st.integers(0, 4), seed=st.integers(0, 2**16),
           system=st.sampled_from([None, "Be brief.", "assistant"]))
    def test_positions_property(models, template, prompt, others, row, seed, system):
        if template == "gemma-trim" and system is not None:
            system = None  # that template has no system role
        check_case(models, template, prompt, others, min(row, len(others)), seed, system)
else:
    def test_positions_property(models):
        rng = random.Random(20260416)
        for case in range(N_CASES):
            template = rng.choice(sorted(TEMPLATES))
            others = [random_prompt(rng) for _ in range(rng.randint(0, 4))]
            system = None if template == "gemma-trim" else rng.choice([None, "Be brief.", "assistant"])
            check_case(models, template, random_prompt(rng), others, rng.randint(0, len(others)),
                       rng.randint(0, 2**16), system)
