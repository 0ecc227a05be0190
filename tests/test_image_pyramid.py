"""The pyramid parametrization Inverting Gradients can step in: its levels, gradients and box."""

from __future__ import annotations

import torch

from gialab.attacks.optimization.image_pyramid import ImagePyramid, pyramid_factors


def test_levels_stop_at_one_pixel() -> None:
    assert pyramid_factors(1, 32, 32) == (1,)
    assert pyramid_factors(4, 32, 32) == (1, 2, 4, 8)
    assert pyramid_factors(8, 8, 16) == (1, 2, 4, 8)  # 16 would be coarser than the 8-pixel side


def test_starts_at_the_start_image_with_coarse_levels_at_zero() -> None:
    start = torch.randn(2, 1, 3, 12, 12)  # (restarts, n, C, H, W)
    pyramid = ImagePyramid(start, levels=3)
    assert [tuple(level.shape[-2:]) for level in pyramid.levels] == [(12, 12), (6, 6), (3, 3)]
    assert torch.equal(pyramid.image(), start)
    assert not pyramid.image().requires_grad and not ImagePyramid(start, levels=1).image().requires_grad


def test_a_coarse_step_moves_a_whole_block() -> None:
    """An image gradient that wants one 8x8 block brighter: the finest level moves only those
    pixels, the coarsest level moves the block as one number, so the image gains along the
    whole block in one step."""
    pyramid = ImagePyramid(torch.zeros(1, 1, 16, 16), levels=4)
    want = torch.zeros(1, 1, 16, 16)
    want[..., :8, :8] = -1.0  # descent direction: +1 inside the block
    pyramid.set_signed_gradient(want)
    coarsest = pyramid.levels[-1].grad
    assert coarsest is not None and coarsest.shape[-2:] == (2, 2)
    assert coarsest[0, 0, 0, 0] == -1.0  # the block's own coarse pixel moves with it
    assert torch.equal(pyramid.levels[0].grad, want.sign())


def test_single_level_is_the_pixel_optimizer() -> None:
    start = torch.randn(1, 3, 8, 8)
    pyramid = ImagePyramid(start, levels=1)
    g = torch.randn(1, 3, 8, 8)
    pyramid.set_signed_gradient(g)
    assert torch.equal(pyramid.levels[0].grad, g.sign())


def test_projection_clips_the_image_and_keeps_the_coarse_levels() -> None:
    pyramid = ImagePyramid(torch.zeros(1, 1, 8, 8), levels=3)
    with torch.no_grad():
        pyramid.levels[2].fill_(3.0)  # every pixel composes to 3, out of the box
    coarse = [level.detach().clone() for level in pyramid.levels[1:]]
    pyramid.project(torch.tensor(-1.0), torch.tensor(1.0))
    image = pyramid.image()
    assert float(image.max()) <= 1.0 + 1e-6 and float(image.min()) >= -1.0 - 1e-6
    assert torch.allclose(image, torch.ones_like(image))
    assert all(torch.equal(a, b) for a, b in zip(coarse, pyramid.levels[1:], strict=True))
