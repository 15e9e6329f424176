"""Deltas: apply and revert bit for bit, safetensors files with metadata, refusals, and a full pipeline export."""

import pickle

import pytest
import torch

torch.set_num_threads(1)

from safetensors.torch import save_file  # noqa: E402

from locoedit import __version__  # noqa: E402
from locoedit.models import adapter_for  # noqa: E402
from locoedit.edit.apply import apply_delta_to_folder  # noqa: E402
from locoedit.interventions.delta import EditDelta, architecture_fingerprint, tensor_sha256  # noqa: E402
from locoedit.edit import EditRequest, compute_edit  # noqa: E402
from locoedit.core.errors import LocoeditError  # noqa: E402
from locoedit.testing import TINY_PIPELINES  # noqa: E402

REQUEST = EditRequest(model="tiny-sd", concepts=("van gogh",), targets=("a painting",), kind="style", layers=(1, 2),
                      preserve=("a dog",), lambda_key=0.2, lambda_value=0.3, token="all")


def build(family="sd", folder=None, seed=0):
    return adapter_for(TINY_PIPELINES[family](folder, seed=seed))


@pytest.fixture
def sd(tmp_path):
    return build("sd", tmp_path / "sd")


@pytest.fixture
def delta(sd):
    return compute_edit(sd, REQUEST)


def weights(adapter):
    return {name: p.detach().clone() for name, p in adapter.denoiser.named_parameters()}


def same(a, b):
    return a.keys() == b.keys() and all(tensor_sha256(a[k]) == tensor_sha256(b[k]) for k in a)


def test_apply_then_revert_is_bit_for_bit_and_a_context_manager(sd, delta):
    before = weights(sd)
    handle = delta.apply(sd)
    edited = weights(sd)
    assert all(torch.equal(edited[name], tensor) for name, tensor in delta.tensors.items())
    handle.revert()
    handle.revert()  # idempotent
    assert same(weights(sd), before)
    with delta.apply(sd.pipe):
        assert same(weights(sd), edited)
    assert same(weights(sd), before)
    for parameter in sd.denoiser.parameters():
        assert parameter.is_contiguous()


def test_file_round_trip_with_metadata(sd, delta, tmp_path):
    path = delta.save(tmp_path / "van-gogh.safetensors")
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []  # no temporary files left
    loaded = EditDelta.load(path)
    assert loaded.fingerprint == architecture_fingerprint(sd.denoiser) == delta.fingerprint
    assert loaded.base_model == "tiny-sd" and loaded.method == "locoedit" and loaded.version == __version__
    assert loaded.layers == [{"index": 1, "name": sd.layers[1].name}, {"index": 2, "name": sd.layers[2].name}]
    assert loaded.settings["lambda_key"] == 0.2 and loaded.settings["lambda_value"] == 0.3
    assert loaded.settings["token"] == "all" and loaded.settings["preserve"] == ["a dog"]
    assert loaded.settings["prompt_pairs"][1] == ["a painting in the style of van gogh",
                                                 "a painting in the style of a painting"]
    parameters = dict(sd.denoiser.named_parameters())
    for name, tensor in loaded.tensors.items():
        assert torch.equal(tensor, delta.tensors[name])
        assert loaded.originals[name]["sha256"] == tensor_sha256(parameters[name])
    before = weights(sd)
    with loaded.apply(sd):
        pass
    assert same(weights(sd), before)


def test_another_model_of_the_same_architecture_is_refused(delta, tmp_path):
    other = build("sd", tmp_path / "other", seed=1)
    before = weights(other)
    with pytest.raises(LocoeditError, match="original matrix differs"):
        delta.apply(other)
    assert same(weights(other), before)


def test_another_architecture_is_refused(delta, tmp_path):
    with pytest.raises(LocoeditError, match="computed for another architecture"):
        delta.apply(build("pixart", tmp_path / "pixart"))


def test_applying_twice_is_refused(sd, delta):
    with delta.apply(sd):
        with pytest.raises(LocoeditError, match="already applied"):
            delta.apply(sd)


def test_another_dtype_is_refused(delta, tmp_path):
    half = adapter_for(TINY_PIPELINES["sd"](tmp_path / "half").to(torch.float16))
    with pytest.raises(LocoeditError, match="load the model with that dtype"):
        delta.apply(half)


