"""Fault table: long work killed at a bad moment loses nothing, and the rerun completes (issue 16).

Each row starts the work in a subprocess, waits until it is mid-way (a
marker file or a shard on disk), kills it (SIGKILL unless the row is about
Ctrl-C), checks what is on disk, then reruns the work and checks the result.
Models are tiny random ones and packaged models are fakes (a few KB of
"GGUF" and a converter that writes files slowly), so no row downloads or
converts anything real.
"""
from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import textwrap
import time
import zipfile
from pathlib import Path

import pytest
import torch

from interp import ActivationStore

PROMPTS = [f"Tell me fact number {i} about the {'sea sky bread river'.split()[i % 4]}." for i in range(8)]
REPO = Path(__file__).resolve().parents[1]


def spawn(code: str, tmp_path: Path, **env) -> subprocess.Popen:
    """Run ``code`` in a fresh interpreter (stdout/stderr to files in tmp_path)."""
    e = {**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false", "HF_HUB_OFFLINE": "1",
         "TRANSFORMERS_OFFLINE": "1", **{k: str(v) for k, v in env.items()}}
    n = len(list(tmp_path.glob("child-*.err")))
    out, err = open(tmp_path / f"child-{n}.out", "w"), open(tmp_path / f"child-{n}.err", "w")
    p = subprocess.Popen([sys.executable, "-c", textwrap.dedent(code)], cwd=REPO, env=e, stdout=out, stderr=err)
    p.err_path = tmp_path / f"child-{n}.err"
    return p


def wait_for(cond, proc: subprocess.Popen, timeout: float = 240) -> None:
    """Poll ``cond`` until true; fail with the child's stderr if it exits first or time runs out."""
    t0 = time.time()
    while not cond():
        if proc.poll() is not None:
            pytest.fail(f"child exited ({proc.returncode}) before the fault point:\n"
                        f"{proc.err_path.read_text()[-3000:]}")
        if time.time() - t0 > timeout:
            proc.kill()
            pytest.fail(f"child never reached the fault point:\n{proc.err_path.read_text()[-3000:]}")
        time.sleep(0.05)


def kill(proc: subprocess.Popen, sig=signal.SIGKILL) -> int:
    proc.send_signal(sig)
    return proc.wait(timeout=60)


SLOW_CAPTURE = """
    import sys, time
    from pathlib import Path
    from interp.testing import tiny_model
    m = tiny_model("llama")
    real = m._forward
    def slow(batch, logits=False):
        time.sleep(0.4)
        return real(batch, logits)
    m._forward = slow
"""


# ----------------------------------------------------------------------------------------- capture and store
def test_kill_during_capture_resumes_bit_identically(tmp_path, tiny_llama):
    out = tmp_path / "store"
    p = spawn(SLOW_CAPTURE + f"""
    m.capture_to_store({PROMPTS!r}, {str(out)!r}, ["resid_post.1", "attn_out.0"], "-2:", shard_size=2,
                       batch_size=1, progress=False)
    """, tmp_path)
    wait_for(lambda: (out / "manifest.json").exists() and len(ActivationStore(out)) >= 2, p)
    kill(p)
    partial = ActivationStore(out)
    assert 2 <= len(partial) < 4 and not partial.complete
    partial.verify()
    forwards = []
    real = tiny_llama._forward
    tiny_llama._forward = lambda batch, logits=False: forwards.append(1) or real(batch, logits)
    try:
        store = tiny_llama.capture_to_store(PROMPTS, out, ["resid_post.1", "attn_out.0"], "-2:", shard_size=2,
                                            batch_size=1, progress=False)
    finally:
        tiny_llama._forward = real
    assert store.complete and len(forwards) == 2 * (4 - len(partial))  # finished shards were not redone
    full = tiny_llama.capture(PROMPTS, ["resid_post.1", "attn_out.0"], "-2:", progress=False)
    for site in ("resid_post.1", "attn_out.0"):
        assert torch.equal(store.load()[site], full[site])


def test_kill_while_a_shard_is_being_written(tmp_path, tiny_llama):
    out = tmp_path / "store"
    p = spawn(SLOW_CAPTURE + f"""
    from interp.activations import Activations
    real_save = Activations.save
    calls = []
    def save(self, path):
        real_save(self, path)
        calls.append(path)
        if len(calls) == 2:  # the second shard is on disk under its temporary name, not yet renamed
            Path({str(tmp_path / "in-save")!r}).write_text(str(path))
            time.sleep(600)
    Activations.save = save
    m.capture_to_store({PROMPTS!r}, {str(out)!r}, "resid_post.1", "last", shard_size=2, progress=False)
    """, tmp_path)
    wait_for(lambda: (tmp_path / "in-save").exists(), p)
    kill(p)
    assert list(out.glob("*.tmp")), "the kill should leave the half-written shard behind"
    assert len(ActivationStore(out)) == 1  # the manifest lists only the finished shard
    store = tiny_llama.capture_to_store(PROMPTS, out, "resid_post.1", "last", shard_size=2, progress=False)
    assert store.complete and not list(out.glob("*.tmp"))
    store.verify()
    assert torch.equal(store.load()["resid_post.1"], tiny_llama.capture(PROMPTS, "resid_post.1",
                                                                         progress=False)["resid_post.1"])


