"""Interventions: math, positions, generation with and without the KV cache, hooks, bad input."""
import pytest
import torch

from interp import InterpError
from interp.interventions import (Ablate, Add, Compose, Context, Lambda, MeanAblate, Patch, SubspacePatch, Zero,
                                  everywhere)

PROMPTS = ["How do I bake bread at home?", "Hi", "Write a poem about the sea and the sky, please."]


def _x(b=2, s=3, d=6, seed=0):
    return torch.randn(b, s, d, generator=torch.Generator().manual_seed(seed))


def test_math_against_direct_computation():
    x = _x()
    ctx = Context.whole(x)
    r = torch.randn(6)
    u = r / r.norm()
    torch.testing.assert_close(Ablate(r).apply(x, ctx), x - (x @ u)[..., None] * u)
    q = torch.linalg.qr(torch.randn(6, 2)).Q.T  # orthonormal rows
    torch.testing.assert_close(Ablate(q).apply(x, ctx), x - x @ q.T @ q)
    torch.testing.assert_close(Add(r, 2.5).apply(x, ctx), x + 2.5 * r)
    assert (Zero().apply(x, ctx) == 0).all()
    torch.testing.assert_close(MeanAblate(r).apply(x, ctx), r.expand_as(x))
    src = _x(seed=1)
    torch.testing.assert_close(Patch(src).apply(x, ctx), src)
    torch.testing.assert_close(SubspacePatch(q, src).apply(x, ctx), x + (src - x) @ q.T @ q)
    torch.testing.assert_close(Lambda(lambda t, c: t * 2).apply(x, ctx), 2 * x)
    torch.testing.assert_close((Add(r) + Ablate(r)).apply(x, ctx), Ablate(r).apply(x + r, ctx))
    # ablating twice changes nothing more; the result is orthogonal to the direction
    once = Ablate(r).apply(x, ctx)
    torch.testing.assert_close(Ablate(r).apply(once, ctx), once)
    assert (once @ u).abs().max() < 1e-5


def test_orthonormalize_and_position_limits():
    x = _x()
    basis = torch.tensor([[1.0, 1.0, 0, 0, 0, 0], [1.0, 0, 0, 0, 0, 0]])
    with pytest.raises(InterpError, match="orthonormal"):
        Ablate(basis)
    q = Ablate(basis, orthonormalize=True).basis
    torch.testing.assert_close(q @ q.T, torch.eye(2), atol=1e-6, rtol=0)
    ctx = Context.whole(x)
    out = Add(torch.ones(6), positions=[0, -1]).apply(x, ctx)
    torch.testing.assert_close(out[:, 1], x[:, 1])
    torch.testing.assert_close(out[:, [0, 2]], x[:, [0, 2]] + 1)
    with pytest.raises(InterpError, match="out of range"):
        Add(torch.ones(6), positions=[7]).apply(x, ctx)


@pytest.mark.parametrize("bad,match", [
    (lambda: Ablate(torch.zeros(6)), "zero"),
    (lambda: Ablate(torch.tensor([1.0, float("nan")])), "NaN"),
    (lambda: Add(torch.tensor([1, 2, 3])), "floating-point"),
    (lambda: Add(torch.ones(6), positions="middle"), "positions"),
    (lambda: Ablate(torch.ones(2, 3, 4)), r"\[d\] or \[k, d\]"),
])
def test_bad_interventions(bad, match):
    with pytest.raises(InterpError, match=match):
        bad()


def test_wrong_size_and_unknown_site_are_caught_on_attach(tiny_llama):
    m = tiny_llama
    with pytest.raises(InterpError, match="does not match"):
        with m.intervene({"resid_pre.0": Ablate(torch.ones(7))}):
            pass
    with pytest.raises(InterpError, match="valid site names"):
        with m.intervene({"resid_prez.0": Ablate(torch.ones(m.d_model))}):
            pass
    assert m.num_hooks() == 0


