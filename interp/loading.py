"""``load_model``: one entry point for packaged models, GGUF files, local folders and hub ids.

Example:
    model = load_model("smollm2-135m-instruct")
    model = load_model("Qwen/Qwen2.5-0.5B-Instruct", device_map="auto")
"""
from __future__ import annotations

from pathlib import Path

import torch

from .errors import InterpError
from .model import Model
from .packaged import DEFAULT_MODEL, PACKAGED, convert_gguf, hf_dir, interp_home, sha256_file


def resolve_source(name_or_path: str, progress: bool = True) -> tuple[str, str]:
    """(display name, transformers-loadable path or hub id) for any accepted source."""
    if name_or_path in PACKAGED:
        return name_or_path, str(hf_dir(name_or_path, progress=progress))
    path = Path(name_or_path).expanduser()
    if path.suffix == ".gguf":
        if not path.is_file():
            raise InterpError(f"GGUF file {path} does not exist")
        digest = sha256_file(path)
        out = interp_home() / "models" / f"gguf-{digest[:16]}" / "hf"
        if not (out / "interp_source.json").exists():
            convert_gguf(path, out, source={"gguf": str(path), "gguf_sha256": digest})
        return path.stem, str(out)
    if path.is_dir():
        if not (path / "config.json").exists():
            raise InterpError(f"{path} is a folder without config.json; is it a transformers model folder?")
        return path.name, str(path)
    if path.exists():
        raise InterpError(f"{path} is neither a model folder nor a .gguf file")
    return name_or_path, name_or_path  # a hub id


def load_model(name_or_path: str = DEFAULT_MODEL, *, backend: str = "hf", dtype: torch.dtype = torch.float32,
               device: str | torch.device | None = None, device_map=None, trust_remote_code: bool = False,
               attn_implementation: str | None = None, progress: bool = True) -> Model:
    """Load a model for capture and intervention.

    ``name_or_path`` is a packaged model name (see ``interp models``), a
    ``.gguf`` file, a local transformers folder or a Hugging Face hub id.
    ``dtype``, ``device`` and ``device_map`` pass through to transformers
    (``device_map="auto"`` for multi-GPU). ``backend="transformer_lens"``
    wraps the same weights in a TransformerLens ``TransformerBridge``.
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if backend not in ("hf", "transformer_lens"):
        raise InterpError(f"unknown backend {backend!r}; use 'hf' or 'transformer_lens'")
    if device is not None and device_map is not None:
        raise InterpError("pass either device or device_map, not both")
    name, source = resolve_source(name_or_path, progress=progress)
    kwargs = {"dtype": dtype, "trust_remote_code": trust_remote_code}
    if device_map is not None:
        kwargs["device_map"] = device_map
    if attn_implementation is not None or backend == "transformer_lens":
        # the bridge runs eager attention; match it so both backends agree
        kwargs["attn_implementation"] = attn_implementation or "eager"
    try:
        tokenizer = AutoTokenizer.from_pretrained(source, trust_remote_code=trust_remote_code)
        hf = AutoModelForCausalLM.from_pretrained(source, **kwargs)
    except OSError as e:
        raise InterpError(
            f"could not load {name_or_path!r}: {e}\nOffline, use a packaged model "
            f"({', '.join(PACKAGED)}), a local folder or a .gguf file."
        ) from e
    if device is not None:
        hf = hf.to(device)
    if backend == "transformer_lens":
        from .tl_backend import TLModel

        return TLModel.from_hf(hf, tokenizer, name, source)
    return Model(hf, tokenizer, name, source)
