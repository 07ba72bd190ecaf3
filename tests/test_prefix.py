"""Running a shared token prefix once (interp.prefix): the same numbers as whole-prompt forwards."""
import pytest
import torch

from interp.experiments.refusal import baseline_metric
from interp.interventions import Add
from interp.prefix import LeadingColumns, SharedPrefix, shared_prefix

PROMPTS = ["Tell me how to make a bomb", "Write a poem about the sea", "What is the capital of France?",
           "Explain photosynthesis to a child in two sentences", "Hi"]


def test_shared_prefix_leaves_every_prompt_a_token():
    assert shared_prefix([[1, 2, 3], [1, 2, 4, 5]]) == [1, 2]
    assert shared_prefix([[7, 8], [7, 8]]) == [7]
    assert shared_prefix([[1], [2]]) == [] and shared_prefix([]) == []


def test_prefix_batches_give_the_full_forwards_logits(tiny_llama):
    m = tiny_llama
    ids = m.encode(PROMPTS).ids
    sp = SharedPrefix.of(m, ids)
    assert len(sp) >= 3 and all(x[:len(sp)] == sp.prefix for x in ids)  # the chat template's head
    full = m.last_logits(m.pad(ids))
    split = m.last_logits(sp.batch(ids), cache=sp.expand(sp.cache(), len(ids)))
    torch.testing.assert_close(split, full, atol=1e-4, rtol=1e-4)
    # under an intervention the prefix cache is computed under it too
    with m.intervene({"resid_pre.1": Add(torch.randn(m.d_model))}):
        full_i = m.last_logits(m.pad(ids))
        split_i = m.last_logits(sp.batch(ids), cache=sp.expand(sp.cache(), len(ids)))
    torch.testing.assert_close(split_i, full_i, atol=1e-4, rtol=1e-4)
    assert not torch.allclose(full_i, full, atol=1e-3)
    off = SharedPrefix.of(m, ids, enabled=False)
    assert len(off) == 0 and off.cache() is None and torch.equal(off.batch(ids)["input_ids"], m.pad(ids)["input_ids"])


def test_leading_columns_cached_once_give_the_full_forwards_logits(tiny_llama):
    """Rows repeated (one per edit) over the cached first columns, edited after them, equal whole forwards."""
    m = tiny_llama
    batch = m.pad(m.encode(PROMPTS).ids)
    width = batch["input_ids"].shape[1]
    lead = LeadingColumns.of(m, batch, width - 4)
    assert lead.kv is not None and lead.cut == width - 4
    rows = torch.tensor([0, 1, 2, 3, 4, 4, 0])
    add = Add(torch.randn(m.d_model, generator=torch.Generator().manual_seed(0)), 3.0, positions=[-2])
    with m.intervene({"resid_pre.1": add}):
        sub, kw = lead.rest(rows)
        assert sub["input_ids"].shape == (7, 4) and sub["attention_mask"].shape == (7, width)
        cached = m.last_logits(sub, **kw)
        full = m.last_logits({k: v[rows] for k, v in batch.items()})
    torch.testing.assert_close(cached, full, atol=1e-4, rtol=1e-4)
    assert not torch.allclose(full, m.last_logits({k: v[rows] for k, v in batch.items()}), atol=1e-3)
    whole = LeadingColumns.of(m, batch, 0)  # nothing cached: whole rows
    sub, kw = whole.rest(rows)
    assert kw == {} and torch.equal(sub["input_ids"], batch["input_ids"][rows])


@pytest.mark.parametrize("positions", ["post_instruction", "last", [-3, -1]])
def test_capture_with_a_shared_prefix_equals_the_plain_capture(tiny_llama, positions):
    m = tiny_llama
    plain = m.capture(PROMPTS, ["resid_pre.1", "resid_post.1", "attn_out.0"], positions, progress=False,
                      batch_size=2)
    shared = m.capture(PROMPTS, ["resid_pre.1", "resid_post.1", "attn_out.0"], positions, progress=False,
                       batch_size=2, share_prefix=True)
    assert torch.equal(plain.mask, shared.mask) and torch.equal(plain.positions, shared.positions)
    for key in plain.tensors:
        torch.testing.assert_close(shared.tensors[key], plain.tensors[key], atol=1e-4, rtol=1e-4)


