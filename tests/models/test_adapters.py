import pytest

from locoedit.models import GenerationSettings


@pytest.mark.parametrize("family", ["sd", "sdxl", "if", "pixart"])
def test_every_family_reports_each_denoising_step_and_returns_unit_range_images(tiny_adapters, family):
    adapter = tiny_adapters[family]
    steps = []
    images = adapter.generate(
        adapter.encode(["a red circle", "a house"]),
        [0, 1],
        GenerationSettings(3, 4.0, 16, 16),
        on_step=lambda: steps.append(1),
    )
    assert len(steps) == 3
    assert images.shape == (2, 3, 16, 16) and images.min() >= 0 and images.max() <= 1
    assert images.std() > 0.01  # not a blank canvas: IF's [-1, 1] samples were mapped, not clipped to black
