"""Fast paths (issue [O]): ablation during generate as a temporary weight edit, benches that time stages.

The weight edit must be the same ablation as the hooks (same tokens, logits within float rounding), leave
the weights bit-identical afterwards (also when generate raises), and only stand in where it is exact.
"""
import pytest
import torch

from interp import Ablate, Add, everywhere
from interp.generation import generate
from interp.intervene import _weight_plan, weight_edit


def _snapshot(model):
    return {k: v.detach().clone() for k, v in model.hf.state_dict().items()}


def _same_weights(model, snap) -> bool:
    now = model.hf.state_dict()
    return set(now) == set(snap) and all(torch.equal(now[k], snap[k]) for k in snap)


PROMPTS = ["hello there", "a b c d e f g", "x"]


def _leaned_on(model):
    """A direction the model uses: the mean last-layer block input over the prompts (ablating a random one
    often changes no token of a tiny model)."""
    site = f"resid_pre.{model.n_layers - 1}"
    return model.capture(PROMPTS, site, "all", chat=False, progress=False)[site].flatten(0, 1).mean(0)


@pytest.mark.parametrize("arch", ["llama", "gpt2"])
def test_weight_edit_generates_the_hooked_ablation_and_restores_weights(arch):
    from interp.testing import tiny_model

    model = tiny_model(arch)
    r = _leaned_on(model)
    snap, hooks = _snapshot(model), model.num_hooks()
    plain = generate(model, PROMPTS, max_new_tokens=6, chat=False)
    fast = generate(model, PROMPTS, max_new_tokens=6, chat=False, interventions=everywhere(model, r))
    hooked = generate(model, PROMPTS, max_new_tokens=6, chat=False, interventions=everywhere(model, r),
                      weight_edit=False)
    assert fast == hooked
    assert fast != plain  # the ablation changes these generations, so equality above means something
    assert _same_weights(model, snap) and model.num_hooks() == hooks


def test_weight_edit_leaves_one_hook_and_matches_logits(tiny_llama):
    model = tiny_llama
    r = torch.randn(model.d_model, generator=torch.Generator().manual_seed(2))
    batch = model.pad(model.encode(PROMPTS, chat=False).ids)
    with model.intervene(everywhere(model, r)):
        hooked = model.run(batch)
        n_block = model.num_hooks()
        with weight_edit(model) as applied:
            n_edit = model.num_hooks()
            edited = model.run(batch)
        assert model.num_hooks() == n_block
    assert applied
    # 3 per layer + the context hook, against the layer-0 input hook + the context hook
    assert (n_block, n_edit) == (3 * model.n_layers + 1, 2)
    valid = batch["attention_mask"].bool()
    diff = (hooked - edited)[valid].abs().max().item()
    assert diff < 1e-4, diff  # float rounding only (measured 1e-6 on this model)


class _Boom(Exception):
    pass


@pytest.mark.parametrize("exc", [_Boom, KeyboardInterrupt])
def test_weights_restored_when_generate_raises(tiny_llama, exc):
    model = tiny_llama
    r = torch.randn(model.d_model)
    snap, hooks = _snapshot(model), model.num_hooks()
    seen = {}

    def stop(input_ids, scores):
        seen["hooks"] = model.num_hooks()  # during generate: the weight edit is in
        seen["o_proj"] = model.hf.model.layers[0].self_attn.o_proj.weight
        raise exc("stop")

    with pytest.raises(exc):
        generate(model, PROMPTS, max_new_tokens=4, chat=False, interventions=everywhere(model, r),
                 logits_processor=[stop])
    assert seen["hooks"] == 2
    assert not torch.equal(seen["o_proj"], snap["model.layers.0.self_attn.o_proj.weight"])
    assert _same_weights(model, snap) and model.num_hooks() == hooks
    assert getattr(model, "_intervention_state") is None


