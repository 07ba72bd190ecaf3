"""The report writer and the refusal report as a reader sees it (issue [P]).

The browser check loads the page in headless Chromium (Debian's ``chromium-headless-shell`` or
``chromium``); it is skipped, with the reason, where neither is installed.
"""
import json
import os
import re
import shutil
import subprocess

import pytest

from interp.plots import position_labels, refusal_heatmaps
from interp.report import Headline, Result, Stopwatch, write_report

QWEN_POST = ["<|im_end|>", "\n", "<|im_start|>", "assistant", "\n"]  # positions -4 and -1 share a token


def refusal_like_report(n_layers: int = 6) -> dict:
    n_pos = len(QWEN_POST)
    full = {(2, 4), (3, 4), (3, 1)}  # (layer, position index) fully scored

    def grid(value, only_full):
        return [[(value(layer, p) if (not only_full or (layer, p) in full) else None) for p in range(n_pos)]
                for layer in range(n_layers)]

    return {
        "model": {"model": "toy", "architecture": "qwen2", "n_layers": n_layers, "fingerprint": "abc"},
        "config": {"seed": 0, "kl_max": 0.2, "induce_min": -0.5, "max_layer_frac": 0.8},
        "post_instruction_tokens": QWEN_POST,
        "chosen": {"layer": 3, "position": -1, "position_token": "\n", "bypass": -3.0, "induce": 1.0, "kl": 0.1},
        "selection": {"bypass": grid(lambda y, p: -y - p, True), "induce": grid(lambda y, p: y * 0.3, True),
                      "kl": grid(lambda y, p: 0.1 if p == 4 else 0.5, True),
                      "proxy_bypass": grid(lambda y, p: -y - p + 0.5, False),
                      "proxy_induce": grid(lambda y, p: y * 0.3, False), "proxy_kl": grid(lambda y, p: 0.2, False)},
        "evaluation": {"baseline_refusal": 0.79, "ablated_refusal": 0.0, "minus_r_refusal": 0.02,
                       "baseline_harmless_refusal": 0.04, "induced_refusal": 0.85, "ce_delta": 0.031},
    }


def make_result(report: dict) -> Result:
    ev = report["evaluation"]
    heads = [Headline("harmful refused, baseline", ev["baseline_refusal"], "held-out eval (n=48)"),
             Headline("harmful refused, direction ablated", ev["ablated_refusal"], "held-out eval (n=48)",
                      target="< 0.10", paper="0.03", met=True),
             Headline("harmless refused, +r added", ev["induced_refusal"], "held-out eval (n=48)",
                      target="> 0.50", met=True),
             Headline("CE change under ablation (nats)", ev["ce_delta"], "held-out harmless (n=48)")]
    return Result("refusal", report, figures=refusal_heatmaps(report), headlines=heads, title="Refusal direction: toy",
                  conclusion="The direction is necessary and sufficient for refusal on held-out prompts.",
                  timing={"search": 1.0, "evaluation": 2.0})


def test_heatmaps_one_column_per_position_and_both_scores():
    report = refusal_like_report()
    figs = refusal_heatmaps(report)
    assert set(figs) == {"bypass", "induce", "kl"}
    fig = figs["bypass"]
    ticks = list(fig.layout.xaxis.tickvals)
    labels = list(fig.layout.xaxis.ticktext)
    assert ticks == [-5, -4, -3, -2, -1]
    assert len(set(labels)) == 5 and labels[1].startswith("\u22124") and labels[4].startswith("\u22121")
    proxy, full = fig.data[0], fig.data[1]
    assert "proxy" in proxy.name and "full" in full.name
    # every cell drawn by exactly one of the two layers
    for layer in range(6):
        for p in range(5):
            assert (proxy.z[layer][p] is None) != (full.z[layer][p] is None)
    chosen = [t for t in fig.data if t.name == "chosen"][0]
    assert list(chosen.x) == [-1] and list(chosen.y) == [3]
    outlined = [t for t in fig.data if t.name == "passes the filters"][0]
    # (3, -1) passes: induce 0.9 > -0.5, KL 0.1 < 0.2, layer 3 < 4.8; (3, -4) has KL 0.5 and fails
    assert (-1, 3) in set(zip(outlined.x, outlined.y)) and (-4, 3) not in set(zip(outlined.x, outlined.y))


def test_position_labels_keep_equal_tokens_apart():
    assert position_labels(["\n", "a", "\n"]) == ["\u22123 '\\n'", "\u22122 'a'", "\u22121 '\\n'"]


