import pytest

from interp import InterpError, Site, parse_site
from interp.sites import SITE_NAMES, expand_sites


@pytest.mark.parametrize("spelling,expected", [
    ("resid_pre.3", Site("resid_pre", 3)),
    ("blocks.3.hook_resid_pre", Site("resid_pre", 3)),
    ("blocks.0.hook_resid_mid", Site("resid_mid", 0)),
    ("blocks.7.hook_resid_post", Site("resid_post", 7)),
    ("blocks.2.hook_attn_out", Site("attn_out", 2)),
    ("blocks.2.hook_mlp_out", Site("mlp_out", 2)),
    ("blocks.5.mlp.hook_post", Site("mlp_act", 5)),
    ("blocks.1.attn.hook_z", Site("attn_z", 1)),
    (("mlp_out", 4), Site("mlp_out", 4)),
])
def test_spellings(spelling, expected):
    assert parse_site(spelling, n_layers=8) == expected


def test_tl_name_roundtrip():
    for name in SITE_NAMES:
        s = Site(name, 4)
        assert parse_site(s.tl_name) == s


@pytest.mark.parametrize("bad", ["resid_prez.1", "blocks.1.hook_foo", "resid_post", "nonsense"])
def test_unknown_site_lists_valid_ones(bad):
    with pytest.raises(InterpError) as e:
        parse_site(bad, n_layers=4)
    for name in SITE_NAMES:
        assert name in str(e.value)


def test_layer_out_of_range():
    with pytest.raises(InterpError, match="layers 0..3"):
        parse_site("resid_post.4", n_layers=4)


def test_expand_bare_name_means_all_layers():
    sites = expand_sites(["mlp_out", "mlp_out.1"], n_layers=3)
    assert [str(s) for s in sites] == ["mlp_out.0", "mlp_out.1", "mlp_out.2"]


# --- issue 16 item 2: a float or bool layer is refused, never truncated
@pytest.mark.parametrize("bad", [("resid_post", 1.7), ("resid_post", True), ("resid_post", "1"), ("resid_post", None)])
def test_non_integer_layer_is_refused(bad):
    with pytest.raises(InterpError, match="not an integer"):
        parse_site(bad, n_layers=4)
    with pytest.raises(InterpError, match="not an integer"):
        expand_sites([bad], n_layers=4)


def test_numpy_integer_layer_is_fine():
    import numpy as np

    assert parse_site(("resid_post", np.int64(2)), n_layers=4) == Site("resid_post", 2)


# --- issue 21: embeddings, norms, q/k/v and attention patterns
import math  # noqa: E402

import torch  # noqa: E402

from interp import arch  # noqa: E402
from interp.capture import run_with_cache  # noqa: E402
from interp.interventions import Add, Patch, Record, Zero  # noqa: E402
from interp.sites import EXTRA_SITE_NAMES, GLOBAL_SITE_NAMES, TL_GLOBAL, site_depth  # noqa: E402

PROMPTS = ["hello there friend of mine", "hi", "a b c"]
NEW = ["embed", "ln1.0", "ln2.1", "attn_q.1", "attn_k.1", "attn_v.1", "attn_pattern.1", "ln_final"]


@pytest.mark.parametrize("spelling,expected", [
    ("hook_embed", Site("embed", None)), ("embed", Site("embed", None)),
    ("hook_pos_embed", Site("pos_embed", None)), ("ln_final.hook_normalized", Site("ln_final", None)),
    ("blocks.2.ln1.hook_normalized", Site("ln1", 2)), ("ln2.3", Site("ln2", 3)),
    ("blocks.1.attn.hook_q", Site("attn_q", 1)), ("blocks.1.attn.hook_k", Site("attn_k", 1)),
    ("blocks.1.attn.hook_v", Site("attn_v", 1)), ("blocks.0.attn.hook_pattern", Site("attn_pattern", 0)),
    (("ln_final", None), Site("ln_final", None)),
])
def test_new_spellings(spelling, expected):
    assert parse_site(spelling, n_layers=8) == expected


