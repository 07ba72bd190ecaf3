"""Token positions to read or edit, resolved per prompt.

Accepted specs:

- ``"last"``: the last prompt token; ``"all"``: every prompt token.
- ``"instruction_last"``: the last token of the user's text;
  ``"instruction"``: all tokens of the user's text;
  ``"post_instruction"``: the chat-template tokens after the user's text
  (for Qwen: ``<|im_end|>\\n<|im_start|>assistant\\n``).
- an int (negative counts from the end), a slice, ``range(-5, 0)`` or a
  string such as ``"-5:"``.
- explicit per-prompt index lists ``[[0, 3], [2, 4]]``, or boolean masks
  (one per prompt, over that prompt's tokens).

Example:
    >>> resolve_positions("-2:", lengths=[4, 6], spans=[None, None])
    [[2, 3], [4, 5]]
"""
from __future__ import annotations

import re
from typing import Sequence, Union

import torch

from .errors import InterpError

PositionSpec = Union[str, int, slice, range, Sequence[Sequence[int]], torch.Tensor, Sequence[torch.Tensor]]
NAMED = ("last", "all", "instruction", "instruction_last", "post_instruction")
_SLICE_RE = re.compile(r"^(-?\d*):(-?\d*)$")


def _check(idx: list[int], n: int, i: int) -> list[int]:
    out = []
    for k in idx:
        k = int(k)
        if not -n <= k < n:
            raise InterpError(f"position {k} is out of range for prompt {i}, which has {n} tokens")
        out.append(k % n)
    return out


def _as_slice(spec: str) -> slice:
    m = _SLICE_RE.match(spec.strip())
    if not m:
        raise InterpError(f"unknown position spec {spec!r}; use one of {', '.join(NAMED)}, an int, "
                          f"a slice string like '-5:', explicit per-prompt indices, or masks")
    a, b = m.groups()
    return slice(int(a) if a else None, int(b) if b else None)


def resolve_positions(spec: PositionSpec, lengths: Sequence[int],
                      spans: Sequence[tuple[int, int] | None]) -> list[list[int]]:
    """Per-prompt non-negative token indices (unpadded coordinates).

    ``spans[i]`` is the (start, end) token range of prompt i's user text, or
    None when the prompt was not chat-formatted.
    """
    n_prompts = len(lengths)
    if isinstance(spec, str) and spec not in NAMED:
        spec = _as_slice(spec)
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
    if isinstance(spec, int):
        return [_check([spec], n, i) for i, n in enumerate(lengths)]
    if isinstance(spec, slice):
        return [list(range(n))[spec] for n in lengths]
    if isinstance(spec, range):
        return [_check(list(spec), n, i) for i, n in enumerate(lengths)]
    if isinstance(spec, torch.Tensor) and spec.dtype == torch.bool and spec.dim() == 2:
        spec = list(spec)
    if isinstance(spec, Sequence) or isinstance(spec, torch.Tensor):
        if len(spec) != n_prompts:
            raise InterpError(f"got positions for {len(spec)} prompts but there are {n_prompts} prompts")
        out = []
        for i, (p, n) in enumerate(zip(spec, lengths)):
            if isinstance(p, torch.Tensor) and p.dtype == torch.bool:
                if p.numel() != n:
                    raise InterpError(f"mask for prompt {i} has {p.numel()} entries but the prompt has {n} tokens")
                out.append(torch.nonzero(p.flatten()).flatten().tolist())
            else:
                out.append(_check(list(p.tolist() if isinstance(p, torch.Tensor) else p), n, i))
        return out
    raise InterpError(f"unknown position spec of type {type(spec).__name__}")


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


def describe(spec: PositionSpec) -> str:
    """A short JSON-friendly description of a position spec (for metadata)."""
    if isinstance(spec, (str, int)):
        return str(spec)
    if isinstance(spec, slice):
        return f"{'' if spec.start is None else spec.start}:{'' if spec.stop is None else spec.stop}"
    if isinstance(spec, range):
        return f"range({spec.start},{spec.stop},{spec.step})"
    return "explicit"