@pytest.mark.slow  # a subprocess importing torch and transformers: ~15 s on a loaded 2-core machine
def test_ctrl_c_during_cli_capture_is_one_line_and_resumable(tmp_path, tiny_llama):
    folder = tmp_path / "tiny"
    tiny_llama.hf.save_pretrained(folder)
    tiny_llama.tokenizer.save_pretrained(folder)
    prompts = tmp_path / "p.txt"
    prompts.write_text("\n".join(PROMPTS))
    out = tmp_path / "store"
    argv = ["capture", str(folder), "--prompts", str(prompts), "--out", str(out), "--sites", "resid_pre.1",
            "--shard-size", "2", "--batch-size", "1"]
    p = spawn(f"""
    import sys, time
    import interp.model as M
    real = M.Model._forward
    def slow(self, batch, logits=False):
        time.sleep(0.4)
        return real(self, batch, logits)
    M.Model._forward = slow
    from interp.cli import main
    sys.exit(main({argv!r}))
    """, tmp_path)
    wait_for(lambda: (out / "manifest.json").exists() and len(ActivationStore(out)) >= 1, p)
    assert kill(p, signal.SIGINT) == 130
    err = p.err_path.read_text()
    assert "Traceback" not in err and err.strip().splitlines()[-1] == "interp: interrupted"
    from interp.cli import main

    assert main(argv) == 0
    assert ActivationStore(out).complete


# ------------------------------------------------------------------------------------------------ SAE training
@pytest.mark.slow  # a subprocess importing sae_lens and training: ~25 s on a loaded 2-core machine
def test_kill_during_sae_training_resumes(tmp_path, tiny_llama):
    pytest.importorskip("sae_lens")
    from safetensors.torch import load_file

    from interp.sae_training import SAETrainConfig, train_sae

    texts = [f"Passage {i}: the river ran past the old mill while {i % 7} boats drifted by." for i in range(40)]
    store = tiny_llama.capture_to_store(texts, tmp_path / "store", ["attn_out.1"], "1:", chat=False, shard_size=16,
                                        progress=False)
    cfg = dict(kind="topk", d_sae=64, k=4, batch_size=64, total_tokens=64 * 12, dead_window_tokens=64 * 4,
               checkpoint_every_tokens=64 * 3, log_every_steps=2, init_tokens=256, lr=1e-3)
    p = spawn(f"""
    import time
    from pathlib import Path
    from interp import ActivationStore
    from interp.sae_training import SAETrainConfig, train_sae
    def step(n):
        if n >= 7:
            Path({str(tmp_path / "step7")!r}).write_text(str(n))
            time.sleep(600)
    train_sae(ActivationStore({str(tmp_path / "store")!r}), "attn_out.1", {str(tmp_path / "run")!r},
              SAETrainConfig(**{cfg!r}), progress=False, on_step=step)
    """, tmp_path)
    wait_for(lambda: (tmp_path / "step7").exists(), p)
    kill(p)
    assert not (tmp_path / "run" / "sae").exists()
    resumed = train_sae(store, "attn_out.1", tmp_path / "run", SAETrainConfig(**cfg), progress=False)
    assert resumed["steps_this_call"] == 6  # the checkpoint at step 6 was kept
    straight = train_sae(store, "attn_out.1", tmp_path / "straight", SAETrainConfig(**cfg), progress=False)
    a = load_file(Path(straight["sae_path"]) / "sae_weights.safetensors")
    b = load_file(Path(resumed["sae_path"]) / "sae_weights.safetensors")
    for name in a:
        torch.testing.assert_close(a[name], b[name], atol=1e-6, rtol=1e-5)


# ----------------------------------------------------------------------------------- packaged-model cache
FAKE_PARTS_EXPR = '[b"GGUF" + b"part-one " * 20000, b"part-two " * 20000]'
FAKE_PARTS = eval(FAKE_PARTS_EXPR)
FAKE_PACKAGED = """
    import hashlib, os, time
    from pathlib import Path
    import interp.packaged as P
    home = Path(os.environ["INTERP_HOME"])
    parts = {parts}
    delay = float(os.environ.get("FAKE_DELAY", "0"))
    chunks = tuple(P.Chunk(f"fake-part{{i}}", "1.0", f"fake/part{{i}}.bin") for i in range(len(parts)))
    gguf = b"".join(parts)
    spec = P.PackagedModel("fake-model", "test", chunks, hashlib.sha256(gguf).hexdigest(), len(gguf), "llama", 2)
    P.PACKAGED[spec.name] = spec

    class Slow:
        def save_pretrained(self, path, **kw):
            Path(path).mkdir(parents=True, exist_ok=True)
            for i in range(4):
                (Path(path) / f"model-0000{{i}}.safetensors").write_bytes(bytes([i]) * 50000)
                if i >= 1:  # two files written, two to go: the fault point
                    Path(os.environ["MARK"]).write_text("converting")
                    time.sleep(delay)

    def convert(g, out, source=None):
        with open(home / "conversions.log", "a") as f:
            f.write(f"{{os.getpid()}}\\n")
        assert P.sha256_file(g) == spec.sha256
        return P.save_converted(Slow(), Slow(), out, source or {{}})
    P.convert_gguf = convert
""".format(parts=FAKE_PARTS_EXPR)


