import os

import pytest
import torch

# Two multi-threaded torch processes on 2 cores run 5x slower than one: pin every test process to one thread.
torch.set_num_threads(1)
os.environ.setdefault("HF_HUB_OFFLINE", "1")


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA device; the CPU path has its own test")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def tiny_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("tiny")


@pytest.fixture(scope="session")
def tiny_adapters(tiny_dir):
    """One adapter per family around a tiny random pipeline (shared: tests must not leave changes behind)."""
    from locoedit.models import adapter_for
    from locoedit.testing import TINY_PIPELINES

    return {name: adapter_for(build(tiny_dir / name)) for name, build in TINY_PIPELINES.items()}


@pytest.fixture(scope="session")
def tiny_sd_folder(tiny_dir):
    """A tiny SD pipeline saved with save_pretrained, to load by path like any real model."""
    from locoedit.testing import tiny_stable_diffusion

    folder = tiny_dir / "sd-folder"
    tiny_stable_diffusion(tiny_dir / "sd-build").save_pretrained(folder)
    return folder


@pytest.fixture(scope="session")
def tiny_clip_folder(tiny_dir):
    from locoedit.testing import tiny_clip

    return tiny_clip(tiny_dir / "clip")


@pytest.fixture(autouse=True, scope="session")
def _private_stats_cache(tmp_path_factory):
    """Preservation statistics are cached in a folder of the test session's own, never in the user's cache."""
    os.environ["LOCOEDIT_CACHE"] = str(tmp_path_factory.mktemp("locoedit-cache"))
