import pytest

from interp import InterpError, Site, parse_site
from interp.sites import SITE_NAMES, expand_sites


@pytest.mark.parametrize("spelling,expected", [
    ("resid_pre.3", Site("resid_pre", 3)),
    ("blocks.3.hook_resid_pre", Site("resid_pre", 3)),
    ("blocks.0.hook_resid_mid", Site("resid_mid", 0)),
    ("blocks.7.hook_resid_post", Site("resid_post", 7)),
    ("blocks.2.hook_attn_out", Site("attn_out", 2)),
    ("blocks.2.hook_mlp_out", Site("mlp_out", 2)),
    ("blocks.5.mlp.hook_post", Site("mlp_act", 5)),
    ("blocks.1.attn.hook_z", Site("attn_z", 1)),
    (("mlp_out", 4), Site("mlp_out", 4)),
])
def test_spellings(spelling, expected):
    assert parse_site(spelling, n_layers=8) == expected


def test_tl_name_roundtrip():
    for name in SITE_NAMES:
        s = Site(name, 4)
        assert parse_site(s.tl_name) == s


@pytest.mark.parametrize("bad", ["resid_prez.1", "blocks.1.hook_foo", "resid_post", "nonsense"])
def test_unknown_site_lists_valid_ones(bad):
    with pytest.raises(InterpError) as e:
        parse_site(bad, n_layers=4)
    for name in SITE_NAMES:
        assert name in str(e.value)


def test_layer_out_of_range():
    with pytest.raises(InterpError, match="layers 0..3"):
        parse_site("resid_post.4", n_layers=4)


def test_expand_bare_name_means_all_layers():
    sites = expand_sites(["mlp_out", "mlp_out.1"], n_layers=3)
    assert [str(s) for s in sites] == ["mlp_out.0", "mlp_out.1", "mlp_out.2"]


# --- issue 16 item 2: a float or bool layer is refused, never truncated
@pytest.mark.parametrize("bad", [("resid_post", 1.7), ("resid_post", True), ("resid_post", "1"), ("resid_post", None)])
def test_non_integer_layer_is_refused(bad):
    with pytest.raises(InterpError, match="not an integer"):
        parse_site(bad, n_layers=4)
    with pytest.raises(InterpError, match="not an integer"):
        expand_sites([bad], n_layers=4)


def test_numpy_integer_layer_is_fine():
    import numpy as np

    assert parse_site(("resid_post", np.int64(2)), n_layers=4) == Site("resid_post", 2)