def test_report_summary_matches_json(tmp_path):
    result = make_result(refusal_like_report())
    write_report(result, tmp_path, command=["interp", "refusal", "toy", "--out", str(tmp_path)])
    data = json.loads((tmp_path / "report.json").read_text())
    page = (tmp_path / "report.html").read_text()
    assert [s["value"] for s in data["summary"]] == [0.79, 0.0, 0.85, 0.031]
    summary = page[page.index("<h2>Summary</h2>"):page.index("<h2>Figures</h2>")]
    for s in data["summary"]:
        assert f"{s['value']:.3f}" in summary and s["split"] in summary
    assert "missed" not in summary and summary.count("class='met'") == 2
    assert page.index("Summary") < page.index("Figures") < page.index("Reproduce")
    assert "interp refusal toy --out" in page and data["reproduction"]["seed"] == 0
    assert data["reproduction"]["versions"]["interp"]
    assert page.count("plotly.js v") <= 2  # plotly.js inlined once (its banner appears once per copy)
    assert (tmp_path / "report.html").stat().st_size < 6_000_000


def test_report_json_is_strict_json(tmp_path):
    r = Result("x", {"value": float("nan"), "inf": float("inf")})
    write_report(r, tmp_path)
    text = (tmp_path / "report.json").read_text()
    assert "NaN" not in text and "Infinity" not in text
    assert json.loads(text)["value"] is None


def test_artifacts_written_by_the_writer(tmp_path):
    r = Result("x", {}, artifacts={"thing.txt": lambda p: p.write_text("ok")})
    write_report(r, tmp_path)
    assert (tmp_path / "thing.txt").read_text() == "ok"


def test_stopwatch_adds_up():
    sw = Stopwatch()
    with sw("a"):
        pass
    with sw("a"):
        pass
    assert list(sw.seconds) == ["a"] and sw.seconds["a"] >= 0


def _browser() -> str | None:
    for name in ("chromium-headless-shell", "chromium", "chromium-browser", "google-chrome"):
        path = shutil.which(name)
        if path:
            return path
    return None


def test_report_loads_in_a_browser(tmp_path):
    browser = _browser()
    if browser is None and os.environ.get("CI"):
        pytest.fail("CI installs chromium-headless-shell (.ci/run), but no browser was found")
    if browser is None:
        pytest.skip("no headless Chromium installed (apt-get install chromium-headless-shell) — "
                    "the page is not checked in a browser here")
    result = make_result(refusal_like_report())
    write_report(result, tmp_path)
    page = tmp_path / "report.html"
    proc = subprocess.run([browser, "--headless", "--no-sandbox", "--disable-gpu", "--enable-logging=stderr",
                           "--v=0", "--virtual-time-budget=8000", "--dump-dom", page.as_uri()],
                          capture_output=True, text=True, timeout=120)
    dom = proc.stdout
    assert "<h2>Summary</h2>" in dom
    errors = [line for line in proc.stderr.splitlines() if "Uncaught" in line or "CONSOLE" in line and "rror" in line]
    assert not errors, errors
    # every figure drew: plotly replaces each empty div with an svg container
    drawn = len(re.findall(r'class="main-svg"', dom))
    assert drawn >= len(result.figures), f"{drawn} svg layers for {len(result.figures)} figures"
    for name in result.figures:
        div = re.search(rf'<div id="fig-{name}"[^>]*>', dom)
        assert div and "js-plotly-plot" in div.group(0), f"figure {name} did not draw"


def test_split_groups_never_puts_a_group_on_two_sides():
    from interp.protocol import protocol_block, seed_summary, split_groups
    from interp import InterpError

    groups = [i // 3 for i in range(60)]  # 20 groups of 3 items
    s = split_groups(groups, (0.6, 0.2, 0.2), seed=1, unit="entity")
    sides = {}
    for name in ("train", "val", "test"):
        for i in getattr(s, name):
            sides.setdefault(groups[i], set()).add(name)
    assert all(len(v) == 1 for v in sides.values())
    assert sorted(s.train + s.val + s.test) == list(range(60))
    assert s.groups == {"train": 12, "val": 4, "test": 4}
    assert split_groups(groups, seed=1).test == s.test and split_groups(groups, seed=2).test != s.test
    block = protocol_block(s)
    assert block["split_unit"] == "entity" and block["selected_on"] == "validation" and block["n_test"] == 12
    with pytest.raises(InterpError, match="at least 3"):
        split_groups([0, 0, 1])
    summ = seed_summary({0: 0.5, 1: 0.7, 2: None})
    assert summ["n"] == 2 and abs(summ["mean"] - 0.6) < 1e-12
