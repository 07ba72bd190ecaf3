"""ActivationStore: equality with in-memory capture, resume, checksums, refusing to mix."""
import json

import pytest
import torch

from interp import ActivationStore, InterpError

PROMPTS = [f"Tell me fact number {i} about {'bread cake sea sky fox dog'.split()[i % 6]}." for i in range(23)]
SITES = ["resid_post.1", "attn_out.0"]


def test_store_matches_memory(tmp_path, tiny_llama):
    mem = tiny_llama.capture(PROMPTS, SITES, "-2:", progress=False)
    store = tiny_llama.capture_to_store(PROMPTS, tmp_path / "s", SITES, "-2:", shard_size=5, progress=False)
    assert len(store) == 5 and store.complete and store.n_examples == len(PROMPTS)
    back = store.load()
    for k in SITES:
        torch.testing.assert_close(back[k], mem[k])
    rows = torch.cat(list(store.iter_batches("resid_post.1", batch_size=7)))
    torch.testing.assert_close(rows, mem.tokens("resid_post.1"))
    sizes = [b.shape[0] for b in store.iter_batches("blocks.1.hook_resid_post", batch_size=7, drop_last=True)]
    assert set(sizes) == {7} and sum(sizes) == 42
    shuffled = torch.cat(list(store.iter_batches("resid_post.1", batch_size=8, shuffle=True, seed=1)))
    assert not torch.equal(shuffled, rows)
    torch.testing.assert_close(shuffled.sum(0), rows.sum(0))


def test_resume_after_interruption(tmp_path, tiny_llama, monkeypatch):
    m = tiny_llama
    calls = {"n": 0}
    real_forward = m._forward

    def flaky(batch, logits=False):
        calls["n"] += 1
        if calls["n"] == 4:
            raise KeyboardInterrupt  # the user hits Ctrl-C during shard 4
        return real_forward(batch, logits)

    monkeypatch.setattr(m, "_forward", flaky)
    with pytest.raises(KeyboardInterrupt):
        m.capture_to_store(PROMPTS, tmp_path / "s", SITES, shard_size=5, batch_size=5, progress=False)
    partial = ActivationStore(tmp_path / "s")
    assert len(partial) == 3 and not partial.complete
    assert not list((tmp_path / "s").glob("*.tmp"))
    calls["n"] = 0
    store = m.capture_to_store(PROMPTS, tmp_path / "s", SITES, shard_size=5, batch_size=5, progress=False)
    assert calls["n"] == 2  # only the two unfinished shards ran
    monkeypatch.undo()
    assert store.complete
    full = m.capture(PROMPTS, SITES, progress=False)
    torch.testing.assert_close(store.load()["resid_post.1"], full["resid_post.1"])


