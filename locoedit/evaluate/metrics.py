"""Image metrics for evaluating edits, in plain torch (no skimage, no torchvision).

- :func:`psnr`  peak signal-to-noise ratio in dB, data range 1 (images in [0, 1]);
- :func:`ssim`  structural similarity (Wang et al. 2004) with an 11x11 Gaussian window (sigma 1.5), K1 = 0.01,
  K2 = 0.03, valid convolution, per channel then averaged: skimage's ``structural_similarity(...,
  gaussian_weights=True, sigma=1.5, use_sample_covariance=False, data_range=1)``;
- :func:`frechet_distance`  ||mu_a - mu_b||^2 + tr(S_a + S_b - 2 (S_a S_b)^{1/2}) between two feature sets, the
  formula of FID, in float64 with symmetric eigendecompositions (no scipy ``sqrtm``).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

MAX_PSNR = 100.0  # dB reported for identical images (JSON has no infinity)


def psnr(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:  # [N, 3, H, W] x2 in [0, 1] -> [N] dB
    """10 log10(1 / MSE) per image; identical images give MAX_PSNR."""
    mse = (a.double() - b.double()).pow(2).flatten(1).mean(1)
    floor = 10.0 ** (-MAX_PSNR / 10.0)
    return (10.0 * torch.log10(1.0 / mse.clamp_min(floor))).float()


def _gaussian_window(size: int, sigma: float) -> torch.Tensor:  # [size, size], sums to 1
    coords = torch.arange(size, dtype=torch.float64) - (size - 1) / 2
    g = torch.exp(-(coords**2) / (2 * sigma**2))
    g = g / g.sum()
    return g[:, None] * g[None, :]


def ssim(a: torch.Tensor, b: torch.Tensor, window: int = 11, sigma: float = 1.5) -> torch.Tensor:  # -> [N]
    """Mean SSIM per image for [N, C, H, W] images in [0, 1]. The window shrinks (odd) for images under 11 pixels."""
    if a.shape != b.shape or a.ndim != 4:
        raise ValueError(
            f"ssim needs two [N, C, H, W] batches of the same shape, got {tuple(a.shape)} and {tuple(b.shape)}"
        )
    a, b = a.double(), b.double()
    channels = a.shape[1]
    size = min(window, a.shape[-2], a.shape[-1])
    size -= 1 - size % 2  # odd
    kernel = _gaussian_window(size, sigma).to(a.device).expand(channels, 1, size, size)
    filt = lambda x: F.conv2d(x, kernel, groups=channels)
    c1, c2 = 0.01**2, 0.03**2
    mu_a, mu_b = filt(a), filt(b)
    var_a = filt(a * a) - mu_a**2
    var_b = filt(b * b) - mu_b**2
    cov = filt(a * b) - mu_a * mu_b
    numerator = (2 * mu_a * mu_b + c1) * (2 * cov + c2)
    denominator = (mu_a**2 + mu_b**2 + c1) * (var_a + var_b + c2)
    return (numerator / denominator).flatten(1).mean(1).float()


def _sqrt_psd(matrix: torch.Tensor) -> torch.Tensor:  # [d, d] symmetric PSD, float64
    values, vectors = torch.linalg.eigh(matrix)
    return (vectors * values.clamp_min(0).sqrt()) @ vectors.T


def frechet_distance(a: torch.Tensor, b: torch.Tensor) -> float | None:  # [N, d], [M, d] features
    """Frechet distance between Gaussians fitted to two feature sets (FID's formula; N, M >= 2).

    tr((S_a S_b)^{1/2}) = sum of sqrt(eigenvalues of S_a^{1/2} S_b S_a^{1/2}), a symmetric PSD matrix, so the
    computation stays real and stable when few samples make the covariances singular.
    """
    if a.ndim != 2 or b.ndim != 2 or a.shape[1] != b.shape[1]:
        raise ValueError(
            f"frechet_distance needs [N, d] and [M, d] features, got {tuple(a.shape)} and {tuple(b.shape)}"
        )
    if a.shape[0] < 2 or b.shape[0] < 2:
        raise ValueError("frechet_distance needs at least two samples per set")
    a, b = a.double(), b.double()
    mu_a, mu_b = a.mean(0), b.mean(0)
    cov_a, cov_b = torch.cov(a.T, correction=1), torch.cov(b.T, correction=1)
    cov_a, cov_b = cov_a.reshape(a.shape[1], a.shape[1]), cov_b.reshape(b.shape[1], b.shape[1])
    root_a = _sqrt_psd(cov_a)
    middle = root_a @ cov_b @ root_a
    middle = (middle + middle.T) / 2
    trace_sqrt = torch.linalg.eigvalsh(middle).clamp_min(0).sqrt().sum()
    value = (mu_a - mu_b).pow(2).sum() + torch.trace(cov_a) + torch.trace(cov_b) - 2 * trace_sqrt
    value = max(value.item(), 0.0)  # round-off can give -1e-12 for identical sets
    return value if math.isfinite(value) else None  # non-finite features: no distance (JSON holds no NaN)
