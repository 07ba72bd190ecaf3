"""Data-parallel capture under torchrun (issue 20, part 2): 2 CPU workers (gloo) write one ActivationStore
that equals the single-process store row for row; a worker killed mid-way loses nothing on the rerun.

Each launch starts three interpreters (torchrun and two workers), so the tests share launches where they can.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch

from interp import ActivationStore
from interp.loading import load_model

REPO = Path(__file__).resolve().parents[1]
PROMPTS = [f"Tell me fact number {i} about the {'sea sky bread river'.split()[i % 4]}." for i in range(10)]
SITES = ["resid_post", "attn_out.0"]


def env() -> dict:
    return {**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false", "HF_HUB_OFFLINE": "1",
            "TRANSFORMERS_OFFLINE": "1"}


@pytest.fixture(scope="module")
def tiny_folder(tmp_path_factory):
    from interp.testing import tiny_model

    m = tiny_model("llama")
    out = tmp_path_factory.mktemp("tiny")
    m.hf.save_pretrained(out)
    m.tokenizer.save_pretrained(out)
    (out / "prompts.txt").write_text("\n".join(PROMPTS) + "\n")
    return out


@pytest.fixture(scope="module")
def single(tiny_folder, tmp_path_factory):
    """The reference: a single-process store of the same capture."""
    model = load_model(str(tiny_folder), progress=False)
    return model.capture_to_store(PROMPTS, tmp_path_factory.mktemp("single") / "s", SITES, "-2:", shard_size=3,
                                  progress=False)


def assert_same_store(a: ActivationStore, b: ActivationStore) -> None:
    """Same header, same shard boundaries and token counts, same tensors row for row (bytes differ only by
    the capture time recorded in each shard)."""
    strip = ("sha256", "bytes")
    assert {k: v for k, v in a.manifest.items() if k != "shards"} == \
        {k: v for k, v in b.manifest.items() if k != "shards"}
    assert [{k: v for k, v in e.items() if k not in strip} for e in a.manifest["shards"]] == \
        [{k: v for k, v in e.items() if k not in strip} for e in b.manifest["shards"]]
    a.verify()
    b.verify()
    x, y = a.load(), b.load()
    assert torch.equal(x.mask, y.mask) and torch.equal(x.positions, y.positions)
    for k in x.tensors:
        assert torch.equal(x[k], y[k]), k


def cli(*args, timeout=600) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "interp", *args], cwd=REPO, env=env(), capture_output=True,
                          text=True, timeout=timeout)


def test_two_workers_write_the_single_process_store(tiny_folder, single, tmp_path):
    out = tmp_path / "par"
    base = ["capture", str(tiny_folder), "--prompts", str(tiny_folder / "prompts.txt"), "--out", str(out),
            "--positions=-2:", "--shard-size", "3"]
    r = cli(*base, "--sites", *SITES, "--workers", "2")
    assert r.returncode == 0, r.stderr[-3000:]
    assert json.loads(r.stdout.strip().splitlines()[-1])["examples"] == len(PROMPTS)  # printed once, by rank 0
    assert_same_store(ActivationStore(out), single)
    assert not list(out.glob("journal-*")) and not list(out.glob("*.tmp"))
    # a worker-side refusal reaches every worker and the command line, and nobody hangs
    r = cli(*base, "--sites", "resid_pre", "--workers", "2", timeout=300)
    assert r.returncode == 2 and "made differently" in r.stderr, r.stderr[-3000:]
    assert_same_store(ActivationStore(out), single)


def test_worker_argv_forwards_every_option():
    """Each torchrun worker must run the same capture: every option but --workers is passed on."""
    from interp.cli import build_parser
    from interp.commands.capture import worker_argv

    argv = ["capture", "m", "--prompts", "p.txt", "--sites", "resid_post.1", "mlp_out", "--positions=-3:",
            "--out", "o", "--plain", "--batch-size", "3", "--shard-size", "7", "--dtype", "bfloat16",
            "--overwrite", "--workers", "4"]
    args = build_parser().parse_args(argv)
    again = build_parser().parse_args(worker_argv(args))
    assert {**vars(args), "workers": 1} == vars(again)


WORKER = """
    import os, sys, time
    from interp.distributed import capture_to_store_parallel, init
    from interp.loading import load_model

    rank, size = init()
    model = load_model({folder!r}, progress=False)
    delay = float(os.environ.get("SLOW", "0"))
    if delay:  # slow forwards, so the test can kill a worker between shards
        real = model._forward
        def slow(batch, logits=False):
            time.sleep(delay)
            return real(batch, logits)
        model._forward = slow
    open(os.path.join({tmp!r}, f"pid-{{rank}}"), "w").write(str(os.getpid()))
    capture_to_store_parallel(model, {prompts!r}, {out!r}, {sites!r}, "-2:", shard_size={shard_size},
                              batch_size=1, progress=False)
"""


def test_kill_a_worker_then_resume(tiny_folder, single, tmp_path):
    out = tmp_path / "par"
    script = tmp_path / "worker.py"
    # shard_size 1: ten shards, five per worker, so a kill lands between finished shards
    script.write_text(textwrap.dedent(WORKER.format(folder=str(tiny_folder), tmp=str(tmp_path), prompts=PROMPTS,
                                                    out=str(out), sites=SITES, shard_size=1)))
    run = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2", str(script)]
    log = open(tmp_path / "run1.log", "w")
    p = subprocess.Popen(run, cwd=REPO, env={**env(), "SLOW": "0.5"}, stdout=log, stderr=subprocess.STDOUT)
    journal = out / "journal-00001.json"
    t0 = time.time()
    while not (journal.exists() and len(json.loads(journal.read_text())["shards"]) >= 2):
        assert p.poll() is None, (tmp_path / "run1.log").read_text()[-3000:]
        assert time.time() - t0 < 300, "worker 1 never finished two shards"
        time.sleep(0.05)
    os.kill(int((tmp_path / "pid-1").read_text()), signal.SIGKILL)  # worker 1 dies mid-way
    assert p.wait(timeout=120) != 0  # torchrun stops worker 0 and fails
    killed = ActivationStore(out)
    assert not killed.complete and len(killed) == 0  # the manifest is committed only at the end
    kept = {e["file"]: (out / e["file"]).stat().st_mtime_ns
            for j in out.glob("journal-*.json") for e in json.loads(j.read_text())["shards"]}
    assert len(kept) >= 2

    r = subprocess.run(run, cwd=REPO, env=env(), capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, (r.stdout + r.stderr)[-3000:]
    store = ActivationStore(out)
    assert store.complete and [e["start"] for e in store.manifest["shards"]] == list(range(len(PROMPTS)))
    # the shards finished before the kill were kept, not captured again
    assert {f: (out / f).stat().st_mtime_ns for f in kept} == kept
    assert not list(out.glob("journal-*")) and not list(out.glob("*.tmp"))
    ref = load_model(str(tiny_folder), progress=False).capture_to_store(
        PROMPTS, tmp_path / "single", SITES, "-2:", shard_size=1, batch_size=1, progress=False)
    assert_same_store(store, ref)
