"""ActivationStore: a capture streamed to disk as safetensors shards plus a manifest.

RAM stays bounded by one shard whatever the corpus size. Each shard is written
to a temporary file and renamed into place, and the JSON manifest is rewritten
the same way after every shard, so a killed capture loses at most the shard in
flight: run the same call again and it resumes after the last finished shard.
Shard checksums (SHA-256) are verified when read.

Example:
    store = model.capture_to_store(prompts, "acts/", sites="resid_post.6")
    for batch in store.iter_batches("resid_post.6", batch_size=4096):
    ...     train_step(batch)
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Iterator, Sequence

import torch
from tqdm.auto import tqdm

from .activations import Activations
from .errors import InterpError
from .activations import prompt_hash
from .packaged import sha256_file
from .positions import describe
from .sites import SiteLike, expand_sites, parse_site

FORMAT = "interp-activation-store/1"
MANIFEST = "manifest.json"


def _write_json(path: Path, obj: dict) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(obj, indent=1))
    os.replace(tmp, path)


class ActivationStore:
    """A finished or partial capture on disk; open with ``ActivationStore(path)``."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        manifest = self.path / MANIFEST
        if not manifest.exists():
            raise InterpError(f"{self.path} is not an activation store (no {MANIFEST})")
        self.manifest = json.loads(manifest.read_text())
        if self.manifest.get("format") != FORMAT:
            raise InterpError(f"{manifest} has format {self.manifest.get('format')!r}, expected {FORMAT!r}")
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
        return Activations.load(path)

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

    def iter_batches(self, site: SiteLike, batch_size: int = 4096, shuffle: bool = False, seed: int = 0,
                     drop_last: bool = False) -> Iterator[torch.Tensor]:
        """Valid token rows of one site, [batch, d], one shard in memory at a time.

        With ``shuffle`` the shard order and the rows within each shard are
        permuted (a bounded-memory shuffle).
        """
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


def capture_to_store(model, prompts: Sequence[str], out_dir, sites: SiteLike | Sequence[SiteLike] = "resid_post",
                     positions="last", *, shard_size: int = 256, chat: bool = True, system: str | None = None,
                     batch_size: int = 8, dtype: torch.dtype = torch.float32, progress: bool = True,
                     overwrite: bool = False, encoded=None) -> ActivationStore:
    """Capture to ``out_dir`` shard by shard; resume if a matching store is there.

    A store made by another model, with other sites, positions or prompts is
    refused (pass another directory, or ``overwrite=True``). ``encoded``
    takes pre-tokenized prompts (``Model.encode``) instead of ``prompts``.
    """
    from .capture import capture

    if shard_size < 1:
        raise InterpError(f"shard_size must be >= 1, got {shard_size}")
    out = Path(out_dir)
    enc = encoded if encoded is not None else model.encode(prompts, chat=chat, system=system)
    site_list = [str(s) for s in expand_sites(sites, model.n_layers)]
    header = {
        "format": FORMAT, "model": model.name, "model_fingerprint": model.fingerprint, "sites": site_list,
        "positions": describe(positions), "chat": chat, "system": system,
        "dtype": str(dtype).replace("torch.", ""), "shard_size": shard_size, "n_prompts": len(enc.texts),
        "prompt_hashes": [prompt_hash(t) for t in enc.texts],
    }
    manifest_path = out / MANIFEST
    if manifest_path.exists() and not overwrite:
        old = json.loads(manifest_path.read_text())
        diffs = [k for k in header if old.get(k) != header[k]]
        if diffs:
            detail = "; ".join(f"{k}: stored {_short(old.get(k))} vs now {_short(header[k])}" for k in diffs)
            raise InterpError(f"{out} holds a store made differently ({detail}); refusing to mix. Use another "
                              f"directory or overwrite=True")
        done = {s["start"]: s for s in old["shards"] if (out / s["file"]).exists()
                and (out / s["file"]).stat().st_size == s["bytes"]}
    else:
        out.mkdir(parents=True, exist_ok=True)
        for stale in out.glob("shard-*.safetensors"):
            stale.unlink()
        done = {}
    manifest = {**header, "shards": []}
    starts = range(0, len(enc.texts), shard_size)
    bar = tqdm(starts, desc=f"store {out.name}", unit="shard", disable=not progress)
    for start in bar:
        stop = min(start + shard_size, len(enc.texts))
        if start in done and done[start]["stop"] == stop:
            manifest["shards"].append(done[start])
            continue
        sub = type(enc)(enc.texts[start:stop], enc.ids[start:stop], enc.spans[start:stop])
        acts = capture(model, None, site_list, _slice_positions(positions, start, stop), chat=chat, system=system,
                       batch_size=batch_size, dtype=dtype, progress=False, encoded=sub)
        name = f"shard-{start:09d}.safetensors"
        tmp = out / (name + ".tmp")
        acts.save(tmp)
        entry = {"file": name, "start": start, "stop": stop, "sha256": sha256_file(tmp),
                 "bytes": tmp.stat().st_size, "n_tokens": int(acts.mask.sum())}
        os.replace(tmp, out / name)
        manifest["shards"].append(entry)
        _write_json(manifest_path, manifest)
        del acts
    _write_json(manifest_path, manifest)
    return ActivationStore(out)


def _slice_positions(positions, start: int, stop: int):
    """Per-prompt position specs (lists, masks) follow their prompts into a shard."""
    if isinstance(positions, (str, int, slice, range)):
        return positions
    return positions[start:stop]


def _short(v) -> str:
    s = json.dumps(v)
    return s if len(s) < 60 else s[:57] + "..."