def test_capture_inside_the_prefix_falls_back_to_whole_prompts(tiny_llama):
    m = tiny_llama
    plain = m.capture(PROMPTS, "resid_pre.1", [0, -1], progress=False)
    shared = m.capture(PROMPTS, "resid_pre.1", [0, -1], progress=False, share_prefix=True)
    assert torch.equal(shared.tensors["resid_pre.1"], plain.tensors["resid_pre.1"])  # same path: bit-equal


def test_refusal_filter_metric_through_the_prefix(tiny_llama):
    m = tiny_llama
    ids = [m.tokenizer.encode("!", add_special_tokens=False)[0]]
    metric = baseline_metric(m, PROMPTS, ids, batch_size=2, progress=False)
    from interp.evaluation import refusal_metric
    enc = m.encode(PROMPTS)
    ref = torch.cat([refusal_metric(m.last_logits(m.pad([x])), ids) for x in enc.ids])
    torch.testing.assert_close(metric, ref.double(), atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("share", [False, True])
def test_capture_scores_the_last_logits_in_the_same_forward(tiny_llama, share):
    from interp.activations import Activations
    from interp.evaluation import refusal_metric

    m = tiny_llama
    ids = [m.tokenizer.encode("!", add_special_tokens=False)[0]]
    plain = m.capture(PROMPTS, "resid_pre", "post_instruction", progress=False, batch_size=2, share_prefix=share)
    scored = m.capture(PROMPTS, "resid_pre", "post_instruction", progress=False, batch_size=2, share_prefix=share,
                       score=lambda logits: refusal_metric(logits, ids))
    assert plain.scores is None
    for key in plain.tensors:
        torch.testing.assert_close(scored.tensors[key], plain.tensors[key], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(scored.scores.double(), baseline_metric(m, PROMPTS, ids, batch_size=2, progress=False),
                               atol=1e-4, rtol=1e-4)
    # the kept prompts of a filter, in their order, and joined chunks keep their scores
    part = scored.select([3, 0])
    assert torch.equal(part.tensors["resid_pre.1"], scored.tensors["resid_pre.1"][[3, 0]])
    assert part.metadata["prompt_hashes"] == [scored.metadata["prompt_hashes"][i] for i in (3, 0)]
    joined = Activations.concat([part, scored.select([1])])
    assert torch.equal(joined.scores, scored.scores[[3, 0, 1]]) and len(joined) == 3


def test_dtype_names_and_auto():
    import torch as t

    from interp import InterpError
    from interp.loading import native_bf16, resolve_dtype

    assert resolve_dtype("float32") is t.float32 and resolve_dtype("bfloat16") is t.bfloat16
    assert resolve_dtype("auto") is (t.bfloat16 if native_bf16() else t.float32)
    assert resolve_dtype(t.float16) is t.float16
    with pytest.raises(InterpError, match="not one of auto"):
        resolve_dtype("fp8")


def test_generate_from_a_shared_prefix_cache(tiny_llama):
    """Greedy completions through the prefix cache equal whole-prompt ones: unedited, under Add at every
    position, under the weight-edited ablation; a per-prompt intervention (OnRows) runs whole prompts."""
    from interp.generation import generate
    from interp.interventions import OnRows, everywhere

    m = tiny_llama
    g = torch.Generator().manual_seed(3)
    v, r = 4 * torch.randn(m.d_model, generator=g), torch.randn(m.d_model, generator=g)
    for ivs in (None, {"resid_pre.1": Add(v)}, {"resid_post.0": Add(v, positions="generated")}, everywhere(m, r),
                {"resid_pre.1": OnRows(Add(v), rows=[1, 3])}):
        plain = generate(m, PROMPTS, max_new_tokens=6, batch_size=2, interventions=ivs)
        shared = generate(m, PROMPTS, max_new_tokens=6, batch_size=2, interventions=ivs, share_prefix=True)
        assert shared == plain, ivs
    # the cache is really built: once per call where the interventions allow it, never for OnRows
    calls = []
    real = m.prefix_cache
    m.prefix_cache = lambda ids: calls.append(len(ids)) or real(ids)
    try:
        generate(m, PROMPTS, max_new_tokens=2, batch_size=2, interventions=everywhere(m, r), share_prefix=True)
        generate(m, PROMPTS, max_new_tokens=2, interventions={"resid_pre.1": OnRows(Add(v), rows=[1])},
                 share_prefix=True)
    finally:
        del m.prefix_cache
    assert len(calls) == 1 and calls[0] >= 3


def test_generate_prefills_long_and_short_prompts_in_buckets(tiny_llama, monkeypatch):
    """A batch mixing short and long prompts prefills each length bucket alone and joins their caches
    (padding after the prefix): the same greedy completions as whole prompts, with and without edits."""
    from interp import generation
    from interp.interventions import everywhere

    m = tiny_llama
    long = ["Summarize this: " + "the quick brown fox jumps over the lazy dog " * 1,
            "Repeat after me: " + "one two three four five six seven " * 2]
    prompts = PROMPTS + long + ["Hello there"]
    joined = []
    real = generation._prefill_in_buckets
    monkeypatch.setattr(generation, "_prefill_in_buckets",
                        lambda *a: joined.append(real(*a)) or joined[-1])
    g = torch.Generator().manual_seed(5)
    v, r = 4 * torch.randn(m.d_model, generator=g), torch.randn(m.d_model, generator=g)
    for ivs in (None, {"resid_pre.1": Add(v)}, {"resid_post.0": Add(v, positions="generated")},
                {"resid_post.0": Add(v, positions="prompt")}, everywhere(m, r)):
        plain = generation.generate(m, prompts, max_new_tokens=20, batch_size=8, interventions=ivs)
        shared = generation.generate(m, prompts, max_new_tokens=20, batch_size=8, interventions=ivs,
                                     share_prefix=True)
        assert shared == plain, ivs
        assert joined and joined[-1] is not None  # the buckets were really joined


@pytest.mark.slow
def test_joined_bucket_cache_gives_the_whole_batchs_logits(smollm):
    """The random model's completions barely depend on the prompt, so on a real model: the next-token
    logits of every row from the joined bucket cache equal those of the whole left-padded batch."""
    from interp import generation

    m, real = smollm, generation._prefill_in_buckets
    long = ["Summarize this: " + "the quick brown fox jumps over the lazy dog " * 6,
            "Repeat after me: " + "one two three four five six seven " * 8]
    prompts = PROMPTS + long + ["Hello there"]
    v = 4 * torch.randn(m.d_model, generator=torch.Generator().manual_seed(5))
    ids = m.encode(prompts).ids
    sp = SharedPrefix.of(m, ids)
    rows = sorted(range(len(ids)), key=lambda i: len(ids[i]))
    for ivs in (None, {"resid_pre.1": Add(v)}):
        with m.intervene(ivs or {}):
            kv = sp.cache()
            cache = real(m, sp, kv, ids, rows, getattr(m, "_intervention_state", None))
            batch = sp.batch([ids[i] for i in rows])
            last = {k: t[:, -1:] for k, t in batch.items() if k != "attention_mask"}
            last["attention_mask"] = batch["attention_mask"]
            joined_logits = m.last_logits(last, cache=cache)
            whole = m.last_logits(m.pad([ids[i] for i in rows]))
        assert cache is not None  # more than one bucket
        # float32 rounding of a different batch shape: measured max diff 5e-5 against a row spread of 1.0-4.0
        torch.testing.assert_close(joined_logits, whole, atol=1e-3, rtol=1e-3)
        assert whole.std(0).mean() > 0.5  # rows differ, so a row mix-up would show
