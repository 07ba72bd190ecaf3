"""Bad input never ends in a traceback, a hang or a silent wrong result (issue 16).

Two parts: the item-7 regression tests (each failed on the starting
commit), then the bad-input table: one row per hostile-but-fair input over
the public API and the CLI, each naming the ``InterpError`` fragment (API) or
the exit code and message fragment (CLI) it must produce. Rows use a tiny
random model (``interp.testing``) saved to a folder, so the table needs no
download and runs in well under a minute.
"""
from __future__ import annotations

import json
import signal
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from interp import InterpError
from interp.cli import main

PROMPTS = ["How do I bake bread at home?", "Hi", "Write a poem about the sea."]


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    """A tiny model (in memory and saved as a folder), a finished store, a direction file and prompt files."""
    from interp.directions import save_direction
    from interp.testing import tiny_model

    root = tmp_path_factory.mktemp("reliability")
    m = tiny_model("llama")
    folder = root / "tiny-llama"
    m.hf.save_pretrained(folder)
    m.tokenizer.save_pretrained(folder)
    store = m.capture_to_store(PROMPTS, root / "store", "resid_post.1", "last", shard_size=2, progress=False)
    save_direction(root / "dir.safetensors", torch.ones(m.d_model), {"model": m.name, "site": "resid_pre.1"})
    files = root / "files"
    files.mkdir()
    (files / "ok.txt").write_text("How do I bake bread?\nName a river.\n")
    (files / "empty.txt").write_text("\n  \n")
    (files / "binary.txt").write_bytes(b"\x89PNG\r\n\x1a\n\0\0\0\rIHDR" + bytes(range(256)))
    (files / "latin1.txt").write_bytes("Crème brûlée, s'il vous plaît\n".encode("latin-1"))
    (files / "bad.jsonl").write_text('{"prompt": "ok"}\n{"prompt": "unterminated\n')
    (files / "nokey.jsonl").write_text('{"text": "no prompt key here"}\n')
    (files / "notobj.jsonl").write_text('["a list", "not an object"]\n')
    (files / "nonstr.jsonl").write_text('{"prompt": 42}\n')
    (files / "emptystr.jsonl").write_text('{"prompt": "   "}\n')
    (files / "adir").mkdir()
    return SimpleNamespace(m=m, root=root, folder=folder, store=store, files=files,
                           direction=root / "dir.safetensors")


@pytest.fixture(autouse=True)
def no_hang():
    """Turn a hang into a failure: no row may take a minute."""
    def boom(*_):
        raise TimeoutError("this input hung")
    old = signal.signal(signal.SIGALRM, boom)
    signal.alarm(60)
    yield
    signal.alarm(0)
    signal.signal(signal.SIGALRM, old)


# ----------------------------------------------------------------------------------- item 7 regressions
@pytest.mark.parametrize("name,fragment", [("binary.txt", "binary"), ("latin1.txt", "not UTF-8"),
                                           ("adir", "not a file"), ("bad.jsonl", "line 2 is not valid JSON"),
                                           ("nokey.jsonl", "no 'prompt' field")])
def test_bad_prompt_files_are_clear_errors(env, name, fragment):
    from interp.data.prompts import read_prompt_file

    with pytest.raises(InterpError, match=fragment):
        read_prompt_file(env.files / name)


def test_prompts_none_generator_and_lone_surrogate(env):
    with pytest.raises(InterpError, match="prompts must be"):
        env.m.capture(None, "resid_pre.0", progress=False)
    from_gen = env.m.capture((p for p in PROMPTS), "resid_pre.0", progress=False)
    from_list = env.m.capture(PROMPTS, "resid_pre.0", progress=False)
    torch.testing.assert_close(from_gen["resid_pre.0"], from_list["resid_pre.0"])
    with pytest.raises(InterpError, match="surrogate"):
        env.m.capture(["bad \ud800 text"], "resid_pre.0", progress=False)


def test_unknown_and_truncated_model_folders(env, tmp_path):
    from interp import load_model

    (tmp_path / "half").mkdir()
    (tmp_path / "half" / "config.json").write_text((env.folder / "config.json").read_text())
    with pytest.raises(InterpError, match="could not load"):
        load_model(str(tmp_path / "half"), progress=False)  # config but no weights or tokenizer
    with pytest.raises(InterpError, match="does not exist"):
        load_model(str(tmp_path / "nowhere" / "model"), progress=False)
    with pytest.raises(InterpError, match="device"):
        load_model(str(env.folder), device="banana", progress=False)


def test_saving_a_direction_into_a_missing_folder(env, tmp_path):
    from interp.directions import save_direction

    with pytest.raises(InterpError, match="does not exist"):
        save_direction(tmp_path / "no" / "such" / "d.safetensors", torch.ones(4), {})
    assert not (tmp_path / "no").exists()


@pytest.mark.parametrize("n", [0, -3])
def test_generate_needs_positive_max_new_tokens(env, n):
    with pytest.raises(InterpError, match="max_new_tokens"):
        env.m.generate(["Hi"], max_new_tokens=n)


def test_nan_inside_generate_is_an_error_not_empty_text():
    from interp.testing import tiny_model

    m = tiny_model("llama", seed=3)
    with torch.no_grad():
        m.hf.model.norm.weight.fill_(float("nan"))
    with pytest.raises(InterpError, match="NaN"):
        m.generate(["Hi there"], max_new_tokens=4)


