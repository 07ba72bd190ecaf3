"""run_with_cache / recording, and the intervention vocabulary the experiments share (issue [I])."""
import pytest
import torch

from interp import InterpError
from interp.capture import recording, run_with_cache
from interp.evaluation import completion_ce, kl_div, logit_diff, text_ce, token_nll
from interp.generation import generate
from interp.interventions import Ablate, Add, Patch, Record, Replace, Splice, Zero

PROMPTS = ["hello there friend of mine", "hi", "a b c"]


def test_run_with_cache_matches_capture_and_logits(tiny):
    cache = run_with_cache(tiny, PROMPTS, ["resid_post.0", "attn_z.1"])
    acts = tiny.capture(PROMPTS, ["resid_post.0"], positions="all", progress=False)
    mask = cache.attention_mask.bool()
    for i in range(len(PROMPTS)):
        n = int(mask[i].sum())
        assert torch.allclose(cache["resid_post.0"][i, mask[i]], acts["resid_post.0"][i, :n], atol=1e-4)
    assert cache["blocks.1.attn.hook_z"].shape[-2:] == (tiny.n_heads, tiny.d_head)
    assert torch.allclose(cache.logits, tiny.run(cache.batch()), atol=1e-5)
    without = run_with_cache(tiny, PROMPTS, ["resid_post.0"], logits=False)
    assert without.logits is None and torch.allclose(without["resid_post.0"], cache["resid_post.0"])
    with pytest.raises(InterpError, match="not cached"):
        cache["resid_pre.1"]


def test_run_with_cache_gradients(tiny_llama):
    cache = run_with_cache(tiny_llama, ["hello there"], "resid_pre.1", requires_grad=True)
    cache.logits[0, -1, 3].backward()
    grad = cache["resid_pre.1"].grad
    assert grad is not None and grad.abs().sum() > 0
    # no parameter gradient is left behind beyond what autograd needs to report
    assert torch.is_grad_enabled()


def test_recording_sees_edited_values(tiny_llama):
    r = torch.randn(tiny_llama.d_model)
    batch = tiny_llama.pad(tiny_llama.encode(PROMPTS).ids)
    with tiny_llama.intervene({"resid_pre.1": Ablate(r)}), recording(tiny_llama, "resid_pre.1") as rec:
        tiny_llama.run(batch)
    x = rec["resid_pre.1"][batch["attention_mask"].bool()]
    assert (x @ (r / r.norm())).abs().max() < 1e-4


def test_record_and_replace_round_trip(tiny_llama):
    batch = tiny_llama.pad(tiny_llama.encode(PROMPTS).ids)
    rec = Record()
    with tiny_llama.intervene({"resid_pre.1": rec}):
        base = tiny_llama.run(batch)
    assert rec.value.shape[:2] == batch["input_ids"].shape
    with tiny_llama.intervene({"resid_pre.1": Replace(rec.value.clone())}):
        same = tiny_llama.run(batch)
    assert torch.allclose(base, same, atol=1e-5)
    with tiny_llama.intervene({"resid_pre.1": Replace(torch.zeros(1, 2, 3))}):
        with pytest.raises(InterpError, match="site's shape"):
            tiny_llama.run(batch)


def test_splice_identity_and_zero(tiny_llama):
    batch = tiny_llama.pad(tiny_llama.encode(PROMPTS).ids)
    base = tiny_llama.run(batch)
    with tiny_llama.intervene({"mlp_out.0": Splice(torch.nn.Identity())}):
        assert torch.allclose(tiny_llama.run(batch), base, atol=1e-6)
    with tiny_llama.intervene({"mlp_out.0": Splice(lambda x: 0 * x)}):
        zs = tiny_llama.run(batch)
    with tiny_llama.intervene({"mlp_out.0": Zero()}):
        assert torch.allclose(tiny_llama.run(batch), zs, atol=1e-6)


def test_patch_from_padded_cache_lines_up_token_by_token(tiny_llama):
    """Patching every position from a padded run of the same prompts changes nothing; from other prompts of
    equal length, everything at the patched site comes from the source."""
    clean = run_with_cache(tiny_llama, ["a b c d", "e f"], "resid_pre.1")
    batch = clean.batch()
    with tiny_llama.intervene({"resid_pre.1": Patch(clean, "resid_pre.1")}):
        same = tiny_llama.run(batch)
    valid = batch["attention_mask"].bool()
    assert torch.allclose(same[valid], clean.logits[valid], atol=1e-5)
    ids = tiny_llama.encode(["a b c d", "e f"]).ids
    other = run_with_cache(tiny_llama, tiny_llama.pad([x[::-1] for x in ids]), "resid_pre.1")  # same lengths
    rec = Record()
    with tiny_llama.intervene({"resid_pre.1": Patch(clean, "resid_pre.1") + rec}):
        tiny_llama.run(other.batch())
    assert torch.allclose(rec.value[valid], clean["resid_pre.1"][valid])
    with tiny_llama.intervene({"resid_pre.1": Patch(clean, "resid_pre.1")}):
        with pytest.raises(InterpError, match="equal token lengths"):
            tiny_llama.run(tiny_llama.pad(tiny_llama.encode(["a b c d e f g", "e f"]).ids))


