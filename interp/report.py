"""The one report writer: ``report.json`` + ``report.html`` (+ artifacts) from an experiment's ``Result``.

Experiments build a ``Result`` and never open files; ``write_report`` writes them all. The HTML opens
with what a reader came for (the headline numbers beside their targets and the paper's, each with the
split it was computed on, and the conclusion), then the figures and tables, then how to reproduce the
run (command line, config, seed, versions, model fingerprint, wall time per stage).

Example:
    >>> import tempfile
    >>> r = Result("demo", {"answer": 42}, headlines=[Headline("answer", 42, "test (n=8)", target="> 40")])
    >>> path = write_report(r, tempfile.mkdtemp())
    >>> path.name
    'report.json'
"""
from __future__ import annotations

import dataclasses
import html
import json
import math
import platform
import sys
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping

from .errors import InterpError


@dataclass
class Headline:
    """One number a reader came for: its value, the split it was computed on, the target and the paper's."""

    name: str
    value: Any
    split: str
    target: str | None = None
    paper: str | None = None
    note: str = ""
    met: bool | None = None  # whether the target is met, when the experiment can tell


@dataclass
class Result:
    """What an experiment returns: the JSON report, figures, headline numbers and files to write.

    ``artifacts`` maps a file name to a function that writes it given its path (a direction, a probe,
    a model folder); ``tables`` maps a title to rows (dicts) shown in the HTML.
    """

    experiment: str
    report: dict
    figures: dict = field(default_factory=dict)
    headlines: list[Headline] = field(default_factory=list)
    conclusion: str = ""
    config: Any = None
    timing: dict[str, float] = field(default_factory=dict)
    artifacts: dict[str, Callable[[Path], Any]] = field(default_factory=dict)
    tables: dict[str, list[dict]] = field(default_factory=dict)
    title: str = ""
    protocol: dict | None = None

    def __getitem__(self, key: str):
        """``result["chosen"]`` reads the JSON report, as older code did with ``result.report[...]``."""
        return self.report[key]


class Stopwatch:
    """Wall time per named stage.

    Example:
        >>> sw = Stopwatch()
        >>> with sw("fit"):
        ...     pass
        >>> list(sw.seconds)
        ['fit']
    """

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}
        self._start = time.time()

    @contextmanager
    def __call__(self, stage: str) -> Iterator[None]:
        t0 = time.time()
        try:
            yield
        finally:
            self.seconds[stage] = round(self.seconds.get(stage, 0.0) + time.time() - t0, 2)

    @property
    def total(self) -> float:
        return round(time.time() - self._start, 2)


def _jsonable(x: Any) -> Any:
    """Plain JSON: NaN and inf become null, tensors and arrays lists, dataclasses dicts."""
    if dataclasses.is_dataclass(x) and not isinstance(x, type):
        return _jsonable(dataclasses.asdict(x))
    if isinstance(x, Mapping):
        return {str(k): _jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple, set)):
        return [_jsonable(v) for v in x]
    if hasattr(x, "tolist") and callable(x.tolist):  # torch / numpy
        return _jsonable(x.tolist())
    if isinstance(x, float):
        return None if math.isnan(x) or math.isinf(x) else x
    if isinstance(x, (str, int, bool)) or x is None:
        return x
    if isinstance(x, Path):
        return str(x)
    return repr(x)


def versions() -> dict[str, str]:
    """Versions of interp and the libraries a number depends on."""
    from . import __version__

    out = {"interp": __version__, "python": platform.python_version()}
    for name in ("torch", "transformers", "sklearn", "sae_lens", "transformer_lens"):
        mod = sys.modules.get(name)
        if mod is not None:
            out[name] = getattr(mod, "__version__", "?")
    return out


def reproduction(result: Result, model=None, command: list[str] | None = None) -> dict:
    """How to make this report again: command line, config, seed, versions, model and wall time."""
    cfg = _jsonable(result.config) if result.config is not None else result.report.get("config")
    seed = cfg.get("seed") if isinstance(cfg, dict) else None
    argv = command if command is not None else [Path(sys.argv[0]).name] + sys.argv[1:]
    out = {"command": " ".join(argv), "config": cfg, "seed": seed, "versions": versions(),
           "timing_s": dict(result.timing)}
    if model is not None:
        out["model"] = model.describe()
    elif isinstance(result.report.get("model"), dict):
        out["model"] = result.report["model"]
    return out


def summary(result: Result) -> list[dict]:
    return [_jsonable(dataclasses.asdict(h)) for h in result.headlines]


def write_report(result: Result, out: str | Path, model=None, command: list[str] | None = None) -> Path:
    """Write ``report.json``, ``report.html`` and the result's artifacts into ``out``; return the JSON path.

    ``report.json`` is ``result.report`` plus ``summary`` (the headlines), ``protocol`` (when the
    experiment has one), ``reproduction`` and ``timing``.
    """
    out = Path(out)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise InterpError(f"cannot create the report folder {out}: {e.strerror}; pass a writable --out") from e
    report = dict(result.report)
    report["summary"] = summary(result)
    if result.protocol is not None:
        report["protocol"] = result.protocol
    report["reproduction"] = reproduction(result, model, command)
    report.setdefault("timing", dict(result.timing))
    for name, write in result.artifacts.items():
        write(out / name)
    path = out / "report.json"
    tmp = out / "report.json.tmp"
    tmp.write_text(json.dumps(_jsonable(report), indent=1), encoding="utf-8")
    tmp.replace(path)  # atomic: a reader never sees half a report
    (out / "report.html").write_text(render_html(result, report), encoding="utf-8")
    return path


