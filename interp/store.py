"""ActivationStore: a capture streamed to disk as safetensors shards plus a manifest.

RAM stays bounded by one shard whatever the corpus size. Each shard is written
to a temporary file and renamed into place, and the JSON manifest is rewritten
the same way after every shard, so a killed capture loses at most the shard in
flight: run the same call again and it resumes after the last finished shard.
Shard checksums (SHA-256) are verified when read. Several processes can fill
one store (``interp.distributed.capture_to_store_parallel`` under torchrun):
shard boundaries do not depend on the number of workers, each worker journals
its finished shards, and one manifest is committed at the end.

Example:
    store = model.capture_to_store(prompts, "acts/", sites="resid_post.6")
    for batch in store.iter_batches("resid_post.6", batch_size=4096):
    ...     train_step(batch)
"""
from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator, Sequence

import torch
from tqdm.auto import tqdm

from .activations import Activations
from .errors import InterpError
from .activations import prompt_hash
from .packaged import sha256_file
from .positions import describe, is_per_prompt, pack, resolve_positions
from .sites import SiteLike, expand_sites, parse_site

FORMAT = "interp-activation-store/1"
MANIFEST = "manifest.json"
JOURNAL_GLOB = "journal-*.json"  # per-worker lists of finished shards during a parallel capture


_SHARD_RE = re.compile(r"^shard-\d{9}\.safetensors$")


def _write_json(path: Path, obj: dict) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(obj, indent=1))
    os.replace(tmp, path)


def read_manifest(path: Path) -> dict:
    """Parse and check a store manifest; every problem is an ``InterpError`` naming the file.

    Shard entries must name plain ``shard-NNNNNNNNN.safetensors`` files: an
    entry such as ``"../x"`` would read outside the store's folder.
    """
    fix = f"delete {path.parent} (or pass overwrite=True to the capture) and capture again"
    try:
        m = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise InterpError(f"the store manifest {path} is unreadable ({e}); {fix}") from e
    if not isinstance(m, dict) or m.get("format") != FORMAT:
        got = m.get("format") if isinstance(m, dict) else type(m).__name__
        raise InterpError(f"{path} has format {got!r}, expected {FORMAT!r}; {fix}")
    missing = [k for k in ("model", "sites", "n_prompts", "shards") if k not in m]
    if missing or not isinstance(m["shards"], list) or not isinstance(m["sites"], list):
        raise InterpError(f"the store manifest {path} is incomplete (missing {missing or 'a list'}); {fix}")
    for e in m["shards"]:
        if not (isinstance(e, dict) and isinstance(e.get("file"), str) and _SHARD_RE.match(e["file"])
                and all(isinstance(e.get(k), int) for k in ("start", "stop", "n_tokens"))
                and isinstance(e.get("sha256"), str)):
            raise InterpError(f"the store manifest {path} has a bad shard entry {_short(e)} (shard files are "
                              f"named shard-NNNNNNNNN.safetensors inside the store); {fix}")
    return m


