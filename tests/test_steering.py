"""Contrastive steering vectors (issue 21, part 6): mechanics on a tiny model, the behaviour change on SmolLM2."""
import json
import subprocess
import sys

import pytest
import torch

from interp.errors import InterpError
from interp.experiments import steering
from interp.experiments.steering import Pair
from interp.interventions import Add

PAIRS = [Pair("How do I bake bread?", "Sure", "No"), Pair("Write a poem about the sea.", "Sure, here", "No way"),
         Pair("What is the capital of France?", "Paris", "I cannot"), Pair("Explain photosynthesis.", "Yes", "No")]


def _write(path, rows):
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows), encoding="utf-8")
    return path


def _by_hand(model, pairs, layer, read):
    """Per pair, one forward of each full sequence (no batching, no capture), read at the answer token(s)."""
    def act(prompt, answer):
        head = model.encode([prompt]).ids[0]
        ans = model.tokenizer(answer, add_special_tokens=False)["input_ids"]
        cache = model.run_with_cache(model.pad([head + ans]), [f"resid_pre.{layer}"], logits=False)
        x = cache[f"resid_pre.{layer}"][0]
        return x[-1] if read == "last" else x[-len(ans):].mean(0)

    diffs = [act(p.prompt, p.positive) - act(p.prompt, p.negative) for p in pairs]
    return torch.stack(diffs).mean(0)


@pytest.mark.parametrize("read", ["last", "answer"])
def test_vector_is_the_mean_difference_by_hand(tiny_llama, read):
    vectors = steering.steering_vectors(tiny_llama, PAIRS, layers=[0, 1], read=read, batch_size=3)
    assert set(vectors) == {0, 1}
    for layer in (0, 1):
        expected = _by_hand(tiny_llama, PAIRS, layer, read)
        assert vectors[layer].shape == (tiny_llama.d_model,)
        torch.testing.assert_close(vectors[layer], expected.float(), atol=1e-5, rtol=1e-4)


def test_strength_zero_is_identity(tiny_llama):
    v = steering.steering_vectors(tiny_llama, PAIRS, layers=[1])[1]
    iv = {"resid_pre.1": Add(v, scale=0.0)}
    prompts = [p.prompt for p in PAIRS]
    assert tiny_llama.generate(prompts, max_new_tokens=5, interventions=iv) == \
        tiny_llama.generate(prompts, max_new_tokens=5)
    assert steering.answer_margins(tiny_llama, PAIRS, iv).tolist() == steering.answer_margins(tiny_llama, PAIRS).tolist()
    # and a real strength does move the margins, so the identity above is not vacuous
    moved = steering.answer_margins(tiny_llama, PAIRS, {"resid_pre.1": Add(v, scale=8.0)})
    assert abs(moved - steering.answer_margins(tiny_llama, PAIRS)).max() > 1e-3


def test_margins_match_evaluation_nll(tiny_llama):
    """The margin is log p(positive) − log p(negative) from the shared sequence_nll (completion_ce agrees)."""
    from interp.evaluation import completion_ce

    p = PAIRS[1]
    n_pos = len(tiny_llama.tokenizer(p.positive, add_special_tokens=False)["input_ids"])
    n_neg = len(tiny_llama.tokenizer(p.negative, add_special_tokens=False)["input_ids"])
    expected = -completion_ce(tiny_llama, [p.prompt], [p.positive]) * n_pos + \
        completion_ce(tiny_llama, [p.prompt], [p.negative]) * n_neg
    assert steering.answer_margins(tiny_llama, [p])[0] == pytest.approx(expected, abs=1e-6)


def test_read_pairs_rejects_bad_files(tmp_path):
    ok = {"prompt": "Is ice cold?", "positive": "Yes", "negative": "No"}
    assert steering.read_pairs(_write(tmp_path / "ok.jsonl", [ok, "", ok])) == [Pair("Is ice cold?", "Yes", "No")] * 2
    cases = {"bad.jsonl": (["{not json"], "line 1 is not valid JSON"), "list.jsonl": (["[1, 2]"], "line 1 is a JSON list, not an object"),
             "missing.jsonl": ([{"prompt": "q", "positive": "Yes"}], "negative"),
             "same.jsonl": ([{"prompt": "q", "positive": "Yes", "negative": " Yes"}], "same text"),
             "empty.jsonl": ([""], "no pairs")}
    for name, (rows, msg) in cases.items():
        with pytest.raises(InterpError, match=msg):
            steering.read_pairs(_write(tmp_path / name, rows))
    with pytest.raises(InterpError, match="does not exist"):
        steering.read_pairs(tmp_path / "nope.jsonl")


