"""Directions on disk: safetensors with JSON metadata (model, site, layer, how it was made).

Example:
    >>> import torch, tempfile, os
    >>> path = os.path.join(tempfile.mkdtemp(), "d.safetensors")
    >>> _ = save_direction(path, torch.ones(4), {"model": "toy", "site": "resid_pre.2", "layer": 2})
    >>> vec, meta = load_direction(path)
    >>> meta["site"], vec.shape
    ('resid_pre.2', torch.Size([4]))
"""
from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from .errors import InterpError


def save_direction(path: str | Path, direction: torch.Tensor, metadata: dict) -> Path:
    """Write one direction [d] (or a basis [k, d]) with its metadata.

    ``direction`` may be a tensor or a numpy array; the folder must exist
    (a typo in it should not silently create a new tree).
    """
    if not isinstance(direction, torch.Tensor):
        try:
            direction = torch.as_tensor(direction)
        except (TypeError, ValueError, RuntimeError) as e:
            raise InterpError(f"a direction must be a tensor or array of numbers, got {type(direction).__name__}") \
                from e
    if not (direction.dtype.is_floating_point or direction.dtype in (torch.int32, torch.int64)) \
            or direction.dim() not in (1, 2) or direction.numel() == 0:
        raise InterpError(f"a direction is a non-empty float vector [d] or basis [k, d], got dtype {direction.dtype} "
                          f"and shape {tuple(direction.shape)}")
    if not torch.isfinite(direction).all():
        raise InterpError("refusing to save a direction with NaN or infinite entries")
    path = Path(path)
    if not path.parent.is_dir():
        raise InterpError(f"cannot save the direction to {path}: the folder {path.parent} does not exist; create it "
                          f"first")
    if path.is_dir():
        raise InterpError(f"cannot save the direction to {path}: it is a folder; give a file name such as "
                          f"{path / 'direction.safetensors'}")
    try:
        meta = json.dumps(metadata)
    except (TypeError, ValueError) as e:
        raise InterpError(f"direction metadata must be JSON-serializable ({e})") from e
    save_file({"direction": direction.detach().to("cpu", torch.float32).contiguous()}, str(path),
              metadata={"interp": meta})
    return path


def load_direction(path: str | Path, model=None) -> tuple[torch.Tensor, dict]:
    """Read a direction and its metadata; with ``model``, check its size fits."""
    path = Path(path)
    if not path.exists():
        raise InterpError(f"direction file {path} does not exist")
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = json.loads((f.metadata() or {}).get("interp", "{}"))
            vec = f.get_tensor("direction")
    except Exception as e:  # safetensors raises several types for a damaged file
        raise InterpError(f"{path} is not a readable direction file ({e})") from e
    if model is not None and vec.shape[-1] != model.d_model:
        raise InterpError(f"direction in {path} has size {vec.shape[-1]}, but {model.name} has d_model "
                          f"{model.d_model} (made for {meta.get('model', 'an unknown model')})")
    return vec, meta