class ActivationStore:
    """A finished or partial capture on disk; open with ``ActivationStore(path)``."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        manifest = self.path / MANIFEST
        if not manifest.is_file():
            raise InterpError(f"{self.path} is not an activation store (no {MANIFEST})")
        self.manifest = read_manifest(manifest)
        self._verified: set[str] = set()

    def __repr__(self) -> str:
        m = self.manifest
        return (f"ActivationStore({str(self.path)!r}, model={m['model']}, sites={len(m['sites'])}, "
                f"examples={self.n_examples}/{m['n_prompts']}, shards={len(m['shards'])}, complete={self.complete})")

    @property
    def sites(self) -> list[str]:
        return list(self.manifest["sites"])

    @property
    def n_examples(self) -> int:
        return sum(s["stop"] - s["start"] for s in self.manifest["shards"])

    @property
    def n_tokens(self) -> int:
        return sum(s["n_tokens"] for s in self.manifest["shards"])

    @property
    def complete(self) -> bool:
        return self.n_examples == self.manifest["n_prompts"]

    def __len__(self) -> int:
        return len(self.manifest["shards"])

    def shard(self, i: int, verify: bool = True) -> Activations:
        """Load shard ``i``; its checksum is checked the first time it is read."""
        entry = self.manifest["shards"][i]
        path = self.path / entry["file"]
        if not path.exists():
            raise InterpError(f"shard {path} is missing; run the same capture again to rebuild it")
        if verify and entry["file"] not in self._verified:
            digest = sha256_file(path)
            if digest != entry["sha256"]:
                raise InterpError(f"shard {path} fails its checksum (truncated or corrupted); delete it and run "
                                  f"the same capture again to rewrite it")
            self._verified.add(entry["file"])
        try:
            return Activations.load(path)
        except Exception as e:  # safetensors raises its own error types for a damaged file
            raise InterpError(f"shard {path} is unreadable ({e}); delete it and run the same capture again") from e

    def verify(self) -> None:
        """Check every shard's checksum."""
        for i in range(len(self)):
            self.shard(i)

    def load(self, sites: Sequence[SiteLike] | None = None) -> Activations:
        """Everything in memory as one ``Activations`` (only for stores that fit)."""
        parts = []
        for i in range(len(self)):
            acts = self.shard(i)
            if sites is not None:
                keys = [str(parse_site(s)) for s in sites]
                acts.tensors = {k: acts[k] for k in keys}
            parts.append(acts)
        return Activations.concat(parts)

    def iter_examples(self, sites: Sequence[SiteLike] | None = None) -> Iterator[tuple[int, torch.Tensor, torch.Tensor]]:
        """Per shard, ``(start, X, mask)``: X [examples, sites, positions, d] of the shard's prompts (from
        prompt ``start`` on), mask [examples, positions]; one shard in memory at a time. The input of the
        streaming ``fit_store`` of the analyzers.
        """
        keys = [str(parse_site(s)) for s in (sites if sites is not None else self.sites)]
        missing = [k for k in keys if k not in self.sites]
        if missing:
            raise InterpError(f"sites {', '.join(missing)} are not in this store; stored sites: {', '.join(self.sites)}")
        for i in range(len(self)):
            acts = self.shard(i)
            yield self.manifest["shards"][i]["start"], torch.stack([acts[k] for k in keys], 1), acts.mask

    def iter_batches(self, site: SiteLike, batch_size: int = 4096, shuffle: bool = False, seed: int = 0,
                     drop_last: bool = False) -> Iterator[torch.Tensor]:
        """Valid token rows of one site, [batch, d], one shard in memory at a time.

        With ``shuffle`` the shard order and the rows within each shard are
        permuted (a bounded-memory shuffle).
        """
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise InterpError(f"batch_size must be a positive int, got {batch_size!r}")
        key = str(parse_site(site))
        if key not in self.sites:
            raise InterpError(f"site {key} is not in this store; stored sites: {', '.join(self.sites)}")
        gen = torch.Generator().manual_seed(seed)
        order = torch.randperm(len(self), generator=gen).tolist() if shuffle else range(len(self))
        buffer = None
        for i in order:
            rows = self.shard(i).tokens(key)
            if shuffle:
                rows = rows[torch.randperm(rows.shape[0], generator=gen)]
            buffer = rows if buffer is None else torch.cat([buffer, rows])
            while buffer.shape[0] >= batch_size:
                yield buffer[:batch_size]
                buffer = buffer[batch_size:]
        if buffer is not None and buffer.shape[0] and not drop_last:
            yield buffer


@dataclass
class _Plan:
    """One capture into a store, checked and ready: what each shard needs, and what is already done."""

    out: Path
    enc: object  # Encoded
    sites: list[str]
    positions: object
    header: dict
    chat: bool
    system: str | None
    batch_size: int
    dtype: torch.dtype
    shard_size: int
    done: dict = field(default_factory=dict)  # start -> manifest entry of a finished, checksum-verified shard

    @property
    def starts(self) -> list[int]:
        return list(range(0, len(self.enc.texts), self.shard_size))

    def stop(self, start: int) -> int:
        return min(start + self.shard_size, len(self.enc.texts))

    def pending(self) -> list[int]:
        return [s for s in self.starts if not (s in self.done and self.done[s]["stop"] == self.stop(s))]