# ------------------------------------------------------------------ HTML

_CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;max-width:1100px;margin:2em auto;padding:0 1em;
color:#222;line-height:1.45}
h1{margin-bottom:.2em} h2{margin-top:1.6em;border-bottom:1px solid #ddd;padding-bottom:.2em}
table{border-collapse:collapse;margin:.6em 0;font-size:.92em} td,th{border:1px solid #ccc;padding:.3em .6em;
vertical-align:top;text-align:left} th{background:#f4f4f4}
td.num{text-align:right;font-variant-numeric:tabular-nums} .met{color:#176c2f;font-weight:600}
.missed{color:#a11;font-weight:600} .conclusion{background:#f6f8fa;border-left:4px solid #4a7;padding:.6em 1em}
pre{background:#f6f8fa;padding:.6em;overflow-x:auto;font-size:.85em} details{margin:.5em 0}
"""


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        if math.isnan(v):
            return "–"
        return f"{v:.3f}" if abs(v) < 1000 else f"{v:.4g}"
    if v is None:
        return "–"
    return html.escape(str(v))


def _table(rows: list[dict], numeric_cols: bool = True, raw_cols: tuple[str, ...] = ()) -> str:
    if not rows:
        return "<p>(none)</p>"
    cols = list(dict.fromkeys(k for r in rows for k in r))
    head = "".join(f"<th>{html.escape(str(c))}</th>" for c in cols)
    body = []
    for r in rows:
        cells = []
        for c in cols:
            v = r.get(c)
            cls = " class='num'" if numeric_cols and isinstance(v, (int, float)) and not isinstance(v, bool) else ""
            cells.append(f"<td{cls}>{v if c in raw_cols else _fmt(v)}</td>")
        body.append("<tr>" + "".join(cells) + "</tr>")
    return f"<table><tr>{head}</tr>{''.join(body)}</table>"


def _headline_rows(result: Result) -> list[dict]:
    rows = []
    for h in result.headlines:
        status = "" if h.met is None else ("<span class='met'>met</span>" if h.met else
                                           "<span class='missed'>missed</span>")
        rows.append({"result": html.escape(h.name), "value": _fmt(h.value), "split": html.escape(h.split),
                     "target": _fmt(h.target), "": status, "paper": _fmt(h.paper), "note": html.escape(h.note)})
    return rows


def render_html(result: Result, report: dict) -> str:
    """The report page: summary, conclusion, figures, tables, reproduction; plotly.js inlined once."""
    title = result.title or f"{result.experiment} report"
    parts = [f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
             f"<style>{_CSS}</style></head><body>", f"<h1>{html.escape(title)}</h1>"]
    model = report.get("model")
    if isinstance(model, dict) and model.get("model"):
        parts.append(f"<p>model <b>{html.escape(str(model['model']))}</b>"
                     f" ({html.escape(str(model.get('architecture', '')))}, {model.get('n_layers', '?')} layers)</p>")
    if result.headlines:
        parts.append("<h2>Summary</h2>")
        parts.append(_table(_headline_rows(result), raw_cols=("result", "value", "split", "target", "", "paper",
                                                               "note")))
    if result.conclusion:
        parts.append(f"<div class='conclusion'><b>What this shows.</b> {html.escape(result.conclusion)}</div>")
    if result.protocol:
        parts.append("<h2>Protocol</h2>" + _table([_jsonable(result.protocol)]))
    if result.figures:
        parts.append("<h2>Figures</h2>")
        first = True
        for name, fig in result.figures.items():
            parts.append(f"<div class='figure' data-name='{html.escape(str(name))}'>")
            parts.append(fig.to_html(full_html=False, include_plotlyjs="inline" if first else False,
                                     div_id=f"fig-{_slug(name)}"))
            parts.append("</div>")
            first = False
    for name, rows in result.tables.items():
        parts.append(f"<h2>{html.escape(name)}</h2>" + _table(rows, numeric_cols=True))
    repro = report.get("reproduction", {})
    parts.append("<h2>Reproduce</h2>")
    parts.append(f"<pre>{html.escape(repro.get('command', ''))}</pre>")
    timing = repro.get("timing_s") or {}
    if timing:
        parts.append("<p>wall time per stage (s)</p>" + _table([timing]))
    meta = {"seed": repro.get("seed"), **{f"{k} version": v for k, v in repro.get("versions", {}).items()}}
    if isinstance(repro.get("model"), dict):
        meta["model fingerprint"] = repro["model"].get("fingerprint")
        meta["model source"] = repro["model"].get("source")
    parts.append(_table([meta], numeric_cols=False))
    parts.append("<details><summary>config</summary><pre>"
                 f"{html.escape(json.dumps(repro.get('config'), indent=1, default=str))}</pre></details>")
    parts.append("</body></html>")
    return "\n".join(parts)


def _slug(name: Any) -> str:
    return "".join(c if c.isalnum() else "-" for c in str(name)).strip("-") or "figure"
