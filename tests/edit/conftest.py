"""Fixtures of the edit tests."""

import pytest

from locoedit.models import GenerationSettings, ModelSettings, adapter_for
from locoedit.testing import JOINT_PIPELINES

JOINT_STEPS = 3  # the denoising steps of the joint_adapters' default settings


@pytest.fixture(scope="module")
def joint_adapters(tmp_path_factory):
    """Tiny random SD3 and FLUX pipelines, generating 16x16 images in JOINT_STEPS steps."""
    adapters = {}
    for name, build in JOINT_PIPELINES.items():
        adapter = adapter_for(build(tmp_path_factory.mktemp(name)))
        adapter.recommended = ModelSettings(generation=GenerationSettings(JOINT_STEPS, 4.0, 16, 16))
        adapters[name] = adapter
    adapters["sd3"].t5_rows = 16  # the pipeline's 256 T5 rows are many for a 4-block test model
    adapters["flux"].text_max_length = 16
    return adapters