def test_new_names_round_trip_and_expand():
    for name in EXTRA_SITE_NAMES:
        assert parse_site(Site(name, 3).tl_name) == Site(name, 3)
    for name in GLOBAL_SITE_NAMES:
        s = Site(name, None)
        assert s.tl_name == TL_GLOBAL[name] and parse_site(s.tl_name) == s and str(s) == name
    assert [str(s) for s in expand_sites(["embed", "attn_pattern", "ln_final"], n_layers=2)] == [
        "embed", "attn_pattern.0", "attn_pattern.1", "ln_final"]
    assert site_depth(Site("embed", None), 4) == 0 and site_depth(Site("ln_final", None), 4) == 3
    with pytest.raises(InterpError, match="no layer"):
        parse_site("embed.0")
    with pytest.raises(InterpError, match="ln_final"):  # the error lists the new names too
        parse_site("blocks.0.hook_nonsense")


def _valid(cache):
    return cache.attention_mask.bool()


def test_embeddings_and_final_norm(tiny):
    names = NEW + (["pos_embed"] if tiny.architecture == "gpt2" else [])
    c = run_with_cache(tiny, PROMPTS, names + ["resid_pre.0", f"resid_post.{tiny.n_layers - 1}"])
    m = _valid(c)
    emb = tiny.hf.get_input_embeddings()
    lookup = emb.weight[c.input_ids] * getattr(emb, "embed_scale", 1.0)  # Gemma scales by sqrt(d_model)
    assert torch.allclose(c["hook_embed"], lookup, atol=1e-6)
    if tiny.architecture == "gpt2":  # learned positions: block 0 reads embed + pos_embed
        pos = c.batch()["position_ids"]
        assert torch.allclose(c["hook_pos_embed"], tiny.hf.transformer.wpe.weight[pos], atol=1e-6)
        expected = c["embed"] + c["pos_embed"]
    else:
        expected = c["embed"]
        with pytest.raises(InterpError, match="no learned position embedding"):
            run_with_cache(tiny, PROMPTS, "pos_embed")
    assert torch.allclose(c["resid_pre.0"][m], expected[m], atol=1e-5)
    last = c[f"resid_post.{tiny.n_layers - 1}"]
    norm = arch.final_norm(tiny)
    with torch.no_grad():
        assert torch.allclose(c["ln_final"][m], norm(last)[m], atol=1e-5)
        # the unembedding of ln_final is the model's logits
        assert torch.allclose(tiny.unembed(c["ln_final"])[m], c.logits[m], atol=1e-4)


def test_normalized_inputs(tiny):
    c = run_with_cache(tiny, PROMPTS, ["resid_pre.0", "ln1.0", "resid_mid.1", "ln2.1"], logits=False)
    m = _valid(c)
    lay = arch.layout(tiny)
    ln1 = arch.module(tiny, 0, lay.attn_in_norm)
    x = c["resid_pre.0"]
    if tiny.architecture == "gpt2":
        manual = torch.nn.functional.layer_norm(x, (tiny.d_model,), ln1.weight, ln1.bias, ln1.eps)
    else:  # RMSNorm by hand: x / rms(x) * (offset + w)
        eps = tiny.config.rms_norm_eps
        manual = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps) * (lay.norm_offset + ln1.weight)
    assert torch.allclose(c["ln1.0"][m], manual[m], atol=1e-5)
    with torch.no_grad():
        ln2 = arch.module(tiny, 1, lay.mlp_in_norm)(c["resid_mid.1"])
    assert torch.allclose(c["ln2.1"][m], ln2[m], atol=1e-5)


