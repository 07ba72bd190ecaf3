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
from .packaged import DEFAULT_MODEL, PACKAGED, convert_gguf, hf_dir, interp_home, model_lock, sha256_file


def resolve_source(name_or_path: str, progress: bool = True) -> tuple[str, str]:
    """(display name, transformers-loadable path or hub id) for any accepted source."""
    if not isinstance(name_or_path, (str, Path)) or not str(name_or_path).strip():
        raise InterpError(f"a model is a packaged name ({', '.join(PACKAGED)}), a .gguf file, a model folder or "
                          f"a hub id; got {name_or_path!r}")
    name_or_path = str(name_or_path)
    if name_or_path in PACKAGED:
        return name_or_path, str(hf_dir(name_or_path, progress=progress))
    path = Path(name_or_path).expanduser()
    if path.suffix == ".gguf":
        if not path.is_file():
            raise InterpError(f"GGUF file {path} does not exist")
        digest = sha256_file(path)
        key = f"gguf-{digest[:16]}"
        out = interp_home() / "models" / key / "hf"
        if not (out / "interp_source.json").exists():
            with model_lock(key):
                if not (out / "interp_source.json").exists():
                    convert_gguf(path, out, source={"gguf": str(path), "gguf_sha256": digest})
        return path.stem, str(out)
    if path.is_dir():
        if not (path / "config.json").exists():
            raise InterpError(f"{path} is a folder without config.json; is it a transformers model folder?")
        return path.name, str(path)
    if path.exists():
        raise InterpError(f"{path} is neither a model folder nor a .gguf file")
    if name_or_path.startswith((".", "/", "~")) or name_or_path.count("/") > 1 or "\\" in name_or_path:
        raise InterpError(f"{path} does not exist (and is not a packaged model name or a hub id such as "
                          f"'Qwen/Qwen2.5-0.5B-Instruct'); packaged models: {', '.join(PACKAGED)}")
    return name_or_path, name_or_path  # a hub id


def peek_n_layers(name_or_path: str) -> int | None:
    """The model's layer count without loading it (packaged models and local folders), else None.

    Example:
        >>> peek_n_layers("smollm2-135m-instruct")
        30
    """
    import json

    if name_or_path in PACKAGED:
        return PACKAGED[name_or_path].n_layers
    cfg = Path(str(name_or_path)).expanduser() / "config.json"
    try:
        data = json.loads(cfg.read_text())
    except (OSError, ValueError):
        return None
    data = data.get("text_config", data) if isinstance(data, dict) else {}
    n = data.get("num_hidden_layers") or data.get("n_layer")
    return n if isinstance(n, int) and n > 0 else None


def precheck_sites(name_or_path: str, sites) -> list:
    """Parse command-line sites before a model loads: against the layer count when it is known
    (``peek_n_layers``), else by spelling only. Returns the parsed sites (``Site``, or a bare name).

    Example:
        >>> precheck_sites("smollm2-135m-instruct", ["resid_post.3", "mlp_out"])
        [Site(name='resid_post', layer=3), 'mlp_out']
    """
    from .sites import LAYER_SITE_NAMES, parse_site

    n_layers = peek_n_layers(name_or_path)
    items = [sites] if isinstance(sites, str) else list(sites)
    if not items:
        raise InterpError("no sites given")
    return [s if isinstance(s, str) and s in LAYER_SITE_NAMES else parse_site(s, n_layers) for s in items]


def _damaged_file_error(e: BaseException) -> bool:
    """Whether a load failed on a file's content (so rebuilding a cached conversion can fix it)."""
    import json

    names = {"SafetensorError", "HeaderTooLarge", "EOFError", "UnicodeDecodeError"}
    return isinstance(e, (OSError, json.JSONDecodeError, EOFError)) or type(e).__name__ in names


def _check_device(device) -> None:
    if device is None:
        return
    try:
        torch.device(device)
    except (RuntimeError, TypeError) as e:
        raise InterpError(f"device {device!r} is not a torch device ({e}); use 'cpu', 'cuda', 'cuda:0' or 'mps'") \
            from None


DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def native_bf16(device: str | torch.device | None = None) -> bool:
    """Whether ``device`` computes bfloat16 natively (a CUDA GPU with bf16, or a CPU with AVX-512 BF16 or AMX).

    Elsewhere bfloat16 is emulated and slower than float32.
    """
    dev = torch.device(device) if device is not None else torch.device("cpu")
    if dev.type == "cuda":
        return torch.cuda.is_available() and torch.cuda.is_bf16_supported()
    if dev.type != "cpu":
        return False
    try:
        flags = Path("/proc/cpuinfo").read_text(errors="replace")
    except OSError:
        return False
    return any(f in flags.split() for f in ("avx512_bf16", "amx_bf16"))


def resolve_dtype(name: str | torch.dtype, device: str | torch.device | None = None) -> torch.dtype:
    """A torch dtype from a name; ``"auto"`` is bfloat16 where the device computes it natively, else float32.

    Example:
        >>> resolve_dtype("float32")
        torch.float32
    """
    if isinstance(name, torch.dtype):
        return name
    if name == "auto":
        return torch.bfloat16 if native_bf16(device) else torch.float32
    if name not in DTYPES:
        raise InterpError(f"dtype {name!r} is not one of auto, {', '.join(DTYPES)}")
    return DTYPES[name]


