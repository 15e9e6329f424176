"""SSIM, PSNR and the Frechet distance against closed forms and a hand-written SSIM."""

import math

import numpy as np
import pytest
import torch

from locoedit.evaluate.metrics import MAX_PSNR, frechet_distance, psnr, ssim

torch.set_num_threads(1)


def test_psnr_of_a_constant_offset_and_of_identical_images():
    a = torch.rand(3, 3, 8, 8, generator=torch.Generator().manual_seed(0)) * 0.8
    assert torch.allclose(psnr(a, a + 0.1), torch.full((3,), 20.0), atol=1e-4)  # 10 log10(1 / 0.01)
    assert torch.equal(psnr(a, a), torch.full((3,), MAX_PSNR))


def test_ssim_of_constant_images_is_the_luminance_term():
    # Zero variances: SSIM = (2ab + C1) / (a^2 + b^2 + C1) exactly.
    c1 = 0.01**2
    for a, b in [(0.2, 0.7), (0.5, 0.5), (0.0, 1.0)]:
        value = ssim(torch.full((1, 3, 16, 16), a), torch.full((1, 3, 16, 16), b)).item()
        assert value == pytest.approx((2 * a * b + c1) / (a * a + b * b + c1), abs=1e-6)


def _ssim_by_hand(x: np.ndarray, y: np.ndarray) -> float:
    """Wang et al. with an 11x11 Gaussian window (sigma 1.5), valid positions only, one channel."""
    coords = np.arange(11) - 5.0
    g = np.exp(-(coords**2) / (2 * 1.5**2))
    w = np.outer(g, g) / np.outer(g, g).sum()
    c1, c2 = 0.01**2, 0.03**2
    values = []
    for i in range(x.shape[0] - 10):
        for j in range(x.shape[1] - 10):
            px, py = x[i : i + 11, j : j + 11], y[i : i + 11, j : j + 11]
            mx, my = (w * px).sum(), (w * py).sum()
            vx, vy = (w * px * px).sum() - mx**2, (w * py * py).sum() - my**2
            cov = (w * px * py).sum() - mx * my
            values.append(((2 * mx * my + c1) * (2 * cov + c2)) / ((mx**2 + my**2 + c1) * (vx + vy + c2)))
    return float(np.mean(values))


def test_ssim_matches_a_hand_written_reference():
    gen = torch.Generator().manual_seed(1)
    a = torch.rand(2, 3, 14, 13, generator=gen, dtype=torch.float64)
    b = (a + 0.2 * torch.randn(a.shape, generator=gen, dtype=torch.float64)).clamp(0, 1)
    ours = ssim(a, b)
    for n in range(2):
        expected = np.mean([_ssim_by_hand(a[n, c].numpy(), b[n, c].numpy()) for c in range(3)])
        assert ours[n].item() == pytest.approx(expected, abs=1e-5)


def test_ssim_is_one_for_identical_images_symmetric_and_falls_with_noise():
    gen = torch.Generator().manual_seed(2)
    a = torch.rand(1, 3, 16, 16, generator=gen)
    assert ssim(a, a).item() == pytest.approx(1.0, abs=1e-6)
    slight = (a + 0.02 * torch.randn(a.shape, generator=gen)).clamp(0, 1)
    heavy = (a + 0.3 * torch.randn(a.shape, generator=gen)).clamp(0, 1)
    assert ssim(a, slight).item() == pytest.approx(ssim(slight, a).item(), abs=1e-6)
    assert 1 > ssim(a, slight).item() > ssim(a, heavy).item()
    # Images smaller than the window use a smaller odd window instead of failing.
    assert ssim(a[..., :6, :6], a[..., :6, :6]).item() == pytest.approx(1.0, abs=1e-6)


def test_frechet_distance_closed_forms():
    gen = torch.Generator().manual_seed(3)
    x = torch.randn(400, 5, generator=gen, dtype=torch.float64)
    assert frechet_distance(x, x) == pytest.approx(0.0, abs=1e-8)
    shift = torch.tensor([1.0, -2.0, 0.5, 0.0, 3.0], dtype=torch.float64)
    assert frechet_distance(x, x + shift) == pytest.approx(shift.pow(2).sum().item(), rel=1e-8)
    # One dimension: (mu_a - mu_b)^2 + (sigma_a - sigma_b)^2; here b = 2a.
    a = torch.randn(300, 1, generator=gen, dtype=torch.float64) + 1.0
    mean, std = a.mean().item(), a.std().item()
    assert frechet_distance(a, 2 * a) == pytest.approx(mean**2 + std**2, rel=1e-8)
    # Fewer samples than dimensions (singular covariances) still give a finite, non-negative number.
    few = frechet_distance(torch.randn(4, 64, generator=gen), torch.randn(4, 64, generator=gen))
    assert math.isfinite(few) and few > 0
