"""Deltas: apply and revert bit for bit, dense and factored, safetensors files with metadata (version 2, and
version 1 still read), refusals, and a full pipeline export."""

import json
import pickle

import pytest
import torch

torch.set_num_threads(1)

from safetensors.torch import save_file

from locoedit import __version__
from locoedit.core.errors import LocoeditError
from locoedit.core.lowrank import LowRank
from locoedit.delta.apply import apply_delta_to_folder
from locoedit.delta.file import EditDelta, architecture_fingerprint, tensor_sha256
from locoedit.edit import EditRequest, compute_edit
from locoedit.edit.closed_form import edit_matrix
from locoedit.edit.key_value import build_preservation, build_rows
from locoedit.models import adapter_for
from locoedit.testing import TINY_PIPELINES

# from-concept: 4 prompts x every padded row >= min(16, 16): stored dense; 4 last-subject rows: stored as factors.
REQUEST = EditRequest(
    model="tiny-sd",
    concepts=("van gogh",),
    targets=("a painting",),
    kind="style",
    layers=(1, 2),
    preserve=("a dog",),
    lambda_key=0.2,
    lambda_value=0.3,
    token="from-concept",
)
LOW_RANK = EditRequest(
    model="tiny-sd",
    concepts=("van gogh",),
    targets=("a painting",),
    kind="style",
    layers=(1, 2),
    lambda_key=0.2,
    lambda_value=0.3,
    token="last-subject",
    preserve_nearest=0,  # the exact-formula test below rebuilds the preservation without mining
)


def build(family="sd", folder=None, seed=0):
    return adapter_for(TINY_PIPELINES[family](folder, seed=seed))


@pytest.fixture
def sd(tmp_path):
    return build("sd", tmp_path / "sd")


@pytest.fixture(params=["dense", "factored"])
def delta(sd, request):
    delta = compute_edit(sd, REQUEST if request.param == "dense" else LOW_RANK)
    assert bool(delta.factors) == (request.param == "factored") and bool(delta.tensors) == (request.param == "dense")
    return delta


@pytest.fixture
def dense(sd):
    return compute_edit(sd, REQUEST)


def weights(adapter):
    return {name: p.detach().clone() for name, p in adapter.denoiser.named_parameters()}


def same(a, b):
    return a.keys() == b.keys() and all(tensor_sha256(a[k]) == tensor_sha256(b[k]) for k in a)


def test_apply_then_revert_is_bit_for_bit_and_a_context_manager(sd, delta):
    before = weights(sd)
    values = delta.edited_values(sd)
    assert same(weights(sd), before)  # edited_values leaves the model alone
    handle = delta.apply(sd)
    edited = weights(sd)
    assert all(torch.equal(edited[name], tensor) for name, tensor in values.items())
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
    assert (
        loaded.settings["token"] == delta.settings["token"]
        and loaded.settings["preserve"] == delta.settings["preserve"]
    )
    assert loaded.settings["prompt_pairs"][1] == [
        "a painting in the style of van gogh",
        "a painting in the style of a painting",
    ]
    assert loaded.denoiser == "UNet2DConditionModel" and loaded.parameters == delta.parameters
    parameters = dict(sd.denoiser.named_parameters())
    for name, tensor in loaded.tensors.items():
        assert torch.equal(tensor, delta.tensors[name])
    for name, update in loaded.factors.items():
        assert torch.equal(update.up, delta.factors[name].up) and torch.equal(update.down, delta.factors[name].down)
    for name in loaded.parameters:
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
    with delta.apply(sd), pytest.raises(LocoeditError, match="already applied"):
        delta.apply(sd)


def test_another_dtype_is_refused(delta, tmp_path):
    half = adapter_for(TINY_PIPELINES["sd"](tmp_path / "half").to(torch.float16))
    with pytest.raises(LocoeditError, match="load the model with that dtype"):
        delta.apply(half)


def test_wrong_shapes_are_refused(sd, dense, tmp_path):
    delta = dense
    name = next(iter(delta.tensors))
    bad = EditDelta(
        {**delta.tensors, name: delta.tensors[name][:, :-1].contiguous()},
        delta.originals,
        delta.fingerprint,
        delta.base_model,
        delta.method,
        delta.layers,
        delta.settings,
    )
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
    for name, tensor in delta.edited_values(sd).items():
        assert torch.equal(parameters[name], tensor)
    untouched = dict(sd.denoiser.named_parameters())
    others = [n for n in parameters if n not in delta.parameters]
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


# ------------------------------------------------------------------------------------ factored deltas, version 1


