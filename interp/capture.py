"""Hook-based capture of activations at named sites and token positions.

Prompts are sorted by length so batches carry little padding, left-padded,
run once through the base model (the LM head is skipped, and the forward stops
after the deepest layer asked for), and only the selected positions are copied
out inside the hooks, so memory grows with what is kept, not with the
sequence.

Example:
    acts = capture(model, ["Hi", "Hello there"], "resid_post", "last")
"""
from __future__ import annotations

import time
from typing import Sequence

import torch
from tqdm.auto import tqdm

from . import __version__
from .activations import Activations
from .errors import InterpError
from .activations import prompt_hash
from .arch import StopForward
from .positions import describe, pack, resolve_positions
from .sites import Site, expand_sites


def _reader(key: str, out: dict, state: dict, dtype: torch.dtype):
    def read(x: torch.Tensor):
        rows, idx = state["rows"], state["idx"]
        batch = torch.arange(idx.shape[0], device=x.device)[:, None]
        picked = x[batch, idx.to(x.device)].detach().to("cpu", dtype)
        out[key][rows] = picked
        return None
    return read


def check_finite(tensors: dict[str, torch.Tensor], mask: torch.Tensor, offset: int = 0) -> None:
    """Raise if any captured (unmasked) value is NaN or infinite, naming site and example."""
    for key, t in tensors.items():
        bad = ~torch.isfinite(t[mask])
        if bad.any():
            rows = torch.nonzero(mask)[bad.reshape(bad.shape[0], -1).any(-1)][:, 0]
            raise InterpError(f"non-finite activations (NaN/inf) at {key} for examples "
                              f"{sorted({int(r) + offset for r in rows})[:10]}: check the model weights and dtype "
                              f"(float16 overflows are common; try dtype=torch.float32)")


def capture(model, prompts: Sequence[str], sites, positions="last", *, chat: bool = True,
            system: str | None = None, batch_size: int = 8, dtype: torch.dtype = torch.float32,
            progress: bool = True, encoded=None) -> Activations:
    """Capture activations; see ``Model.capture`` for the arguments."""
    if batch_size < 1:
        raise InterpError(f"batch_size must be >= 1, got {batch_size}")
    site_list: list[Site] = expand_sites(sites, model.n_layers)
    enc = encoded if encoded is not None else model.encode(prompts, chat=chat, system=system)
    per_prompt = resolve_positions(positions, enc.lengths, enc.spans)
    idx, mask = pack(per_prompt)
    n, width = idx.shape
    out = {str(s): torch.zeros((n, width) + model.site_shape(s), dtype=dtype) for s in site_list}
    state: dict = {}
    readers = {s: _reader(str(s), out, state, dtype) for s in site_list}
    order = sorted(range(n), key=lambda i: enc.lengths[i])
    deepest = max(s.layer for s in site_list)
    t0 = time.time()
    with model.hooks(readers, stop_after_layer=deepest), torch.no_grad():
        bar = tqdm(range(0, n, batch_size), desc="capture", unit="batch", disable=not progress or n <= batch_size)
        for start in bar:
            rows = order[start:start + batch_size]
            batch = model.pad([enc.ids[i] for i in rows])
            width_b = batch["input_ids"].shape[1]
            offsets = torch.tensor([width_b - enc.lengths[i] for i in rows])[:, None]
            state["rows"] = torch.tensor(rows)
            state["idx"] = idx[rows] + offsets  # padded coordinates
            try:
                model._forward(batch)
            except StopForward:
                pass
    for t in out.values():
        t[~mask] = 0
    check_finite(out, mask)
    positions_t = torch.where(mask, idx, torch.full_like(idx, -1))
    meta = {
        "model": model.name, "model_fingerprint": model.fingerprint, "backend": model.backend,
        "sites": [str(s) for s in site_list], "positions": describe(positions), "chat": chat, "system": system,
        "dtype": str(dtype).replace("torch.", ""), "n_examples": n,
        "prompt_hashes": [prompt_hash(t) for t in enc.texts],
        "interp_version": __version__, "seconds": round(time.time() - t0, 3),
    }
    return Activations(out, mask, positions_t, meta)

