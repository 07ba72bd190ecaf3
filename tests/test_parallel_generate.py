"""Data-parallel greedy generation under torchrun (issue [L] item 2): 2 CPU workers (gloo) on smollm2 give the
single-process completions token for token, for the unedited model and under ablation and addition; a worker
killed after its first batch loses nothing on the rerun, and no batch is generated twice; a folder made for
another job is refused.

Each launch starts three interpreters (torchrun and two workers) that each load smollm2, so the tests share
the single-process reference and run three launches in all.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from interp.errors import InterpError
from interp.parallel_generate import Condition, ParallelGenerator, collect, generate_conditions, prepare

REPO = Path(__file__).resolve().parents[1]
MODEL = "smollm2-135m-instruct"
# lengths differ, so the length-sorted batches are not the prompt order
PROMPTS = ["Name a prime number.", "Tell me one fact about the sea.", "How do I bake bread at home?",
           "Write a haiku about rivers.", "What is the capital of France?",
           "Explain in one sentence why the sky is blue during the day.", "Give me a synonym for happy."]
MAX_NEW, BATCH = 8, 2  # 4 + 4 + 6 batches, seven per worker


def env(**extra) -> dict:
    return {**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false", "HF_HUB_OFFLINE": "1",
            "TRANSFORMERS_OFFLINE": "1", **extra}


@pytest.fixture(scope="module")
def conditions():
    g = torch.Generator().manual_seed(0)
    r = torch.randn(576, generator=g)  # smollm2's d_model
    r = r / r.norm()  # resid_pre.10 has norm ~110 on these prompts (measured), so +40·r changes the text
    # "mixed": one pass carrying two conditions (the refusal evaluation's shape): the second copy of the first
    # five prompts gets +40·r, the first two prompts −40·r, the rest nothing
    n = len(PROMPTS)
    return {"base": (PROMPTS, None), "ablated": (PROMPTS, Condition("ablate", r)),
            "mixed": (PROMPTS + PROMPTS[:5], [Condition("add", r, layer=10, scale=40.0, rows=range(n, n + 5)),
                                              Condition("add", r, layer=10, scale=-40.0, rows=[0, 1])])}


@pytest.fixture(scope="module")
def single(conditions):
    """The reference: single-process ``generate`` of every condition."""
    from interp.loading import load_model

    model = load_model(MODEL, progress=False)
    return generate_conditions(model, conditions, MAX_NEW, batch_size=BATCH)


@pytest.mark.slow
def test_conditions_change_the_completions(single):
    """The interventions do something here, so the equality tests below could fail."""
    assert single["ablated"] != single["base"]
    assert single["mixed"][7:] != single["base"][:5]


@pytest.mark.slow
def test_two_workers_equal_single_process(conditions, single, tmp_path, monkeypatch):
    gen = ParallelGenerator(MODEL, tmp_path / "gen", workers=2, batch_size=16)  # the call's batch_size wins
    assert gen(conditions, MAX_NEW, BATCH) == single
    (job,) = (tmp_path / "gen").iterdir()
    assert len(list(job.glob("task*-batch*.jsonl"))) == 4 + 4 + 6 and not list(job.glob(".*.tmp"))
    # the same call again finds the job finished and launches nothing
    from interp import distributed

    monkeypatch.setattr(distributed, "launch", lambda *a, **k: pytest.fail("launched again"))
    assert gen(conditions, MAX_NEW, BATCH) == single


WORKER = """
    import json, os, sys
    import interp.parallel_generate as pg

    real = pg._write_shard
    written = 0
    def write(out, job, task, batch, rows, texts):
        global written
        real(out, job, task, batch, rows, texts)
        written += 1
        with open(os.path.join({log!r}, f"log-{{os.environ['RANK']}}-{{os.getpid()}}"), "a") as f:
            f.write(json.dumps([task, batch, rows]) + "\\n")
        if os.environ.get("EXIT_RANK") == os.environ["RANK"] and written == 1:
            os._exit(3)  # dies after its first batch, as a killed worker would
    pg._write_shard = write
    sys.exit(pg.run_worker({out!r}, progress=False))
