"""Data-parallel capture on ``torch.distributed``, launched by ``torchrun``.

N workers each load the model, take every N-th unfinished shard of the prompt
list and write it into one ``ActivationStore``. Shard ``i`` always holds prompts
``[i·shard_size, (i+1)·shard_size)`` whatever the number of workers, so the store
equals the single-process one row for row. While they run, each worker lists its
finished shards in its own journal (``journal-<rank>.json``, rewritten
atomically after each shard); after a collective that every worker reaches
(also when one failed), rank 0 writes the manifest once, in one atomic rename,
and removes the journals. A worker killed mid-way loses at most the shard in
flight: run the same command again (with any number of workers, or with the
single-process ``capture_to_store``) and the finished shards of the manifest and
the journals are verified by checksum and kept; nothing is captured twice into
the manifest, since entries are keyed by shard.

Why torchrun and not Ray: ``torch.distributed`` ships with torch (nothing else
to install or run), ``torchrun`` is the launcher clusters already use for
PyTorch jobs (SLURM, Kubernetes, ``--nnodes``/``--rdzv-endpoint``), and a
capture needs nothing from a scheduler beyond "start N copies and tell each its
rank": the work split is static and the shared file system holds the result.

Launch (CPU: gloo backend; GPUs: nccl, one GPU per worker):

    interp capture MODEL --prompts p.txt --out acts/ --workers 4
    torchrun --nproc-per-node 8 -m interp capture MODEL --prompts p.txt --out acts/
    torchrun --nnodes 2 --nproc-per-node 8 --rdzv-backend c10d --rdzv-endpoint HOST:29500 \\
        -m interp capture MODEL --prompts p.txt --out /shared/acts/

or from Python inside a script run by torchrun:

    model = load_model(name, device=worker_device())
    store = capture_to_store_parallel(model, prompts, "acts/", "resid_post", "last")
"""
from __future__ import annotations

import atexit
import datetime
import os
import subprocess
import sys
from pathlib import Path
from typing import Sequence

import torch
from tqdm.auto import tqdm

from .errors import InterpError
from .sites import SiteLike


def world() -> tuple[int, int]:
    """(rank, world size) of this process; (0, 1) outside a distributed launch.

    Example:
        >>> world()
        (0, 1)
    """
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))


def launched() -> bool:
    """Whether this process is one worker of a multi-process launch (``torchrun`` sets WORLD_SIZE).

    Example:
        >>> launched()
        False
    """
    return world()[1] > 1


def worker_device() -> str | None:
    """The device a worker should load its model on: its own GPU (LOCAL_RANK) when CUDA is there, else None.

    Example:
        model = load_model(name, device=worker_device())
    """
    if torch.cuda.is_available():
        return f"cuda:{int(os.environ.get('LOCAL_RANK', 0)) % torch.cuda.device_count()}"
    return None


def init(backend: str | None = None, timeout_s: float = 24 * 3600) -> tuple[int, int]:
    """Join the process group torchrun set up (gloo on CPU, nccl with CUDA); (rank, world size).

    Outside a launch (no WORLD_SIZE) nothing happens and (0, 1) is returned. The timeout is long
    because workers wait for each other only at the end of a capture, which may take hours.

    Example:
        rank, size = init()    # in a script started by torchrun
    """
    import torch.distributed as dist

    if not dist.is_available():
        return 0, 1
    if dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    if int(os.environ.get("WORLD_SIZE", 1)) <= 1:
        return 0, 1
    if backend is None:
        backend = "nccl" if torch.cuda.is_available() else "gloo"
    if backend == "nccl":
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", 0)) % torch.cuda.device_count())
    dist.init_process_group(backend, timeout=datetime.timedelta(seconds=timeout_s))
    # a process group left to the interpreter's exit can abort the worker ("terminate called without an
    # active exception": gloo's threads outlive it), failing a finished capture; tear it down first
    atexit.register(_shutdown)
    return dist.get_rank(), dist.get_world_size()


def _shutdown() -> None:
    import torch.distributed as dist

    try:
        if dist.is_available() and dist.is_initialized():
            dist.destroy_process_group()
    except Exception:  # exiting anyway: a failed teardown must not hide the run's own result
        pass


def _all_gather(obj) -> list:
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()):
        return [obj]
    out: list = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj)
    return out


def _raise_first(errors: list) -> None:
    found = [e for e in errors if e]
    if found:
        raise InterpError(found[0] if all(e == found[0] for e in found) else "; ".join(dict.fromkeys(found)))