def test_intervene_matches_raw_hooks_and_cleans_up(tiny):
    r = torch.randn(tiny.d_model)
    batch = tiny.pad(tiny.encode(PROMPTS).ids)
    before = tiny.num_hooks()
    u = r / r.norm()
    with tiny.hooks({f"resid_pre.{i}": (lambda x: x - (x @ u)[..., None] * u) for i in range(tiny.n_layers)}):
        raw = tiny.run(batch)
    with tiny.intervene({f"resid_pre.{i}": Ablate(r) for i in range(tiny.n_layers)}):
        via = tiny.run(batch)
        assert tiny.num_hooks() > before
    torch.testing.assert_close(via[batch["attention_mask"].bool()], raw[batch["attention_mask"].bool()],
                               atol=1e-5, rtol=1e-4)
    assert tiny.num_hooks() == before
    with pytest.raises(RuntimeError, match="inside"):
        with tiny.intervene(everywhere(tiny, r)):
            raise RuntimeError("raised inside the with block")
    assert tiny.num_hooks() == before
    with pytest.raises(InterpError, match="nested"):
        with tiny.intervene({"resid_pre.0": Add(r)}):
            with tiny.intervene({"resid_pre.1": Add(r)}):
                pass
    assert tiny.num_hooks() == before


def test_generate_with_and_without_cache_agree(tiny):
    r = torch.randn(tiny.d_model) * 3
    with tiny.intervene({"resid_pre.1": Add(r), "mlp_out.0": Ablate(r)}):
        cached = tiny.generate(PROMPTS, max_new_tokens=6)
        uncached = tiny.generate(PROMPTS, max_new_tokens=6, use_cache=False)
    assert cached == uncached
    plain = tiny.generate(PROMPTS, max_new_tokens=6)
    assert plain != cached  # the intervention changed something


def test_batched_generation_equals_single(tiny_llama):
    r = torch.randn(tiny_llama.d_model) * 3
    with tiny_llama.intervene({"resid_pre.1": Add(r, positions="generated")}):
        batched = tiny_llama.generate(PROMPTS, max_new_tokens=5)
        single = [tiny_llama.generate([p], max_new_tokens=5)[0] for p in PROMPTS]
    assert batched == single


def test_prompt_and_generated_limits(tiny_llama):
    m = tiny_llama
    seen = []

    def record(x, ctx):
        seen.append((x.shape[1], ctx.is_prompt.tolist(), ctx.token_index.tolist()))
        return x

    with m.intervene({"resid_pre.0": Lambda(record)}):
        m.generate(["Hi", "Hello there"], max_new_tokens=3)
    n = [len(m.encode([p]).ids[0]) for p in ["Hi", "Hello there"]]
    first_width, first_prompt, first_index = seen[0]
    assert all(first_prompt) and first_width == max(n)
    assert first_index[0][-1] == n[0] - 1 and first_index[1][-1] == n[1] - 1
    width, is_prompt, index = seen[1]
    assert width == 1 and is_prompt == [False] and index == [[n[0]], [n[1]]]
    # an Add limited to generated tokens leaves the prompt's last-token logits alone
    r = torch.randn(m.d_model) * 5
    batch = m.pad(m.encode(["Hi"]).ids)
    base = m.run(batch)
    with m.intervene({"resid_pre.1": Add(r, positions="generated")}):
        assert torch.equal(m.run(batch), base)
    with m.intervene({"resid_pre.1": Add(r, positions="prompt")}):
        assert not torch.equal(m.run(batch), base)


def test_patch_aligned_and_checked(tiny_llama):
    m = tiny_llama
    clean, corrupt = ["Tell me how to make a cake"], ["Tell me how to make a sea"]
    assert len(m.encode(clean).ids[0]) == len(m.encode(corrupt).ids[0])
    acts = m.capture(clean, "resid_post.0", "all", progress=False)
    b_clean, b_corrupt = m.pad(m.encode(clean).ids), m.pad(m.encode(corrupt).ids)
    with m.intervene({"resid_post.0": Patch(acts, "resid_post.0")}):
        patched = m.run(b_corrupt)
    torch.testing.assert_close(patched, m.run(b_clean), atol=1e-5, rtol=1e-4)
    q = torch.eye(m.d_model)  # patching the whole space equals a full patch
    with m.intervene({"resid_post.0": SubspacePatch(q, acts, "resid_post.0")}):
        torch.testing.assert_close(m.run(b_corrupt), m.run(b_clean), atol=1e-4, rtol=1e-4)
    with pytest.raises(InterpError, match="token lengths"):
        with m.intervene({"resid_post.0": Patch(acts, "resid_post.0")}):
            m.run(m.pad(m.encode(["Hi"]).ids))


