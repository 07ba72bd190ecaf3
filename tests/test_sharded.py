"""Models split by accelerate (issue 20, part 1): capture, interventions, generation and orthogonalization
on a model whose layers are partly offloaded to disk give the plain load's numbers.

Offline on a CPU machine accelerate can place modules on "cpu" and "disk" (no fake devices); disk-offloaded
modules hold meta parameters and their weights are read before each forward, which is the code path a
multi-GPU split also takes (per-module execution devices, hooks moving inputs). Measured differences are
exactly 0 on smollm2 (same kernels on the same device); tolerances below leave room for BLAS threading.
"""
import hashlib
from pathlib import Path

import pytest
import torch

from interp.arch import weights_edited
from interp.errors import InterpError
from interp.interventions import Ablate, everywhere
from interp.loading import load_model
from interp.offload import is_offloaded
from interp.orthogonalize import orthogonalize

PROMPTS = ["How do I bake bread?", "Name a prime number.", "hi"]


def half_on_disk(n_layers: int, top: str = "model") -> dict:
    """Embeddings, final norm and the lower half of the blocks on cpu, the upper half on disk."""
    dm = {f"{top}.embed_tokens": "cpu", f"{top}.rotary_emb": "cpu", f"{top}.norm": "cpu", "lm_head": "cpu"}
    dm.update({f"{top}.layers.{i}": "cpu" if i < n_layers // 2 else "disk" for i in range(n_layers)})
    return dm


# ------------------------------------------------------------------ tiny model (fast, mechanics)

@pytest.fixture(scope="module")
def tiny_folder(tmp_path_factory):
    from interp.testing import tiny_model

    m = tiny_model("llama", n_layers=4)
    out = tmp_path_factory.mktemp("tiny-llama")
    m.hf.save_pretrained(out)
    m.tokenizer.save_pretrained(out)
    return out


def _logits(model, prompts=PROMPTS):
    return model.run(model.pad(model.encode(prompts).ids))


def test_tiny_disk_offload_matches_plain(tiny_folder, tmp_path):
    plain = load_model(str(tiny_folder), progress=False)
    sh = load_model(str(tiny_folder), device_map=half_on_disk(4), offload_folder=tmp_path / "off", progress=False)
    assert is_offloaded(sh.hf) and not is_offloaded(plain.hf)
    assert sh.device == torch.device("cpu")
    assert sh.fingerprint == plain.fingerprint  # offloaded weights are read for it
    a = plain.capture(PROMPTS, "resid_post", "all", progress=False)
    b = sh.capture(PROMPTS, "resid_post", "all", progress=False)
    for k in a.tensors:
        torch.testing.assert_close(b[k], a[k], atol=1e-6, rtol=0)
    r = torch.randn(plain.d_model, generator=torch.Generator().manual_seed(0))
    with plain.intervene(everywhere(plain, r)):
        la = _logits(plain)
    with sh.intervene(everywhere(sh, r)):
        lb = _logits(sh)
    torch.testing.assert_close(lb, la, atol=1e-5, rtol=0)

    edited = orthogonalize(plain, r, inplace=False)
    checkpoint = sorted(Path(tiny_folder).glob("*.safetensors"))
    before = [hashlib.sha256(p.read_bytes()).hexdigest() for p in checkpoint]
    orthogonalize(sh, r)
    assert sh.fingerprint == edited.fingerprint
    torch.testing.assert_close(_logits(sh), _logits(edited), atol=1e-5, rtol=0)
    # the edits of disk-offloaded blocks went to the offload folder, the checkpoint is untouched
    assert any((tmp_path / "off").glob("model.layers.3.mlp.down_proj.weight.dat"))
    assert [hashlib.sha256(p.read_bytes()).hexdigest() for p in checkpoint] == before


def test_tiny_orthogonalize_without_offload_folder_refuses_before_editing(tiny_folder):
    sh = load_model(str(tiny_folder), device_map=half_on_disk(4), progress=False)
    fp = sh.fingerprint
    with pytest.raises(InterpError, match="offload_folder"):
        orthogonalize(sh, torch.ones(sh.d_model))
    weights_edited(sh)  # recompute the fingerprint from the weights: nothing was edited
    assert sh.fingerprint == fp
    with pytest.raises(InterpError, match="in place"):
        orthogonalize(sh, torch.ones(sh.d_model), inplace=False)


def test_tiny_max_memory_forces_disk_offload(tiny_folder, tmp_path):
    plain = load_model(str(tiny_folder), progress=False)
    # the tiny model's blocks are ~40 KB each: 100 KB of "cpu" leaves the upper ones for the disk
    sh = load_model(str(tiny_folder), device_map="auto", max_memory={"cpu": "100KB"}, offload_folder=tmp_path,
                    progress=False)
    assert "disk" in set(sh.hf.hf_device_map.values())
    a = plain.capture(PROMPTS, "resid_post.3", progress=False)
    b = sh.capture(PROMPTS, "resid_post.3", progress=False)
    torch.testing.assert_close(b["resid_post.3"], a["resid_post.3"], atol=1e-6, rtol=0)


def test_load_model_split_arguments_are_checked(tiny_folder):
    with pytest.raises(InterpError, match="device_map"):
        load_model(str(tiny_folder), max_memory={"cpu": "1GiB"}, progress=False)
    with pytest.raises(InterpError, match="max_memory is a dict"):
        load_model(str(tiny_folder), device_map="auto", max_memory="1GiB", progress=False)


# ------------------------------------------------------------------ smollm2 (real model)

@pytest.mark.slow
def test_smollm_half_on_disk_matches_plain(smollm, tmp_path):
    """One test, one sharded load: every forward re-reads 15 blocks from disk, so the work is kept small."""
    sh = load_model("smollm2-135m-instruct", device_map=half_on_disk(30), offload_folder=tmp_path, progress=False)
    assert set(sh.hf.hf_device_map.values()) == {"cpu", "disk"}
    assert sh.fingerprint == smollm.fingerprint
    sites = ["resid_pre.0", "resid_post.14", "resid_post.20", "mlp_out.25", "attn_z.29"]
    a = smollm.capture(PROMPTS, sites, "-3:", progress=False)
    b = sh.capture(PROMPTS, sites, "-3:", progress=False)
    for k in a.tensors:  # measured max |diff| 0.0
        torch.testing.assert_close(b[k], a[k], atol=1e-5, rtol=0)
    r = a["resid_post.20"].mean((0, 1))
    with smollm.intervene(everywhere(smollm, r)):
        la = _logits(smollm)
        ga = smollm.generate(PROMPTS[:1], max_new_tokens=4)
    with sh.intervene(everywhere(sh, r)):
        lb = _logits(sh)
        gb = sh.generate(PROMPTS[:1], max_new_tokens=4)
    torch.testing.assert_close(lb, la, atol=1e-4, rtol=0)  # measured 0.0
    assert gb == ga
    # the weight-edit twin, each disk-offloaded weight rewritten into the offload folder
    edited = orthogonalize(smollm, r, inplace=False)
    orthogonalize(sh, r)
    torch.testing.assert_close(_logits(sh), _logits(edited), atol=1e-4, rtol=0)  # measured 0.0
    assert len(list(tmp_path.glob("model.layers.29.*.dat"))) == 2  # o_proj and down_proj of a disk block


def test_context_follows_the_block_device():
    """A block on another device than the embedding gets the forward's context moved there, once per forward."""
    from interp.intervene import _context_on
    from interp.interventions import Context

    ctx = Context.whole(torch.zeros(2, 3, 4))
    state = {"ctx": ctx, "ctx_on": {}}
    assert _context_on(state, torch.device("cpu")) is ctx
    moved = _context_on(state, torch.device("meta"))
    assert {moved.token_index.device.type, moved.valid.device.type, moved.is_prompt.device.type,
            moved.prompt_lengths.device.type} == {"meta"}
    assert _context_on(state, torch.device("meta")) is moved