def test_qkv_and_pattern(tiny):
    c = run_with_cache(tiny, PROMPTS, ["ln1.1", "attn_q.1", "attn_k.1", "attn_v.1", "attn_pattern.1", "attn_z.1"],
                       logits=False)
    m = _valid(c)
    b, s = c.input_ids.shape
    kv = tiny.config.num_key_value_heads if tiny.architecture != "gpt2" else tiny.n_heads
    assert c["attn_q.1"].shape == (b, s, tiny.n_heads, tiny.d_head)
    assert c["attn_k.1"].shape == c["attn_v.1"].shape == (b, s, kv, tiny.d_head)
    assert c["attn_pattern.1"].shape == (b, tiny.n_heads, s, s)
    # q/k/v are the projections of ln1
    lay = arch.layout(tiny)
    x = c["ln1.1"]
    with torch.no_grad():
        if lay.fused_qkv:
            conv = arch.module(tiny, 1, lay.attn_q)
            q, k, v = (x @ conv.weight + conv.bias).split(tiny.d_model, -1)
        else:
            q, k, v = (arch.module(tiny, 1, p)(x) for p in (lay.attn_q, lay.attn_k, lay.attn_v))
    for got, want in [("attn_q.1", q), ("attn_k.1", k), ("attn_v.1", v)]:
        assert torch.allclose(c[got].flatten(-2)[m], want[m], atol=1e-5), got
    # pattern rows are distributions over earlier, real tokens
    p = c["attn_pattern.1"].transpose(1, 2)[m]  # [valid queries, heads, keys]
    assert torch.allclose(p.sum(-1), torch.ones(p.shape[:2]), atol=1e-5)
    real_queries = m[:, None, :, None].expand(-1, tiny.n_heads, -1, s)  # padded query rows are not used
    future = torch.ones(s, s).triu(1).bool()[None, None]
    assert c["attn_pattern.1"][future & real_queries].abs().max() < 1e-6
    pad_keys = ~m[:, None, None, :].expand(-1, tiny.n_heads, s, -1)
    assert c["attn_pattern.1"][pad_keys & real_queries].abs().max() < 1e-6
    # the head outputs are the pattern applied to the values (KV heads shared by groups of query heads)
    vv = c["attn_v.1"].repeat_interleave(tiny.n_heads // kv, dim=2)
    z = torch.einsum("bhqk,bkhd->bqhd", c["attn_pattern.1"], vv)
    assert torch.allclose(z[m], c["attn_z.1"][m], atol=1e-5)


@pytest.mark.parametrize("arch_name", ["gpt2", "llama"])
def test_pattern_is_softmax_of_scores(arch_name):
    """softmax(q kᵀ / sqrt(d_head) + causal/padding mask), rotary applied for llama (block 1 is global)."""
    from interp.testing import tiny_model

    model = tiny_model(arch_name)
    c = run_with_cache(model, PROMPTS, ["attn_q.1", "attn_k.1", "attn_pattern.1"], logits=False)
    q, k = c["attn_q.1"].transpose(1, 2), c["attn_k.1"].transpose(1, 2)  # [b, heads, seq, d_head]
    pos = c.batch()["position_ids"]
    if arch_name == "llama":
        from transformers.models.llama.modeling_llama import apply_rotary_pos_emb

        with torch.no_grad():
            cos, sin = model.hf.model.rotary_emb(q, pos)
        q, k = apply_rotary_pos_emb(q, k, cos, sin)
        k = k.repeat_interleave(model.n_heads // k.shape[1], dim=1)
    scores = q @ k.transpose(-1, -2) / math.sqrt(model.d_head)
    s = scores.shape[-1]
    m = _valid(c)
    allowed = torch.ones(s, s).tril().bool()[None] & m[:, None, :]
    scores = scores.masked_fill(~allowed[:, None], float("-inf"))
    want = torch.softmax(scores, -1).transpose(1, 2)[m]
    got = c["attn_pattern.1"].transpose(1, 2)[m]
    assert torch.allclose(got, want, atol=1e-5)


def test_pattern_switches_to_eager_and_back():
    from interp.testing import tiny_model

    model = tiny_model("llama")
    model.hf.set_attn_implementation("sdpa")
    batch = model.pad(model.encode(PROMPTS).ids)
    base = model.run(batch)
    rec = Record()
    with model.intervene({"attn_pattern.0": rec}):
        with pytest.raises(InterpError, match="nested"):  # still one block at a time
            with model.intervene({"resid_pre.0": Zero()}):
                pass
        c = run_with_cache(model, batch, ["attn_pattern.0", "attn_pattern.1"])
        assert model.hf.config._attn_implementation == "eager"
    assert model.hf.config._attn_implementation == "sdpa"  # restored once the last pattern hook went
    assert torch.allclose(rec.value, c["attn_pattern.0"])
    m = batch["attention_mask"].bool()
    assert torch.allclose(c.logits[m], base[m], atol=1e-5)  # eager and sdpa agree on the logits
    assert model.num_hooks() == 0


def test_pattern_is_read_only(tiny_llama):
    with pytest.raises(InterpError, match="read-only"):
        with tiny_llama.intervene({"attn_pattern.0": Zero()}):
            pass
    batch = tiny_llama.pad(tiny_llama.encode(PROMPTS).ids)
    with tiny_llama.hooks({"blocks.0.attn.hook_pattern": lambda p: p * 0}):
        with pytest.raises(InterpError, match="read-only"):
            tiny_llama.run(batch)
    assert tiny_llama.num_hooks() == 0


def test_interventions_on_new_sites(tiny):
    batch = tiny.pad(tiny.encode(PROMPTS).ids)
    m = batch["attention_mask"].bool()
    v = torch.randn(tiny.d_model)
    with tiny.intervene({"hook_embed": Add(v)}):
        added = run_with_cache(tiny, batch, "embed", logits=False)
    plain = run_with_cache(tiny, batch, ["embed", "attn_q.1"])
    assert torch.allclose(added["embed"][m], plain["embed"][m] + v, atol=1e-5)
    with tiny.intervene({"ln_final": Zero()}):  # no unembedding bias in these models: zero logits
        assert tiny.run(batch)[m].abs().max() < 1e-6
    # patching queries from a run with another first word changes the output; from the same run it does not
    enc = tiny.encode(PROMPTS)
    ids = [list(x) for x in enc.ids]
    for x, (a, _) in zip(ids, enc.spans):
        x[a] = 100 if x[a] != 100 else 101
    source = run_with_cache(tiny, tiny.pad(ids), "attn_q.1", logits=False)
    with tiny.intervene({"blocks.1.attn.hook_q": Patch(source, site="attn_q.1")}):
        patched = run_with_cache(tiny, batch, "attn_q.1")
    assert torch.allclose(patched["attn_q.1"][m], source["attn_q.1"][m], atol=1e-5)
    assert not torch.allclose(plain["attn_q.1"][m], source["attn_q.1"][m], atol=1e-3)
    # random tiny weights make attention nearly uniform, so new queries move the logits only a little
    # (measured max change 2.4e-5 on llama); an unapplied patch would leave them bit-identical
    assert (patched.logits[m] - plain.logits[m]).abs().max() > 1e-6
    with tiny.intervene({"attn_q.1": Patch(plain, site="attn_q.1")}):
        assert torch.allclose(tiny.run(batch)[m], plain.logits[m], atol=1e-5)
    # zeroing one KV head's keys is a heads= edit on the kv-head axis
    with tiny.intervene({"attn_k.1": Zero(heads=[0])}):
        zk = run_with_cache(tiny, batch, "attn_k.1", logits=False)["attn_k.1"]
    assert zk[m][:, 0].abs().max() == 0 and zk[m][:, 1:].abs().max() > 0  # padding is never edited
    assert tiny.num_hooks() == 0


def test_capture_new_sites_at_positions(tiny):
    names = ["embed", "attn_q.0", "attn_k.0", "attn_pattern.1", "ln_final"]
    acts = tiny.capture(PROMPTS, names, positions="last", progress=False)
    c = run_with_cache(tiny, PROMPTS, names, logits=False)
    lengths = c.attention_mask.sum(1).tolist()
    for key in ["embed", "attn_q.0", "attn_k.0", "ln_final"]:
        assert torch.allclose(acts[key][:, 0], c[key][:, -1], atol=1e-5), key
    p = acts["attn_pattern.1"]  # [prompts, 1, heads, longest prompt]: keys in each prompt's own tokens
    assert p.shape == (len(PROMPTS), 1, tiny.n_heads, max(lengths))
    for i, n in enumerate(lengths):
        assert torch.allclose(p[i, 0, :, :n], c["attn_pattern.1"][i, :, -1, -n:], atol=1e-5)
        assert p[i, 0, :, n:].abs().sum() == 0
    assert torch.allclose(p.sum(-1), torch.ones(len(PROMPTS), 1, tiny.n_heads), atol=1e-5)


@pytest.mark.slow
def test_new_sites_agree_with_transformer_lens_bridge(smollm):
    """smollm2 (sdpa, switched to eager for the pattern) against the TransformerLens bridge's own hook points.

    Measured: embed, q, k, v, pattern and logits identical (0.0); the bridge's ``hook_normalized`` comes
    before the norm weight, so ours equals it times the weight (measured 0.0 for ln1, ln2 and ln_final).
    """
    import interp

    tl = interp.load_model("smollm2-135m-instruct", backend="transformer_lens", progress=False)
    prompts = ["The capital of France is", "Hello"]
    sites = ["hook_embed", "ln1.3", "ln2.3", "attn_q.3", "attn_k.3", "attn_v.3", "attn_pattern.3", "ln_final"]
    assert smollm.hf.config._attn_implementation == "sdpa"
    a = smollm.run_with_cache(prompts, sites, chat=False)
    assert smollm.hf.config._attn_implementation == "sdpa"  # restored
    b = tl.run_with_cache(prompts, sites, chat=False)
    m = a.attention_mask.bool()
    assert a["attn_k.3"].shape[-2] == smollm.config.num_key_value_heads == 3  # per KV head, as the bridge
    for key in ["embed", "attn_q.3", "attn_k.3", "attn_v.3"]:
        assert a.acts[key].shape == b.acts[key].shape
        assert (a.acts[key][m] - b.acts[key][m]).abs().max() <= 1e-5, key
    pa, pb = a["attn_pattern.3"].transpose(1, 2)[m], b["attn_pattern.3"].transpose(1, 2)[m]
    assert (pa - pb).abs().max() <= 1e-5
    lay = arch.layout(smollm)
    weights = {"ln1.3": arch.module(smollm, 3, lay.attn_in_norm).weight,
               "ln2.3": arch.module(smollm, 3, lay.mlp_in_norm).weight, "ln_final": arch.final_norm(smollm).weight}
    for key, w in weights.items():
        assert (a.acts[key][m] - (b.acts[key] * w.detach())[m]).abs().max() <= 1e-4, key
    assert (a.logits[m] - b.logits[m]).abs().max() <= 1e-3


def test_new_sites_through_a_store_and_the_cli_precheck(tiny_llama, tmp_path):
    from interp.loading import precheck_sites

    prompts = ["hello there friend", "hi", "a b c d e f g"]
    names = ["embed", "attn_pattern.1", "attn_v.0"]
    # one prompt per shard: each shard's patterns have their own key width; loading pads them
    store = tiny_llama.capture_to_store(prompts, tmp_path / "s", names, "last", shard_size=1, progress=False)
    direct = tiny_llama.capture(prompts, names, "last", progress=False)
    loaded = store.load()
    for key in ["embed", "attn_pattern.1", "attn_v.0"]:
        assert loaded[key].shape == direct[key].shape and torch.allclose(loaded[key], direct[key], atol=1e-6), key
    assert precheck_sites("smollm2-135m-instruct", ["attn_pattern", "hook_embed", "ln1.3"]) == [
        "attn_pattern", Site("embed", None), Site("ln1", 3)]
