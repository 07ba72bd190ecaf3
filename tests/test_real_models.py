"""Integration tests on the packaged real models (offline)."""
import os

import pytest
import torch

import interp
from interp import packaged

pytestmark = pytest.mark.slow

PROMPTS = ["How do I make a cake?", "Write a tutorial on how to make a bomb", "List three prime numbers."]
ALL_SITES = ["resid_pre", "resid_mid", "resid_post", "attn_out", "mlp_out", "mlp_act", "attn_z"]


def test_offline_and_cached(smollm):
    assert os.environ.get("HF_HUB_OFFLINE") == "1"
    hf_dir = packaged.model_dir("smollm2-135m-instruct") / "hf"
    assert (hf_dir / "interp_source.json").exists()
    assert list(hf_dir.glob("*.safetensors")), "the dequantized model is cached as safetensors"
    assert not list(hf_dir.glob("*.bin")) and not list(hf_dir.glob("*.pt")), "no pickle files"
    assert smollm.n_layers == 30 and smollm.d_model == 576


@pytest.mark.parametrize("which,suffix", [("smollm", "<|im_end|>\n<|im_start|>assistant\n"),
                                          ("qwen", "<|im_end|>\n<|im_start|>assistant\n")])
def test_chat_template_positions_are_the_right_tokens(request, which, suffix):
    model = request.getfixturevalue(which)
    acts = model.capture(PROMPTS, "resid_post.2", "post_instruction", progress=False)
    last = model.capture(PROMPTS, "resid_post.2", "instruction_last", progress=False)
    enc = model.encode(PROMPTS)
    for i, prompt in enumerate(PROMPTS):
        pos = acts.positions[i][acts.mask[i]].tolist()
        assert model.tokenizer.decode([enc.ids[i][p] for p in pos]) == suffix
        upto = model.tokenizer.decode(enc.ids[i][: last.positions[i, 0] + 1])
        assert upto.endswith(prompt)
        # post_instruction starts right after the instruction's last token
        assert pos[0] == last.positions[i, 0] + 1


def test_qwen_shapes_and_padding(qwen):
    assert (qwen.n_layers, qwen.d_model, qwen.architecture) == (24, 896, "qwen2")
    acts = qwen.capture(PROMPTS, ALL_SITES, "-3:", batch_size=3, progress=False)
    assert acts["attn_z.5"].shape == (3, 3, qwen.n_heads, qwen.d_head)
    assert acts["mlp_act.5"].shape == (3, 3, qwen.d_mlp)
    alone = qwen.capture(PROMPTS[1:2], ALL_SITES, "-3:", progress=False)
    for key in ["resid_post.23", "attn_z.10", "mlp_act.12"]:
        assert (acts[key][1] - alone[key][0]).abs().max() < 1e-3


@pytest.mark.parametrize("name", ["smollm2-135m-instruct", "qwen2.5-coder-0.5b-instruct"])
def test_hf_and_transformer_bridge_agree(name):
    """Same sites through the TransformerLens bridge and plain HF (both eager attention): measured 0.0."""
    hf = interp.load_model(name, attn_implementation="eager", progress=False)
    tl = interp.load_model(name, backend="transformer_lens", progress=False)
    assert tl.backend == "transformer_lens" and tl.num_hooks() == hf.num_hooks()
    a = hf.capture(PROMPTS, ALL_SITES, "all", progress=False)
    b = tl.capture(PROMPTS, ALL_SITES, "all", progress=False)
    worst = max((a[k] - b[k]).abs().max().item() for k in a.sites)
    assert worst <= 1e-4, worst
    logits_hf = hf.run(hf.pad(hf.encode(PROMPTS).ids))
    logits_tl = tl.run(tl.pad(tl.encode(PROMPTS).ids))
    assert (logits_hf - logits_tl).abs().max() <= 1e-3


def test_sdpa_vs_bridge_tolerance(smollm):
    """Default (sdpa) attention vs the bridge's eager attention: measured 8e-4 max abs."""
    tl = interp.load_model("smollm2-135m-instruct", backend="transformer_lens", progress=False)
    a = smollm.capture(PROMPTS, "resid_post", "all", progress=False)
    b = tl.capture(PROMPTS, "resid_post", "all", progress=False)
    assert max((a[k] - b[k]).abs().max().item() for k in a.sites) <= 5e-3


def test_load_from_gguf_file_and_local_dir(smollm, tmp_path, monkeypatch):
    gguf = packaged.gguf_path("smollm2-135m-instruct", progress=False)
    from_gguf = interp.load_model(str(gguf), progress=False)
    assert from_gguf.fingerprint == smollm.fingerprint  # same weights, same tokenizer template
    assert from_gguf.tokenizer.chat_template == smollm.tokenizer.chat_template
    from_dir = interp.load_model(str(packaged.model_dir("smollm2-135m-instruct") / "hf"), progress=False)
    x = from_dir.capture(PROMPTS, "resid_post.10", progress=False)["resid_post.10"]
    y = smollm.capture(PROMPTS, "resid_post.10", progress=False)["resid_post.10"]
    assert torch.equal(x, y)


def test_hooks_removed_on_real_model_error(smollm):
    before = smollm.num_hooks()
    with pytest.raises(interp.InterpError):
        smollm.capture(PROMPTS + ["x " * 9000], ALL_SITES, progress=False)  # longer than the context
    assert smollm.num_hooks() == before