def test_factors_are_the_exact_closed_form_update_and_apply_rounds_it_once(sd):
    delta = compute_edit(sd, LOW_RANK)
    rows = build_rows(sd, LOW_RANK)
    parameters = dict(sd.denoiser.named_parameters())
    layer = sd.layers[1]
    sources, targets = rows.matrices(layer)
    regulariser = build_preservation(sd, LOW_RANK, [layer]).regulariser(layer, LOW_RANK.lambda_key)
    name = f"{layer.name}.to_k.weight"
    update = delta.factors[name]
    assert update.rank == len(sources) == 4 and update.up.dtype == torch.float64
    assert torch.allclose(update.down, regulariser.solve(sources.T).T, rtol=1e-12, atol=0)  # V = X_o A^{-1}
    dense, _ = edit_matrix(parameters[name], sources, targets, regulariser)
    assert torch.equal(delta.edited_values(sd)[name], dense)  # the same bits as the dense path
    expected = (parameters[name].detach().double() + update.up @ update.down).float()
    assert torch.equal(dense, expected)


def test_a_version_1_file_still_loads_and_applies(sd, dense, tmp_path):
    # Written the way locoedit 0.1 wrote it: new values only, format locoedit-delta/1, no denoiser class.
    metadata = dense.metadata()
    del metadata["denoiser"]
    metadata["format"] = "locoedit-delta/1"
    path = tmp_path / "v1.safetensors"
    save_file(dict(dense.tensors), str(path), metadata=metadata)
    loaded = EditDelta.load(path)
    assert loaded.factors == {} and loaded.denoiser == "" and loaded.parameters == dense.parameters
    before = weights(sd)
    with loaded.apply(sd):
        assert all(torch.equal(weights(sd)[n], t) for n, t in dense.tensors.items())
    assert same(weights(sd), before)


def test_non_finite_or_half_factors_are_refused(sd, tmp_path):
    delta = compute_edit(sd, LOW_RANK)
    name = delta.parameters[0]
    stored = delta.stored_tensors()
    stored[f"{name}:up"] = stored[f"{name}:up"].clone()
    stored[f"{name}:up"][0, 0] = float("nan")
    metadata = delta.metadata()
    metadata["edited_sha256"] = json.dumps({key: tensor_sha256(t) for key, t in stored.items()})
    save_file(stored, str(tmp_path / "nan.safetensors"), metadata=metadata)
    with pytest.raises(LocoeditError, match="inf or nan"):
        EditDelta.load(tmp_path / "nan.safetensors")
    del stored[f"{name}:up"]
    metadata["edited_sha256"] = json.dumps({key: tensor_sha256(t) for key, t in stored.items()})
    save_file(stored, str(tmp_path / "half.safetensors"), metadata=metadata)
    with pytest.raises(LocoeditError, match="lack their other half"):
        EditDelta.load(tmp_path / "half.safetensors")
    with pytest.raises(LocoeditError, match="must be float64"):
        LowRank(torch.zeros(2, 1), torch.zeros(1, 2))


def test_a_factored_update_that_overflows_the_dtype_is_refused_before_anything_is_written(tmp_path, monkeypatch):
    import locoedit.delta.file as delta_module

    monkeypatch.setattr(delta_module, "MAX_RELATIVE_CHANGE", float("inf"))  # this test is about the dtype's range
    half = adapter_for(TINY_PIPELINES["sd"](tmp_path / "half").to(torch.float16))
    delta = compute_edit(half, LOW_RANK)
    name = delta.parameters[0]
    update = delta.factors[name]
    huge = EditDelta(
        {},
        delta.originals,
        delta.fingerprint,
        delta.base_model,
        delta.method,
        delta.layers,
        delta.settings,
        factors={**delta.factors, name: LowRank(update.up * 1e9, update.down)},
    )
    before = weights(half)
    with pytest.raises(LocoeditError, match="beyond what torch.float16 holds"):
        huge.apply(half)
    assert same(weights(half), before)


@pytest.mark.parametrize("damage", ["nan", "huge"])
def test_non_finite_or_absurd_updates_are_refused_and_nothing_is_written(tmp_path, damage):
    """A delta whose hashes are consistent but whose values are nan or a thousand times the matrix it edits."""
    adapter = adapter_for(TINY_PIPELINES["sd"](tmp_path / "sd"))
    delta = compute_edit(adapter, LOW_RANK)
    name = delta.parameters[0]
    update = delta.factors[name]
    if damage == "nan":
        parameters = dict(adapter.denoiser.named_parameters())
        forged = EditDelta(
            {name: torch.full_like(parameters[name], float("nan"))},
            delta.originals,
            delta.fingerprint,
            delta.base_model,
            delta.method,
            delta.layers,
            delta.settings,
            factors={k: v for k, v in delta.factors.items() if k != name},
        )
        message = "holds inf or nan"
    else:
        scale = 1e3 * parameters_norm(adapter, name) / update_norm(update)
        forged = EditDelta(
            {},
            delta.originals,
            delta.fingerprint,
            delta.base_model,
            delta.method,
            delta.layers,
            delta.settings,
            factors={**delta.factors, name: LowRank(update.up * scale, update.down)},
        )
        message = "times its own size"
    before = weights(adapter)
    with pytest.raises(LocoeditError, match=message):
        forged.apply(adapter)
    assert same(weights(adapter), before)


def parameters_norm(adapter, name):
    return dict(adapter.denoiser.named_parameters())[name].detach().double().norm().item()


def update_norm(update):
    return (update.up @ update.down).norm().item()
