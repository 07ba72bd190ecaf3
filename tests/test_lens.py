"""Logit lens (issue 21 part 3): interp.lens, plots.lens_heatmap and ``interp lens``."""
import json

import plotly.graph_objects as go
import pytest
import torch

from interp import InterpError, arch
from interp.capture import run_with_cache
from interp.cli import main
from interp.lens import logit_lens, target_token_id
from interp.plots import lens_heatmap

PROMPTS = ["hello there friend of mine", "hi", "a b c"]


def test_last_layer_is_the_model_and_layers_match_a_manual_lens(tiny):
    lens = logit_lens(tiny, PROMPTS, k=4, progress=False)
    assert lens.top_ids.shape == (tiny.n_layers, len(PROMPTS), 1, 4)
    assert torch.equal(lens.top_ids[-1, :, :, 0], lens.model_top_ids)
    assert lens.kl_to_final[-1].abs().max() < 1e-5 and (lens.target_rank[-1] == 0).all()
    assert (lens.kl_to_final >= 0).all()
    # layer 0 by hand: final norm and unembedding of resid_post.0 at the last token
    cache = run_with_cache(tiny, PROMPTS, "resid_post.0", chat=False)
    with torch.no_grad():
        p = torch.softmax(tiny.unembed(arch.final_norm(tiny)(cache["resid_post.0"][:, -1])), -1)
        final = torch.softmax(cache.logits[:, -1], -1)
    assert torch.allclose(lens.top_probs[0, :, 0], p.topk(4).values, atol=1e-5)
    kl = (final * (final.log() - p.log())).sum(-1)
    assert torch.allclose(lens.kl_to_final[0, :, 0], kl, atol=1e-5)
    own = p.gather(-1, final.argmax(-1, keepdim=True))[:, 0]
    assert torch.allclose(lens.target_prob[0, :, 0], own, atol=1e-6)


def test_all_positions_and_given_target(tiny_llama):
    tok = tiny_llama.tokenizer
    tid = target_token_id(tok, "he")  # one token in the tiny vocabulary ("hello" is he|ll|o)
    every = logit_lens(tiny_llama, PROMPTS, positions="all", target=tid, progress=False)
    last = logit_lens(tiny_llama, PROMPTS, target="he", progress=False)
    lengths = [len(x) for x in tiny_llama.encode(PROMPTS, chat=False).ids]
    assert every.mask.sum(1).tolist() == lengths and every.target_source == "given"
    for i, n in enumerate(lengths):
        assert torch.allclose(every.target_prob[:, i, n - 1], last.target_prob[:, i, 0], atol=1e-6)
        assert torch.equal(every.top_ids[:, i, n - 1], last.top_ids[:, i, 0])
        assert (every.target_ids[i, :n] == tid).all()
    rows = every.to_dict(tok)["prompts"]
    assert [len(r["layers"]) for r in rows] == [tiny_llama.n_layers] * 3
    assert rows[0]["layers"][-1]["kl_to_final"] == 0.0
    only = logit_lens(tiny_llama, PROMPTS, layers=[1], progress=False)
    assert only.layers == [1] and only.kl_to_final.shape[0] == 1


@pytest.mark.parametrize("kwargs,match", [
    ({"positions": "first"}, "positions"), ({"k": 0}, "k must"), ({"layers": [2]}, "layers must"),
    ({"target": "hello"}, "3 tokens"), ({"target": [5, 6]}, "2 targets for 3"), ({"target": 10**9}, "vocabulary"),
])
def test_bad_input(tiny_llama, kwargs, match):
    with pytest.raises(InterpError, match=match):
        logit_lens(tiny_llama, PROMPTS, progress=False, **kwargs)


def test_heatmaps(tiny_llama):
    lens = logit_lens(tiny_llama, PROMPTS, positions="all", k=3, progress=False)
    fig = lens_heatmap(lens, tiny_llama.tokenizer, prompt=0, value="kl")
    n = int(lens.mask[0].sum())
    assert n > 1 and torch.allclose(torch.tensor(fig.data[0].z), lens.kl_to_final[:, 0, :n])
    assert isinstance(fig, go.Figure) and len(fig.data[0].z) == tiny_llama.n_layers and len(fig.data[0].x) == n
    top = lens_heatmap(lens, tiny_llama.tokenizer, view="top_k")
    assert list(top.data[0].x) == ["#1", "#2", "#3"]
    assert lens_heatmap(logit_lens(tiny_llama, PROMPTS, progress=False), tiny_llama.tokenizer).layout.xaxis.title.text \
        == "rank"  # one position: the top-k view
    with pytest.raises(InterpError, match="value must be"):
        lens_heatmap(lens, tiny_llama.tokenizer, value="loss")
    with pytest.raises(InterpError, match="out of range"):
        lens_heatmap(lens, tiny_llama.tokenizer, prompt=3)


def test_lens_command(tiny_llama, tmp_path, capsys):
    folder = tmp_path / "tiny"
    tiny_llama.hf.save_pretrained(folder)
    tiny_llama.tokenizer.save_pretrained(folder)
    prompts = tmp_path / "p.txt"
    prompts.write_text("hello there\nhi\n")
    assert main(["lens", str(folder), "--prompts", str(prompts), "--json", "--k", "2"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert [p["prompt"] for p in out["prompts"]] == ["hello there", "hi"]
    last = out["prompts"][0]["layers"][-1]
    assert len(out["prompts"][0]["layers"]) == 2 and last["target_rank"] == 0 and last["kl_to_final"] == 0.0
    assert main(["lens", str(folder), "--prompts", str(prompts), "--target", "hello"]) == 2
    assert "3 tokens" in capsys.readouterr().err
    assert main(["lens", str(folder), "--prompts", str(prompts), "--k", "0"]) == 2
    assert main(["lens", str(folder), "--prompts", str(prompts), "--layers", "1"]) == 0
    assert "model predicts" in capsys.readouterr().out


@pytest.mark.slow
def test_lens_reaches_the_final_prediction_on_smollm2(smollm):
    prompts = ["The capital of France is", "The Eiffel Tower is located in the city of", "One, two, three, four,",
               "The opposite of hot is"]
    lens = logit_lens(smollm, prompts, target=[" Paris", " Paris", " five", " cold"], progress=False)
    # the model's own predictions are these targets (measured), and the last layer reproduces them exactly
    assert torch.equal(lens.top_ids[-1, :, 0, 0], lens.model_top_ids[:, 0])
    assert (lens.target_rank[-1] == 0).all() and lens.kl_to_final[-1].abs().max() < 1e-4  # measured 0.0
    kl = lens.kl_to_final[:, :, 0].mean(1)  # mean over prompts, per layer
    # measured (nats): flat ~22-32 through layer 21, then 24.96, 17.78, 10.26, 8.41, 5.90, 2.41, 1.27, 0 over
    # layers 22-29: the prediction forms in the last quarter, and KL falls there at every layer
    assert (kl[-8:].diff() < 0).all(), kl.tolist()
    assert kl[-3] < 0.2 * kl[: smollm.n_layers // 2].mean(), kl.tolist()  # measured 2.41 vs 26.5
    # " Paris" emerges late: rank 2451 at layer 15, 0 at layer 29 (measured)
    assert lens.target_rank[15, 0, 0] > 100 and lens.target_rank[-4:, 0, 0].tolist() == sorted(
        lens.target_rank[-4:, 0, 0].tolist(), reverse=True)