def _plan(model, prompts, out_dir, sites, positions, *, shard_size, chat, system, batch_size, dtype,
          encoded) -> _Plan:
    """Check every argument and build the store header; touches nothing on disk."""
    for name, value in (("shard_size", shard_size), ("batch_size", batch_size)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise InterpError(f"{name} must be a positive int, got {value!r}")
    if not isinstance(dtype, torch.dtype) or not dtype.is_floating_point:
        raise InterpError(f"dtype must be a floating-point torch dtype (torch.float32, torch.float16, "
                          f"torch.bfloat16), got {dtype!r}")
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise InterpError(f"{out} exists and is not a folder; pass a folder path for the store")
    enc = encoded if encoded is not None else model.encode(prompts, chat=chat, system=system)
    site_list = [str(s) for s in expand_sites(sites, model.n_layers)]
    pack(resolve_positions(positions, enc.lengths, enc.spans))  # a bad spec fails here, before the disk
    header = {
        "format": FORMAT, "model": model.name, "model_fingerprint": model.fingerprint, "sites": site_list,
        "positions": describe(positions), "chat": chat, "system": system,
        "dtype": str(dtype).replace("torch.", ""), "shard_size": shard_size, "n_prompts": len(enc.texts),
        "prompt_hashes": [prompt_hash(t) for t in enc.texts],
    }
    return _Plan(out, enc, site_list, positions, header, chat, system, batch_size, dtype, shard_size)


def _open_for_writing(plan: _Plan, overwrite: bool) -> None:
    """Refuse a store made differently, clear it on ``overwrite``, collect verified finished shards into
    ``plan.done`` (from the manifest and from any workers' journals) and write the starting manifest."""
    out, header = plan.out, plan.header
    manifest_path = out / MANIFEST
    done: dict[int, dict] = {}
    if overwrite:
        out.mkdir(parents=True, exist_ok=True)
        for stale in [*out.glob("shard-*.safetensors*"), *out.glob(JOURNAL_GLOB)]:
            stale.unlink()
    elif manifest_path.exists():
        old = read_manifest(manifest_path)
        diffs = [k for k in header if old.get(k) != header[k]]
        if diffs:
            detail = "; ".join(f"{k}: stored {_short(old.get(k))} vs now {_short(header[k])}" for k in diffs)
            raise InterpError(f"{out} holds a store made differently ({detail}); refusing to mix. Use another "
                              f"directory or overwrite=True")
        # a shard counts as done only if its bytes still hash to what the manifest (or a journal) says
        for e in [*old["shards"], *_journal_entries(out)]:
            if e["start"] not in done and (out / e["file"]).is_file() and sha256_file(out / e["file"]) == e["sha256"]:
                done[e["start"]] = e
    else:
        foreign = sorted(p.name for p in out.glob("shard-*.safetensors")) if out.is_dir() else []
        if foreign:
            raise InterpError(f"{out} holds {len(foreign)} shard files but no {MANIFEST}, so they cannot be "
                              f"checked; nothing was deleted. Use another directory, or overwrite=True to "
                              f"replace them")
        out.mkdir(parents=True, exist_ok=True)
    for leftover in out.glob("shard-*.safetensors.tmp"):  # from a capture killed mid-write
        leftover.unlink()
    plan.done = done
    # the manifest exists before the first shard does, so shards on disk are never unaccounted for
    _write_json(manifest_path, {**header, "shards": [done[s] for s in sorted(done)]})
    for journal in out.glob(JOURNAL_GLOB):  # their verified entries are in the manifest now
        journal.unlink()


def _capture_shard(model, plan: _Plan, start: int) -> dict:
    """Capture prompts [start, stop) into ``shard-<start>.safetensors`` (written whole, then renamed)."""
    from .capture import capture

    stop, enc = plan.stop(start), plan.enc
    sub = type(enc)(enc.texts[start:stop], enc.ids[start:stop], enc.spans[start:stop])
    acts = capture(model, None, plan.sites, _slice_positions(plan.positions, start, stop), chat=plan.chat,
                   system=plan.system, batch_size=plan.batch_size, dtype=plan.dtype, progress=False, encoded=sub)
    name = f"shard-{start:09d}.safetensors"
    tmp = plan.out / (name + ".tmp")
    acts.save(tmp)
    entry = {"file": name, "start": start, "stop": stop, "sha256": sha256_file(tmp),
             "bytes": tmp.stat().st_size, "n_tokens": int(acts.mask.sum())}
    os.replace(tmp, plan.out / name)
    return entry


def _journal_entries(out: Path) -> list[dict]:
    """Finished-shard entries that parallel workers recorded (``journal-*.json``)."""
    return [e for path in sorted(out.glob(JOURNAL_GLOB)) for e in read_journal(path)]


def read_journal(path: Path) -> list[dict]:
    """Well-formed shard entries of one worker's journal; an unreadable journal gives none (its shards are
    simply captured again, never trusted)."""
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return []
    return [e for e in (data.get("shards", []) if isinstance(data, dict) else [])
            if isinstance(e, dict) and isinstance(e.get("file"), str) and _SHARD_RE.match(e["file"])
            and all(isinstance(e.get(k), int) for k in ("start", "stop", "n_tokens"))
            and isinstance(e.get("sha256"), str)]


def _commit(plan: _Plan, entries: Sequence[dict]) -> None:
    """Write the final manifest (finished shards by start) in one atomic replace."""
    by_start = {**plan.done, **{e["start"]: e for e in entries}}
    _write_json(plan.out / MANIFEST, {**plan.header, "shards": [by_start[s] for s in sorted(by_start)]})


def capture_to_store(model, prompts: Sequence[str], out_dir, sites: SiteLike | Sequence[SiteLike] = "resid_post",
                     positions="last", *, shard_size: int = 256, chat: bool = True, system: str | None = None,
                     batch_size: int = 8, dtype: torch.dtype = torch.float32, progress: bool = True,
                     overwrite: bool = False, encoded=None) -> ActivationStore:
    """Capture to ``out_dir`` shard by shard; resume if a matching store is there.

    A store made by another model, with other sites, positions (explicit
    indices and masks are compared by value) or prompts is refused (pass
    another directory, or ``overwrite=True``). Every argument is checked
    before anything on disk changes, so a typo never costs the old store.
    On resume each finished shard's checksum is verified; a damaged shard is
    captured again. ``encoded`` takes pre-tokenized prompts
    (``Model.encode``) instead of ``prompts``. Shard ``i`` always holds
    prompts ``[i·shard_size, (i+1)·shard_size)``, so a store written by
    several processes (``interp.distributed``) equals this one, and either can
    resume the other.
    """
    plan = _plan(model, prompts, out_dir, sites, positions, shard_size=shard_size, chat=chat, system=system,
                 batch_size=batch_size, dtype=dtype, encoded=encoded)
    _open_for_writing(plan, overwrite)
    manifest_path = plan.out / MANIFEST
    pending = set(plan.pending())
    finished: dict[int, dict] = {}
    bar = tqdm(plan.starts, desc=f"store {plan.out.name}", unit="shard", disable=not progress)
    for start in bar:
        if start not in pending:
            continue
        finished[start] = _capture_shard(model, plan, start)
        # finished shards of the old manifest stay listed, so a kill now loses only the shard in flight
        by_start = {**plan.done, **finished}
        _write_json(manifest_path, {**plan.header, "shards": [by_start[s] for s in sorted(by_start)]})
    _commit(plan, list(finished.values()))
    return ActivationStore(out_dir)


def _slice_positions(positions, start: int, stop: int):
    """Per-prompt position specs (lists, masks) follow their prompts into a shard."""
    return positions[start:stop] if is_per_prompt(positions) else positions


def _short(v) -> str:
    s = json.dumps(v)
    return s if len(s) < 60 else s[:57] + "..."
