"""Metric names: the official ones mean what they mean officially, other sizes follow the grammar."""

import pytest

from metrics import MetricSpec, parse_metric_names


def one(name):
    (spec,) = parse_metric_names(name)
    return spec


def test_official_names():
    assert one("fid50k_full") == MetricSpec("fid50k_full", "fid", num_gen=50_000, max_real=None)
    assert one("fid50k") == MetricSpec("fid50k", "fid", num_gen=50_000, max_real=50_000, keeps_xflips=True)
    assert one("kid50k_full") == MetricSpec("kid50k_full", "kid", num_gen=50_000, max_real=1_000_000)
    assert one("kid50k").max_real == 50_000
    pr = one("pr50k3_full")
    assert (pr.kind, pr.num_gen, pr.max_real, pr.nhood_size) == ("pr", 50_000, 200_000, 3)
    assert pr.result_keys == ("pr50k3_full_precision", "pr50k3_full_recall")
    assert one("pr50k3").max_real == 50_000
    is50k = one("is50k")
    assert (is50k.kind, is50k.num_gen, is50k.num_splits) == ("is", 50_000, 10)
    assert is50k.result_keys == ("is50k_mean", "is50k_std")
    ppl = one("ppl2_wend")
    assert (ppl.num_gen, ppl.space, ppl.sampling, ppl.crop, ppl.epsilon) == (50_000, "w", "end", False, 1e-4)
    assert ppl.result_keys == ("ppl2_wend",)
    zfull = one("ppl_zfull")
    assert (zfull.space, zfull.sampling, zfull.crop) == ("z", "full", True)


def test_other_sizes():
    assert (one("fid1k_full").num_gen, one("fid1k_full").max_real) == (1000, None)
    assert (one("fid200").num_gen, one("fid200").max_real) == (200, 200)
    assert (one("kid300_full").num_gen, one("kid300_full").max_real) == (300, 1_000_000)
    assert (one("pr200_3").num_gen, one("pr200_3").nhood_size) == (200, 3)
    assert (one("pr2k5_full").num_gen, one("pr2k5_full").nhood_size, one("pr2k5_full").max_real) == (
        2000, 5, 200_000)
    assert one("is100").num_gen == 100
    assert (one("ppl2_wend_1k").num_gen, one("ppl_zend_300").num_gen) == (1000, 300)


def test_lists_keep_order_drop_repeats_and_accept_none():
    specs = parse_metric_names(" fid50k_full, kid50k_full,fid50k_full ")
    assert [s.name for s in specs] == ["fid50k_full", "kid50k_full"]
    assert [s.name for s in parse_metric_names(["is10", "fid2"])] == ["is10", "fid2"]
    assert parse_metric_names("none") == [] and parse_metric_names("") == []


@pytest.mark.parametrize("bad", ["fid", "fid50k_ful", "FID50k", "kid50kfull", "pr50k", "pr200", "is50k_full",
                                 "ppl2_wmid", "ppl3_wend", "lpips", "fid-1"])
def test_bad_names_are_named_with_the_valid_forms(bad):
    with pytest.raises(ValueError) as err:
        parse_metric_names(f"fid50k_full,{bad}")
    message = str(err.value)
    assert repr(bad) in message and "fid{N}[_full]" in message and "ppl[2]_{z|w}" in message
    assert "\n" not in message


@pytest.mark.parametrize("small", ["fid1", "kid1", "pr3_3", "is5", "ppl2_wend_1", "pr10_0"])
def test_too_small_metrics_are_refused(small):
    with pytest.raises(ValueError, match=f"{small!r}"):
        parse_metric_names(small)
