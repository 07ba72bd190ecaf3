"""Reading and writing the weights of a model dispatched by accelerate (``device_map`` / ``max_memory``).

A model loaded with ``device_map`` may keep some weights off any compute device:
CPU-offloaded or disk-offloaded modules hold ``meta`` parameters, and an
accelerate hook fetches the real tensor (from RAM, from the checkpoint's own
safetensors file or from ``offload_folder``) just before each forward. Code that
reads or edits weights (the fingerprint, ``orthogonalize``) goes through this
module, so it sees the real values wherever they live and writes edits where the
hook will find them.

Example:
    model = load_model("smollm2-135m-instruct", device_map=split_map(30, on_disk=range(15, 30)),
                       offload_folder="offload/")
    read_weight(blocks(model)[20].mlp.down_proj).device     # cpu, read from disk
"""
from __future__ import annotations

from typing import Iterator

import torch
from torch import nn

from .errors import InterpError


def _hook(module: nn.Module):
    return getattr(module, "_hf_hook", None)  # accelerate's AlignDevicesHook (or a SequentialHook of them)


def _align_hooks(module: nn.Module) -> list:
    hook = _hook(module)
    if hook is None:
        return []
    return list(getattr(hook, "hooks", [hook]))


def is_dispatched(hf: nn.Module) -> bool:
    """Whether accelerate placed this model with a ``device_map`` (sharded and/or offloaded)."""
    return bool(getattr(hf, "hf_device_map", None))


def is_offloaded(hf: nn.Module) -> bool:
    """Whether any parameter lives off-device (CPU or disk offload: a ``meta`` placeholder)."""
    return any(p.device.type == "meta" for p in hf.parameters())


def execution_device(module: nn.Module) -> torch.device | None:
    """The device a dispatched module computes on (None when accelerate does not manage it)."""
    for h in _align_hooks(module):
        dev = getattr(h, "execution_device", None)
        if dev is not None:
            return torch.device(dev) if not isinstance(dev, int) else torch.device("cuda", dev)
    return None


def input_device(hf: nn.Module) -> torch.device:
    """Where input ids must go: the input embedding's execution device, else its weight's device."""
    emb = hf.get_input_embeddings()
    dev = execution_device(emb) if emb is not None else None
    if dev is None:
        for sub in (emb, hf):
            if sub is None:
                continue
            dev = next((p.device for p in sub.parameters() if p.device.type != "meta"), None)
            if dev is not None:
                break
    return dev or torch.device("cpu")


def _offload_source(module: nn.Module, name: str):
    """(loader, key) of an offloaded tensor: accelerate's weights map and the tensor's full name in it."""
    for h in _align_hooks(module):
        wm = getattr(h, "weights_map", None)
        if wm is not None and getattr(h, "offload", False):
            prefix = getattr(wm, "prefix", "")
            return getattr(wm, "dataset", wm), prefix + name
    return None, None


def read_weight(module: nn.Module, name: str = "weight") -> torch.Tensor:
    """The real value of ``module.<name>``, fetched from the offload store when the parameter is on ``meta``.

    Example:
        >>> from interp.testing import tiny_model
        >>> read_weight(tiny_model().hf.lm_head).shape[1]
        32
    """
    t = getattr(module, name)
    if t is None or t.device.type != "meta":
        return t
    loader, key = _offload_source(module, name)
    if loader is None:
        raise InterpError(f"{name} of {type(module).__name__} is on the meta device and no accelerate hook says "
                          f"where it is stored; load the model again with device_map=... (and offload_folder=...)")
    return loader[key]


def write_weight(module: nn.Module, name: str, value: torch.Tensor) -> None:
    """Replace ``module.<name>`` in place, or in its offload store (RAM dict or ``offload_folder``) when offloaded.

    A weight that accelerate reads from the checkpoint's own safetensors file is written as a new file in
    the offload folder (the checkpoint is never modified); without an offload folder that is an error.
    """
    t = getattr(module, name)
    if t.device.type != "meta":
        t.data.copy_(value.to(t.device, t.dtype))
        return
    loader, key = _offload_source(module, name)
    if loader is None:
        raise InterpError(f"cannot edit {name} of {type(module).__name__}: it is on the meta device without an "
                          f"accelerate offload hook")
    old = loader[key]
    value = value.detach().to("cpu", old.dtype).contiguous()
    if key in loader.state_dict:  # CPU offload: the weights map holds the tensor itself
        loader.state_dict[key] = value
        return
    folder = getattr(loader, "save_folder", None)
    if not folder:
        raise InterpError("editing disk-offloaded weights needs somewhere to write them: pass offload_folder=... to "
                          "load_model (the model's own files are never modified)")
    from accelerate.utils import offload_weight

    loader.index.pop(key, None)  # drop a pointer into the checkpoint's safetensors; the .dat file replaces it
    offload_weight(value, key, folder, index=loader.index)


def named_tensors(hf: nn.Module) -> Iterator[tuple[str, torch.Tensor]]:
    """``hf.state_dict()`` items with offloaded entries read from where they are stored, one at a time."""
    modules = dict(hf.named_modules())
    for key, t in hf.state_dict(keep_vars=True).items():
        if t.device.type == "meta":
            owner, _, attr = key.rpartition(".")
            t = read_weight(modules[owner], attr)
        yield key, t.detach()


def check_writable(hf: nn.Module) -> None:
    """Raise before any edit when some weights are disk-offloaded with no ``offload_folder`` to write edits to."""
    for module in hf.modules():
        for h in _align_hooks(module):
            wm = getattr(h, "weights_map", None)
            loader = getattr(wm, "dataset", wm)
            if getattr(h, "offload", False) and getattr(loader, "index", None) and \
                    not getattr(loader, "save_folder", None):
                raise InterpError("some weights of this model are offloaded to disk and read from its checkpoint "
                                  "files, which are never modified; pass offload_folder=... to load_model so edited "
                                  "weights have somewhere to go")