def _journal_path(out: Path, rank: int) -> Path:
    return out / f"journal-{rank:05d}.json"


def capture_to_store_parallel(model, prompts: Sequence[str], out_dir, sites: SiteLike | Sequence[SiteLike] =
                              "resid_post", positions="last", *, shard_size: int = 256, chat: bool = True,
                              system: str | None = None, batch_size: int = 8, dtype: torch.dtype = torch.float32,
                              progress: bool = True, overwrite: bool = False, encoded=None):
    """``capture_to_store`` split over the workers of a torchrun launch; every worker calls it with the same
    arguments and gets the finished ``ActivationStore``. Outside a launch it is ``capture_to_store``.

    Example (run by ``torchrun --nproc-per-node 2 script.py``):
        model = load_model("smollm2-135m-instruct", device=worker_device())
        store = capture_to_store_parallel(model, prompts, "acts/", "resid_post.10", "last", shard_size=64)
    """
    from .store import MANIFEST, ActivationStore, _capture_shard, _commit, _open_for_writing, _plan, _write_json, \
        capture_to_store, read_journal, read_manifest

    rank, size = init()
    if size == 1:
        return capture_to_store(model, prompts, out_dir, sites, positions, shard_size=shard_size, chat=chat,
                                system=system, batch_size=batch_size, dtype=dtype, progress=progress,
                                overwrite=overwrite, encoded=encoded)
    # every worker checks its own arguments; rank 0 alone then opens the store (resume, overwrite, checks).
    # Errors are exchanged, not raised on the spot, so no worker is left waiting in a collective.
    error, plan = None, None
    try:
        plan = _plan(model, prompts, out_dir, sites, positions, shard_size=shard_size, chat=chat, system=system,
                     batch_size=batch_size, dtype=dtype, encoded=encoded)
        if rank == 0:
            _open_for_writing(plan, overwrite)
    except InterpError as e:
        error = str(e)
    _raise_first(_all_gather(error))
    if rank != 0:  # the manifest rank 0 just wrote lists the verified finished shards
        m = read_manifest(plan.out / MANIFEST)
        mismatch = [k for k in plan.header if m.get(k) != plan.header[k]]
        if mismatch:
            error = f"worker {rank} was given other {', '.join(mismatch)} than worker 0"
        plan.done = {e["start"]: e for e in m["shards"]}
    _raise_first(_all_gather(error))
    mine = plan.pending()[rank::size]  # every size-th unfinished shard: balanced also on a resume
    journal = _journal_path(plan.out, rank)
    finished: list[dict] = []
    failure: BaseException | None = None
    try:
        for start in tqdm(mine, desc=f"worker {rank} {plan.out.name}", unit="shard",
                          disable=not progress or rank != 0):
            finished.append(_capture_shard(model, plan, start))
            _write_json(journal, {"rank": rank, "shards": finished})
    except Exception as e:  # reported to every worker below, so none waits forever for this one
        failure = e
    failures = _all_gather(None if failure is None else f"worker {rank}: {type(failure).__name__}: {failure}")
    if rank == 0 and not any(failures):
        entries = [e for r in range(size) for e in read_journal(_journal_path(plan.out, r))]
        _commit(plan, entries)  # the one manifest write of the run: an atomic rename
        for r in range(size):
            _journal_path(plan.out, r).unlink(missing_ok=True)
    _all_gather(None)  # nobody returns before the manifest is there
    if failure is not None:
        raise failure
    if any(failures):
        raise InterpError("parallel capture failed (finished shards are kept; run the same command again to "
                          "resume): " + "; ".join(f for f in failures if f))
    return ActivationStore(out_dir)


def launch(argv: Sequence[str], workers: int, threads_per_worker: int | None = None, module: str = "interp") -> int:
    """Run ``python -m <module> <argv>`` (default ``interp``, the command line) as ``workers`` processes under
    torchrun on this machine (0, or an ``InterpError`` when a worker failed).

    CPU threads are split between the workers (torchrun would give each one thread).
    """
    if workers < 1:
        raise InterpError(f"--workers must be at least 1, got {workers}")
    threads = threads_per_worker or max(1, (os.cpu_count() or 1) // workers)
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "TOKENIZERS_PARALLELISM": "false"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={workers}",
           "-m", module, *argv]
    rc = subprocess.run(cmd, env=env).returncode
    if rc != 0:
        raise InterpError(f"{workers} workers under torchrun exited with code {rc} (their messages are above); "
                          f"finished shards are kept, so the same command resumes")
    return 0
