"""Steering the packaged SmolLM2 changes what it writes (measured over prompts), and the chat CLI."""
import subprocess
import sys

import pytest
import torch

from interp.directions import save_direction
from interp.interventions import Add

pytestmark = pytest.mark.slow

PROMPTS = ["Tell me about your weekend.", "What should I cook tonight?", "Describe your favorite place.",
           "Give me advice for a job interview.", "What is a good hobby?", "Write one sentence about trees.",
           "How do I stay motivated?", "What do you think about music?"]


def _edit_distance(a: list[int], b: list[int]) -> int:
    prev = list(range(len(b) + 1))
    for i, x in enumerate(a, 1):
        cur = [i]
        for j, y in enumerate(b, 1):
            cur.append(min(prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + (x != y)))
        prev = cur
    return prev[-1]


def _direction(model, layer):
    ocean = ["Tell me about the ocean and the waves.", "Describe the sea, the tides and the beach.",
             "Write about sailing on the open sea.", "What lives in the deep ocean?"]
    plain = ["Tell me about the office and the desk.", "Describe the city, the roads and the shops.",
             "Write about working at a computer.", "What lives in a busy town?"]
    a = model.capture(ocean, f"resid_pre.{layer}", "all", progress=False)
    b = model.capture(plain, f"resid_pre.{layer}", "all", progress=False)
    return a.tokens(f"resid_pre.{layer}").mean(0) - b.tokens(f"resid_pre.{layer}").mean(0)


def test_steering_changes_text_measurably(smollm):
    layer = 12
    r = _direction(smollm, layer)
    base = smollm.generate(PROMPTS, max_new_tokens=24)
    with smollm.intervene({f"resid_pre.{layer}": Add(r, scale=0.0)}):
        zero = smollm.generate(PROMPTS, max_new_tokens=24)
    assert zero == base  # the control: a zero-strength intervention changes nothing
    with smollm.intervene({f"resid_pre.{layer}": Add(r, scale=6.0)}):
        steered = smollm.generate(PROMPTS, max_new_tokens=24)
    tok = smollm.tokenizer
    dists = [_edit_distance(tok(a)["input_ids"], tok(b)["input_ids"]) / max(1, len(tok(a)["input_ids"]))
             for a, b in zip(base, steered)]
    changed = sum(a != b for a, b in zip(base, steered)) / len(PROMPTS)
    sea_words = ("sea", "ocean", "wave", "beach", "tide", "sail", "water", "shore")
    topical = sum(any(w in s.lower() for w in sea_words) for s in steered) - \
        sum(any(w in s.lower() for w in sea_words) for s in base)
    print(f"changed {changed:.2f}, mean normalized token edit distance {sum(dists) / len(dists):.2f}, "
          f"extra completions mentioning the sea {topical}")
    assert changed >= 0.75
    assert sum(dists) / len(dists) >= 0.3
    assert topical >= 2  # and it moves them toward the direction's topic


def test_chat_cli_with_piped_input(smollm, tmp_path):
    r = _direction(smollm, 12)
    path = save_direction(tmp_path / "d.safetensors", r, {"model": smollm.name, "layer": 12, "site": "resid_pre.12"})
    script = "/status\n/mode add\n/alpha 6\nTell me about your weekend.\n/off\nTell me about your weekend.\n" \
             "/layer 99\n/alpha x\n/quit\n"
    out = subprocess.run([sys.executable, "-m", "interp.cli", "chat", "smollm2-135m-instruct", "--direction",
                          str(path), "--max-new-tokens", "20"], input=script, capture_output=True, text=True,
                         timeout=600)
    assert out.returncode == 0, out.stderr[-2000:]
    lines = out.stdout.splitlines()
    assert "[on: ablate, alpha 1.0, layer 12]" in lines
    assert "[on: add, alpha 6.0, layer 12]" in lines
    replies = [line for line in lines if line.startswith("assistant:")]
    assert len(replies) == 2 and replies[0] != replies[1]
    assert "[layer must be in 0..29]" in lines and "[/alpha needs a number]" in lines
