"""The interp console command: --help everywhere, models, capture, bench, demo."""
import json
import subprocess
import sys

import pytest

from interp.cli import build_parser, main


def _subcommands(parser):
    for action in parser._actions:
        if action.__class__.__name__ == "_SubParsersAction":
            for name, sub in action.choices.items():
                yield name, sub
                for child, subsub in _subcommands(sub):
                    yield f"{name} {child}", subsub


def test_every_command_has_help_for_every_option(capsys):
    parser = build_parser()
    commands = dict(_subcommands(parser))
    assert {"models", "capture", "bench", "demo", "refusal", "refusal-eval", "harmfulness", "guard fit", "guard score",
            "separation", "chat", "illusion", "patch", "bench capture", "bench generate",
            "bench refusal", "bench patching"} <= set(commands)
    for name, sub in commands.items():
        for action in sub._actions:
            if action.option_strings and action.dest != "help":
                assert action.help, f"interp {name} {action.option_strings} has no help text"
        with pytest.raises(SystemExit) as e:
            main(name.split() + ["--help"])
        assert e.value.code == 0
        assert "usage: interp" in capsys.readouterr().out


def test_console_script_runs():
    out = subprocess.run([sys.executable, "-m", "interp.cli", "models", "--json"], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    rows = json.loads(out.stdout)
    assert {r["name"] for r in rows} >= {"qwen2.5-coder-0.5b-instruct", "smollm2-135m-instruct"}
    assert sum(r["default"] for r in rows) == 1


def test_errors_are_one_line_and_exit_2(tmp_path, capsys):
    empty = tmp_path / "empty.txt"
    empty.write_text("\n\n")
    assert main(["capture", "smollm2-135m-instruct", "--prompts", str(empty), "--out", str(tmp_path / "o")]) == 2
    assert "is empty" in capsys.readouterr().err


@pytest.mark.slow
def test_capture_command(tmp_path, capsys):
    prompts = tmp_path / "p.txt"
    prompts.write_text("How do I bake bread?\nName three rivers.\nWhat is 2+2?\n")
    args = ["capture", "smollm2-135m-instruct", "--prompts", str(prompts), "--sites", "resid_post.3",
            "blocks.4.attn.hook_z", "--positions=-2:", "--out", str(tmp_path / "store"), "--shard-size", "2"]
    assert main(args) == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert summary == {"out": str(tmp_path / "store"), "examples": 3, "tokens": 6, "shards": 2, "sites": 2}
    from interp import ActivationStore

    store = ActivationStore(tmp_path / "store")
    assert store.load()["attn_z.4"].shape == (3, 2, 9, 64)
    assert main(args) == 0  # re-running resumes: nothing to do, same result
    assert main(args[:-2] + ["--sites", "resid_post.5"]) == 2  # another site into the same store is refused


@pytest.mark.slow
def test_bench_capture_json():
    out = subprocess.run([sys.executable, "-m", "interp.cli", "bench", "capture", "--model", "smollm2-135m-instruct",
                          "--reps", "1", "--batch", "2", "--seq", "16", "--rss-n", "4", "--json"],
                         capture_output=True, text=True)
    assert out.returncode == 0, out.stderr[-2000:]
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert result["plain_forward_s"] > 0
    assert set(result["ratios"]) == {"interp_memory", "interp_store", "transformer_lens", "nnsight"}
    for key, ratio in result["ratios"].items():
        assert (ratio is not None and ratio > 0) or key in result["reasons"]
    assert result["peak_rss_mb"]["n"] > 0 and result["peak_rss_mb"]["10n"] > 0, result["reasons"]
    # 4 prompts x 16 tokens are fewer than smollm2's 576 dimensions: the rank fit is skipped there, not failed
    assert result["rss_fits"]["n"] == ["diff_of_means", "latent_guard"]


@pytest.mark.slow
def test_separation_command(tmp_path, capsys):
    a, b = tmp_path / "a.txt", tmp_path / "b.txt"
    a.write_text("\n".join(f"Explain how to steal a car, part {i}" for i in range(6)))
    b.write_text("\n".join(f"Explain how to wash a car, part {i}" for i in range(6)))
    assert main(["separation", "--model", "smollm2-135m-instruct", "--a", str(a), "--b", str(b), "--out",
                 str(tmp_path / "r"), "--folds", "3"]) == 0
    report = json.loads((tmp_path / "r" / "report.json").read_text())
    assert len(report["per_layer"]) == 30 and 0 <= report["best_layer"] < 30
    assert (tmp_path / "r" / "report.html").stat().st_size > 10_000
    assert "best layer" in capsys.readouterr().out


@pytest.mark.slow
def test_bench_generate_json():
    out = subprocess.run([sys.executable, "-m", "interp.cli", "bench", "generate", "--model", "smollm2-135m-instruct",
                          "--reps", "1", "--batch", "2", "--new-tokens", "4", "--json"], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr[-2000:]
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert result["plain_tok_s"] > 0
    assert set(result["ratios"]) == {"interp_ablate", "interp_ablate_first_call", "interp_ablate_hooks", "interp_add", "transformer_lens",
                                     "nnsight"}
    for key, ratio in result["ratios"].items():
        assert (ratio is not None and ratio > 0) or key in result["reasons"]
    assert result["ablate_same_tokens_as_hooks"] is True  # the weight-edit path generates what the hooks do


def test_demo_runs_the_refusal_command_with_its_defaults(monkeypatch):
    import interp.commands.refusal as refusal_cmd
    from interp.packaged import DEMO_MODEL

    seen = {}
    monkeypatch.setattr(refusal_cmd, "run", lambda ns: seen.update(ns=ns) or 0)
    assert main(["demo", "--out", "somewhere"]) == 0
    ns = seen["ns"]
    assert (ns.model, ns.out, ns.mode, ns.n_val, ns.proxy_prompts) == (DEMO_MODEL, "somewhere", "pruned", 28, 8)
    assert (ns.kl_max, ns.induce_min) == (0.2, -0.5)  # the documented filters of the demo model
    assert ns.dtype == "auto"  # bfloat16 where the machine computes it natively, as the paper's code runs
    assert main(["demo", "--out", "o", "--dtype", "float32"]) == 0 and seen["ns"].dtype == "float32"
    # another model gets interp refusal's own defaults; a filter given on the command line wins
    assert main(["demo", "--model", "some/model", "--out", "o", "--induce-min", "0.3"]) == 0
    assert (seen["ns"].kl_max, seen["ns"].induce_min) == (0.1, 0.3)