def test_wrong_shapes_are_refused(sd, delta, tmp_path):
    name = next(iter(delta.tensors))
    bad = EditDelta({**delta.tensors, name: delta.tensors[name][:, :-1].contiguous()}, delta.originals,
                    delta.fingerprint, delta.base_model, delta.method, delta.layers, delta.settings)
    path = bad.save(tmp_path / "bad.safetensors")
    with pytest.raises(LocoeditError, match="matrix but the model's is"):
        EditDelta.load(path).apply(sd)


def test_a_truncated_file_is_refused(delta, tmp_path):
    path = delta.save(tmp_path / "d.safetensors")
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(LocoeditError, match="not a readable safetensors file"):
        EditDelta.load(path)


def test_flipped_bytes_are_detected(delta, tmp_path):
    path = delta.save(tmp_path / "d.safetensors")
    data = bytearray(path.read_bytes())
    data[-5] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(LocoeditError, match="is corrupt"):
        EditDelta.load(path)


class _Boom:
    def __reduce__(self):
        return (open, ("PWNED", "w"))


def test_a_pickle_is_refused_and_never_unpickled(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    path = tmp_path / "evil.safetensors"
    path.write_bytes(pickle.dumps({"weights": _Boom()}))
    with pytest.raises(LocoeditError, match="never unpickles"):
        EditDelta.load(path)
    torch.save({"w": torch.zeros(2)}, tmp_path / "model.pt")
    with pytest.raises(LocoeditError, match="not a readable safetensors file"):
        EditDelta.load(tmp_path / "model.pt")
    assert not (tmp_path / "PWNED").exists()


def test_a_plain_safetensors_file_is_not_a_delta(tmp_path):
    save_file({"w": torch.zeros(2)}, str(tmp_path / "plain.safetensors"))
    with pytest.raises(LocoeditError, match="not a locoedit delta"):
        EditDelta.load(tmp_path / "plain.safetensors")
    with pytest.raises(LocoeditError, match="does not exist"):
        EditDelta.load(tmp_path / "missing.safetensors")


def test_a_failed_save_leaves_the_old_file(delta, tmp_path, monkeypatch):
    path = delta.save(tmp_path / "out" / "d.safetensors")
    old = path.read_bytes()
    import safetensors.torch

    def broken(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(safetensors.torch, "save_file", broken)
    with pytest.raises(OSError):
        delta.save(path)
    assert path.read_bytes() == old and sorted(p.name for p in path.parent.iterdir()) == ["d.safetensors"]


def test_apply_to_folder_writes_a_plain_diffusers_pipeline(sd, delta, tmp_path):
    from diffusers import StableDiffusionPipeline

    model = tmp_path / "model"
    sd.pipe.save_pretrained(model)
    delta_path = delta.save(tmp_path / "d.safetensors")
    out = apply_delta_to_folder(str(model), delta_path, tmp_path / "edited")
    edited = StableDiffusionPipeline.from_pretrained(out, safety_checker=None, requires_safety_checker=False)
    parameters = dict(edited.unet.named_parameters())
    for name, tensor in delta.tensors.items():
        assert torch.equal(parameters[name], tensor)
    untouched = dict(sd.denoiser.named_parameters())
    others = [n for n in parameters if n not in delta.tensors]
    assert all(torch.equal(parameters[n], untouched[n]) for n in others)
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


def test_apply_to_folder_refuses_another_model_and_writes_nothing(delta, tmp_path):
    model = tmp_path / "model"
    TINY_PIPELINES["sd"](tmp_path / "tok", seed=3).save_pretrained(model)
    delta_path = delta.save(tmp_path / "d.safetensors")
    with pytest.raises(LocoeditError, match="original matrix differs"):
        apply_delta_to_folder(str(model), delta_path, tmp_path / "edited")
    assert not (tmp_path / "edited").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["d.safetensors", "model", "sd", "tok"]
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "x").write_text("keep")
    with pytest.raises(LocoeditError, match="not an empty folder"):
        apply_delta_to_folder(str(model), delta_path, tmp_path / "full")