def test_plan_stands_in_only_where_exact(tiny_llama):
    from interp.testing import tiny_model

    model = tiny_llama
    n = model.n_layers
    r, v = torch.randn(model.d_model), torch.randn(model.d_model)

    def plan(mapping):
        ivs = {_site(k): iv for k, iv in mapping.items()}
        p = _weight_plan(model, ivs)
        return None if p is None else sorted(str(s) for s in p[1])

    full = plan(everywhere(model, r))
    assert len(full) == 3 * n - 1 and "resid_pre.0" not in full
    # something that may write along r below a block input keeps that block input's hook
    mixed = plan({**everywhere(model, r), "resid_post.0": Add(v)})
    assert "resid_pre.1" not in mixed and "attn_out.0" in mixed
    # positions, heads or another basis: hooks
    assert plan({"attn_out.0": Ablate(r, positions="generated")}) is None
    other = plan({**everywhere(model, r), "resid_pre.1": Ablate(v)})
    assert "resid_pre.1" not in other
    # gemma's norms after attention/MLP make the edit inexact: no stand-in at all
    gemma = tiny_model("gemma3")
    assert _weight_plan(gemma, {_site(k): iv for k, iv in everywhere(gemma, torch.randn(gemma.d_model)).items()}) \
        is None


def _site(key):
    from interp.sites import parse_site

    return parse_site(key)


def test_bench_generate_on_a_tiny_model(tiny_llama):
    from interp.bench.generate import bench_generate

    r = bench_generate(tiny_llama, batch=2, new_tokens=3, reps=1, peers=False)
    assert r["ablate_same_tokens_as_hooks"] is True
    assert set(r["ratios"]) == {"interp_ablate", "interp_ablate_first_call", "interp_ablate_hooks", "interp_add"}
    assert all(v > 0 for v in r["ratios"].values())


@pytest.mark.slow
def test_weight_edit_on_smollm2(smollm):
    model = smollm
    prompts = ["How do I bake bread?", "Name three colours.", "Write a haiku about rain."]
    # a direction the model leans on (the mean block input at layer 10): ablating it changes the text
    acts = model.capture(prompts, "resid_pre.10", "last", progress=False)
    r = acts["resid_pre.10"][:, 0].mean(0)
    snap = _snapshot(model)
    plain = generate(model, prompts, max_new_tokens=12)
    fast = generate(model, prompts, max_new_tokens=12, interventions=everywhere(model, r))
    hooked = generate(model, prompts, max_new_tokens=12, interventions=everywhere(model, r), weight_edit=False)
    assert fast == hooked
    assert fast != plain
    assert _same_weights(model, snap)


def test_repeated_generate_reuses_the_weight_edit_until_direction_or_weights_change():
    from interp.intervene import release_weight_edit
    from interp.testing import tiny_model

    model = tiny_model("llama")
    r = _leaned_on(model)
    first = generate(model, PROMPTS, max_new_tokens=6, chat=False, interventions=everywhere(model, r))
    built = model._weight_edit_cache[1]
    assert generate(model, PROMPTS, max_new_tokens=6, chat=False, interventions=everywhere(model, r)) == first
    assert model._weight_edit_cache[1] is built  # the same direction: not rebuilt
    other = generate(model, PROMPTS, max_new_tokens=6, chat=False, interventions=everywhere(model, r.flip(0)))
    assert model._weight_edit_cache[1] is not built  # another direction: rebuilt
    assert other == generate(model, PROMPTS, max_new_tokens=6, chat=False,
                             interventions=everywhere(model, r.flip(0)), weight_edit=False)
    # a weight changed in place (a training step, orthogonalize) invalidates the kept edit
    built = model._weight_edit_cache[1]
    with torch.no_grad():
        model.hf.model.layers[0].mlp.down_proj.weight.mul_(1.5)
    again = generate(model, PROMPTS, max_new_tokens=6, chat=False, interventions=everywhere(model, r.flip(0)))
    assert model._weight_edit_cache[1] is not built
    assert again == generate(model, PROMPTS, max_new_tokens=6, chat=False,
                             interventions=everywhere(model, r.flip(0)), weight_edit=False)
    release_weight_edit(model)
    assert model._weight_edit_cache is None
