"""Token positions to read or edit, resolved per prompt.

Accepted specs:

- ``"last"``: the last prompt token; ``"all"``: every prompt token.
- ``"instruction_last"``: the last token of the user's text;
  ``"instruction"``: all tokens of the user's text;
  ``"post_instruction"``: the chat-template tokens after the user's text
  (for Qwen: ``<|im_end|>\\n<|im_start|>assistant\\n``).
- an int (negative counts from the end), a slice, ``range(-5, 0)`` or a
  string such as ``"-5:"`` or ``"-1"``.
- a flat list of ints (or a 1-D integer tensor/array): the same token indices
  in every prompt.
- explicit per-prompt index lists ``[[0, 3], [2, 4]]``, or boolean masks, one
  per prompt over that prompt's tokens: lists of bools, bool tensors or numpy
  arrays, or one 2-D bool tensor/array [prompts, tokens] whose rows may be
  longer than a prompt only if the extra entries are False.

Anything else (``True``, a float, a float layer of indices, a mask of the
wrong length) is an ``InterpError``: a spec is never guessed at.

Example:
    >>> resolve_positions("-2:", lengths=[4, 6], spans=[None, None])
    [[2, 3], [4, 5]]
    >>> resolve_positions([[True, False, True]], lengths=[3], spans=[None])
    [[0, 2]]
"""
from __future__ import annotations

import hashlib
import json
import numbers
import re
from typing import Sequence, Union

import torch

from .errors import InterpError

PositionSpec = Union[str, int, slice, range, Sequence[Sequence[int]], torch.Tensor, Sequence[torch.Tensor]]
NAMED = ("last", "all", "instruction", "instruction_last", "post_instruction")
_SLICE_RE = re.compile(r"^(-?\d*):(-?\d*)$")
_INT_RE = re.compile(r"^-?\d+$")
_HELP = (f"use one of {', '.join(NAMED)}, an int, a slice string like '-5:', a list of ints shared by every "
         f"prompt, per-prompt index lists, or one boolean mask per prompt")


def _is_int(x) -> bool:
    """An integer that is not a bool (``True`` is an int in Python but never a position)."""
    if isinstance(x, (bool,)) or type(x).__name__ == "bool_":
        return False
    if isinstance(x, torch.Tensor):
        return x.dim() == 0 and not x.dtype.is_floating_point and x.dtype != torch.bool and not x.is_complex()
    return isinstance(x, numbers.Integral)


def _is_bool(x) -> bool:
    if isinstance(x, torch.Tensor):
        return x.dim() == 0 and x.dtype == torch.bool
    return isinstance(x, bool) or type(x).__name__ == "bool_"


def _as_tensor(spec):
    """numpy arrays become tensors (so their dtype decides mask vs indices); other specs pass through."""
    if type(spec).__module__ == "numpy" and hasattr(spec, "dtype"):
        if spec.dtype.kind not in "biu":
            raise InterpError(f"positions array has dtype {spec.dtype}; use integer indices or a boolean mask")
        return torch.as_tensor(spec)
    return spec


def _check(idx, n: int, i: int) -> list[int]:
    out = []
    for k in idx:
        if not _is_int(k):
            raise InterpError(f"position {k!r} for prompt {i} is not an integer token index; {_HELP}")
        k = int(k)
        if not -n <= k < n:
            raise InterpError(f"position {k} is out of range for prompt {i}, which has {n} tokens")
        out.append(k % n)
    return out


def _mask(p: torch.Tensor, n: int, i: int) -> list[int]:
    p = p.flatten()
    if p.numel() < n:
        raise InterpError(f"mask for prompt {i} has {p.numel()} entries but the prompt has {n} tokens; "
                          f"give one entry per token of that prompt")
    if p.numel() > n and bool(p[n:].any()):
        raise InterpError(f"mask for prompt {i} selects token {int(torch.nonzero(p[n:])[0]) + n}, but the "
                          f"prompt has only {n} tokens")
    return torch.nonzero(p[:n]).flatten().tolist()