def test_config_checks(tmp_path):
    with pytest.raises(InterpError, match="positive value"):
        steering.check_config(steering.Config(strengths=(-1.0, 0.0)))
    with pytest.raises(InterpError, match="layers must be in 0..1"):
        steering.check_config(steering.Config(layers=(5,)), n_layers=2)
    with pytest.raises(InterpError, match="read must be"):
        steering.check_config(steering.Config(read="first"))
    few = _write(tmp_path / "few.jsonl", [{"prompt": "q", "positive": "a", "negative": "b"}] * 3)
    with pytest.raises(InterpError, match="at least 5"):
        steering.check_config(steering.Config(pairs=str(few)))
    assert len(steering.check_config(steering.Config())) >= 40  # the shipped file


def test_run_end_to_end_on_tiny_model(tiny_llama, tmp_path):
    pairs = _write(tmp_path / "p.jsonl", [{"prompt": f"Question number {i}?", "positive": "Yes", "negative": "No"}
                                          for i in range(10)])
    cfg = steering.Config(pairs=str(pairs), layers=(0, 1), strengths=(-2.0, 0.0, 2.0), max_new_tokens=2,
                          ce_passages=2, ce_tokens=16, max_ce_increase=100.0)
    result = steering.run(tiny_llama, cfg, out=tmp_path / "out")
    r = result.report
    assert r["chosen"]["layer"] in (0, 1) and r["chosen"]["strength"] == 2.0 and r["chosen"]["within_budget"]
    assert [row["strength"] for row in r["test_sweep"]] == [-2.0, 0.0, 2.0]
    zero = r["test_sweep"][1]
    assert zero["ce_increase"] == 0.0 and 0 <= zero["positive_rate"] <= 1
    assert {row["layer"] for row in r["validation_grid"]} == {0, 1}
    assert r["protocol"]["selected_on"] == "validation" and r["protocol"]["split_unit"] == "pair"
    for name in ("report.json", "report.html", "steering_vector.safetensors"):
        assert (tmp_path / "out" / name).exists()
    from interp.directions import load_direction

    v, meta = load_direction(tmp_path / "out" / "steering_vector.safetensors", tiny_llama)
    assert meta["layer"] == r["chosen"]["layer"] and v.shape == (tiny_llama.d_model,)


def test_cli_help_and_bad_pairs_fail_before_loading(tmp_path):
    out = subprocess.run([sys.executable, "-m", "interp.cli", "steer", "--help"], capture_output=True, text=True)
    assert out.returncode == 0 and "--pairs" in out.stdout and "JSONL" in out.stdout
    bad = _write(tmp_path / "bad.jsonl", ["{oops"])
    out = subprocess.run([sys.executable, "-m", "interp.cli", "steer", "no-such-model", "--pairs", str(bad), "--json"],
                         capture_output=True, text=True)
    assert out.returncode == 2 and "line 1 is not valid JSON" in out.stderr and "Traceback" not in out.stderr


@pytest.mark.slow
def test_steering_changes_yes_no_answers_on_held_out_pairs(smollm):
    """SmolLM2 answers "No" to nearly every yes/no question; the vector from the train pairs, at the layer and
    strength chosen on validation, turns test replies into "Yes" at a bounded prose cost."""
    # layer 18 won the validation choice among 12, 15 and 18 in a full run (docs/tools.md); one layer keeps this short
    cfg = steering.Config(layers=(18,), strengths=(0.0, 0.5), ce_passages=4, max_new_tokens=2)
    r = steering.run(smollm, cfg).report
    at = {row["strength"]: row for row in r["test_sweep"]}
    chosen = at[r["chosen"]["strength"]]
    print(r["chosen"], {s: (row["positive_rate"], round(row["margin"], 2), round(row["ce_increase"], 3))
                        for s, row in at.items()})
    # measured here (16 test pairs, seed 0, chosen strength 0.5): "Yes" replies 0.00 -> 1.00, margin -1.27 -> 3.30
    # nats (gain 4.57), prose CE +0.288 nats/token on 4 passages (validation +0.458); thresholds at about half the
    # measured gains, and twice the CE budget. 169 s of CPU on the shared, overloaded 2-core machine.
    assert chosen["positive_rate"] - at[0.0]["positive_rate"] >= 0.5
    assert chosen["margin"] - at[0.0]["margin"] >= 2.0
    assert chosen["ce_increase"] <= 1.0