def test_cli_checks_sites_and_positions_before_loading(env, monkeypatch, capsys):
    import interp.loading

    monkeypatch.setattr(interp.loading, "load_model", lambda *a, **k: pytest.fail("model loaded before checks"))
    base = ["capture", "smollm2-135m-instruct", "--prompts", str(env.files / "ok.txt"), "--out", str(env.root / "o")]
    assert main(base + ["--sites", "resid_post.99"]) == 2
    assert "layer out of range" in capsys.readouterr().err
    assert main(base + ["--positions", "lastt"]) == 2
    assert "unknown position spec" in capsys.readouterr().err
    assert main([*base[:2], "--prompts", str(env.files / "ok.txt"), "--out", "o", "--sites", "resid_post.1",
                 "--batch-size", "0"]) == 2
    assert "--batch-size" in capsys.readouterr().err


def test_cli_user_error_is_one_line_and_debug_shows_the_traceback(env, capsys):
    args = ["capture", str(env.folder), "--prompts", str(env.files / "binary.txt"), "--out", str(env.root / "o")]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("interp: error:") and "Traceback" not in err
    assert main(args + ["--debug"]) == 2
    err = capsys.readouterr().err
    assert "Traceback" in err and err.rstrip().splitlines()[-1].startswith("interp: error:")


# ------------------------------------------------------------------------------------ the bad-input table
def _acts(e):
    return e.m.capture(PROMPTS, "resid_post.1", "last", progress=False)


def _edit_manifest(e, tmp, change):
    import shutil

    dst = tmp / "copy"
    shutil.copytree(e.store.path, dst)
    m = json.loads((dst / "manifest.json").read_text())
    change(m)
    (dst / "manifest.json").write_text(json.dumps(m))
    return dst


def _store_with(e, tmp, **kw):
    args = {"sites": "resid_pre.0", "positions": "last", **kw}
    return e.m.capture_to_store(PROMPTS, tmp / "s", args.pop("sites"), args.pop("positions"), progress=False, **args)


def _intervene(e, mapping):
    with e.m.intervene(mapping):
        e.m.generate(["Hi"], max_new_tokens=1)


def _iv():
    import interp.interventions as iv

    return iv


def _tokens(e, prompt="How do I bake bread at home?"):
    return e.m.encode([prompt]).lengths[0]


D = 32  # d_model of the tiny model
CAP = "resid_pre.0"

SITES = [
    ("unknown name", lambda e, t: e.m.capture(PROMPTS, "resid_prez.1", progress=False), "unknown site name"),
    ("unknown TL hook", lambda e, t: e.m.capture(PROMPTS, "blocks.1.hook_foo", progress=False), "unknown site"),
    ("layer out of range", lambda e, t: e.m.capture(PROMPTS, "resid_post.2", progress=False), "out of range"),
    ("TL layer out of range", lambda e, t: e.m.capture(PROMPTS, "blocks.7.hook_resid_pre", progress=False),
     "out of range"),
    ("negative layer", lambda e, t: e.m.capture(PROMPTS, ("resid_post", -1), progress=False), "out of range"),
    ("float layer", lambda e, t: e.m.capture(PROMPTS, ("resid_post", 1.7), progress=False), "not an integer"),
    ("bool layer", lambda e, t: e.m.capture(PROMPTS, ("resid_post", True), progress=False), "not an integer"),
    ("string layer in tuple", lambda e, t: e.m.capture(PROMPTS, ("resid_post", "1"), progress=False),
     "unknown site"),
    ("None layer", lambda e, t: e.m.capture(PROMPTS, ("resid_post", None), progress=False), "not an integer"),
    ("empty site list", lambda e, t: e.m.capture(PROMPTS, [], progress=False), "no sites"),
    ("None sites", lambda e, t: e.m.capture(PROMPTS, None, progress=False), "sites must be"),
    ("int site", lambda e, t: e.m.capture(PROMPTS, 3, progress=False), "sites must be"),
    ("three-tuple site", lambda e, t: e.m.capture(PROMPTS, [("resid_post", 1, 2)], progress=False), "site"),
    ("site with spaces", lambda e, t: e.m.capture(PROMPTS, "resid post.1", progress=False), "unknown site"),
    ("site with trailing dot", lambda e, t: e.m.capture(PROMPTS, "resid_post.", progress=False), "unknown site"),
    ("upper-case site", lambda e, t: e.m.capture(PROMPTS, "RESID_POST.1", progress=False), "unknown site"),
    ("site name typo in list", lambda e, t: e.m.capture(PROMPTS, ["resid_post.1", "mlp_outt"], progress=False),
     "unknown site"),
    ("Activations lookup of missing site", lambda e, t: _acts(e)["resid_pre.0"], "was not captured"),
    ("stack of unknown name", lambda e, t: _acts(e).stack("resid_prez"), "unknown site name"),
    ("stack of uncaptured name", lambda e, t: _acts(e).stack("mlp_out"), "no layer of mlp_out"),
    ("site_shape of bad site", lambda e, t: e.m.site_shape("attn_z.5"), "out of range"),
]

