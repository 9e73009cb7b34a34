"""metrics.diversity on constructed batches: collapse, memorisation, class coverage."""

from __future__ import annotations

import math

import pytest
import torch

from metrics import diversity


def test_mean_pairwise_distance_by_hand():
    x = torch.tensor([[0.0, 0.0], [3.0, 4.0], [0.0, 0.0]])
    # pairs: (0,1)=5, (0,2)=0, (1,2)=5, each counted twice over 3*2 ordered pairs
    assert diversity.mean_pairwise_distance(x) == pytest.approx(20 / 6)
    with pytest.raises(ValueError):
        diversity.mean_pairwise_distance(x[:1])


def test_collapsed_batch_scores_near_zero_and_diverse_near_one():
    gen = torch.Generator().manual_seed(0)
    reals = torch.rand([64, 1, 16, 16], generator=gen) * 2 - 1
    collapsed = reals[:1].repeat(64, 1, 1, 1) + 0.01 * torch.randn([64, 1, 16, 16], generator=gen)
    diverse = reals[torch.randperm(64, generator=gen)]
    assert diversity.diversity_ratio(collapsed, reals) < 0.05
    assert diversity.diversity_ratio(diverse, reals) == pytest.approx(1.0)
    few_modes = reals[:2].repeat(32, 1, 1, 1)
    assert 0.3 < diversity.diversity_ratio(few_modes, reals) < 0.8
    assert math.isnan(diversity.diversity_ratio(reals, reals[:1].repeat(4, 1, 1, 1)))


def test_memorisation_ratio_separates_copies_from_novel_samples():
    gen = torch.Generator().manual_seed(1)
    data = torch.rand([300, 64], generator=gen)
    train, heldout, novel = data[:100], data[100:200], data[200:]
    assert diversity.memorisation_ratio(train[torch.randint(100, [50], generator=gen)], train, heldout) == 0.0
    assert diversity.memorisation_ratio(novel, train, heldout) == pytest.approx(1.0, abs=0.1)
    assert diversity.nearest_distances(train[:3], train).tolist() == [0.0, 0.0, 0.0]


def test_class_coverage():
    even = torch.arange(1000) % 10
    assert diversity.class_entropy(even, 10) == pytest.approx(math.log2(10))
    assert diversity.classes_reached(even, 10) == 10
    one = torch.full([1000], 3)
    assert diversity.class_entropy(one, 10) == 0.0
    assert diversity.classes_reached(one, 10) == 1
    # A class with 1% of the samples is below a fifth of an even share (2%): not reached.
    rare = torch.cat([torch.full([990], 0), torch.full([10], 1)])
    assert diversity.classes_reached(rare, 10) == 1
    # Only readable samples count, but shares are of all samples.
    readable = torch.arange(1000) < 500
    assert diversity.classes_reached(even, 10, readable=readable) == 10
    assert diversity.classes_reached(even, 10, readable=torch.arange(1000) < 150) == 0
