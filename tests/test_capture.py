"""Capture mechanics on tiny random models of every supported architecture."""
import pytest
import torch

from interp import InterpError
from interp.sites import SITE_NAMES

PROMPTS = ["How do I bake bread at home?", "Hi", "Write a poem about the sea and the sky, please.", "What is 2+2?"]


def test_site_shapes(tiny):
    acts = tiny.capture(PROMPTS, list(SITE_NAMES), positions="last", progress=False)
    for layer in range(tiny.n_layers):
        for name in SITE_NAMES:
            t = acts[f"{name}.{layer}"]
            assert t.shape == (len(PROMPTS), 1) + tiny.site_shape(f"{name}.{layer}")
            assert t.dtype == torch.float32
    assert acts.stack("resid_post").shape[0] == tiny.n_layers


def test_residual_bookkeeping(tiny):
    """resid_mid = resid_pre + attn_out and resid_post = resid_mid + mlp_out, in every architecture."""
    acts = tiny.capture(PROMPTS, ["resid_pre", "resid_mid", "resid_post", "attn_out", "mlp_out"], "all",
                        progress=False)
    for layer in range(tiny.n_layers):
        torch.testing.assert_close(acts[f"resid_pre.{layer}"] + acts[f"attn_out.{layer}"], acts[f"resid_mid.{layer}"])
        torch.testing.assert_close(acts[f"resid_mid.{layer}"] + acts[f"mlp_out.{layer}"], acts[f"resid_post.{layer}"])
    # resid_post of one layer is resid_pre of the next
    torch.testing.assert_close(acts["resid_post.0"], acts["resid_pre.1"])


def test_attn_z_feeds_output_projection(tiny):
    """attn_z heads concatenated and projected reproduce attn_out."""
    acts = tiny.capture(PROMPTS, ["attn_z.1", "attn_out.1"], "all", progress=False)
    z = acts["attn_z.1"].flatten(-2)
    o_proj = tiny._layers[1].attn.c_proj if tiny.architecture == "gpt2" else tiny._layers[1].self_attn.o_proj
    with torch.no_grad():
        projected = o_proj(z)
        if tiny.architecture.startswith("gemma"):  # gemma normalizes the projection before adding it
            projected = tiny._layers[1].post_attention_layernorm(projected)
    mask = acts.mask
    torch.testing.assert_close(projected[mask], acts["attn_out.1"][mask], atol=1e-5, rtol=1e-4)


def test_padding_invariance(tiny):
    """A prompt alone and inside a left-padded batch gives the same activations (1e-4)."""
    sites = ["resid_post", "attn_z.0", "mlp_act.1"]
    batch = tiny.capture(PROMPTS, sites, "all", batch_size=4, progress=False)
    for i, p in enumerate(PROMPTS):
        alone = tiny.capture([p], sites, "all", progress=False)
        n = int(alone.mask.sum())
        for key in alone.sites:
            diff = (batch[key][i, :n] - alone[key][0, :n]).abs().max().item()
            assert diff < 1e-4, (key, i, diff)
        assert not batch.mask[i, n:].any()
        assert (batch[key][i, n:] == 0).all()  # masked slots hold zeros, not padding


def test_tl_names_accepted_everywhere(tiny_llama):
    acts = tiny_llama.capture(["Hi there"], ["blocks.1.hook_resid_pre", "blocks.0.attn.hook_z"], progress=False)
    assert acts.sites == ["resid_pre.1", "attn_z.0"]
    torch.testing.assert_close(acts["blocks.1.hook_resid_pre"], acts["resid_pre.1"])
    assert "blocks.0.attn.hook_z" in acts


def _tokens_at(model, prompt, positions):
    ids = model.encode([prompt]).ids[0]
    return [model.tokenizer.convert_ids_to_tokens(ids[i]) for i in positions]