def fake(code: str) -> str:
    """The fake-packaged-model prelude followed by ``code``."""
    return textwrap.dedent(FAKE_PACKAGED) + "\n" + textwrap.dedent(code)


def _fake_home(tmp_path: Path) -> Path:
    """An INTERP_HOME whose wheel cache holds the fake model's chunks (so nothing is downloaded)."""
    home = tmp_path / "home"
    wheels = home / "wheels"
    wheels.mkdir(parents=True)
    for i, data in enumerate(FAKE_PARTS):
        with zipfile.ZipFile(wheels / f"fake_part{i}-1.0-py3-none-any.whl", "w") as zf:
            zf.writestr(f"fake/part{i}.bin", data)
    return home


def _converted_ok(home: Path) -> bool:
    out = home / "models" / "fake-model" / "hf"
    stamp = out / "interp_source.json"
    if not stamp.exists():
        return False
    files = json.loads(stamp.read_text())["files"]
    return len(files) == 4 and all(hashlib.sha256((out / f).read_bytes()).hexdigest() == r["sha256"]
                                   for f, r in files.items())


def test_kill_during_conversion_leaves_no_half_model(tmp_path):
    home = _fake_home(tmp_path)
    mark = tmp_path / "mark"
    p = spawn(fake("P.hf_dir('fake-model', progress=False)"), tmp_path, INTERP_HOME=home,
              FAKE_DELAY=30, MARK=mark)
    wait_for(mark.exists, p)
    kill(p)
    models = home / "models" / "fake-model"
    assert not (models / "hf").exists()  # the half-written folder never took the real name
    assert (models / "fake-model.gguf").exists()  # the verified GGUF survived
    q = spawn(fake("print(P.hf_dir('fake-model', progress=False))"), tmp_path, INTERP_HOME=home,
              MARK=mark)
    assert q.wait(timeout=240) == 0, q.err_path.read_text()[-2000:]
    assert _converted_ok(home)
    assert not [f for f in models.iterdir() if ".tmp-" in f.name]  # the killed run's temporary folder was removed


def test_kill_during_gguf_assembly_then_rerun_verifies(tmp_path):
    home = _fake_home(tmp_path)
    mark = tmp_path / "mark"
    p = spawn(fake("""
    import shutil
    real_copy = shutil.copyfileobj
    def slow_copy(src, dst, length=0):
        real_copy(src, dst, length)
        Path(os.environ["MARK"]).write_text("assembling")
        time.sleep(600)
    shutil.copyfileobj = slow_copy
    P.gguf_path('fake-model', progress=False)
    """), tmp_path, INTERP_HOME=home, MARK=mark)
    wait_for(mark.exists, p)
    kill(p)
    models = home / "models" / "fake-model"
    assert not (models / "fake-model.gguf").exists()  # only a .partial, never a truncated GGUF under the real name
    q = spawn(fake("P.hf_dir('fake-model', progress=False)"), tmp_path, INTERP_HOME=home, MARK=mark)
    assert q.wait(timeout=240) == 0, q.err_path.read_text()[-2000:]
    assert hashlib.sha256((models / "fake-model.gguf").read_bytes()).hexdigest() == \
        hashlib.sha256(b"".join(FAKE_PARTS)).hexdigest()
    assert _converted_ok(home)


def test_concurrent_loads_of_one_packaged_model(tmp_path):
    home = _fake_home(tmp_path)
    procs = [spawn(fake("print(P.hf_dir('fake-model', progress=False))"), tmp_path, INTERP_HOME=home,
                   FAKE_DELAY=0.3, MARK=tmp_path / "mark") for _ in range(3)]
    for p in procs:
        assert p.wait(timeout=240) == 0, p.err_path.read_text()[-2000:]
    assert _converted_ok(home)
    assert len((home / "conversions.log").read_text().split()) == 1  # one converted, the others waited and reused
    outs = {(tmp_path / f"child-{i}.out").read_text().strip() for i in range(3)}
    assert len(outs) == 1


def test_killed_lock_holder_does_not_block_the_next_load(tmp_path):
    home = _fake_home(tmp_path)
    mark = tmp_path / "mark"
    p = spawn(fake("""
    with P.model_lock('fake-model'):
        Path(os.environ["MARK"]).write_text("locked")
        time.sleep(600)
    """), tmp_path, INTERP_HOME=home, MARK=mark)
    wait_for(mark.exists, p)
    kill(p)
    t0 = time.time()
    q = spawn(fake("P.hf_dir('fake-model', progress=False)"), tmp_path, INTERP_HOME=home,
              INTERP_LOCK_TIMEOUT=60, MARK=mark)
    assert q.wait(timeout=240) == 0, q.err_path.read_text()[-2000:]
    assert _converted_ok(home) and time.time() - t0 < 120