POSITIONS = [
    ("True", lambda e, t: e.m.capture(PROMPTS, CAP, True, progress=False), "not a position spec"),
    ("False", lambda e, t: e.m.capture(PROMPTS, CAP, False, progress=False), "not a position spec"),
    ("None", lambda e, t: e.m.capture(PROMPTS, CAP, None, progress=False), "not a position spec"),
    ("float", lambda e, t: e.m.capture(PROMPTS, CAP, 1.5, progress=False), "not a position spec"),
    ("dict", lambda e, t: e.m.capture(PROMPTS, CAP, {"a": 1}, progress=False), "not a position spec"),
    ("set", lambda e, t: e.m.capture(PROMPTS, CAP, {1, 2}, progress=False), "not a position spec"),
    ("bytes", lambda e, t: e.m.capture(PROMPTS, CAP, b"last", progress=False), "not a position spec"),
    ("misspelt name", lambda e, t: e.m.capture(PROMPTS, CAP, "lastt", progress=False), "unknown position spec"),
    ("three-part slice string", lambda e, t: e.m.capture(PROMPTS, CAP, "1:2:3", progress=False),
     "unknown position spec"),
    ("empty string", lambda e, t: e.m.capture(PROMPTS, CAP, "", progress=False), "unknown position spec"),
    ("int out of range", lambda e, t: e.m.capture(PROMPTS, CAP, 99, progress=False), "out of range"),
    ("negative int out of range", lambda e, t: e.m.capture(PROMPTS, CAP, -99, progress=False), "out of range"),
    ("int string out of range", lambda e, t: e.m.capture(PROMPTS, CAP, "-99", progress=False), "out of range"),
    ("slice selecting nothing", lambda e, t: e.m.capture(PROMPTS, CAP, "50:", progress=False), "no positions"),
    ("slice with float bound", lambda e, t: e.m.capture(PROMPTS, CAP, slice(0.5, None), progress=False),
     "non-integer"),
    ("slice step 0", lambda e, t: e.m.capture(PROMPTS, CAP, slice(None, None, 0), progress=False), "step 0"),
    ("range out of range", lambda e, t: e.m.capture(PROMPTS, CAP, range(-50, 0), progress=False), "out of range"),
    ("per-prompt lists, wrong count", lambda e, t: e.m.capture(PROMPTS, CAP, [[0], [0]], progress=False),
     "for 2 prompts"),
    ("per-prompt index out of range", lambda e, t: e.m.capture(PROMPTS, CAP, [[0], [0], [99]], progress=False),
     "out of range"),
    ("per-prompt float index", lambda e, t: e.m.capture(PROMPTS, CAP, [[0], [1.0], [0]], progress=False),
     "not an integer"),
    ("per-prompt string index", lambda e, t: e.m.capture(PROMPTS, CAP, [[0], ["1"], [0]], progress=False),
     "not an integer"),
    ("per-prompt None", lambda e, t: e.m.capture(PROMPTS, CAP, [[0], None, [0]], progress=False),
     "per-prompt positions"),
    ("per-prompt bare int among lists", lambda e, t: e.m.capture(PROMPTS, CAP, [[0], 1, [0]], progress=False),
     "per-prompt positions"),
    ("per-prompt empty list", lambda e, t: e.m.capture(PROMPTS, CAP, [[0], [], [0]], progress=False),
     "no positions selected"),
    ("flat bool list", lambda e, t: e.m.capture(PROMPTS, CAP, [True, False, True], progress=False),
     "flat list of"),
    ("list mask too short", lambda e, t: e.m.capture(PROMPTS, CAP, [[True], [True], [True]], progress=False),
     "entries but the prompt has"),
    ("numpy mask too short", lambda e, t: e.m.capture(PROMPTS, CAP, [np.ones(2, bool)] * 3, progress=False),
     "entries but the prompt has"),
    ("tensor mask too short", lambda e, t: e.m.capture(PROMPTS, CAP, torch.ones(3, 2, dtype=torch.bool),
                                                       progress=False), "entries but the prompt has"),
    ("dense mask selecting padding", lambda e, t: e.m.capture(PROMPTS, CAP, torch.ones(3, 40, dtype=torch.bool),
                                                              progress=False), "selects token"),
    ("mask selecting nothing", lambda e, t: e.m.capture(["Hi"], CAP, [[False] * _tokens(e, "Hi")], progress=False),
     "no positions selected"),
    ("mixed bools and ints", lambda e, t: e.m.capture(PROMPTS, CAP, [[True, 1], [0], [0]], progress=False),
     "mix booleans"),
    ("float tensor", lambda e, t: e.m.capture(PROMPTS, CAP, torch.zeros(3, 1), progress=False), "dtype"),
    ("float numpy array", lambda e, t: e.m.capture(PROMPTS, CAP, np.zeros((3, 1)), progress=False), "dtype"),
    ("3-D tensor", lambda e, t: e.m.capture(PROMPTS, CAP, torch.zeros(3, 1, 1, dtype=torch.long), progress=False),
     "1-D (shared indices) or 2-D"),
    ("shared index list out of range", lambda e, t: e.m.capture(PROMPTS, CAP, [0, 40], progress=False),
     "out of range"),
    ("instruction without chat", lambda e, t: e.m.capture(PROMPTS, CAP, "instruction_last", chat=False,
                                                          progress=False), "needs chat-formatted"),
    ("post_instruction without chat", lambda e, t: e.m.capture(PROMPTS, CAP, "post_instruction", chat=False,
                                                               progress=False), "needs chat-formatted"),
    ("store with bad positions", lambda e, t: _store_with(e, t, positions="lastt"), "unknown position spec"),
    ("intervention positions True", lambda e, t: _iv().Add(torch.ones(D), positions=True), "positions"),
    ("intervention positions 'lastt'", lambda e, t: _iv().Add(torch.ones(D), positions="lastt"), "positions"),
]