"""


@pytest.mark.slow
def test_kill_a_worker_then_resume(conditions, single, tmp_path):
    out = tmp_path / "gen"
    prepare(MODEL, conditions, out, max_new_tokens=MAX_NEW, batch_size=BATCH)
    script = tmp_path / "worker.py"
    script.write_text(textwrap.dedent(WORKER.format(log=str(tmp_path), out=str(out))))
    run = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2", str(script)]
    r = subprocess.run(run, cwd=REPO, env=env(EXIT_RANK="1"), capture_output=True, text=True, timeout=600)
    assert r.returncode != 0, (r.stdout + r.stderr)[-3000:]  # torchrun stops worker 0 and fails
    kept = {p.name: p.stat().st_mtime_ns for p in out.glob("task*-batch*.jsonl")}
    assert 1 <= len(kept) < 14 and collect(out, missing_ok=True) is None
    (first,) = tmp_path.glob("log-1-*")  # worker 1 wrote one batch, then died
    assert len(first.read_text().splitlines()) == 1

    prepare(MODEL, conditions, out, max_new_tokens=MAX_NEW, batch_size=BATCH)  # the rerun: same job, resumed
    r = subprocess.run(run, cwd=REPO, env=env(), capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, (r.stdout + r.stderr)[-3000:]
    assert collect(out) == single
    # batches finished before the kill were kept, and every batch was generated exactly once over both runs
    assert {p: (out / p).stat().st_mtime_ns for p in kept} == kept
    logged = [tuple(json.loads(line)[:2]) for p in tmp_path.glob("log-*") for line in p.read_text().splitlines()]
    assert sorted(logged) == sorted({(t, b) for t, k in enumerate([4, 4, 6]) for b in range(k)})
    assert not list(out.glob(".*.tmp"))


def test_a_folder_of_another_job_is_refused(conditions, tmp_path):
    """No model is loaded: the job file alone decides (prompts, settings and interventions are compared)."""
    out = tmp_path / "gen"
    prepare(MODEL, {"base": (PROMPTS, None)}, out, max_new_tokens=MAX_NEW, batch_size=BATCH)
    prepare(MODEL, {"base": (PROMPTS, None)}, out, max_new_tokens=MAX_NEW, batch_size=BATCH)  # same: resumes
    with pytest.raises(InterpError, match="other prompts.*another output folder"):
        prepare(MODEL, {"base": (PROMPTS[::-1], None)}, out, max_new_tokens=MAX_NEW, batch_size=BATCH)
    with pytest.raises(InterpError, match="other max_new_tokens"):
        prepare(MODEL, {"base": (PROMPTS, None)}, out, max_new_tokens=MAX_NEW + 1, batch_size=BATCH)
    with pytest.raises(InterpError, match="other interventions"):
        prepare(MODEL, {"base": conditions["ablated"]}, out, max_new_tokens=MAX_NEW, batch_size=BATCH)
    (out / "task000-batch000000.jsonl").write_text("{}\n")
    prepare(MODEL, {"base": conditions["ablated"]}, out, max_new_tokens=MAX_NEW, batch_size=BATCH, overwrite=True)
    assert not (out / "task000-batch000000.jsonl").exists()
    assert len(list(out.glob("direction-*.safetensors"))) == 1


def test_bad_conditions_are_refused_before_any_launch(tmp_path):
    r = torch.ones(4)
    for bad, msg in [(Condition("zero", r), "not one of"), (Condition("add", r), "needs layer"),
                     (Condition("ablate", torch.ones(2, 4)), "one float vector")]:
        with pytest.raises(InterpError, match=msg):
            prepare(MODEL, {"x": (["hi"], bad)}, tmp_path / "a")
    with pytest.raises(InterpError, match="positive int"):
        prepare(MODEL, {"x": (["hi"], None)}, tmp_path / "b", max_new_tokens=0)
    with pytest.raises(InterpError, match="unfinished"):
        prepare(MODEL, {"x": (["hi"], None)}, tmp_path / "c")
        collect(tmp_path / "c")


def test_conditions_build_the_evaluation_interventions(tiny_llama):
    """Conditions rebuild exactly what an evaluation writes by hand (everywhere, Add at resid_pre.L, several
    conditions on their own rows of one pass as Compose of OnRows): same completions on the tiny llama."""
    from interp.generation import generate
    from interp.interventions import Add, Compose, OnRows, everywhere
    from interp.parallel_generate import interventions_for

    model = tiny_llama
    r = torch.randn(model.d_model, generator=torch.Generator().manual_seed(1))
    prompts = ["hello there", "a b c d e", "the cat sat", "one two"]
    by_hand = {"resid_pre.1": Compose([OnRows(Add(r, -4.0), [0, 1]), OnRows(Add(r, 4.0), [3])])}
    conds = [Condition("add", r, layer=1, scale=-4.0, rows=[0, 1]), Condition("add", r, layer=1, scale=4.0, rows=[3])]
    steered = generate(model, prompts, max_new_tokens=4, batch_size=3, interventions=by_hand)
    assert generate(model, prompts, max_new_tokens=4, batch_size=3,
                    interventions=interventions_for(model, conds)) == steered
    plain = generate(model, prompts, max_new_tokens=4, batch_size=3)
    assert steered[2] == plain[2] and steered != plain  # row 2 untouched, the others steered
    assert generate(model, prompts, max_new_tokens=4, interventions=interventions_for(model, Condition("ablate", r))) \
        == generate(model, prompts, max_new_tokens=4, interventions=everywhere(model, r))
    assert interventions_for(model, None) is None and interventions_for(model, []) is None
    with pytest.raises(InterpError, match="out of range"):
        interventions_for(model, Condition("add", r, layer=model.n_layers))


def test_one_worker_in_process_on_a_tiny_folder(tiny_llama, tmp_path):
    """``run_worker`` outside a launch runs the whole job: the same texts as ``generate_conditions``; a job whose
    intervention does not fit the model stops before any batch is written."""
    from interp.loading import load_model
    from interp.parallel_generate import run_worker

    folder = tmp_path / "tiny"
    tiny_llama.hf.save_pretrained(folder)
    tiny_llama.tokenizer.save_pretrained(folder)
    model = load_model(str(folder), progress=False)
    r = torch.randn(model.d_model, generator=torch.Generator().manual_seed(2))
    conds = {"base": (["hello there", "a b c d e", "one two"], None),
             "mixed": (["the cat sat"] * 3, [Condition("ablate", r, rows=[1]), Condition("add", r, 1, 3.0, [2])])}
    prepare(str(folder), conds, tmp_path / "gen", max_new_tokens=4, batch_size=2)
    assert run_worker(tmp_path / "gen", progress=False) == 0
    texts = collect(tmp_path / "gen")
    assert texts == generate_conditions(model, conds, 4, batch_size=2)
    assert len(set(texts["mixed"])) == 3  # three rows, three conditions, three texts
    bad = {"base": (["hi"], Condition("add", r, layer=5))}
    prepare(str(folder), bad, tmp_path / "bad", max_new_tokens=4, batch_size=2)
    with pytest.raises(InterpError, match="layer 5 is out of range"):
        run_worker(tmp_path / "bad", progress=False)
    assert not list((tmp_path / "bad").glob("task*"))


def test_dtype_is_a_name_or_a_torch_dtype(tmp_path):
    job = prepare(MODEL, {"x": (["hi"], None)}, tmp_path / "a", dtype=torch.bfloat16)
    assert job["dtype"] == "bfloat16"
    with pytest.raises(InterpError, match="resolve 'auto' first"):
        prepare(MODEL, {"x": (["hi"], None)}, tmp_path / "b", dtype="auto")


@pytest.mark.slow
def test_refusal_eval_workers_equal_one_process(tmp_path, capsys, monkeypatch):
    """``interp refusal-eval --workers 2`` prints the JSON of the in-process run (completions token for token,
    so every rate and the CE); a rerun into the same --work-dir resumes without launching workers again."""
    from interp import load_model
    from interp.cli import main
    from interp.directions import save_direction

    model = load_model(MODEL, progress=False)
    r = torch.randn(model.d_model, generator=torch.Generator().manual_seed(1))
    save_direction(tmp_path / "d.safetensors", 4 * r / r.norm(), {"model": MODEL, "layer": 10,
                                                                  "model_fingerprint": model.fingerprint})
    (tmp_path / "h.txt").write_text("\n".join(PROMPTS[:3]) + "\n")
    (tmp_path / "l.txt").write_text("\n".join(PROMPTS[3:6]) + "\n")
    for k, v in env().items():
        monkeypatch.setenv(k, v)
    base = ["refusal-eval", MODEL, "--direction", str(tmp_path / "d.safetensors"), "--harmful", str(tmp_path / "h.txt"),
            "--harmless", str(tmp_path / "l.txt"), "--max-new-tokens", "8", "--judges", "substring", "--json"]
    outs = []
    for extra in ([], ["--workers", "2", "--work-dir", str(tmp_path / "w")], ["--workers", "2", "--work-dir",
                                                                               str(tmp_path / "w")]):
        assert main(base + extra) == 0
        out = json.loads(capsys.readouterr().out)
        out.pop("timing")
        outs.append(out)
    assert outs[0] == outs[1] == outs[2]
    assert len(list((tmp_path / "w").rglob("*.jsonl"))) > 0