def _as_slice(spec: str) -> slice | int:
    s = spec.strip()
    if _INT_RE.match(s):
        return int(s)
    m = _SLICE_RE.match(s)
    if not m:
        raise InterpError(f"unknown position spec {spec!r}; {_HELP}")
    a, b = m.groups()
    return slice(int(a) if a else None, int(b) if b else None)


def check_spec(spec: PositionSpec) -> PositionSpec:
    """Check a spec's syntax without any prompt (e.g. a command-line value before a model loads).

    Returns the spec with integer strings turned into ints.

    Example:
        >>> check_spec("-3")
        -3
    """
    if isinstance(spec, str) and spec not in NAMED:
        return _as_slice(spec)
    if spec is None or _is_bool(spec) or isinstance(spec, (float, complex, dict, set, bytes)):
        raise InterpError(f"positions={spec!r} is not a position spec; {_HELP}")
    return spec


def resolve_positions(spec: PositionSpec, lengths: Sequence[int],
                      spans: Sequence[tuple[int, int] | None]) -> list[list[int]]:
    """Per-prompt non-negative token indices (unpadded coordinates).

    ``spans[i]`` is the (start, end) token range of prompt i's user text, or
    None when the prompt was not chat-formatted.
    """
    n_prompts = len(lengths)
    spec = _as_tensor(check_spec(spec))
    if isinstance(spec, str):
        out = []
        for i, (n, span) in enumerate(zip(lengths, spans)):
            if spec == "last":
                out.append([n - 1])
            elif spec == "all":
                out.append(list(range(n)))
            else:
                if span is None:
                    raise InterpError(f"positions={spec!r} needs chat-formatted prompts (chat=True and a model "
                                      f"with a chat template); prompt {i} has no instruction span")
                start, end = span
                if spec == "instruction_last":
                    out.append([end - 1])
                elif spec == "instruction":
                    out.append(list(range(start, end)))
                else:  # post_instruction
                    if end >= n:
                        raise InterpError(f"prompt {i}: the chat template adds no tokens after the instruction, "
                                          f"so post_instruction is empty")
                    out.append(list(range(end, n)))
        return out
    if _is_int(spec):
        return [_check([spec], n, i) for i, n in enumerate(lengths)]
    if isinstance(spec, slice):
        for part in (spec.start, spec.stop, spec.step):
            if part is not None and not _is_int(part):
                raise InterpError(f"slice {spec} has a non-integer bound {part!r}; {_HELP}")
        if spec.step == 0:
            raise InterpError("a position slice cannot have step 0")
        return [list(range(n))[spec] for n in lengths]
    if isinstance(spec, range):
        return [_check(list(spec), n, i) for i, n in enumerate(lengths)]
    if isinstance(spec, torch.Tensor):
        if spec.dtype.is_floating_point or spec.is_complex():
            raise InterpError(f"positions tensor has dtype {spec.dtype}; use integer indices or a boolean mask")
        if spec.dim() == 1 and spec.dtype != torch.bool:  # shared indices
            return [_check(spec.tolist(), n, i) for i, n in enumerate(lengths)]
        if spec.dim() != 2:
            raise InterpError(f"positions tensor must be 1-D (shared indices) or 2-D [prompts, ...], "
                              f"got shape {tuple(spec.shape)}")
        spec = list(spec)
    if isinstance(spec, Sequence) and not isinstance(spec, str):
        spec = [_as_tensor(p) for p in spec]
        if spec and all(_is_int(p) for p in spec):  # a flat list of ints: the same indices in every prompt
            return [_check(spec, n, i) for i, n in enumerate(lengths)]
        if spec and all(_is_bool(p) for p in spec):
            raise InterpError(f"positions is a flat list of {len(spec)} booleans; give one mask per prompt "
                              f"([[...], [...]]) or a 2-D bool tensor [prompts, tokens]")
        if len(spec) != n_prompts:
            raise InterpError(f"got positions for {len(spec)} prompts but there are {n_prompts} prompts")
        out = []
        for i, (p, n) in enumerate(zip(spec, lengths)):
            if isinstance(p, torch.Tensor):
                if p.dtype == torch.bool:
                    out.append(_mask(p, n, i))
                    continue
                if p.dtype.is_floating_point or p.is_complex() or p.dim() > 1:
                    raise InterpError(f"positions for prompt {i}: a tensor of dtype {p.dtype} and shape "
                                      f"{tuple(p.shape)}; use a 1-D integer index tensor or a bool mask")
                p = p.flatten().tolist()
            elif _is_int(p) or _is_bool(p) or isinstance(p, (str, bytes)) or not isinstance(p, Sequence):
                raise InterpError(f"positions for prompt {i} is {p!r}; per-prompt positions are one index list "
                                  f"or mask per prompt; {_HELP}")
            p = list(p)
            if p and all(_is_bool(k) for k in p):
                out.append(_mask(torch.tensor([bool(k) for k in p]), n, i))
            elif any(_is_bool(k) for k in p):
                raise InterpError(f"positions for prompt {i} mix booleans and indices: {p[:8]!r}")
            else:
                out.append(_check(p, n, i))
        return out
    raise InterpError(f"unknown position spec of type {type(spec).__name__}; {_HELP}")


