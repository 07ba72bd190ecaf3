"""Data-parallel greedy generation under torchrun: the evaluation generations of an experiment split over N workers.

The parent writes a job folder (``job.json``: model, settings, every condition's prompts; each condition's
direction as a safetensors file) and launches N torchrun workers running ``python -m interp.parallel_generate
JOB_DIR``. Each worker loads the model, tokenizes every condition's prompts and cuts them into the batches
single-process ``generate`` would run (``generation.batch_plan``: sorted by length, ``batch_size`` at a time),
so every batch is padded exactly as in one process and greedy completions match token for token. The
workers agree on the unfinished batches (one collective at the start), take every N-th one, and write each
finished batch as one JSONL file (rows keyed by prompt index) by a temp file and ``os.replace``: a killed
worker loses at most the batch in flight. Running the same job again (any number of workers) generates only
the missing batches; a folder made for another job (other prompts, model or settings) is refused with an
``InterpError``. The parent then reads the rows back in prompt order.

Launch:

    texts = generate_parallel("smollm2-135m-instruct", prompts, "gen/", workers=4, max_new_tokens=64)
    out = generate_conditions_parallel(name, {"base": (prompts, None),
                                              "ablated": (prompts, Condition("ablate", r))}, "gen/", workers=4)

On a cluster: ``prepare(...)`` writes the job, ``torchrun --nnodes ... -m interp.parallel_generate gen/`` runs it
on a shared file system, ``collect("gen/")`` reads the completions.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping, Sequence

import torch
from tqdm.auto import tqdm

from .errors import InterpError

JOB = "job.json"
FORMAT = 1
KINDS = ("ablate", "add")


@dataclass(frozen=True)
class Condition:
    """An intervention a worker can rebuild from a file: ``ablate`` = ``everywhere(model, direction)`` (block
    input, attention and MLP output of every layer, every position); ``add`` = ``{f"resid_pre.{layer}":
    Add(direction, scale)}``. ``direction`` is a tensor [d] or a direction file (``save_direction``).
    ``rows`` limits it to those prompts of the list (``OnRows``), so one pass can carry several conditions.
    ``None`` (or ``[]``) in place of a Condition is the unedited model; a list applies several together.

    Example:
        >>> import torch
        >>> Condition("add", torch.ones(4), layer=2, scale=-1.0, rows=range(3, 6)).layer
        2
    """

    kind: str
    direction: object
    layer: int | None = None
    scale: float = 1.0
    rows: Sequence[int] | None = None

    def vector(self) -> torch.Tensor:
        """The direction as the float32 CPU tensor the interventions hold (a file is read here)."""
        if isinstance(self.direction, (str, Path)):
            from .directions import load_direction

            vec = load_direction(self.direction)[0]
        else:
            vec = torch.as_tensor(self.direction)
        if vec.dim() != 1 or not vec.is_floating_point():
            raise InterpError(f"a Condition's direction must be one float vector [d], got shape {tuple(vec.shape)} "
                              f"and dtype {vec.dtype}")
        return vec.detach().to("cpu", torch.float32).contiguous()

    def check(self) -> None:
        if self.kind not in KINDS:
            raise InterpError(f"Condition kind {self.kind!r} is not one of {', '.join(KINDS)} (None: no intervention)")
        if self.kind == "add" and (isinstance(self.layer, bool) or not isinstance(self.layer, int) or self.layer < 0):
            raise InterpError(f"Condition('add', ...) needs layer=<block index>, got {self.layer!r}")
        if self.rows is not None and not all(isinstance(r, int) and not isinstance(r, bool) and r >= 0
                                             for r in self.rows):
            raise InterpError(f"a Condition's rows must be prompt indices (ints >= 0), got {list(self.rows)[:5]}")

    def interventions(self, model) -> dict:
        """``{site: Intervention}`` for ``model`` (what ``generate(interventions=...)`` takes)."""
        from .interventions import Add, everywhere

        self.check()
        vec = self.vector()
        if vec.shape[0] != model.d_model:
            raise InterpError(f"the direction has size {vec.shape[0]}, but {model.name} has d_model {model.d_model}")
        if self.kind == "ablate":
            out = everywhere(model, vec)
        else:
            if self.layer >= model.n_layers:
                raise InterpError(f"layer {self.layer} is out of range: {model.name} has {model.n_layers} layers")
            out = {f"resid_pre.{self.layer}": Add(vec, self.scale)}
        if self.rows is None:
            return out
        from .interventions import OnRows

        return {site: OnRows(iv, list(self.rows)) for site, iv in out.items()}


ConditionSet = Mapping[str, "tuple[Sequence[str], Condition | Sequence[Condition] | None]"]


def _as_list(cond) -> list[Condition]:
    """None, one Condition or several, as a list (what a job stores)."""
    conds = [] if cond is None else [cond] if isinstance(cond, Condition) else list(cond)
    for c in conds:
        if not isinstance(c, Condition):
            raise InterpError(f"use interp.parallel_generate.Condition (or a list of them, or None), got "
                              f"{type(c).__name__}")
        c.check()
    return conds


def interventions_for(model, cond) -> dict | None:
    """``{site: Intervention}`` of None, one Condition or several (several at one site: ``Compose``, in order).

    Example:
        generate(model, prompts + prompts, interventions=interventions_for(
            model, [Condition("add", r, layer=12, rows=range(len(prompts), 2 * len(prompts)))]))
    """
    from .interventions import Compose

    merged: dict[str, list] = {}
    for c in _as_list(cond):
        for site, iv in c.interventions(model).items():
            merged.setdefault(site, []).append(iv)
    if not merged:
        return None
    return {site: ivs[0] if len(ivs) == 1 else Compose(ivs) for site, ivs in merged.items()}


def generate_conditions(model, conditions: ConditionSet, max_new_tokens: int = 64, batch_size: int = 16,
                        progress: bool = False, **kwargs) -> dict[str, list[str]]:
    """Greedy completions for each ``{name: (prompts, Condition | [Condition, ...] | None)}`` in this process:
    the reference the parallel run equals, and the default generator of an evaluation.

    Example:
        out = generate_conditions(model, {"base": (prompts, None), "ablated": (prompts, Condition("ablate", r))})
    """
    from .generation import generate

    out = {}
    for name, (prompts, cond) in conditions.items():
        out[name] = generate(model, list(prompts), max_new_tokens=max_new_tokens, batch_size=batch_size,
                             progress=progress, interventions=interventions_for(model, cond), **kwargs)
    return out


# ------------------------------------------------------------------ the job folder

def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _write_atomic(path: Path, text: str) -> None:
    """Write a whole file or nothing: a reader (or a rerun after a kill) never sees half of it."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