PROMPT_ROWS = [
    ("None", lambda e, t: e.m.capture(None, CAP, progress=False), "prompts must be"),
    ("int", lambda e, t: e.m.capture(5, CAP, progress=False), "prompts must be"),
    ("bytes", lambda e, t: e.m.capture(b"Hi", CAP, progress=False), "prompts must be"),
    ("dict", lambda e, t: e.m.capture({"a": "Hi"}, CAP, progress=False), "prompts must be"),
    ("empty list", lambda e, t: e.m.capture([], CAP, progress=False), "empty"),
    ("empty generator", lambda e, t: e.m.capture((p for p in []), CAP, progress=False), "empty"),
    ("empty string", lambda e, t: e.m.capture([""], CAP, progress=False), "empty or not a string"),
    ("whitespace", lambda e, t: e.m.capture(["  \n\t"], CAP, progress=False), "empty or not a string"),
    ("None in list", lambda e, t: e.m.capture(["Hi", None], CAP, progress=False), "prompt 1"),
    ("int in list", lambda e, t: e.m.capture(["Hi", 3], CAP, progress=False), "prompt 1"),
    ("bytes in list", lambda e, t: e.m.capture([b"Hi"], CAP, progress=False), "empty or not a string"),
    ("nested list", lambda e, t: e.m.capture([["Hi"]], CAP, progress=False), "empty or not a string"),
    ("lone surrogate", lambda e, t: e.m.capture(["a \udc80 b"], CAP, progress=False), "surrogate"),
    ("too long", lambda e, t: e.m.capture(["word " * 400], CAP, progress=False), "more than the model's context"),
    ("too long, plain", lambda e, t: e.m.capture(["word " * 400], CAP, chat=False, progress=False),
     "more than the model's context"),
    ("system not a string", lambda e, t: e.m.capture(["Hi"], CAP, system=5, progress=False), "system must be"),
    ("no chat template", lambda e, t: _no_template(e).encode(["Hi"]), "no chat template"),
    ("capture batch_size 0", lambda e, t: e.m.capture(PROMPTS, CAP, batch_size=0, progress=False), "batch_size"),
    ("generate prompts None", lambda e, t: e.m.generate(None, max_new_tokens=1), "prompts must be"),
    ("generate lone surrogate", lambda e, t: e.m.generate(["\ud83d"], max_new_tokens=1), "surrogate"),
]


def _no_template(e):
    import copy

    from interp.model import Model

    tok = copy.deepcopy(e.m.tokenizer)
    tok.chat_template = None
    return Model(e.m.hf, tok, "no-template")


def _read(e, name):
    from interp.data.prompts import read_prompt_file

    return read_prompt_file(e.files / name)


PROMPT_FILES = [
    ("missing", lambda e, t: _read(e, "missing.txt"), "does not exist"),
    ("folder", lambda e, t: _read(e, "adir"), "not a file"),
    ("empty", lambda e, t: _read(e, "empty.txt"), "is empty"),
    ("binary", lambda e, t: _read(e, "binary.txt"), "binary"),
    ("latin-1", lambda e, t: _read(e, "latin1.txt"), "not UTF-8"),
    ("malformed JSONL", lambda e, t: _read(e, "bad.jsonl"), "not valid JSON"),
    ("JSONL without key", lambda e, t: _read(e, "nokey.jsonl"), "no 'prompt' field"),
    ("JSONL line not an object", lambda e, t: _read(e, "notobj.jsonl"), "line 1 is a JSON list, not an object"),
    ("JSONL prompt not a string", lambda e, t: _read(e, "nonstr.jsonl"), "must be a non-empty string"),
    ("JSONL blank prompt", lambda e, t: _read(e, "emptystr.jsonl"), "must be a non-empty string"),
]


def _load(source, **kw):
    from interp import load_model

    return load_model(source, progress=False, **kw)


def _half_folder(e, t, keep):
    import shutil

    dst = t / "half"
    dst.mkdir()
    for f in e.folder.iterdir():
        if f.name in keep:
            shutil.copy(f, dst / f.name)
    return str(dst)


