"""Plotly figures a notebook can show and a report can embed.

Example:
    >>> fig = layer_lines({"accuracy": [0.5, 0.9]}, title="probe", yaxis="accuracy")
    >>> fig.layout.title.text
    'probe'
"""
from __future__ import annotations

from pathlib import Path
from typing import Mapping, Sequence

import plotly.graph_objects as go


def layer_lines(series: Mapping[str, Sequence[float]], title: str = "", yaxis: str = "",
                bands: Mapping[str, tuple[Sequence[float], Sequence[float]]] | None = None) -> go.Figure:
    """One line per series against layer index, with optional (low, high) bands."""
    fig = go.Figure()
    for name, ys in series.items():
        xs = list(range(len(ys)))
        if bands and name in bands:
            lo, hi = bands[name]
            fig.add_trace(go.Scatter(x=xs + xs[::-1], y=list(hi) + list(lo)[::-1], fill="toself", opacity=0.2,
                                     line={"width": 0}, showlegend=False, hoverinfo="skip", name=f"{name} CI"))
        fig.add_trace(go.Scatter(x=xs, y=list(ys), mode="lines+markers", name=name))
    fig.update_layout(title=title, xaxis_title="layer", yaxis_title=yaxis, template="plotly_white")
    return fig


def write_html(figures: Sequence[go.Figure], path: str | Path, title: str = "interp report",
               intro: str = "") -> Path:
    """Write figures into one self-contained HTML file (plotly.js inlined once)."""
    path = Path(path)
    parts = [f"<html><head><meta charset='utf-8'><title>{title}</title></head><body>",
             f"<h1>{title}</h1>", f"<p>{intro}</p>" if intro else ""]
    for i, fig in enumerate(figures):
        parts.append(fig.to_html(full_html=False, include_plotlyjs="inline" if i == 0 else False))
    parts.append("</body></html>")
    path.write_text("\n".join(parts), encoding="utf-8")
    return path
