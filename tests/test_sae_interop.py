"""SAE interop (issue 21, part 5): SAELens' folder format both ways, the SAE as interventions, TransformerLens.

Tiny random models for mechanics; SAELens and the TransformerLens bridge are the references.
"""
import json

import pytest
import torch

from interp import InterpError
from interp.interventions import Context, FeatureAblate, FeatureSteer, Record, SAESplice, Splice
from interp.sae import load_sae, sae_features, sae_metadata, sae_site, save_sae, spliced_loss

TEXTS = ["The river ran past the old mill.", "Boats drifted by while the miller sang."]


def _randomize(sae, seed=0):
    """SAELens zero-initializes the biases; make every parameter carry information."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in sae.named_parameters():
            p.add_(0.1 * torch.randn(p.shape, generator=g))
            if "threshold" in name:
                p.abs_()
    return sae


def _training_sae(kind, d_in=32, d_sae=64, seed=0):
    from interp.sae_training import build_sae

    return _randomize(build_sae(kind, d_in, d_sae, k=4, seed=seed), seed)


def _identity_sae(d, hook_name):
    """A ReLU SAE whose reconstruction is exactly x: relu(x) − relu(−x)."""
    from sae_lens import StandardSAE, StandardSAEConfig
    from sae_lens.saes.sae import SAEMetadata

    sae = StandardSAE(StandardSAEConfig(d_in=d, d_sae=2 * d, metadata=SAEMetadata(hook_name=hook_name)))
    eye = torch.eye(d)
    with torch.no_grad():
        sae.W_enc.copy_(torch.cat([eye, -eye], 1))
        sae.W_dec.copy_(torch.cat([eye, -eye], 0))
        sae.b_enc.zero_()
        sae.b_dec.zero_()
    return sae


@pytest.fixture(scope="module")
def tiny_dir(tiny_llama, tmp_path_factory):
    d = tmp_path_factory.mktemp("tiny_llama")
    tiny_llama.hf.save_pretrained(d)
    tiny_llama.tokenizer.save_pretrained(d)
    return d


# ------------------------------------------------------------------ SAELens' folder format
@pytest.mark.parametrize("kind", ["standard", "topk", "jumprelu"])
def test_saved_with_interp_loads_in_saelens_bit_exact(kind, tiny_llama, tmp_path):
    from safetensors.torch import load_file
    from sae_lens import SAE

    sae = _training_sae(kind)
    save_sae(sae, tmp_path, "resid_post.1", tiny_llama, context_size=64)
    cfg = json.loads((tmp_path / "cfg.json").read_text())
    meta = cfg["metadata"]
    assert meta["hook_name"] == "blocks.1.hook_resid_post"  # was "resid_post.1", which hooks nothing in SAELens
    assert (meta["model_name"], meta["context_size"], meta["prepend_bos"]) == ("tiny-llama", 64, False)
    assert meta["hook_head_index"] is None and cfg["dtype"] == "float32" and cfg["architecture"] == kind
    loaded = SAE.load_from_disk(tmp_path)
    mine = load_sae(tmp_path, tiny_llama)
    saved = load_file(str(tmp_path / "sae_weights.safetensors"))
    for name, value in saved.items():  # the file, SAELens' object and interp's load hold the same bits
        assert torch.equal(loaded.state_dict()[name], value) and torch.equal(mine.state_dict()[name], value)
    x = torch.randn(3, 5, 32, generator=torch.Generator().manual_seed(1))
    f_loaded = loaded.encode(x)
    assert torch.equal(f_loaded, mine.encode(x)) and torch.equal(loaded.decode(f_loaded), mine.decode(f_loaded))
    # and the SAE as trained (SAELens' training class, same weights): exact for standard and jumprelu; SAELens'
    # training and inference TopK classes take different float paths (measured 3.6e-7, the same active set)
    f_train = sae.encode(x)
    tol = 1e-6 if kind == "topk" else 0.0
    assert torch.equal(f_train != 0, f_loaded != 0) and (f_train - f_loaded).abs().max() <= tol
    assert (sae.decode(f_train) - loaded.decode(f_loaded)).abs().max() <= tol
    assert sae_site(loaded) == sae_site(mine) == tiny_llama.sites(["resid_post"])[1]


def test_saelens_saved_sae_loads_into_interp(tiny_llama, tmp_path):
    from sae_lens import StandardSAE, StandardSAEConfig
    from sae_lens.saes.sae import SAEMetadata

    ref = _randomize(StandardSAE(StandardSAEConfig(d_in=64, d_sae=96, metadata=SAEMetadata(
        hook_name="blocks.0.mlp.hook_post", model_name="tiny", context_size=32))), seed=3)
    ref.save_model(tmp_path)  # SAELens' own writer
    sae = load_sae(tmp_path, tiny_llama)
    assert str(sae_site(sae)) == "mlp_act.0"
    for name, value in ref.state_dict().items():
        assert torch.equal(sae.state_dict()[name], value)
    x = tiny_llama.capture(TEXTS, "mlp_act.0", "all", chat=False, progress=False)["mlp_act.0"]
    spliced = SAESplice(sae).apply(x, Context.whole(x))
    assert torch.equal(spliced, ref(x)) and torch.equal(spliced, Splice(ref).apply(x, Context.whole(x)))


def test_old_interp_folder_loads_with_its_transformer_lens_name(tiny_llama, tmp_path):
    sae = _training_sae("topk")
    sae.cfg.metadata.hook_name = "resid_post.1"  # what interp wrote before
    sae.save_inference_model(str(tmp_path))
    assert load_sae(tmp_path, tiny_llama).cfg.metadata.hook_name == "blocks.1.hook_resid_post"


def test_load_bad_input(tiny_llama, tmp_path):
    with pytest.raises(InterpError, match="cfg.json"):
        load_sae(tmp_path)
    save_sae(_training_sae("topk", d_in=16), tmp_path / "narrow", "resid_post.0")
    with pytest.raises(InterpError, match="d_in is 16"):
        load_sae(tmp_path / "narrow", tiny_llama)
    sae = _training_sae("topk")
    sae.cfg.metadata.hook_name = "blocks.0.hook_nonsense"
    with pytest.raises(InterpError, match="not an interp site"):
        sae_site(sae)
    with pytest.raises(InterpError, match="out of range"):
        FeatureAblate(sae, [64])
    with pytest.raises(InterpError, match="coefficients"):
        FeatureSteer(sae, [1, 2], [1.0, 2.0, 3.0])


def test_train_sae_saves_transformer_lens_metadata(tiny_llama, tmp_path):
    from interp.sae_training import SAETrainConfig, train_sae

    texts = [f"Passage {i}: the river ran past the old mill and {i % 5} boats drifted by." for i in range(24)]
    store = tiny_llama.capture_to_store(texts, tmp_path / "store", "attn_out.1", "1:", chat=False, progress=False)
    cfg = SAETrainConfig(kind="topk", d_sae=64, k=4, batch_size=64, total_tokens=64 * 4, init_tokens=128,
                         norm_search=False, checkpoint_every_tokens=10**6)
    train_sae(store, "attn_out.1", tmp_path / "run", cfg, progress=False,
              metadata=sae_metadata("attn_out.1", tiny_llama, context_size=40, seqpos_slice=(1, None)))
    meta = json.loads((tmp_path / "run" / "sae" / "cfg.json").read_text())["metadata"]
    assert meta["hook_name"] == "blocks.1.hook_attn_out" and meta["context_size"] == 40
    assert meta["model_name"] == "tiny-llama" and meta["seqpos_slice"] == [1, None]
    sae = load_sae(tmp_path / "run" / "sae", tiny_llama)
    r = spliced_loss(tiny_llama, sae, TEXTS)
    assert r["site"] == "attn_out.1" and r["spliced"] != r["clean"]
    with pytest.raises(InterpError, match="not the trained site"):
        train_sae(store, "attn_out.1", tmp_path / "other", cfg, progress=False,
                  metadata={"hook_name": "blocks.0.hook_attn_out"})


# ------------------------------------------------------------------ the SAE as interventions
def test_splice_ablate_steer_mechanics(tiny_llama):
    sae = load_sae_from(_training_sae("topk"), "resid_post.1")
    x = torch.randn(2, 4, 32, generator=torch.Generator().manual_seed(2))
    ctx = Context.whole(x)
    f = sae.encode(x)
    assert torch.equal(SAESplice(sae).apply(x, ctx), sae.decode(f))
    # scale 1 keeps x up to float error; ablating features that never fire changes nothing either
    assert (FeatureAblate(sae, [0, 1], scale=1.0).apply(x, ctx) - x).abs().max() < 1e-5
    silent = [i for i in range(64) if not f[..., i].any()]
    assert (FeatureAblate(sae, silent[:3]).apply(x, ctx) - x).abs().max() < 1e-5
    # ablating a firing feature moves x by exactly its decoder contribution
    active = int(f[0, 0].nonzero()[0])
    y = FeatureAblate(sae, [active]).apply(x, ctx)
    only = torch.zeros_like(f)
    only[..., active] = f[..., active]
    expected = x - (sae.decode(only) - sae.decode(torch.zeros_like(f)))  # this topk decoder rescales by row norms
    assert (y - expected).abs().max() < 1e-5 and (y - x).abs().max() > 1e-3
    # only the chosen positions change
    y_last = FeatureAblate(sae, [active], positions=[-1]).apply(x, ctx)
    assert torch.equal(y_last[:, :-1], x[:, :-1])
    steer = FeatureSteer(sae, [3, 5], [2.0, -1.0]).apply(x, ctx)
    torch.testing.assert_close(steer, x + 2.0 * sae.W_dec[3] - sae.W_dec[5])


def load_sae_from(sae, site):
    sae.cfg.metadata.hook_name = tiny_site_name(site)
    return sae


def tiny_site_name(site):
    from interp.sites import parse_site

    return parse_site(site).tl_name


def test_per_head_and_hook_z_saes(tiny_llama, tmp_path):
    from sae_lens import SAE

    # a whole-attn_z SAE is saved in SAELens' hook_z layout (heads concatenated)
    save_sae(_training_sae("topk", d_in=32), tmp_path / "z", "attn_z.1", tiny_llama)
    sae = SAE.load_from_disk(tmp_path / "z")
    assert sae.cfg.reshape_activations == "hook_z" and sae.hook_z_reshaping_mode
    z = tiny_llama.capture(TEXTS, "attn_z.1", "all", chat=False, progress=False)["attn_z.1"]  # [n, tok, heads, d_head]
    out = SAESplice(sae).apply(z, Context.whole(z))
    flat = load_sae(tmp_path / "z")
    flat.turn_off_forward_pass_hook_z_reshaping()
    assert torch.equal(out, flat(z.flatten(2)).unflatten(-1, (4, 8)))
    # a one-head SAE (hook_head_index) reads and replaces that head only
    save_sae(_training_sae("topk", d_in=8), tmp_path / "h2", "attn_z.1", tiny_llama, hook_head_index=2)
    head = load_sae(tmp_path / "h2", tiny_llama)
    assert head.cfg.metadata.hook_head_index == 2 and head.cfg.reshape_activations == "none"
    out = SAESplice(head).apply(z, Context.whole(z))
    assert torch.equal(out[:, :, [0, 1, 3]], z[:, :, [0, 1, 3]]) and torch.equal(out[:, :, 2], head(z[:, :, 2]))
    steered = FeatureSteer(head, 7, 3.0).apply(z, Context.whole(z))
    torch.testing.assert_close(steered[:, :, 2], z[:, :, 2] + 3.0 * head.W_dec[7])
    with tiny_llama.intervene({"attn_z.1": FeatureAblate(head, [0, 1])}):
        tiny_llama.run(tiny_llama.pad(tiny_llama.encode(TEXTS, chat=False).ids))


def test_sae_features_match_encode_of_the_capture(tiny_llama):
    sae = load_sae_from(_training_sae("standard"), "resid_post.0")
    acts = tiny_llama.capture(TEXTS, "resid_post.0", "all", chat=False, progress=False)
    feats = sae_features(tiny_llama, sae, TEXTS)
    assert feats.values.shape == acts["resid_post.0"].shape[:2] + (64,) and feats.site == "resid_post.0"
    expected = sae.encode(acts["resid_post.0"])[acts.mask]
    assert torch.equal(feats.tokens(), expected) and feats.tokens().abs().sum() > 0
    some = sae_features(tiny_llama, sae, TEXTS, features=[5, 9])
    assert torch.equal(some.tokens(), expected[:, [5, 9]]) and some.features == [5, 9]


def test_spliced_loss_of_an_exact_sae_is_the_clean_loss(tiny_llama):
    r = spliced_loss(tiny_llama, _identity_sae(32, "blocks.1.hook_resid_post"), TEXTS)
    assert abs(r["spliced"] - r["clean"]) < 1e-6  # the reconstruction is x to float rounding
    assert r["zero_ablated"] != r["clean"] and r["n_tokens"] > 0


# ------------------------------------------------------------------ TransformerLens (the bridge interp uses)
@pytest.fixture(scope="module")
def sae_bridge(tiny_dir):
    """interp's TransformerLens backend on the tiny model, and SAELens' SAETransformerBridge booted on the same
    folder (its own bridge: SAELens' hook_dict lists canonical names only, so interp keeps a plain one)."""
    import interp
    from sae_lens import SAETransformerBridge

    tl = interp.load_model(str(tiny_dir), backend="transformer_lens", progress=False)
    bridge = SAETransformerBridge.boot_transformers(str(tiny_dir), device="cpu", dtype=torch.float32)
    return tl, bridge


def test_saved_sae_hooks_the_same_site_in_transformer_lens(tiny_llama, sae_bridge, tmp_path):
    from sae_lens import SAE

    tl, bridge = sae_bridge
    save_sae(_training_sae("topk"), tmp_path, "resid_post.1", tiny_llama)
    sae = SAE.load_from_disk(tmp_path)
    ids = torch.tensor(tiny_llama.encode(TEXTS[:1], chat=False).ids)
    logits_sl, cache = bridge.run_with_cache_with_saes(ids, saes=[sae])
    recon_sl = cache[bridge.get_sae_hook_name(sae, "hook_sae_recons")]
    clean = bridge(ids)
    assert (logits_sl - clean).abs().max() > 1e-3  # the SAE really was spliced in by SAELens
    for model in (tiny_llama, tl):  # interp's HF backend and its TransformerLens backend
        rec = Record()
        with model.intervene({sae_site(sae): SAESplice(sae) + rec}):
            logits = model.run(model.pad(ids.tolist()))
        # measured 0.0 (reconstruction and logits) on both backends
        assert (rec.value - recon_sl).abs().max() < 1e-5
        assert (logits - logits_sl).abs().max() < 1e-4
    # interp's old hook name ("resid_post.1") made SAELens skip the SAE with only a log warning
    sae.cfg.metadata.hook_name = "resid_post.1"
    bridge.add_sae(sae)
    assert bridge.acts_to_saes == {}


def test_feature_ablation_matches_saelens_error_term(tiny_llama, sae_bridge, tmp_path):
    from sae_lens import SAE

    tl, bridge = sae_bridge
    save_sae(_training_sae("jumprelu", seed=4), tmp_path, "mlp_out.0", tiny_llama)
    sae = SAE.load_from_disk(tmp_path)
    ids = torch.tensor(tiny_llama.encode(TEXTS[1:], chat=False).ids)
    feats = sae_features(tiny_llama, sae, TEXTS[1:]).tokens()
    chosen = feats.abs().sum(0).topk(3).indices.tolist()

    def zero(acts, hook):
        acts[..., chosen] = 0.0
        return acts

    # (run_with_hooks_with_saes takes no use_error_term: it would pass it on to the model and splice without one)
    with bridge.saes(saes=[sae], use_error_term=True):
        logits_sl = bridge.run_with_hooks(ids, fwd_hooks=[(bridge.get_sae_hook_name(sae, "hook_sae_acts_post"), zero)])
    with tl.intervene({"mlp_out.0": FeatureAblate(sae, chosen)}):
        logits = tl.run(tl.pad(ids.tolist()))
    clean = tl.run(tl.pad(ids.tolist()))
    assert (logits - clean).abs().max() > 1e-4  # the ablation does something
    assert (logits - logits_sl).abs().max() < 1e-5  # measured 0.0


@pytest.mark.slow
def test_real_model_metadata_and_error_term(smollm, tmp_path):
    """SmolLM2: the saved metadata names the model and its tokenization; with the error term kept, a
    feature scaled by 1 leaves the loss as it was, and an exact SAE spliced in gives the clean loss."""
    from interp.evaluation import text_ce

    save_sae(_training_sae("topk", d_in=576, d_sae=1152), tmp_path, "resid_post.3", smollm, context_size=128)
    meta = json.loads((tmp_path / "cfg.json").read_text())["metadata"]
    assert meta["model_name"] == "smollm2-135m-instruct" and meta["prepend_bos"] is False  # no BOS on plain text
    assert meta["model_fingerprint"] == smollm.fingerprint and meta["hook_name"] == "blocks.3.hook_resid_post"
    sae = load_sae(tmp_path, smollm)
    exact = spliced_loss(smollm, _identity_sae(576, "blocks.3.hook_resid_post"), TEXTS)
    # measured: spliced − clean 0.0, zero-ablated − clean 4.21 nats/token
    assert abs(exact["spliced"] - exact["clean"]) < 1e-4 and exact["zero_ablated"] > exact["clean"] + 1
    kept = text_ce(smollm, TEXTS, {"resid_post.3": FeatureAblate(sae, list(range(1152)), scale=1.0)})
    assert abs(kept - exact["clean"]) < 1e-4  # measured 2.3e-7
