"""Generation drops finished rows between stretches (``interp.generation``): the same texts as one
``hf.generate`` call, with interventions that depend on which prompt a row is, and with a shared prefix."""
import pytest
import torch

from interp import Add, everywhere
from interp.interventions import OnRows
from interp.generation import generate
from interp.testing import tiny_model

PROMPTS = ["hello there", "a b c d e f g", "x", "the cat sat on the mat", "one two", "q r s t"]


def _frequent_token_as_eos(model, prompts, n=40):
    """Make a token the model emits often (but not first) its end-of-sequence token, so rows end at
    different steps; returns the one-call texts before and after."""
    texts = generate(model, prompts, max_new_tokens=n, chat=False, num_beams=1)  # num_beams: one call
    ids = model.tokenizer(texts[0], add_special_tokens=False).input_ids
    model.hf.generation_config.eos_token_id = ids[len(ids) // 2]
    return generate(model, prompts, max_new_tokens=n, chat=False, num_beams=1)


@pytest.mark.parametrize("arch", ["llama", "gpt2"])
def test_dropping_finished_rows_gives_the_one_call_texts(arch):
    model = tiny_model(arch)
    one_call = _frequent_token_as_eos(model, PROMPTS)
    lengths = {len(model.tokenizer(t, add_special_tokens=False).input_ids) for t in one_call}
    assert len(lengths) > 1  # rows end at different steps, so some leave the batch early
    assert generate(model, PROMPTS, max_new_tokens=40, chat=False) == one_call
    assert generate(model, PROMPTS, max_new_tokens=40, chat=False, batch_size=4) == \
        generate(model, PROMPTS, max_new_tokens=40, chat=False, batch_size=4, num_beams=1)


def test_per_row_interventions_follow_their_rows_after_others_leave():
    model = tiny_model("llama")
    _frequent_token_as_eos(model, PROMPTS)
    r = torch.randn(model.d_model) * 4
    steer = {"resid_pre.1": OnRows(Add(r), rows=[1, 3, 5])}
    dropped = generate(model, PROMPTS, max_new_tokens=40, chat=False, interventions=steer)
    assert dropped == generate(model, PROMPTS, max_new_tokens=40, chat=False, interventions=steer, num_beams=1)
    assert dropped != generate(model, PROMPTS, max_new_tokens=40, chat=False)  # the steering matters here
    ablate = everywhere(model, r)
    assert generate(model, PROMPTS, max_new_tokens=40, chat=False, interventions=ablate) == \
        generate(model, PROMPTS, max_new_tokens=40, chat=False, interventions=ablate, num_beams=1)


def test_shared_prefix_with_dropping_finished_rows():
    model = tiny_model("llama")
    prompts = ["answer in one word please : " + p for p in PROMPTS]
    _frequent_token_as_eos(model, prompts)
    r = torch.randn(model.d_model) * 4
    for ivs in (None, {"resid_pre.1": Add(r)}):
        assert generate(model, prompts, max_new_tokens=40, chat=False, interventions=ivs, share_prefix=True) == \
            generate(model, prompts, max_new_tokens=40, chat=False, interventions=ivs, share_prefix=True, num_beams=1)
