"""Captured activations in memory: tensors keyed by site plus what made them.

Example:
    >>> import torch
    >>> acts = Activations({"resid_post.0": torch.zeros(2, 1, 4)}, torch.ones(2, 1, dtype=torch.bool),
    ...                    torch.zeros(2, 1, dtype=torch.long), {"model": "toy"})
    >>> acts["blocks.0.hook_resid_post"].shape
    torch.Size([2, 1, 4])
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from .errors import InterpError
from .sites import SITE_NAMES, SiteLike, parse_site

_MASK, _POS, _SCORES = "__mask__", "__positions__", "__scores__"


def prompt_hash(text: str) -> str:
    """A short SHA-256 of a formatted prompt: how captures and stores recognise their prompts."""
    return hashlib.sha256(text.encode()).hexdigest()[:16]


@dataclass
class Activations:
    """Tensors keyed by site (``"resid_post.5"``), each [examples, positions, d].

    ``mask`` [examples, positions] is False where a prompt had fewer selected
    positions than the widest one (those rows are zeros, never padding
    activations); ``positions`` holds the token index of each slot (-1 where
    masked). ``metadata`` records model, fingerprint, sites, positions and
    prompt hashes. ``scores`` [examples, ...] holds what ``capture(score=fn)``
    computed from each prompt's last-position logits in the same forward.
    """

    tensors: dict[str, torch.Tensor]
    mask: torch.Tensor
    positions: torch.Tensor
    metadata: dict = field(default_factory=dict)
    scores: torch.Tensor | None = None

    def __getitem__(self, site: SiteLike) -> torch.Tensor:
        key = str(parse_site(site))
        if key not in self.tensors:
            raise InterpError(f"site {key} was not captured; captured sites: {', '.join(self.tensors)}")
        return self.tensors[key]

    def __contains__(self, site: SiteLike) -> bool:
        try:
            return str(parse_site(site)) in self.tensors
        except InterpError:
            return False

    def __len__(self) -> int:
        return self.mask.shape[0]

    @property
    def sites(self) -> list[str]:
        return list(self.tensors)

    def layers(self, name: str) -> list[int]:
        """Layers captured for a site name, ascending."""
        return sorted(parse_site(k).layer for k in self.tensors if parse_site(k).name == name)

    def stack(self, name: str) -> torch.Tensor:
        """All captured layers of one site name: [layers, examples, positions, d]."""
        if name not in SITE_NAMES:
            raise InterpError(f"unknown site name {name!r}; valid: {', '.join(SITE_NAMES)}")
        layers = self.layers(name)
        if not layers:
            raise InterpError(f"no layer of {name} was captured; captured sites: {', '.join(self.tensors)}")
        return torch.stack([self.tensors[f"{name}.{layer}"] for layer in layers])

    def tokens(self, site: SiteLike) -> torch.Tensor:
        """The valid (unmasked) rows of one site flattened to [n_tokens, d]."""
        return self[site][self.mask]

    def select(self, rows) -> "Activations":
        """The captures of some prompts (indices into this one), in that order.

        Example:
            kept = acts.select([i for i, s in enumerate(acts.scores.tolist()) if s > 0])
        """
        idx = torch.as_tensor(list(rows), dtype=torch.long)
        if len(idx) and not (0 <= int(idx.min()) and int(idx.max()) < len(self)):
            raise InterpError(f"rows must be in 0..{len(self) - 1}, got {idx.tolist()[:10]}")
        meta = dict(self.metadata)
        if "prompt_hashes" in meta:
            meta["prompt_hashes"] = [meta["prompt_hashes"][i] for i in idx.tolist()]
        meta["n_examples"] = len(idx)
        return Activations({k: v[idx] for k, v in self.tensors.items()}, self.mask[idx], self.positions[idx], meta,
                           None if self.scores is None else self.scores[idx])

    def save(self, path: str | Path) -> None:
        """Write one safetensors file (tensors plus JSON metadata)."""
        tensors = {**{k: v.contiguous() for k, v in self.tensors.items()}, _MASK: self.mask, _POS: self.positions}
        if self.scores is not None:
            tensors[_SCORES] = self.scores.contiguous()
        save_file(tensors, str(path), metadata={"interp": json.dumps(self.metadata)})

    @classmethod
    def load(cls, path: str | Path) -> "Activations":
        from safetensors import safe_open

        with safe_open(str(path), framework="pt") as f:
            meta = json.loads((f.metadata() or {}).get("interp", "{}"))
        tensors = load_file(str(path))
        return cls(tensors, tensors.pop(_MASK), tensors.pop(_POS), meta, tensors.pop(_SCORES, None))

    @classmethod
    def concat(cls, parts: list["Activations"]) -> "Activations":
        """Join captures of the same sites along examples (widths may differ)."""
        if not parts:
            raise InterpError("nothing to concatenate")
        width = max(p.mask.shape[1] for p in parts)

        def pad(t: torch.Tensor, value) -> torch.Tensor:
            extra = width - t.shape[1]
            if extra == 0:
                return t
            shape = (t.shape[0], extra) + tuple(t.shape[2:])
            return torch.cat([t, torch.full(shape, value, dtype=t.dtype)], dim=1)

        sites = parts[0].sites
        for p in parts[1:]:
            if p.sites != sites:
                raise InterpError(f"cannot concatenate captures of different sites: {sites} vs {p.sites}")
        def pad_keys(t: torch.Tensor, keys: int) -> torch.Tensor:
            # attention patterns ([.., heads, keys]) of captures with different longest prompts
            return torch.nn.functional.pad(t, (0, keys - t.shape[-1])) if t.shape[-1] < keys else t

        tensors = {}
        for s in sites:
            keys = max(p.tensors[s].shape[-1] for p in parts) if parse_site(s).name == "attn_pattern" else 0
            tensors[s] = torch.cat([pad(pad_keys(p.tensors[s], keys), 0) for p in parts])
        meta = dict(parts[0].metadata)
        meta["prompt_hashes"] = [h for p in parts for h in p.metadata.get("prompt_hashes", [])]
        meta["n_examples"] = sum(len(p) for p in parts)
        scores = torch.cat([p.scores for p in parts]) if all(p.scores is not None for p in parts) else None
        return cls(tensors, torch.cat([pad(p.mask, False) for p in parts]),
                   torch.cat([pad(p.positions, -1) for p in parts]), meta, scores)