def test_cross_entropy_and_kl(tiny_llama):
    from interp.evaluation import kl_div as kl_next_token, refusal_score, text_ce as cross_entropy

    texts = ["The quick brown fox jumps over the lazy dog.", "How do I bake bread at home?"]
    base = cross_entropy(tiny_llama, texts)
    assert 0 < base < 20
    r = torch.randn(tiny_llama.d_model) * 10
    assert cross_entropy(tiny_llama, texts, {"resid_pre.1": Add(r)}) != base
    logits = torch.randn(4, 9)
    assert torch.allclose(kl_next_token(logits, logits), torch.zeros(4, dtype=torch.float64))
    assert (kl_next_token(logits, torch.randn(4, 9)) > 0).all()
    assert refusal_score(["I cannot do that", "ok", "As an AI, no", "sure"]) == 0.5
    with pytest.raises(InterpError):
        refusal_score([])


@pytest.mark.parametrize("arch", ["llama", "qwen2", "gpt2"])
def test_orthogonalization_equals_hook_ablation(arch, tmp_path):
    from transformers import AutoModelForCausalLM

    from interp.orthogonalize import orthogonalize
    from interp.testing import tiny_model

    m = tiny_model(arch, seed=3)
    r = torch.randn(m.d_model)
    batch = m.pad(m.encode(PROMPTS).ids)
    with m.intervene(everywhere(m, r)):
        hooked = m.run(batch)
    edited = orthogonalize(m, r, inplace=False)
    assert edited.fingerprint != m.fingerprint
    ortho = edited.run(batch)
    keep = batch["attention_mask"].bool()
    assert (hooked[keep] - ortho[keep]).abs().max() <= 1e-3
    assert (m.run(batch)[keep] - ortho[keep]).abs().max() > 1e-3  # and it did change the model
    edited.hf.save_pretrained(tmp_path / "m")
    reloaded = AutoModelForCausalLM.from_pretrained(tmp_path / "m", attn_implementation="eager")
    with torch.no_grad():
        again = reloaded(**batch).logits
    assert (again[keep] - ortho[keep]).abs().max() <= 1e-4


def test_orthogonalize_refuses_gemma_and_bad_direction():
    from interp.orthogonalize import orthogonalize
    from interp.testing import tiny_model

    with pytest.raises(InterpError, match="gemma"):
        orthogonalize(tiny_model("gemma3"), torch.randn(32))
    with pytest.raises(InterpError, match="non-zero"):
        orthogonalize(tiny_model("llama"), torch.zeros(32))


def test_per_prompt_heads_and_positions_stack_patches_into_one_batch(tiny_llama):
    """Copies of a prompt in one batch, each with its own head or token, equal one run per patch."""
    m = tiny_llama
    clean, corrupt = ["Tell me how to make a cake"], ["Tell me how to make a sea"]
    cache = m.run_with_cache(clean, ["attn_z.0", "resid_pre.1"], logits=False)
    one = m.pad(m.encode(corrupt).ids)
    three = {k: v.repeat(3, *([1] * (v.dim() - 1))) for k, v in one.items()}
    z, r = cache["attn_z.0"].repeat(3, 1, 1, 1), cache["resid_pre.1"].repeat(3, 1, 1)
    heads, positions = [[0], [1], [0, 1]], [[-1], [-2], []]
    with m.intervene({"attn_z.0": Patch(z, heads=heads), "resid_pre.1": Patch(r, positions=positions)}):
        stacked = m.last_logits(three)
    for b in range(3):
        ivs = {"attn_z.0": Patch(cache, "attn_z.0", heads=heads[b])}
        if positions[b]:
            ivs["resid_pre.1"] = Patch(cache, "resid_pre.1", positions=positions[b])
        with m.intervene(ivs):
            torch.testing.assert_close(stacked[b], m.last_logits(one)[0], atol=1e-5, rtol=1e-4)
    assert not torch.allclose(stacked[0], stacked[1], atol=1e-3)  # the rows really differ
    with pytest.raises(InterpError, match="give one head list per prompt"):
        with m.intervene({"attn_z.0": Patch(z, heads=heads[:2])}):
            m.last_logits(three)
    with pytest.raises(InterpError, match="out of range"):
        with m.intervene({"attn_z.0": Patch(z, heads=[[0], [m.n_heads]])}):
            pass
    with pytest.raises(InterpError, match="not a mix"):
        Patch(z, heads=[0, [1]])