def test_checksum_and_truncation(tmp_path, tiny_llama):
    store = tiny_llama.capture_to_store(PROMPTS, tmp_path / "s", SITES, shard_size=10, progress=False)
    shard = tmp_path / "s" / store.manifest["shards"][1]["file"]
    data = bytearray(shard.read_bytes())
    data[-5] ^= 0xFF
    shard.write_bytes(bytes(data))
    with pytest.raises(InterpError, match="checksum"):
        ActivationStore(tmp_path / "s").shard(1)
    shard.write_bytes(bytes(data[: len(data) // 2]))  # truncated
    with pytest.raises(InterpError, match="truncated"):
        ActivationStore(tmp_path / "s").verify()
    # re-running the same capture rewrites the damaged shard
    fixed = tiny_llama.capture_to_store(PROMPTS, tmp_path / "s", SITES, shard_size=10, progress=False)
    fixed.verify()


def test_refuses_to_mix(tmp_path, tiny_llama):
    from interp.testing import tiny_model

    tiny_llama.capture_to_store(PROMPTS, tmp_path / "s", SITES, shard_size=10, progress=False)
    with pytest.raises(InterpError, match="sites"):
        tiny_llama.capture_to_store(PROMPTS, tmp_path / "s", ["resid_post.0"], shard_size=10, progress=False)
    other = tiny_model("llama", seed=1)
    with pytest.raises(InterpError, match="model_fingerprint"):
        other.capture_to_store(PROMPTS, tmp_path / "s", SITES, shard_size=10, progress=False)
    with pytest.raises(InterpError, match="prompt_hashes"):
        tiny_llama.capture_to_store(PROMPTS[:-1], tmp_path / "s", SITES, shard_size=10, progress=False)
    store = other.capture_to_store(PROMPTS, tmp_path / "s", SITES, shard_size=10, progress=False, overwrite=True)
    assert store.manifest["model_fingerprint"] == other.fingerprint


def test_bad_store_paths(tmp_path, tiny_llama):
    with pytest.raises(InterpError, match="not an activation store"):
        ActivationStore(tmp_path)
    store = tiny_llama.capture_to_store(PROMPTS[:3], tmp_path / "s", SITES, progress=False)
    with pytest.raises(InterpError, match="not in this store"):
        next(store.iter_batches("mlp_out.0"))
    manifest = json.loads((tmp_path / "s" / "manifest.json").read_text())
    assert manifest["format"].startswith("interp-activation-store")


# --- issue 16 item 3: explicit positions are part of a store's identity
def test_other_explicit_positions_are_not_served_from_the_old_store(tmp_path, tiny_llama):
    m = tiny_llama
    prompts = PROMPTS[:4]
    m.capture_to_store(prompts, tmp_path / "s", "resid_pre.0", [[0]] * 4, progress=False)
    with pytest.raises(InterpError, match="positions"):
        m.capture_to_store(prompts, tmp_path / "s", "resid_pre.0", [[1]] * 4, progress=False)
    n = m.encode(prompts).lengths
    with pytest.raises(InterpError, match="positions"):
        m.capture_to_store(prompts, tmp_path / "s", "resid_pre.0", [[k == 1 for k in range(x)] for x in n],
                           progress=False)
    again = m.capture_to_store(prompts, tmp_path / "s", "resid_pre.0", [[0]] * 4, progress=False)
    assert again.load().positions.tolist() == [[0]] * 4


# --- issue 16 item 4: no path loses or hides data
def _store(tmp_path, m, **kw):
    return m.capture_to_store(PROMPTS[:6], tmp_path / "s", "resid_pre.0", "last", shard_size=2, progress=False, **kw)


def test_overwrite_with_a_typo_keeps_the_old_store(tmp_path, tiny_llama):
    store = _store(tmp_path, tiny_llama)
    files = sorted(p.name for p in (tmp_path / "s").iterdir())
    for bad in ({"positions": "lastt"}, {"positions": 99}, {"batch_size": 0}, {"dtype": torch.int64}):
        kw = {"positions": "last", **bad}
        with pytest.raises(InterpError):
            tiny_llama.capture_to_store(PROMPTS[:6], tmp_path / "s", "resid_pre.0", kw.pop("positions"),
                                        shard_size=2, progress=False, overwrite=True, **kw)
        assert sorted(p.name for p in (tmp_path / "s").iterdir()) == files
    ActivationStore(tmp_path / "s").verify()
    assert store.complete


def test_missing_manifest_does_not_delete_shards(tmp_path, tiny_llama):
    _store(tmp_path, tiny_llama)
    (tmp_path / "s" / "manifest.json").unlink()
    with pytest.raises(InterpError, match="no manifest.json"):
        _store(tmp_path, tiny_llama)
    assert len(list((tmp_path / "s").glob("shard-*.safetensors"))) == 3
    assert _store(tmp_path, tiny_llama, overwrite=True).complete


def test_resume_rehashes_shards(tmp_path, tiny_llama):
    good = _store(tmp_path, tiny_llama).load()["resid_pre.0"]
    shard = tmp_path / "s" / "shard-000000002.safetensors"
    data = bytearray(shard.read_bytes())
    data[-3] ^= 0xFF  # same size, other bytes
    shard.write_bytes(bytes(data))
    again = _store(tmp_path, tiny_llama)
    again.verify()
    torch.testing.assert_close(again.load()["resid_pre.0"], good)


@pytest.mark.parametrize("batch_size", [0, -1, 2.5, True])
def test_iter_batches_needs_a_positive_batch_size(tmp_path, tiny_llama, batch_size):
    store = _store(tmp_path, tiny_llama)
    with pytest.raises(InterpError, match="batch_size"):
        next(store.iter_batches("resid_pre.0", batch_size=batch_size))


@pytest.mark.parametrize("name", ["../x", "/etc/passwd", "sub/shard-000000000.safetensors", "manifest.json"])
def test_manifest_cannot_point_outside_the_store(tmp_path, tiny_llama, name):
    _store(tmp_path, tiny_llama)
    (tmp_path / "x").write_bytes(b"outside")
    manifest = json.loads((tmp_path / "s" / "manifest.json").read_text())
    manifest["shards"][0]["file"] = name
    (tmp_path / "s" / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(InterpError, match="bad shard entry"):
        ActivationStore(tmp_path / "s")


@pytest.mark.parametrize("text", ["{", "[]", "null", '{"format": "interp-activation-store/1"}', "\xff"])
def test_corrupt_manifest_is_a_clear_error(tmp_path, tiny_llama, text):
    _store(tmp_path, tiny_llama)
    (tmp_path / "s" / "manifest.json").write_text(text, encoding="latin-1")
    with pytest.raises(InterpError, match="manifest|format"):
        ActivationStore(tmp_path / "s")
    with pytest.raises(InterpError):
        _store(tmp_path, tiny_llama)
