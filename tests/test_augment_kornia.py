"""AugmentPipe inside kornia's containers, and kornia augmentations as extra stages of AugmentPipe."""

from __future__ import annotations

import kornia.augmentation as K
import pytest
import torch

from augment import AugmentPipe, KorniaAugmentPipe
from augment.extra_stages import parse_extra


def dots(n: int, size: int, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """One single-pixel dot per image, away from the border; returns (images [n, 1, size, size], xy [n, 2])."""
    xy = torch.randint(size // 4, 3 * size // 4, (n, 2), generator=gen)
    images = torch.zeros(n, 1, size, size)
    images[torch.arange(n), 0, xy[:, 1], xy[:, 0]] = 1
    return images, xy.float()


def blobs(n: int, size: int, gen: torch.Generator, sigma: float = 1.5) -> tuple[torch.Tensor, torch.Tensor]:
    """A gaussian blob per image near the centre; returns (images, centres [n, 2])."""
    xy = (size - 1) / 2 + (torch.rand(n, 2, generator=gen) - 0.5) * size / 4
    grid = torch.arange(size, dtype=torch.float32)
    dx = grid[None, None, :] - xy[:, None, None, 0:1].squeeze(-1)
    dy = grid[None, :, None] - xy[:, None, None, 1:2].squeeze(-1)
    return torch.exp(-(dx.square() + dy.square()) / (2 * sigma**2))[:, None], xy


def centroids(images: torch.Tensor, around: torch.Tensor, radius: float = 5) -> torch.Tensor:
    """Centre of mass of each image [N, 1, H, W] within `radius` of `around` [N, 2]: the reflections that
    fill the border do not count."""
    size = images.shape[-1]
    grid = torch.arange(size, dtype=images.dtype)
    near = ((grid[None, None, :] - around[:, None, None, 0]).square()
            + (grid[None, :, None] - around[:, None, None, 1]).square()) < radius**2
    mass = images[:, 0] * near
    x = (mass * grid[None, None, :]).sum(dim=(1, 2)) / mass.sum(dim=(1, 2))
    y = (mass * grid[None, :, None]).sum(dim=(1, 2)) / mass.sum(dim=(1, 2))
    return torch.stack([x, y], dim=1)


@pytest.mark.parametrize("container", ["AugmentationSequential", "ImageSequential"])
def test_params_drawn_by_forward_replay_the_same_output(container):
    torch.manual_seed(0)
    pipe = AugmentPipe("bgcfnc", p=0.7)
    aug = getattr(K, container)(KorniaAugmentPipe(pipe), K.RandomGaussianBlur((3, 3), (0.1, 1.0), p=0.5))
    x = torch.rand(8, 3, 16, 16)
    y = aug(x)
    assert not torch.equal(y, x)
    torch.manual_seed(123)  # the replay draws nothing: another RNG state changes nothing
    assert torch.equal(aug(x, params=aug._params), y)
    assert not torch.equal(aug(x), y)  # a new call draws anew


def test_the_pipe_in_a_container_is_the_pipe():
    pipe = AugmentPipe("bgc", p=0.6)
    x = torch.rand(8, 3, 16, 16)
    torch.manual_seed(5)
    expected = pipe(x)
    torch.manual_seed(5)
    assert torch.equal(K.AugmentationSequential(KorniaAugmentPipe(pipe))(x), expected)


def test_p_stays_the_pipes_one_value():
    pipe = AugmentPipe("bgc", p=0.0)
    wrapped = KorniaAugmentPipe(pipe)
    x = torch.rand(8, 3, 16, 16)
    assert torch.equal(K.ImageSequential(wrapped)(x), x)
    pipe.p = 1.0  # the wrapper reads the pipe's p at the next draw
    assert not torch.equal(K.ImageSequential(wrapped)(x), x)
    assert "p" not in dict(wrapped.named_buffers()) and wrapped.pipe is pipe


def test_transform_matrix_moves_keypoints_where_the_whole_pixel_moves_take_them():
    gen = torch.Generator().manual_seed(1)
    images, xy = dots(64, 16, gen)
    aug = K.AugmentationSequential(KorniaAugmentPipe(AugmentPipe("blit", p=1.0)), data_keys=["input", "keypoints"])
    out, moved = aug(images, xy[:, None])
    moved = moved[:, 0].round().long()
    inside = ((moved >= 0) & (moved < 16)).all(dim=1)
    assert inside.sum() > 40
    assert (out[inside, 0, moved[inside, 1], moved[inside, 0]] == 1).all()
    assert aug.transform_matrix is None or aug.transform_matrix.shape == (64, 3, 3)


def test_transform_matrix_of_the_geometric_part_follows_the_image_content():
    torch.manual_seed(2)
    gen = torch.Generator().manual_seed(2)
    images, centre = blobs(64, 32, gen)
    pipe = AugmentPipe("bg", p=1.0, scale_std=0.1, aniso_std=0.1, xfrac_std=0.05)
    aug = K.AugmentationSequential(KorniaAugmentPipe(pipe), data_keys=["input", "keypoints"])
    out, moved = aug(images, centre[:, None])
    moved = moved[:, 0]
    interior = ((moved > 7) & (moved < 24)).all(dim=1)
    assert interior.sum() > 40
    assert (centroids(out[interior], moved[interior]) - moved[interior]).norm(dim=1).max() < 0.25


def test_inverse_undoes_the_geometry():
    torch.manual_seed(3)
    x = torch.rand(16, 3, 16, 16)
    flips = K.AugmentationSequential(KorniaAugmentPipe(AugmentPipe(None, p=1.0, xflip=1, rotate90=1)))
    assert torch.equal(flips.inverse(flips(x)), x)  # flips and quarter turns come back exactly

    gen = torch.Generator().manual_seed(3)
    smooth, centre = blobs(16, 32, gen, sigma=2.5)
    pipe = AugmentPipe("bg", p=1.0, scale_std=0.1, aniso_std=0.1, xfrac_std=0.05)
    aug = K.AugmentationSequential(KorniaAugmentPipe(pipe), data_keys=["input", "keypoints"])
    out, moved = aug(smooth, centre[:, None])
    back = aug.inverse(out, moved)
    torch.testing.assert_close(back[1][:, 0], centre, atol=1e-4, rtol=0)
    # Where the blob stayed clear of the border, it comes back too (resampled twice: close, not exact).
    clear = ((moved[:, 0] > 8) & (moved[:, 0] < 23)).all(dim=1)
    assert clear.sum() > 8
    grid = torch.arange(32.0)
    near = ((grid[None, None, :] - centre[:, None, None, 0]).square()
            + (grid[None, :, None] - centre[:, None, None, 1]).square()) < 25
    assert ((back[0] - smooth)[:, 0] * near)[clear].abs().max() < 0.03
    coloured = K.AugmentationSequential(KorniaAugmentPipe(AugmentPipe("color", p=1.0)))
    y = coloured(x)
    assert torch.equal(coloured.inverse(y), y)  # colour is left applied, as kornia's intensity augmentations


def test_masks_move_with_the_geometry_and_keep_their_labels():
    torch.manual_seed(4)
    x = torch.rand(8, 1, 16, 16)
    labels = torch.randint(0, 4, (8, 1, 16, 16)).float()
    blits = K.AugmentationSequential(KorniaAugmentPipe(AugmentPipe("blit", p=1.0)), data_keys=["input", "mask"])
    both = torch.cat([x, labels], dim=1)
    out, mask = blits(both, labels)
    assert torch.equal(mask, out[:, 1:])  # whole-pixel moves: the mask moves exactly as the image
    warped = K.AugmentationSequential(KorniaAugmentPipe(AugmentPipe("bgc", p=1.0)), data_keys=["input", "mask"])
    _, mask = warped(x, labels)
    assert set(mask.unique().tolist()) <= {0.0, 1.0, 2.0, 3.0}


def test_a_pipe_with_extra_stages_belongs_outside_the_container():
    with pytest.raises(ValueError, match="in the container itself"):
        KorniaAugmentPipe(AugmentPipe("bgc", extra=[K.RandomPerspective(0.3)]))


# --- extra kornia stages in AugmentPipe -------------------------------------------------------------


@pytest.mark.parametrize("p", [0.0, 0.3, 1.0])
def test_an_extra_stage_is_applied_with_probability_p(p):
    torch.manual_seed(6)
    pipe = AugmentPipe(None, p=p, extra=[K.RandomHorizontalFlip()])  # its own p of 0.5 is replaced
    x = torch.rand(4000, 1, 8, 8)
    changed = (pipe(x) != x).flatten(1).any(dim=1).float().mean()
    assert float(changed) == pytest.approx(p, abs=0.03)
    assert pipe.extra[0].p == 1.0


def test_extra_stages_follow_the_pipeline_and_replay():
    torch.manual_seed(7)
    pipe = AugmentPipe("bgc", p=0.5, extra=[K.RandomPerspective(0.3), K.RandomSharpness(0.5)])
    x = torch.rand(32, 3, 16, 16, requires_grad=True)
    params = pipe.sample(32, 3, 16, 16)
    y = pipe.apply(x, params)
    assert torch.equal(pipe.apply(x, params), y)
    y.sum().backward()
    assert x.grad is not None and torch.isfinite(x.grad).all()
    chosen = params.extra[0][0]
    assert 5 < int(chosen.sum()) < 27


def test_extra_stages_must_be_kornia_augmentations_that_keep_the_size():
    with pytest.raises(ValueError, match="kornia augmentations"):
        AugmentPipe("bgc", extra=[torch.nn.Identity()])
    pipe = AugmentPipe(None, p=1.0, extra=[K.RandomCrop((8, 8))])
    with pytest.raises(ValueError, match="must keep the size"):
        pipe(torch.rand(2, 3, 16, 16))


def test_command_line_names_of_common_stages():
    perspective, blur = parse_extra("perspective:0.25, blur")
    assert isinstance(perspective, K.RandomPerspective) and isinstance(blur, K.RandomGaussianBlur)
    assert float(perspective._param_generator.distortion_scale) == 0.25
    assert parse_extra("") == [] and parse_extra(None) == []
    with pytest.raises(ValueError, match="unknown extra stage 'swirl'.*perspective"):
        parse_extra("swirl")
    with pytest.raises(ValueError, match="'perspective:x'"):
        parse_extra("perspective:x")
