"""The toy world's training script on tiny step counts: phases stop, checkpoint and resume where they stopped."""

import signal

import numpy as np
import pytest
import torch

torch.set_num_threads(1)

from locoedit.toyworld import train


@pytest.fixture
def stopper_signals():
    """A Stopper installs SIGINT/SIGTERM handlers; put pytest's back afterwards."""
    saved = signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)
    yield
    signal.signal(signal.SIGINT, saved[0])
    signal.signal(signal.SIGTERM, saved[1])


def _args(tmp_path, *extra):
    return train.parse_args(["--out", str(tmp_path), "--threads", "1", "--device", "cpu", "--batch", "4", *extra])


def test_resume_phase_restores_model_optimizer_and_sampling_rng(tmp_path):
    path = tmp_path / "phase.pt"
    model = torch.nn.Linear(3, 2)
    opt = torch.optim.AdamW(model.parameters(), lr=0.1)
    rng = np.random.default_rng([0, 1])
    assert train.resume_phase(path, model, opt, rng) is None  # no checkpoint: nothing restored
    model(torch.ones(1, 3)).sum().backward()
    opt.step()
    rng.random(5)  # the sampler has moved on
    train.atomic_save(
        {"model": model.state_dict(), "opt": opt.state_dict(), "rng": rng.bit_generator.state, "step": 1}, path
    )
    assert not path.with_suffix(".pt.tmp").exists()

    torch.manual_seed(1)
    fresh, fresh_rng = torch.nn.Linear(3, 2), np.random.default_rng([9, 9])
    fresh_opt = torch.optim.AdamW(fresh.parameters(), lr=0.1)
    state = train.resume_phase(path, fresh, fresh_opt, fresh_rng)
    assert state["step"] == 1
    assert all(torch.equal(a, b) for a, b in zip(fresh.state_dict().values(), model.state_dict().values()))
    assert torch.equal(fresh_opt.state_dict()["state"][0]["exp_avg"], opt.state_dict()["state"][0]["exp_avg"])
    assert np.array_equal(fresh_rng.random(4), rng.random(4))  # the next scenes drawn are the same


def _count_batches(monkeypatch) -> list[int]:
    """Count the batches of scenes rendered (one per training step, one for the VAE's scaling factor)."""
    sizes, render = [], train.render_batch
    monkeypatch.setattr(train, "render_batch", lambda scenes, rng: sizes.append(len(scenes)) or render(scenes, rng))
    return sizes


def _adam_steps(state) -> int:
    return int(state["opt"]["state"][0]["step"])


def test_the_vae_phase_stops_checkpoints_and_resumes_from_its_step(tmp_path, stopper_signals, monkeypatch):
    args = _args(tmp_path, "--vae-steps", "3")
    vae, finished = train.train_vae(args, train.Stopper(minutes=0))  # out of time: stops after its first step
    assert not finished
    stopped = torch.load(tmp_path / "vae.pt", weights_only=True)
    assert stopped["step"] == 1 and _adam_steps(stopped) == 1 and "scaling_factor" not in stopped

    batches = _count_batches(monkeypatch)
    vae, finished = train.train_vae(args, train.Stopper(minutes=None))
    assert finished
    assert batches == [4, 4, 1024]  # the two steps left (batch 4), then the scaling factor's 1024 scenes
    done = torch.load(tmp_path / "vae.pt", weights_only=True)
    assert done["step"] == 3 and _adam_steps(done) == 3 and done["scaling_factor"] > 0  # the optimizer carried on
    assert vae.config.scaling_factor == done["scaling_factor"]
    assert any(not torch.equal(done["model"][k], stopped["model"][k]) for k in done["model"])  # it trained on

    again, finished = train.train_vae(args, train.Stopper(minutes=None))  # a finished phase is only reloaded
    assert finished and again.config.scaling_factor == done["scaling_factor"]
    assert all(torch.equal(again.state_dict()[k], v) for k, v in done["model"].items())


def test_the_probe_phase_resumes_and_a_finished_probe_is_reloaded(tmp_path, stopper_signals, monkeypatch):
    args = _args(tmp_path, "--vae-steps", "1", "--probe-steps", "2")
    vae, _ = train.train_vae(args, train.Stopper(minutes=None))
    _, finished = train.train_probe(args, vae, train.Stopper(minutes=0))
    assert not finished and torch.load(tmp_path / "probe.pt", weights_only=True)["step"] == 1
    batches = _count_batches(monkeypatch)
    probe, finished = train.train_probe(args, vae, train.Stopper(minutes=None))
    assert finished
    assert batches[0] == 4 and 4 not in batches[1:]  # one step left; then only the accuracy checks render
    done = torch.load(tmp_path / "probe.pt", weights_only=True)
    assert done["step"] == 2 and _adam_steps(done) == 2
    reloaded, finished = train.train_probe(args, vae, train.Stopper(minutes=None))
    assert finished
    assert all(torch.equal(reloaded.net.state_dict()[k], v) for k, v in done["model"].items())


def test_main_refuses_a_folder_with_checkpoints_unless_resuming(tmp_path):
    (tmp_path / "vae.pt").write_bytes(b"")
    with pytest.raises(SystemExit, match="pass --resume"):
        train.main(["--out", str(tmp_path), "--threads", "1"])