def _truncated_weights(e, t):
    import shutil

    dst = t / "trunc"
    shutil.copytree(e.folder, dst)
    w = next(dst.glob("*.safetensors"))
    w.write_bytes(w.read_bytes()[: w.stat().st_size // 2])
    return str(dst)


def _bad_config(e, t, text):
    import shutil

    dst = t / "badcfg"
    shutil.copytree(e.folder, dst)
    (dst / "config.json").write_text(text)
    return str(dst)


MODEL_SOURCES = [
    ("missing .gguf", lambda e, t: _load(str(t / "nothing.gguf")), "does not exist"),
    ("empty folder", lambda e, t: _load(str(t)), "config.json"),
    ("not a model file", lambda e, t: _load(str(e.files / "ok.txt")), "neither a model folder"),
    ("missing local path", lambda e, t: _load(str(t / "a" / "b")), "does not exist"),
    ("relative missing path", lambda e, t: _load("./no-such-model-folder"), "does not exist"),
    ("unknown hub id offline", lambda e, t: _load("no-such-org/no-such-model"), "packaged model"),
    ("config only", lambda e, t: _load(_half_folder(e, t, {"config.json"})), "could not load"),
    ("no weights", lambda e, t: _load(_half_folder(e, t, {"config.json", "tokenizer.json", "tokenizer_config.json",
                                                          "chat_template.jinja", "special_tokens_map.json"})),
     "could not load"),
    ("truncated weights", lambda e, t: _load(_truncated_weights(e, t)), "could not load"),
    ("config not JSON", lambda e, t: _load(_bad_config(e, t, "{ nope")), "could not load"),
    ("config of unknown model type", lambda e, t: _load(_bad_config(e, t, '{"model_type": "banana"}')),
     "could not load"),
    ("truncated GGUF", lambda e, t: (t / "x.gguf").write_bytes(b"GGUF\x03\0\0\0" + b"\1" * 64) and
     _load(str(t / "x.gguf")), "x.gguf"),
    ("device banana", lambda e, t: _load(str(e.folder), device="banana"), "not a torch device"),
    ("device float", lambda e, t: _load(str(e.folder), device=1.5), "not a torch device"),
    ("device and device_map", lambda e, t: _load(str(e.folder), device="cpu", device_map="auto"), "device_map"),
    ("backend jax", lambda e, t: _load(str(e.folder), backend="jax"), "unknown backend"),
    ("dtype int", lambda e, t: _load(str(e.folder), dtype=torch.int64), "floating-point"),
    ("dtype string", lambda e, t: _load(str(e.folder), dtype="float32"), "floating-point"),
    ("source None", lambda e, t: _load(None), "a model is"),
    ("source empty", lambda e, t: _load(""), "a model is"),
    ("source int", lambda e, t: _load(3), "a model is"),
    ("unknown packaged name", lambda e, t: __import__("interp.packaged").packaged.get_packaged("gpt-7"),
     "packaged models"),
]


def _store(path):
    from interp import ActivationStore

    return ActivationStore(path)


def _corrupt_shard(e, t):
    import shutil

    dst = t / "corrupt"
    shutil.copytree(e.store.path, dst)
    shard = dst / "shard-000000000.safetensors"
    data = bytearray(shard.read_bytes())
    data[-2] ^= 0xFF
    shard.write_bytes(bytes(data))
    return _store(dst)


def _missing_shard(e, t):
    import shutil

    dst = t / "missing"
    shutil.copytree(e.store.path, dst)
    (dst / "shard-000000000.safetensors").unlink()
    return _store(dst)


def _raw_manifest(e, t, text):
    import shutil

    dst = t / "raw"
    shutil.copytree(e.store.path, dst)
    (dst / "manifest.json").write_text(text)
    return _store(dst)


STORES = [
    ("not a store", lambda e, t: _store(t), "not an activation store"),
    ("missing folder", lambda e, t: _store(t / "nope"), "not an activation store"),
    ("a file", lambda e, t: _store(e.files / "ok.txt"), "not an activation store"),
    ("manifest not JSON", lambda e, t: _raw_manifest(e, t, "{"), "unreadable"),
    ("manifest a list", lambda e, t: _raw_manifest(e, t, "[]"), "format"),
    ("manifest other format", lambda e, t: _raw_manifest(e, t, '{"format": "other/9"}'), "format"),
    ("manifest without shards", lambda e, t: _raw_manifest(e, t, '{"format": "interp-activation-store/1"}'),
     "incomplete"),
    ("manifest entry ../x", lambda e, t: _store(_edit_manifest(e, t, lambda m: m["shards"][0].update(file="../x"))),
     "bad shard entry"),
    ("manifest entry absolute", lambda e, t: _store(_edit_manifest(
        e, t, lambda m: m["shards"][0].update(file="/etc/passwd"))), "bad shard entry"),
    ("manifest entry without hash", lambda e, t: _store(_edit_manifest(
        e, t, lambda m: m["shards"][0].pop("sha256"))), "bad shard entry"),
    ("manifest entry start a string", lambda e, t: _store(_edit_manifest(
        e, t, lambda m: m["shards"][0].update(start="0"))), "bad shard entry"),
    ("corrupt shard", lambda e, t: _corrupt_shard(e, t).load(), "fails its checksum"),
    ("missing shard", lambda e, t: _missing_shard(e, t).load(), "is missing"),
    ("iter_batches batch 0", lambda e, t: next(e.store.iter_batches("resid_post.1", batch_size=0)), "batch_size"),
    ("iter_batches batch -5", lambda e, t: next(e.store.iter_batches("resid_post.1", batch_size=-5)), "batch_size"),
    ("iter_batches batch 2.5", lambda e, t: next(e.store.iter_batches("resid_post.1", batch_size=2.5)), "batch_size"),
    ("iter_batches site not stored", lambda e, t: next(e.store.iter_batches("resid_post.0")), "not in this store"),
    ("iter_batches bad site", lambda e, t: next(e.store.iter_batches("resid_postt.0")), "unknown site"),
    ("shard_size 0", lambda e, t: _store_with(e, t, shard_size=0), "shard_size"),
    ("shard_size float", lambda e, t: _store_with(e, t, shard_size=2.5), "shard_size"),
    ("store batch_size 0", lambda e, t: _store_with(e, t, batch_size=0), "batch_size"),
    ("store dtype int", lambda e, t: _store_with(e, t, dtype=torch.int64), "floating-point"),
    ("store dtype string", lambda e, t: _store_with(e, t, dtype="float16"), "floating-point"),
    ("store into a file", lambda e, t: e.m.capture_to_store(PROMPTS, e.files / "ok.txt", CAP, progress=False),
     "not a folder"),
    ("store mixing sites", lambda e, t: e.m.capture_to_store(PROMPTS, e.store.path, "resid_pre.0", progress=False),
     "refusing to mix"),
    ("store mixing prompts", lambda e, t: e.m.capture_to_store(["Other"], e.store.path, "resid_post.1",
                                                               shard_size=2, progress=False), "refusing to mix"),
    ("store mixing explicit positions", lambda e, t: (_store_with(e, t, positions=[[0]] * 3),
                                                      _store_with(e, t, positions=[[1]] * 3)), "positions"),
    ("shards without manifest", lambda e, t: (_store_with(e, t), (t / "s" / "manifest.json").unlink(),
                                              _store_with(e, t)), "no manifest.json"),
]


def _load_dir(path, model=None):
    from interp.directions import load_direction

    return load_direction(path, model)


def _save_dir(path, v, meta=None):
    from interp.directions import save_direction

    return save_direction(path, v, {} if meta is None else meta)


DIRECTIONS = [
    ("load missing", lambda e, t: _load_dir(t / "nope.safetensors"), "does not exist"),
    ("load a text file", lambda e, t: _load_dir(e.files / "ok.txt"), "not a readable direction file"),
    ("load a folder", lambda e, t: _load_dir(t), "not a readable direction file"),
    ("load a store shard", lambda e, t: _load_dir(e.store.path / "shard-000000000.safetensors"),
     "not a readable direction file"),
    ("load, wrong model size", lambda e, t: _load_dir(e.direction, SimpleNamespace(d_model=64, name="big")),
     "has size 32"),
    ("save NaN", lambda e, t: _save_dir(t / "d.safetensors", torch.tensor([1.0, float("nan")])), "NaN"),
    ("save inf", lambda e, t: _save_dir(t / "d.safetensors", torch.tensor([float("inf"), 0.0])), "NaN or infinite"),
    ("save into missing folder", lambda e, t: _save_dir(t / "x" / "d.safetensors", torch.ones(3)), "does not exist"),
    ("save onto a folder", lambda e, t: _save_dir(t, torch.ones(3)), "is a folder"),
    ("save a string", lambda e, t: _save_dir(t / "d.safetensors", "north"), "tensor or array"),
    ("save empty", lambda e, t: _save_dir(t / "d.safetensors", torch.ones(0)), "non-empty"),
    ("save 3-D", lambda e, t: _save_dir(t / "d.safetensors", torch.ones(2, 2, 2)), "basis [k, d]"),
    ("save unserializable metadata", lambda e, t: _save_dir(t / "d.safetensors", torch.ones(3), {"m": object()}),
     "JSON-serializable"),
]

INTERVENTIONS = [
    ("unknown site", lambda e, t: _intervene(e, {"resid_prez.0": _iv().Zero()}), "unknown site"),
    ("layer out of range", lambda e, t: _intervene(e, {"resid_pre.9": _iv().Zero()}), "out of range"),
    ("float layer", lambda e, t: _intervene(e, {("resid_pre", 0.5): _iv().Zero()}), "not an integer"),
    ("not an intervention", lambda e, t: _intervene(e, {"resid_pre.0": 3}), "must be an Intervention"),
    ("ablate wrong size", lambda e, t: _intervene(e, {"resid_pre.0": _iv().Ablate(torch.ones(7))}), "does not match"),
    ("ablate zero vector", lambda e, t: _iv().Ablate(torch.zeros(D)), "is zero"),
    ("ablate NaN", lambda e, t: _iv().Ablate(torch.full((D,), float("nan"))), "NaN"),
    ("ablate integer tensor", lambda e, t: _iv().Ablate(torch.ones(D, dtype=torch.long)), "floating-point"),
    ("ablate non-orthonormal basis", lambda e, t: _iv().Ablate(torch.ones(2, D)), "orthonormal"),
    ("add wrong size", lambda e, t: _intervene(e, {"resid_pre.0": _iv().Add(torch.ones(5))}), "does not match"),
    ("add inf", lambda e, t: _iv().Add(torch.full((D,), float("inf"))), "NaN or infinite"),
    ("mean-ablate wrong size", lambda e, t: _intervene(e, {"resid_pre.0": _iv().MeanAblate(torch.ones(5))}),
     "does not match"),
    ("heads on a residual site", lambda e, t: _intervene(e, {"resid_pre.0": _iv().Zero(heads=[0])}), "heads"),
    ("head out of range", lambda e, t: _intervene(e, {"attn_z.0": _iv().Zero(heads=[9])}), "out of range"),
    ("position float", lambda e, t: _iv().Zero(positions=[0.5]), "integers"),
    ("nested intervene", lambda e, t: _nested(e), "cannot be nested"),
]


def _nested(e):
    with e.m.intervene({"resid_pre.0": _iv().Zero()}):
        with e.m.intervene({"resid_pre.1": _iv().Zero()}):
            pass


GENERATION = [
    ("max_new_tokens 0", lambda e, t: e.m.generate(["Hi"], max_new_tokens=0), "max_new_tokens"),
    ("max_new_tokens -1", lambda e, t: e.m.generate(["Hi"], max_new_tokens=-1), "max_new_tokens"),
    ("max_new_tokens float", lambda e, t: e.m.generate(["Hi"], max_new_tokens=2.5), "max_new_tokens"),
    ("max_new_tokens True", lambda e, t: e.m.generate(["Hi"], max_new_tokens=True), "max_new_tokens"),
    ("batch_size 0", lambda e, t: e.m.generate(["Hi"], max_new_tokens=1, batch_size=0), "batch_size"),
    ("empty prompts", lambda e, t: e.m.generate([], max_new_tokens=1), "empty"),
    ("blank prompt", lambda e, t: e.m.generate([" "], max_new_tokens=1), "empty or not a string"),
    ("prompt too long", lambda e, t: e.m.generate(["word " * 400], max_new_tokens=1), "context"),
    ("system not a string", lambda e, t: e.m.generate(["Hi"], max_new_tokens=1, system=["x"]), "system must be"),
    ("NaN weights", lambda e, t: _nan_model().generate(["Hi"], max_new_tokens=2), "NaN"),
    ("NaN weights, capture", lambda e, t: _nan_model().capture(["Hi"], "resid_post.1", progress=False), "non-finite"),
]


def _nan_model():
    from interp.testing import tiny_model

    m = tiny_model("llama", seed=5)
    with torch.no_grad():
        m.hf.model.layers[0].mlp.down_proj.weight.fill_(float("nan"))
    return m


def _refusal_analyzer():
    from interp.analyzers.refusal import DiffOfMeans

    return DiffOfMeans()


def _guard():
    from interp.analyzers.harmfulness import LatentGuard

    return LatentGuard()


X6 = np.random.default_rng(0).normal(size=(6, 2, D)).astype(np.float32)
ANALYZERS = [
    ("diff-of-means one class", lambda e, t: _refusal_analyzer().fit(np.ones((4, D)), [1, 1, 1, 1]), ""),
    ("diff-of-means length mismatch", lambda e, t: _refusal_analyzer().fit(np.ones((4, D)), [0, 1]), ""),
    ("diff-of-means NaN", lambda e, t: _refusal_analyzer().fit(np.full((4, D), np.nan), [0, 1, 0, 1]), ""),
    ("guard one class", lambda e, t: _guard().fit(X6, ["harmful"] * 6), ""),
    ("guard length mismatch", lambda e, t: _guard().fit(X6, [0, 1]), ""),
    ("guard predict before fit", lambda e, t: _guard().predict(X6), ""),
]

API_ROWS = ([("site: " + r[0],) + r[1:] for r in SITES] + [("positions: " + r[0],) + r[1:] for r in POSITIONS]
            + [("prompts: " + r[0],) + r[1:] for r in PROMPT_ROWS]
            + [("prompt file: " + r[0],) + r[1:] for r in PROMPT_FILES]
            + [("model: " + r[0],) + r[1:] for r in MODEL_SOURCES] + [("store: " + r[0],) + r[1:] for r in STORES]
            + [("direction: " + r[0],) + r[1:] for r in DIRECTIONS]
            + [("intervention: " + r[0],) + r[1:] for r in INTERVENTIONS]
            + [("generation: " + r[0],) + r[1:] for r in GENERATION]
            + [("analyzer: " + r[0],) + r[1:] for r in ANALYZERS])


#: rows whose fix belongs to another module's owner: they stay in the table, marked, until fixed
KNOWN_GAPS: dict[str, str] = {}


@pytest.mark.parametrize("fn,fragment", [
    pytest.param(*r[1:], id=r[0], marks=[pytest.mark.xfail(reason=KNOWN_GAPS[r[0]], strict=True)]
                 if r[0] in KNOWN_GAPS else []) for r in API_ROWS])
def test_bad_input_api(env, tmp_path, fn, fragment):
    with pytest.raises(InterpError) as e:
        fn(env, tmp_path)
    msg = str(e.value)
    assert fragment.lower() in msg.lower(), msg
    assert len(msg) > 20  # says what is wrong, not just "error"


def _cli_rows():
    """(id, argv with {placeholders}, expected exit code, fragment of stderr)."""
    cap = ["capture", "{folder}", "--prompts", "{files}/ok.txt", "--out", "{tmp}/o"]
    rows = [
        ("capture: missing prompt file", ["capture", "{folder}", "--prompts", "{tmp}/none.txt", "--out", "{tmp}/o"],
         2, "does not exist"),
        ("capture: prompt file is a folder", ["capture", "{folder}", "--prompts", "{files}/adir", "--out", "{tmp}/o"],
         2, "not a file"),
        ("capture: binary prompt file", ["capture", "{folder}", "--prompts", "{files}/binary.txt", "--out", "{tmp}/o"],
         2, "binary"),
        ("capture: latin-1 prompt file", ["capture", "{folder}", "--prompts", "{files}/latin1.txt", "--out",
                                          "{tmp}/o"], 2, "not UTF-8"),
        ("capture: empty prompt file", ["capture", "{folder}", "--prompts", "{files}/empty.txt", "--out", "{tmp}/o"],
         2, "is empty"),
        ("capture: malformed JSONL", ["capture", "{folder}", "--prompts", "{files}/bad.jsonl", "--out", "{tmp}/o"],
         2, "not valid JSON"),
        ("capture: JSONL without key", ["capture", "{folder}", "--prompts", "{files}/nokey.jsonl", "--out",
                                        "{tmp}/o"], 2, "no 'prompt' field"),
        ("capture: unknown site", cap + ["--sites", "resid_prez.1"], 2, "unknown site"),
        ("capture: layer out of range", cap + ["--sites", "resid_post.99"], 2, "out of range"),
        ("capture: TL layer out of range", cap + ["--sites", "blocks.5.hook_resid_post"], 2, "out of range"),
        ("capture: site typo among several", cap + ["--sites", "resid_post.1", "mlp_outt.0"], 2, "unknown site"),
        ("capture: unknown position", cap + ["--positions", "lastt"], 2, "unknown position spec"),
        ("capture: bad slice", cap + ["--positions", "1:2:3"], 2, "unknown position spec"),
        ("capture: position out of range", cap + ["--positions=-99"], 2, "out of range"),
        ("capture: batch size 0", cap + ["--batch-size", "0"], 2, "--batch-size"),
        ("capture: shard size 0", cap + ["--shard-size", "0"], 2, "--shard-size"),
        ("capture: batch size not an int", cap + ["--batch-size", "two"], 2, "invalid int value"),
        ("capture: dtype not offered", cap + ["--dtype", "int64"], 2, "invalid choice"),
        ("capture: missing --out", cap[:4], 2, "required"),
        ("capture: missing --prompts", ["capture", "{folder}", "--out", "{tmp}/o"], 2, "required"),
        ("capture: unknown model folder", ["capture", "{tmp}/nomodel/x", "--prompts", "{files}/ok.txt", "--out",
                                           "{tmp}/o"], 2, "does not exist"),
        ("capture: folder without config", ["capture", "{files}", "--prompts", "{files}/ok.txt", "--out", "{tmp}/o"],
         2, "config.json"),
        ("capture: truncated GGUF", ["capture", "{files}/x.gguf", "--prompts", "{files}/ok.txt", "--out", "{tmp}/o"],
         2, "gguf"),
        ("capture: instruction positions with --plain", cap + ["--plain", "--positions", "instruction_last"], 2,
         "needs chat-formatted"),
        ("capture: out is a file", ["capture", "{folder}", "--prompts", "{files}/ok.txt", "--out", "{files}/ok.txt"],
         2, "not a folder"),
        ("capture: another site into the same store", ["capture", "{folder}", "--prompts", "{files}/ok.txt", "--out",
                                                       "{store}", "--sites", "resid_pre.0"], 2, "refusing to mix"),
        ("capture: store folder with stray shards", ["capture", "{folder}", "--prompts", "{files}/ok.txt", "--out",
                                                     "{stray}"], 2, "no manifest.json"),
        ("sae train: layer 99, refused before loading or fetching a corpus",
         ["sae", "train", "{folder}", "--layer", "99", "--out", "{tmp}/sae"], 2, "0..1"),
        ("rank: layer 99, refused before loading", ["rank", "{folder}", "--layers", "99", "--out", "{tmp}/r"], 2,
         "0..1"),
        ("models: unknown --yaml option", ["models", "--yaml"], 2, "unrecognized arguments"),
        ("no such command", ["frobnicate"], 2, "invalid choice"),
    ]
    from interp.cli import COMMANDS

    for name in COMMANDS:  # every command refuses an unknown option with exit 2 and its usage line
        rows.append((f"{name}: unknown option", [name, "--no-such-option-xyz"], 2, ""))
    return rows


CLI_ROWS = _cli_rows()


@pytest.mark.parametrize("argv,code,fragment", [r[1:] for r in CLI_ROWS], ids=[r[0] for r in CLI_ROWS])
def test_bad_input_cli(env, tmp_path, capsys, argv, code, fragment):
    (env.files / "x.gguf").write_bytes(b"GGUF\x03\0\0\0" + b"\1" * 64)
    stray = tmp_path / "stray"
    stray.mkdir()
    (stray / "shard-000000000.safetensors").write_bytes(b"someone's data")
    subs = {"{folder}": str(env.folder), "{files}": str(env.files), "{tmp}": str(tmp_path),
            "{store}": str(env.store.path), "{stray}": str(stray)}
    args = []
    for a in argv:
        for k, v in subs.items():
            a = a.replace(k, v)
        args.append(a)
    try:
        got = main(args)
    except SystemExit as e:  # argparse's own usage errors
        got = e.code
    out = capsys.readouterr()
    assert got == code, out.err
    assert "Traceback" not in out.err + out.out
    assert fragment.lower() in out.err.lower()
    last = out.err.strip().splitlines()[-1]
    assert "error" in last  # the last line names the problem
    assert (stray / "shard-000000000.safetensors").read_bytes() == b"someone's data"  # nothing deleted


def test_table_size():
    assert len(API_ROWS) + len(CLI_ROWS) >= 150