def _job(out: Path, model_spec: str, conditions: ConditionSet, max_new_tokens: int, batch_size: int, chat: bool,
         system: str | None, dtype: str | torch.dtype, share_prefix: bool = False) -> tuple[dict, dict[str, torch.Tensor]]:
    """The job description (JSON) and the direction files it names (not yet written)."""
    for name, value in (("max_new_tokens", max_new_tokens), ("batch_size", batch_size)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise InterpError(f"{name} must be a positive int, got {value!r}")
    if isinstance(dtype, torch.dtype):  # e.g. the caller's model.dtype, so workers load what the caller loaded
        dtype = str(dtype).removeprefix("torch.")
    if dtype not in ("float32", "float16", "bfloat16"):
        raise InterpError(f"dtype must be float32, float16 or bfloat16 (or that torch.dtype), got {dtype!r}; resolve "
                          f"'auto' first (interp.loading.resolve_dtype) so every worker loads the same weights")
    if not conditions:
        raise InterpError("no conditions to generate: pass {name: (prompts, Condition or None)}")
    tasks, files = [], {}
    for name, item in conditions.items():
        if not (isinstance(item, tuple) and len(item) == 2):
            raise InterpError(f"condition {name!r} must be (prompts, Condition or None), got {type(item).__name__}")
        prompts, cond = item
        if isinstance(prompts, str) or not all(isinstance(p, str) for p in prompts):
            raise InterpError(f"condition {name!r}: prompts must be a list of strings")
        entry = {"name": str(name), "prompts": list(prompts), "conditions": []}
        for c in _as_list(cond):
            vec = c.vector()
            sha = _sha256(vec.numpy().tobytes())
            files[f"direction-{sha[:16]}.safetensors"] = vec
            entry["conditions"].append({"kind": c.kind, "layer": c.layer, "scale": float(c.scale),
                                        "rows": None if c.rows is None else sorted(set(c.rows)),
                                        "direction": f"direction-{sha[:16]}.safetensors", "direction_sha256": sha})
        tasks.append(entry)
    job = {"format": FORMAT, "model": str(model_spec), "dtype": dtype, "chat": bool(chat), "system": system,
           "max_new_tokens": max_new_tokens, "batch_size": batch_size, "share_prefix": bool(share_prefix),
           "tasks": tasks}
    job["key"] = _sha256(json.dumps(job, sort_keys=True).encode())
    return job, files


def _differences(old: dict, new: dict) -> list[str]:
    keys = [k for k in new if k not in ("key", "tasks") and old.get(k) != new[k]]
    a, b = old.get("tasks", []), new["tasks"]
    if [t.get("name") for t in a] != [t["name"] for t in b]:
        keys.append("condition names")
    else:
        if any(t.get("prompts") != u["prompts"] for t, u in zip(a, b)):
            keys.append("prompts")
        if any(t.get("conditions") != u["conditions"] for t, u in zip(a, b)):
            keys.append("interventions")
    return keys or ["format"]


def read_job(out_dir) -> dict:
    """The job a folder holds (``InterpError`` if there is none)."""
    path = Path(out_dir) / JOB
    if not path.is_file():
        raise InterpError(f"{out_dir} holds no {JOB}: write the job with interp.parallel_generate.prepare first")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as e:
        raise InterpError(f"{path} is not readable ({e}); delete {out_dir} and run again") from e


def prepare(model_spec: str, conditions: ConditionSet, out_dir, *, max_new_tokens: int = 64, batch_size: int = 16,
            chat: bool = True, system: str | None = None, dtype: str = "float32", overwrite: bool = False,
            share_prefix: bool = False) -> dict:
    """Write the job folder (or find the same job there to resume); returns the job.

    A folder made for another job is refused (``overwrite=True`` empties it first), so completions of other
    prompts or settings are never mixed in.

    Example:
        job = prepare("smollm2-135m-instruct", {"base": (prompts, None)}, "gen/", max_new_tokens=32)
    """
    out = Path(out_dir)
    job, files = _job(out, model_spec, conditions, max_new_tokens, batch_size, chat, system, dtype, share_prefix)
    if out.exists() and not out.is_dir():
        raise InterpError(f"{out} is a file; give a folder for the generation job")
    if (out / JOB).exists():
        old = json.loads((out / JOB).read_text(encoding="utf-8")) if (out / JOB).stat().st_size else {}
        if old.get("key") != job["key"]:
            if not overwrite:
                raise InterpError(f"{out} holds completions of another generation job (other "
                                  f"{', '.join(_differences(old, job))}); use another output folder, delete it, or "
                                  f"pass overwrite=True (--overwrite) to replace it")
            shutil.rmtree(out)
    elif out.is_dir() and any(out.iterdir()) and not overwrite:
        raise InterpError(f"{out} is not empty and holds no {JOB}; use an empty or new folder")
    out.mkdir(parents=True, exist_ok=True)
    for tmp in out.glob(".*.tmp"):  # left by a killed worker; no worker runs while the parent prepares
        tmp.unlink()
    if not (out / JOB).exists():  # first, so a folder interrupted here is still recognized on the rerun
        _write_atomic(out / JOB, json.dumps(job, indent=1))
    from .directions import save_direction

    for name, vec in files.items():
        if not (out / name).exists():
            tmp = out / f".{name}.{os.getpid()}.tmp"
            save_direction(tmp, vec, {"written_by": "interp.parallel_generate"})
            os.replace(tmp, out / name)
    return job


def _shard_name(task: int, batch: int) -> str:
    return f"task{task:03d}-batch{batch:06d}.jsonl"


def _read_shard(path: Path, key: str) -> list[dict] | None:
    """A finished batch's rows, or None when the file is not one of this job's."""
    try:
        rows = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return None
    if not rows or any(r.get("key") != key for r in rows):
        return None
    return rows


def _finished(out: Path, job: dict) -> set[str]:
    return {p.name for p in out.glob("task*-batch*.jsonl") if _read_shard(p, job["key"]) is not None}


def _write_shard(out: Path, job: dict, task: int, batch: int, rows: list[int], texts: list[str]) -> None:
    """One finished batch, keyed by prompt index, written whole or not at all."""
    lines = [json.dumps({"key": job["key"], "task": job["tasks"][task]["name"], "batch": batch, "index": i,
                         "completion": t}) for i, t in zip(rows, texts)]
    _write_atomic(out / _shard_name(task, batch), "\n".join(lines) + "\n")


def collect(out_dir, missing_ok: bool = False) -> dict[str, list[str]] | None:
    """The completions of a finished job, ``{condition: [text per prompt, in prompt order]}``.

    Every prompt must have exactly one row; otherwise an ``InterpError`` (or None with ``missing_ok``).
    """
    out = Path(out_dir)
    job = read_job(out)
    texts: dict[str, list] = {t["name"]: [None] * len(t["prompts"]) for t in job["tasks"]}
    by_name = {t["name"]: i for i, t in enumerate(job["tasks"])}
    for path in sorted(out.glob("task*-batch*.jsonl")):
        rows = _read_shard(path, job["key"])
        if rows is None:
            continue
        for r in rows:
            col = texts.get(r["task"])
            if col is None or path.name != _shard_name(by_name[r["task"]], r["batch"]) \
                    or not 0 <= r["index"] < len(col):
                raise InterpError(f"{path} holds a row that does not belong there ({r['task']}, index {r['index']}); "
                                  f"delete {out} and run again")
            if col[r["index"]] is not None:
                raise InterpError(f"prompt {r['index']} of {r['task']} was written twice ({path}); delete {out} and "
                                  f"run again")
            col[r["index"]] = r["completion"]
    missing = {name: sum(x is None for x in col) for name, col in texts.items() if any(x is None for x in col)}
    if missing:
        if missing_ok:
            return None
        raise InterpError(f"{out} is unfinished ({', '.join(f'{n}: {k} prompts missing' for n, k in missing.items())}"
                          f"); run the same job again to generate the rest")
    return texts


# ------------------------------------------------------------------ the workers

def run_worker(out_dir, progress: bool = True) -> int:
    """What each torchrun worker runs (``python -m interp.parallel_generate OUT_DIR``): load the model, agree
    with the others on the unfinished batches, generate every N-th one and write each as it finishes.
    Outside a launch it runs the whole job in this process.
    """
    from . import distributed
    from .generation import batch_plan, generate_from_ids
    from .loading import load_model

    out = Path(out_dir)
    rank, size = distributed.init()
    error, job, model, plans = None, None, None, []
    try:  # errors are exchanged, not raised on the spot, so no worker waits for another in the collective
        job = read_job(out)
        if job.get("format") != FORMAT:
            raise InterpError(f"{out / JOB} has format {job.get('format')}, this interp reads {FORMAT}; run the "
                              f"job again from the start in a new folder")
        model = load_model(job["model"], dtype=getattr(torch, job["dtype"]),
                           device=distributed.worker_device() if distributed.launched() else None,
                           progress=progress and rank == 0)
        for t in job["tasks"]:  # interventions built here too, so a bad one is reported before any work
            ids = model.encode(t["prompts"], chat=job["chat"], system=job["system"]).ids
            conds = [Condition(c["kind"], out / c["direction"], c["layer"], c["scale"], c["rows"])
                     for c in t["conditions"]]
            plans.append((ids, batch_plan(ids, job["batch_size"]), interventions_for(model, conds)))
    except InterpError as e:
        error = f"worker {rank}: {e}"
    distributed._raise_first(distributed._all_gather(error))
    # rank 0's listing, taken before anyone writes, so every worker splits the same list
    done = set(distributed._all_gather(sorted(_finished(out, job)) if rank == 0 else None)[0])
    todo = [(t, b) for t, (_, plan, _) in enumerate(plans) for b in range(len(plan)) if _shard_name(t, b) not in done]
    mine = todo[rank::size]  # batches are sorted by length, so interleaving balances the work
    bar = tqdm(total=len(mine), desc=f"generate (worker {rank} of {size})", unit="batch",
               disable=not progress or rank != 0)
    for t, task in enumerate(job["tasks"]):
        batches = [b for tt, b in mine if tt == t]
        if not batches:
            continue
        ids, plan, interventions = plans[t]
        index = {tuple(plan[b]): b for b in batches}

        def save(rows, texts, t=t, index=index):
            _write_shard(out, job, t, index[tuple(rows)], rows, texts)
            bar.update(1)

        generate_from_ids(model, ids, job["max_new_tokens"], batch_size=job["batch_size"],
                          interventions=interventions, batches=[plan[b] for b in batches], on_batch=save,
                          share_prefix=job.get("share_prefix", False))
    bar.close()
    return 0


def generate_conditions_parallel(model_spec: str, conditions: ConditionSet, out_dir, workers: int = 2, *,
                                 max_new_tokens: int = 64, batch_size: int = 16, chat: bool = True,
                                 system: str | None = None, dtype: str = "float32", overwrite: bool = False,
                                 progress: bool = True, share_prefix: bool = False) -> dict[str, list[str]]:
    """``generate_conditions`` split over ``workers`` torchrun processes on this machine, each loading
    ``model_spec`` (one GPU per worker when CUDA is there), all conditions in one launch. Rerunning it with
    the same arguments resumes an interrupted job (finished batches are kept, each prompt is generated once).

    Example:
        out = generate_conditions_parallel("smollm2-135m-instruct", {"base": (prompts, None),
                                           "ablated": (prompts, Condition("ablate", r))}, "gen/", workers=2)
    """
    from . import distributed

    prepare(model_spec, conditions, out_dir, max_new_tokens=max_new_tokens, batch_size=batch_size, chat=chat,
            system=system, dtype=dtype, overwrite=overwrite, share_prefix=share_prefix)
    done = collect(out_dir, missing_ok=True)
    if done is not None:  # a finished job: nothing to launch
        return done
    distributed.launch([str(Path(out_dir).resolve())] + ["--quiet"] * (not progress), workers,
                       module="interp.parallel_generate")
    return collect(out_dir)


def generate_parallel(model_spec: str, prompts: Sequence[str], out_dir, workers: int = 2, *,
                      condition: Condition | None = None, max_new_tokens: int = 64, batch_size: int = 16,
                      chat: bool = True, system: str | None = None, dtype: str = "float32",
                      overwrite: bool = False, progress: bool = True) -> list[str]:
    """Greedy completions of ``prompts`` (under ``condition``) from ``workers`` torchrun processes: equal to
    ``generate(model, prompts, max_new_tokens, batch_size=batch_size, interventions=...)`` token for token.

    Example:
        texts = generate_parallel("smollm2-135m-instruct", prompts, "gen/", workers=2,
                                  condition=Condition("ablate", "direction.safetensors"))
    """
    return generate_conditions_parallel(model_spec, {"completions": (prompts, condition)}, out_dir, workers,
                                        max_new_tokens=max_new_tokens, batch_size=batch_size, chat=chat,
                                        system=system, dtype=dtype, overwrite=overwrite,
                                        progress=progress)["completions"]


class ParallelGenerator:
    """A generator for an evaluation, called like ``generate_conditions`` without the model:
    ``gen(conditions, max_new_tokens, batch_size) -> {name: texts}`` runs every condition in one launch of
    ``workers`` processes (each loading ``model_spec``), equal to ``generate_conditions(model, conditions,
    max_new_tokens, batch_size)`` token for token.

    Jobs go to sub-folders of ``out_dir`` named by a hash of what they generate, so running the same
    evaluation again resumes it and another evaluation never mixes with it.

    Example:
        gen = ParallelGenerator("smollm2-135m-instruct", "gen/", workers=4)
        texts = gen({"harmful_ablated": (harmful, Condition("ablate", r))}, max_new_tokens=64, batch_size=16)
    """

    def __init__(self, model_spec: str, out_dir, workers: int, batch_size: int = 16, chat: bool = True,
                 system: str | None = None, dtype: str = "float32", progress: bool = True):
        self.model_spec, self.out_dir, self.workers = model_spec, Path(out_dir), workers
        self.batch_size, self.chat, self.system, self.dtype = batch_size, chat, system, dtype
        self.progress = progress

    def __call__(self, conditions: ConditionSet, max_new_tokens: int, batch_size: int | None = None,
                 share_prefix: bool = False) -> dict[str, list[str]]:
        batch_size = batch_size or self.batch_size
        job, _ = _job(self.out_dir, self.model_spec, conditions, max_new_tokens, batch_size, self.chat,
                      self.system, self.dtype, share_prefix)
        return generate_conditions_parallel(self.model_spec, conditions, self.out_dir / f"job-{job['key'][:16]}",
                                            self.workers, max_new_tokens=max_new_tokens, batch_size=batch_size,
                                            chat=self.chat, system=self.system, dtype=self.dtype,
                                            progress=self.progress, share_prefix=share_prefix)


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m interp.parallel_generate JOB_DIR [--quiet]``: one worker (under torchrun) of a prepared job."""
    argv = list(sys.argv[1:] if argv is None else argv)
    quiet = "--quiet" in argv
    argv = [a for a in argv if a != "--quiet"]
    if len(argv) != 1 or argv[0].startswith("-"):
        print("usage: torchrun --nproc-per-node N -m interp.parallel_generate JOB_DIR [--quiet] (a folder written "
              "by interp.parallel_generate.prepare)", file=sys.stderr)
        return 2
    try:
        return run_worker(argv[0], progress=not quiet)
    except (InterpError, OSError) as e:
        print(f"interp: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