def load_model(name_or_path: str = DEFAULT_MODEL, *, backend: str = "hf", dtype: torch.dtype = torch.float32,
               device: str | torch.device | None = None, device_map=None, max_memory: dict | None = None,
               offload_folder: str | Path | None = None, trust_remote_code: bool = False,
               attn_implementation: str | None = None, progress: bool = True, remote: bool | str = False) -> Model:
    """Load a model for capture and intervention.

    ``name_or_path`` is a packaged model name (see ``interp models``), a
    ``.gguf`` file, a local transformers folder or a Hugging Face hub id.
    ``dtype``, ``device`` and ``device_map`` pass through to transformers
    (``device_map="auto"`` for multi-GPU). A model bigger than one device is
    split by accelerate: ``device_map`` ("auto", "sequential" or an explicit
    ``{module: device | "cpu" | "disk"}``), ``max_memory`` (``{0: "20GiB",
    "cpu": "60GiB"}``; what does not fit goes to disk) and ``offload_folder``
    (where disk-offloaded weights go, and where ``orthogonalize`` writes edited
    ones); see docs/scale.md. ``backend="transformer_lens"``
    wraps the same weights in a TransformerLens ``TransformerBridge``;
    ``backend="nnsight"`` runs every forward as an nnsight trace, with
    ``remote=True`` on an NDIF server (a hub id; API key and network needed,
    see ``interp.nnsight_backend``) or ``remote="local"`` as nnsight's dry run.
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if backend not in ("hf", "transformer_lens", "nnsight"):
        raise InterpError(f"unknown backend {backend!r}; use 'hf', 'transformer_lens' or 'nnsight'")
    if remote not in (False, True, "local") or (remote and backend != "nnsight"):
        raise InterpError(f"remote={remote!r}: remote execution is remote=True (NDIF) or 'local' (nnsight's dry run), "
                          f"with backend='nnsight'")
    if remote is True:
        from .nnsight_backend import load_remote

        if name_or_path in PACKAGED or Path(str(name_or_path)).expanduser().exists():
            raise InterpError(f"{name_or_path!r} is local; remote execution runs a Hugging Face hub model that NDIF "
                              f"hosts: pass its hub id (e.g. 'meta-llama/Llama-3.1-8B-Instruct')")
        return load_remote(name_or_path, trust_remote_code=trust_remote_code)
    if device is not None and device_map is not None:
        raise InterpError("pass either device or device_map, not both")
    _check_device(device)
    if not isinstance(dtype, torch.dtype) or not dtype.is_floating_point:
        raise InterpError(f"dtype must be a floating-point torch dtype (torch.float32, torch.bfloat16, "
                          f"torch.float16), got {dtype!r}")
    name, source = resolve_source(name_or_path, progress=progress)
    kwargs = {"dtype": dtype, "trust_remote_code": trust_remote_code}
    if device_map is not None:
        kwargs["device_map"] = device_map
    elif max_memory is not None or offload_folder is not None:
        raise InterpError("max_memory and offload_folder split a model across devices: pass device_map='auto' "
                          "(or an explicit device map) with them")
    if max_memory is not None:
        if not isinstance(max_memory, dict) or not max_memory:
            raise InterpError(f"max_memory is a dict such as {{0: '20GiB', 'cpu': '60GiB'}}, got {max_memory!r}")
        kwargs["max_memory"] = max_memory
    if offload_folder is not None:
        Path(offload_folder).mkdir(parents=True, exist_ok=True)
        kwargs["offload_folder"] = str(offload_folder)
    if attn_implementation is not None or backend == "transformer_lens":
        # the bridge runs eager attention; match it so both backends agree
        kwargs["attn_implementation"] = attn_implementation or "eager"
    def read(src: str):
        tokenizer = AutoTokenizer.from_pretrained(src, trust_remote_code=trust_remote_code)
        return tokenizer, AutoModelForCausalLM.from_pretrained(src, **kwargs)

    out_of_memory = (MemoryError, getattr(torch, "OutOfMemoryError", MemoryError))
    try:
        try:
            tokenizer, hf = read(source)
        except out_of_memory:
            raise
        except Exception as e:
            if name_or_path not in PACKAGED or not _damaged_file_error(e):
                raise
            # our own cached conversion is damaged (a truncated or edited file): make it again, once
            source = str(hf_dir(name_or_path, progress=progress, rebuild=True))
            tokenizer, hf = read(source)
    except OSError as e:
        raise InterpError(
            f"could not load {name_or_path!r}: {e}\nOffline, use a packaged model "
            f"({', '.join(PACKAGED)}), a local folder or a .gguf file."
        ) from e
    except (InterpError, *out_of_memory):
        raise
    except Exception as e:  # a damaged folder: safetensors, json, tokenizers and config errors of many kinds
        raise InterpError(f"could not load {name_or_path!r} from {source}: {type(e).__name__}: {str(e)[:300]}. "
                          f"The folder looks damaged or incomplete (config.json, *.safetensors, tokenizer files); "
                          f"copy or convert it again") from e
    if device is not None:
        try:
            hf = hf.to(device)
        except (RuntimeError, AssertionError) as e:  # e.g. "cuda" on a machine without CUDA
            raise InterpError(f"cannot move {name} to device {device!r}: {e}") from e
    if backend == "transformer_lens":
        from .tl_backend import TLModel

        return TLModel.from_hf(hf, tokenizer, name, source)
    if backend == "nnsight":
        from .nnsight_backend import NNsightModel

        return NNsightModel.from_hf(hf, tokenizer, name, source, remote=remote)
    return Model(hf, tokenizer, name, source)