def test_positions(tiny_llama):
    m = tiny_llama
    prompts = PROMPTS[:2]
    enc = m.encode(prompts)
    n = enc.lengths
    acts = m.capture(prompts, "resid_pre.0", "post_instruction", progress=False)
    # ChatML: <|im_end|> \n <|im_start|> assistant \n follow the instruction
    assert _tokens_at(m, prompts[0], acts.positions[0].tolist())[0] == "<|im_end|>"
    assert acts.positions[0, -1].item() == n[0] - 1
    il = m.capture(prompts, "resid_pre.0", "instruction_last", progress=False).positions[:, 0]
    assert (il == acts.positions[:, 0] - 1).all()
    text = m.tokenizer.decode(enc.ids[0][: il[0] + 1])
    assert text.endswith(prompts[0])
    last3 = m.capture(prompts, "resid_pre.0", "-3:", progress=False).positions
    assert last3.tolist() == [[n[0] - 3, n[0] - 2, n[0] - 1], [n[1] - 3, n[1] - 2, n[1] - 1]]
    assert m.capture(prompts, "resid_pre.0", range(-2, 0), progress=False).positions.tolist() == \
        [[n[0] - 2, n[0] - 1], [n[1] - 2, n[1] - 1]]
    explicit = m.capture(prompts, "resid_pre.0", [[0, 2], [1]], progress=False)
    assert explicit.positions.tolist() == [[0, 2], [1, -1]]
    assert explicit.mask.tolist() == [[True, True], [True, False]]
    masks = [torch.arange(k) % 2 == 0 for k in n]
    by_mask = m.capture(prompts, "resid_pre.0", masks, progress=False)
    assert by_mask.positions[0, : (n[0] + 1) // 2].tolist() == list(range(0, n[0], 2))
    # explicit positions read the same values as "all" at those tokens
    everything = m.capture(prompts, "resid_pre.0", "all", progress=False)
    torch.testing.assert_close(explicit["resid_pre.0"][0, 1], everything["resid_pre.0"][0, 2])


def test_plain_prompts_and_bad_positions(tiny_llama):
    m = tiny_llama
    with pytest.raises(InterpError, match="chat"):
        m.capture(["Hi"], "resid_pre.0", "post_instruction", chat=False, progress=False)
    with pytest.raises(InterpError, match="out of range"):
        m.capture(["Hi"], "resid_pre.0", [[500]], progress=False)
    with pytest.raises(InterpError, match="2 prompts"):
        m.capture(["Hi"], "resid_pre.0", [[0], [1]], progress=False)
    with pytest.raises(InterpError, match="unknown position"):
        m.capture(["Hi"], "resid_pre.0", "middle", progress=False)
    plain = m.capture(["Hi"], "resid_pre.0", "all", chat=False, progress=False)
    assert plain.mask.sum() == len(m.tokenizer("Hi")["input_ids"])


def test_bad_inputs(tiny_llama):
    m = tiny_llama
    with pytest.raises(InterpError, match="empty"):
        m.capture([], "resid_pre.0", progress=False)
    with pytest.raises(InterpError, match="empty"):
        m.capture(["  "], "resid_pre.0", progress=False)
    with pytest.raises(InterpError, match="context"):
        m.capture(["bread " * 400], "resid_pre.0", progress=False)
    with pytest.raises(InterpError, match="valid site names"):
        m.capture(["Hi"], "resid_prez.0", progress=False)


def test_no_chat_template_is_a_clear_error():
    from interp.testing import tiny_model

    m = tiny_model("llama")
    m.tokenizer.chat_template = None
    with pytest.raises(InterpError, match="no chat template"):
        m.capture(["Hi"], "resid_pre.0", "post_instruction", progress=False)


def test_nan_activations_are_reported():
    from interp.testing import tiny_model

    m = tiny_model("qwen2")
    with torch.no_grad():
        m._layers[1].mlp.down_proj.weight[0, 0] = float("nan")
    with pytest.raises(InterpError, match="NaN"):
        m.capture(["Hi there"], "mlp_out.1", progress=False)


def test_hooks_removed_when_forward_raises(tiny):
    before = tiny.num_hooks()

    def boom(x):
        raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"):
        with tiny.hooks({"resid_mid.1": boom, "attn_z.0": lambda x: None}):
            assert tiny.num_hooks() > before
            tiny._forward(tiny.pad(tiny.encode(["Hi"]).ids))
    assert tiny.num_hooks() == before
    # a failing capture leaves nothing behind either
    with pytest.raises(InterpError):
        tiny.capture(["Hi", ""], "resid_post", progress=False)
    assert tiny.num_hooks() == before


def test_hook_edit_changes_downstream(tiny_llama):
    """An edit returned by a hook flows on: zeroing resid_mid.0 changes resid_post.1."""
    m = tiny_llama
    batch = m.pad(m.encode(["Hi there"]).ids)
    clean = m.run(batch)
    with m.hooks({"resid_mid.0": lambda x: torch.zeros_like(x)}):
        edited = m.run(batch)
    assert (clean - edited).abs().max() > 1e-3
    assert torch.equal(m.run(batch), clean)


def test_dtype_and_metadata(tiny_llama):
    acts = tiny_llama.capture(PROMPTS, "resid_post.1", "last", dtype=torch.float16, progress=False)
    assert acts["resid_post.1"].dtype == torch.float16
    meta = acts.metadata
    assert meta["model"] == "tiny-llama" and meta["sites"] == ["resid_post.1"]
    assert len(meta["prompt_hashes"]) == len(PROMPTS) and len(set(meta["prompt_hashes"])) == len(PROMPTS)
    assert meta["model_fingerprint"] == tiny_llama.fingerprint


def test_activations_save_load(tmp_path, tiny_llama):
    from interp import Activations

    acts = tiny_llama.capture(PROMPTS, ["resid_post.1", "attn_z.0"], [[0], [1, 2], [0], [3]], progress=False)
    acts.save(tmp_path / "a.safetensors")
    back = Activations.load(tmp_path / "a.safetensors")
    assert back.metadata == acts.metadata
    for k in acts.sites:
        assert torch.equal(back[k], acts[k])
    assert torch.equal(back.mask, acts.mask)


def test_last_logits_and_running_upper_blocks_only(tiny):
    """Skipping the blocks below a layer with their cached output changes nothing."""
    prompts = PROMPTS[:3]
    batch = tiny.pad(tiny.encode(prompts).ids)
    full = tiny.run(batch)[:, -1]
    torch.testing.assert_close(tiny.last_logits(batch), full, atol=1e-5, rtol=1e-4)
    acts = tiny.capture(prompts, "resid_pre.1", "all", progress=False)
    # rebuild the padded [batch, seq, d] block input from the captured rows
    resid = torch.zeros(batch["input_ids"].shape + (tiny.d_model,))
    for i in range(len(prompts)):
        n = int(acts.mask[i].sum())
        resid[i, -n:] = acts["resid_pre.1"][i, :n]
    upper = tiny.last_logits(batch, start_layer=1, resid=resid)
    torch.testing.assert_close(upper, full, atol=1e-4, rtol=1e-4)
    shift = torch.randn(tiny.d_model)
    with tiny.hooks({"resid_pre.1": lambda x: x + shift}):
        edited_full = tiny.last_logits(batch)
        edited_upper = tiny.last_logits(batch, start_layer=1, resid=resid)
    torch.testing.assert_close(edited_upper, edited_full, atol=1e-4, rtol=1e-4)
    assert (edited_full - full).abs().max() > 1e-3


# --- issue 16 item 1: the instruction span is located by the template, not by searching the text
@pytest.mark.parametrize("instruction", ["assistant", "a", "end", "start", "im_start", "user", "<|im_end|>",
                                         "x\n<|im_start|>assistant\n"])
def test_instruction_span_is_the_users_text(tiny_llama, instruction):
    m = tiny_llama
    text, (a, b) = m.format_chat(instruction)
    assert text[:a] == "<|im_start|>user\n" and text[a:b] == instruction
    enc = m.encode([instruction])
    start, end = enc.spans[0]
    offsets = m.tokenizer(enc.texts[0], add_special_tokens=False, return_offsets_mapping=True)["offset_mapping"]
    # every instruction token overlaps the user's characters, and every user character is covered
    assert all(offsets[t][0] < b and offsets[t][1] > a for t in range(start, end))
    assert offsets[start][0] <= a and offsets[end - 1][1] >= b
    last = m.capture([instruction], "resid_pre.0", "instruction_last", progress=False)
    assert last.positions.tolist() == [[end - 1]]


def test_instruction_span_with_system_prompt_mentioning_it(tiny_llama):
    text, (a, b) = tiny_llama.format_chat("sea", system="Talk about the sea.")
    assert text[a:b] == "sea" and text[:a].endswith("<|im_start|>user\n")


# --- issue 16 item 2: masks as lists or numpy arrays, True, float indices, integer dtypes
def test_list_and_numpy_masks_are_masks(tiny_llama):
    import numpy as np

    m = tiny_llama
    prompts = ["How do I bake bread at home?", "Hi"]
    n = m.encode(prompts).lengths
    masks = [[k % 2 == 0 for k in range(length)] for length in n]
    want = [[k for k in range(length) if k % 2 == 0] for length in n]
    for spec in (masks, [np.array(x) for x in masks], [torch.tensor(x) for x in masks]):
        acts = m.capture(prompts, "resid_pre.0", spec, progress=False)
        assert [row[row >= 0].tolist() for row in acts.positions] == want
    dense = np.zeros((2, max(n)), dtype=bool)
    dense[0, 1] = dense[1, 0] = True
    assert m.capture(prompts, "resid_pre.0", dense, progress=False).positions.tolist() == [[1], [0]]
    with pytest.raises(InterpError, match="entries but the prompt has"):
        m.capture(prompts, "resid_pre.0", [[True, False], [True]], progress=False)
    with pytest.raises(InterpError, match="selects token"):
        bad = np.zeros((2, max(n) + 1), dtype=bool)
        bad[1, max(n)] = True
        m.capture(prompts, "resid_pre.0", bad, progress=False)


@pytest.mark.parametrize("bad,fragment", [(True, "not a position spec"), (False, "not a position spec"),
                                          (1.0, "not a position spec"), ([[1.5], [0]], "not an integer"),
                                          ([True, False], "flat list of"), ([[True, 1], [0]], "mix booleans"),
                                          (torch.tensor([[0.0]]), "dtype")])
def test_ambiguous_position_specs_are_refused(tiny_llama, bad, fragment):
    with pytest.raises(InterpError, match=fragment):
        tiny_llama.capture(["Hi there", "Hello"], "resid_pre.0", bad, progress=False)


@pytest.mark.parametrize("dtype", [torch.int64, torch.int32, torch.bool, torch.uint8])
def test_integer_capture_dtype_is_refused(tiny_llama, dtype):
    with pytest.raises(InterpError, match="floating"):
        tiny_llama.capture(["Hi there"], "resid_pre.0", "last", dtype=dtype, progress=False)
