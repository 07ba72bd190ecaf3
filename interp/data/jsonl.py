"""Reading JSON-lines files: one object per line, with errors that name the file and the line.

Every JSONL reader in interp (prompt files, steering pairs, coreference texts, judge labels) goes
through ``iter_jsonl`` so a malformed line reads the same everywhere; each caller then checks its
own fields.

Example:
    >>> list(iter_jsonl("x.jsonl", text='{"a": 1}\\n\\n{"a": 2}\\n'))
    [(1, {'a': 1}), (3, {'a': 2})]
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Iterator

from ..errors import InterpError

__all__ = ["iter_jsonl"]


def iter_jsonl(path: str | Path, text: str | None = None, example: str = '{"prompt": "..."}'
               ) -> Iterator[tuple[int, dict]]:
    """Yield ``(line number, object)`` for each non-blank line of a JSON-lines file.

    Line numbers count from 1 and include blank lines, so they match an editor. A UTF-8 byte-order
    mark at the start is dropped (Windows editors write one). ``text`` is the file's content when the
    caller has already read it (``path`` then only names the file in messages). A line that is not
    valid JSON, or is valid JSON but not an object, raises ``InterpError`` naming the file, the line
    and ``example``, a valid line to copy.

    Example:
        >>> rows = iter_jsonl("p.jsonl", text='{"prompt": "Hi"}\\n[1]\\n', example='{"prompt": "..."}')
        >>> next(rows)
        (1, {'prompt': 'Hi'})
        >>> try:
        ...     next(rows)
        ... except InterpError as e:
        ...     print(str(e).split(";")[0])
        p.jsonl line 2 is a JSON list, not an object
    """
    path = Path(path)
    if text is None:
        if not path.is_file():
            raise InterpError(f"{path} does not exist or is not a file; give a JSON-lines file with one object "
                              f"such as {example} per line")
        data = path.read_bytes()
        try:
            text = data.decode("utf-8-sig")
        except UnicodeDecodeError as e:
            line = data[:e.start].count(b"\n") + 1
            raise InterpError(f"{path} is not UTF-8 (byte {data[e.start]:#04x} on line {line}); re-save it as "
                              f"UTF-8, e.g. iconv -f latin1 -t utf-8") from None
    text = text.removeprefix("\ufeff")
    for n, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except ValueError as e:  # JSONDecodeError; also a number too long to convert
            raise InterpError(f"{path} line {n} is not valid JSON ({getattr(e, 'msg', e)}); each line must be one "
                              f"object such as {example}") from None
        if not isinstance(row, dict):
            kind = {list: "list", str: "string", bool: "boolean", type(None): "null"}.get(type(row), "number")
            raise InterpError(f"{path} line {n} is a JSON {kind}, not an object; each line must be one object "
                              f"such as {example}")
        yield n, row