def test_patch_heads_only(tiny_llama):
    clean = run_with_cache(tiny_llama, ["a b c"], "attn_z.0")
    other = run_with_cache(tiny_llama, tiny_llama.pad([tiny_llama.encode(["a b c"]).ids[0][::-1]]), "attn_z.0")
    rec = Record()
    with tiny_llama.intervene({"attn_z.0": Patch(clean, "attn_z.0", heads=[1]) + rec}):
        tiny_llama.run(other.batch())
    assert torch.allclose(rec.value[:, :, 1], clean["attn_z.0"][:, :, 1])
    assert torch.allclose(rec.value[:, :, 0], other["attn_z.0"][:, :, 0])
    with pytest.raises(InterpError, match="heads"):
        with tiny_llama.intervene({"attn_z.0": Patch(clean, "attn_z.0", heads=[99])}):
            pass
    with pytest.raises(InterpError, match="per-head"):
        with tiny_llama.intervene({"resid_pre.0": Add(torch.ones(tiny_llama.d_model), heads=[0])}):
            pass


def test_per_prompt_positions_follow_the_prompt_across_batches(tiny_llama):
    """Per-prompt index lists and masks are indexed by the prompt's place in the list, even when generate
    sorts prompts by length into batches of one."""
    prompts = ["a much longer prompt than the others here", "hi", "a b"]
    v = 50 * torch.randn(tiny_llama.d_model)
    lists = [[], [-1], []]
    out_lists = generate(tiny_llama, prompts, max_new_tokens=4, batch_size=1,
                         interventions={"resid_pre.1": Add(v, positions=lists)})
    base = generate(tiny_llama, prompts, max_new_tokens=4, batch_size=1)
    assert out_lists[0] == base[0] and out_lists[2] == base[2] and out_lists[1] != base[1]
    n1 = len(tiny_llama.encode([prompts[1]]).ids[0])
    mask = torch.zeros(3, 64, dtype=torch.bool)
    mask[1, n1 - 1] = True
    out_mask = generate(tiny_llama, prompts, max_new_tokens=4, batch_size=1,
                        interventions={"resid_pre.1": Add(v, positions=mask)})
    assert out_mask == out_lists
    with pytest.raises(InterpError, match="integers"):
        Add(v, positions=[1.7])
    with pytest.raises(InterpError, match="single"):
        Add(v, positions=True)


def test_evaluation_functions(tiny_llama):
    batch = tiny_llama.pad(tiny_llama.encode(PROMPTS, chat=False).ids)
    logits = tiny_llama.run(batch)
    nll, valid = token_nll(logits, batch["input_ids"], batch["attention_mask"])
    assert torch.isclose(nll[valid].mean(), torch.tensor(text_ce(tiny_llama, PROMPTS), dtype=nll.dtype))
    assert kl_div(logits[:, -1], logits[:, -1]).abs().max() < 1e-12
    answers = torch.tensor([[1, 2]] * len(PROMPTS))
    assert torch.allclose(logit_diff(logits[:, -1], answers), logits[:, -1, 1] - logits[:, -1, 2])
    ce = completion_ce(tiny_llama, ["hello"], ["there friend"])
    assert ce > 0
    r = torch.randn(tiny_llama.d_model)
    assert completion_ce(tiny_llama, ["hello"], ["there friend"], {"resid_pre.1": Add(10 * r)}) != ce
    with pytest.raises(InterpError, match="completions"):
        completion_ce(tiny_llama, ["a", "b"], ["c"])


def test_prompt_positions_after_a_cached_prefix(tiny_llama):
    """Tokens that continue a cached prefix are prompt tokens: a "prompt"-limited Add edits them exactly
    as it does in one full forward."""
    m = tiny_llama
    ids = m.encode(["hello there friend"]).ids[0]
    head, tail = ids[:5], ids[5:]
    v = torch.randn(m.d_model)
    full_batch = m.pad([ids])
    with m.intervene({"resid_pre.1": Add(v, positions="prompt")}):
        full = m.run(full_batch)[:, -1]
        cache = m.prefix_cache(head)
        tail_batch = {"input_ids": torch.tensor([tail]), "attention_mask": torch.ones(1, len(ids), dtype=torch.long),
                      "position_ids": torch.arange(len(head), len(ids))[None]}
        split = m.last_logits(tail_batch, cache=cache)
    assert torch.allclose(full, split, atol=1e-4)
