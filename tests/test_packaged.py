"""Packaged-model plumbing that needs no download: hashes, names, bad files."""
import pytest

from interp import InterpError, load_model
from interp import packaged


def test_unknown_packaged_name_lists_models():
    with pytest.raises(InterpError) as e:
        packaged.get_packaged("gpt-7")
    assert "smollm2-135m-instruct" in str(e.value) and "qwen2.5-coder-0.5b-instruct" in str(e.value)


def test_unknown_model_offline_is_clear(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(InterpError, match="packaged model"):
        load_model("no-such-org/no-such-model")


def test_corrupt_assembled_file_names_file_and_fix(tmp_path, monkeypatch):
    monkeypatch.setenv("INTERP_HOME", str(tmp_path))
    spec = packaged.PACKAGED["smollm2-135m-instruct"]
    target = packaged.model_dir(spec.name) / spec.gguf_name
    target.parent.mkdir(parents=True)
    target.write_bytes(b"GGUF" + b"\0" * 100)  # truncated / wrong content
    with pytest.raises(InterpError) as e:
        packaged.gguf_path(spec.name, progress=False)
    msg = str(e.value)
    assert str(target) in msg and spec.sha256 in msg and "Delete" in msg


def test_truncated_gguf_file_is_a_clear_error(tmp_path, monkeypatch):
    monkeypatch.setenv("INTERP_HOME", str(tmp_path / "home"))
    bad = tmp_path / "broken.gguf"
    bad.write_bytes(b"GGUF\x03\x00\x00\x00" + b"\x01" * 64)
    with pytest.raises(InterpError, match="broken.gguf"):
        load_model(str(bad), progress=False)


def test_missing_and_bad_paths(tmp_path):
    with pytest.raises(InterpError, match="does not exist"):
        load_model(str(tmp_path / "nothing.gguf"))
    with pytest.raises(InterpError, match="config.json"):
        load_model(str(tmp_path))


def test_sha256_file(tmp_path):
    import hashlib

    f = tmp_path / "x.bin"
    f.write_bytes(b"interp" * 1000)
    assert packaged.sha256_file(f) == hashlib.sha256(b"interp" * 1000).hexdigest()


def test_backend_and_device_arguments_checked():
    with pytest.raises(InterpError, match="backend"):
        load_model("smollm2-135m-instruct", backend="jax")
    with pytest.raises(InterpError, match="device_map"):
        load_model("smollm2-135m-instruct", device="cpu", device_map="auto")
