"""interp.data.jsonl.iter_jsonl: the one JSON-lines loop every reader uses."""
import pytest

from interp.data.jsonl import iter_jsonl
from interp.errors import InterpError


def test_blank_lines_skipped_and_line_numbers_match_the_file(tmp_path):
    f = tmp_path / "rows.jsonl"
    f.write_text('{"a": 1}\n\n   \n{"a": 2, "b": "x"}\r\n', encoding="utf-8")
    assert list(iter_jsonl(f)) == [(1, {"a": 1}), (4, {"a": 2, "b": "x"})]
    assert list(iter_jsonl(f, text="\n\n")) == []  # given text wins over the file


def test_utf8_bom_at_start_is_dropped(tmp_path):
    f = tmp_path / "bom.jsonl"
    f.write_bytes(b'\xef\xbb\xbf{"prompt": "caf\xc3\xa9"}\n')
    assert list(iter_jsonl(f)) == [(1, {"prompt": "café"})]
    assert list(iter_jsonl(f, text='\ufeff{"prompt": "x"}')) == [(1, {"prompt": "x"})]


@pytest.mark.parametrize("line,fragment", [
    ('{"prompt": "unterminated', "line 2 is not valid JSON (Unterminated string"),
    ("not json at all", "line 2 is not valid JSON (Expecting value)"),
    ('["a", "list"]', "line 2 is a JSON list, not an object"),
    ('"a string"', "line 2 is a JSON string, not an object"),
    ("42", "line 2 is a JSON number, not an object"),
    ("null", "line 2 is a JSON null, not an object"),
])
def test_bad_line_names_file_line_problem_and_an_example(tmp_path, line, fragment):
    f = tmp_path / "bad.jsonl"
    f.write_text('{"ok": true}\n' + line + "\n")
    rows = iter_jsonl(f, example='{"prompt": "..."}')
    assert next(rows) == (1, {"ok": True})  # rows before the bad line still arrive
    with pytest.raises(InterpError) as e:
        next(rows)
    msg = str(e.value)
    assert msg.startswith(f"{f} line 2 ") and fragment in msg, msg
    assert msg.endswith('each line must be one object such as {"prompt": "..."}'), msg


def test_unreadable_files_are_clear_errors(tmp_path):
    with pytest.raises(InterpError, match="does not exist"):
        list(iter_jsonl(tmp_path / "missing.jsonl"))
    f = tmp_path / "latin1.jsonl"
    f.write_bytes('{"a": 1}\n{"a": "crème"}\n'.encode("latin-1"))
    with pytest.raises(InterpError, match="not UTF-8 .* on line 2"):
        list(iter_jsonl(f))