def is_per_prompt(spec: PositionSpec) -> bool:
    """Whether a spec holds one entry per prompt (so a subset of prompts needs the matching subset)."""
    spec = _as_tensor(spec)
    if isinstance(spec, (str, slice, range)) or _is_int(spec):
        return False
    if isinstance(spec, torch.Tensor):
        return not (spec.dim() == 1 and spec.dtype != torch.bool)
    return not (isinstance(spec, Sequence) and spec and all(_is_int(_as_tensor(p)) for p in spec))


def pack(per_prompt: list[list[int]]) -> tuple[torch.Tensor, torch.Tensor]:
    """Pad ragged index lists to [n, P]; return (indices, valid mask)."""
    if any(len(p) == 0 for p in per_prompt):
        empty = [i for i, p in enumerate(per_prompt) if not p]
        raise InterpError(f"no positions selected for prompts {empty[:10]}")
    width = max(len(p) for p in per_prompt)
    idx = torch.zeros(len(per_prompt), width, dtype=torch.long)
    mask = torch.zeros(len(per_prompt), width, dtype=torch.bool)
    for i, p in enumerate(per_prompt):
        idx[i, : len(p)] = torch.tensor(p, dtype=torch.long)
        mask[i, : len(p)] = True
    return idx, mask


def _plain(p):
    """A JSON-able copy of one explicit spec element (tensors and arrays become lists)."""
    p = _as_tensor(p)
    if isinstance(p, torch.Tensor):
        return {"mask": p.flatten().tolist()} if p.dtype == torch.bool else p.tolist()
    if isinstance(p, (list, tuple)):
        return [_plain(k) for k in p]
    if _is_bool(p):
        return bool(p)
    return int(p) if _is_int(p) else repr(p)


def describe(spec: PositionSpec) -> str:
    """A short JSON-friendly description of a position spec (for metadata and store identity).

    Explicit indices and masks are summarised by a hash of their values, so two
    different explicit specs never describe the same.

    Example:
        >>> describe("last"), describe([[0, 1]]) == describe([[0, 1]]), describe([[0, 1]]) == describe([[0, 2]])
        ('last', True, False)
    """
    if isinstance(spec, str) or _is_int(spec):
        return str(int(spec)) if _is_int(spec) else spec
    if isinstance(spec, slice):
        step = "" if spec.step in (None, 1) else f":{spec.step}"
        return f"{'' if spec.start is None else spec.start}:{'' if spec.stop is None else spec.stop}{step}"
    if isinstance(spec, range):
        return f"range({spec.start},{spec.stop},{spec.step})"
    spec = _as_tensor(spec)
    if isinstance(spec, torch.Tensor):
        values = _plain(spec) if spec.dtype != torch.bool else [_plain(row) for row in spec]
    elif isinstance(spec, Sequence):
        values = [_plain(p) for p in spec]
    else:
        return f"unknown:{type(spec).__name__}"
    digest = hashlib.sha256(json.dumps(values, separators=(",", ":")).encode()).hexdigest()[:16]
    return f"explicit:{digest}"
