"""Training: outputs, exact resume (also after Ctrl-C and from an old-format checkpoint), learning
rate schedule, data gathering, model card, bf16 autocast, bad input."""

import json
import math
import os
import signal

import pytest
import torch
from safetensors.torch import load_file, save_file

from kldm_cli.config import KLDMConfig
from kldm_cli.data.batch import CrystalBatch
from kldm_cli.data.readers import load_dataset
from kldm_cli.hub import read_card_metadata, read_model_folder
from kldm_cli.model import KLDM
from kldm_cli.training import TrainOptions, load_checkpoint, read_training_log, train
from kldm_cli.training.dataset import PackedCrystals
from kldm_cli.training.precision import _TrainingForward, cpu_flags, cpu_has_native_bf16
from kldm_cli.training.schedule import learning_rate_at

from .conftest import FIXTURES

pytestmark = pytest.mark.usefixtures("one_thread")


def _options(tmp_path, out, **kw):
    base = dict(
        data=FIXTURES / "perov5_small.csv", out=out, preset="tiny", batch_size=4,
        checkpoint_every=3, log_every=1, cache_dir=tmp_path / "cache", plot=False,
    )  # fmt: skip
    base.update(kw)
    return TrainOptions(**base)


def _log(out):
    return [json.loads(line) for line in (out / "train_log.jsonl").read_text().splitlines()]


def _assert_same_checkpoint(a_dir, b_dir):
    a = load_file(a_dir / "checkpoint.safetensors")
    b = load_file(b_dir / "checkpoint.safetensors")
    assert a.keys() == b.keys()
    for name in a:
        torch.testing.assert_close(a[name], b[name], rtol=0, atol=0, msg=name)


def test_train_writes_model_folder_log_and_plot(tmp_path):
    # 20 Perov-5 crystals, batch 4: 5 steps per epoch, so step 5 closes epoch 0.
    result = train(_options(tmp_path, tmp_path / "run", max_steps=6, plot=True))
    out = result.out
    assert result.steps == 6 and not result.interrupted
    config = KLDMConfig.load(out / "config.json")
    assert config.task == "csp" and config.lattice_stats.length_loc
    assert config.provenance["train_data_sha256"]
    assert sum(config.num_atoms_counts.values()) > 0
    weights = load_file(out / "model.safetensors")
    assert weights and all(torch.isfinite(v).all() for v in weights.values())
    log = _log(out)
    assert [r["step"] for r in log if "loss" in r] == [1, 2, 3, 4, 5, 6]
    assert all(r["loss"] > 0 for r in log if "loss" in r)
    epochs = [r for r in log if "epoch_seconds" in r]
    assert [(r["step"], r["epoch"]) for r in epochs] == [(5, 1)]
    assert epochs[0]["epoch_seconds"] > 0
    assert (out / "training_curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_model_card_has_hub_front_matter(tmp_path):
    out = train(_options(tmp_path, tmp_path / "run", max_steps=1)).out
    meta = read_card_metadata(out)
    assert meta["library_name"] == "kldm" and meta["license"] == "mit"
    assert meta["task"] == "csp"
    assert {"kldm", "materials", "crystal-structure-prediction"} <= set(meta["tags"])
    assert "kldm_metrics" not in meta  # filled at release time, never invented
    read_model_folder(out)  # and the folder stays loadable


@pytest.fixture(scope="module")
def straight_run(tmp_path_factory):
    """8 uninterrupted steps (crossing an epoch boundary at step 5)."""
    tmp_path = tmp_path_factory.mktemp("straight")
    return train(_options(tmp_path, tmp_path / "straight", max_steps=8)).out


def test_resume_reproduces_uninterrupted_run(tmp_path, straight_run):
    interrupted = tmp_path / "interrupted"
    train(_options(tmp_path, interrupted, max_steps=5))  # stops at an epoch end, checkpoint at 5
    # Simulate a crash after step 5: log lines past the checkpoint and a torn last line.
    with open(interrupted / "train_log.jsonl", "a") as handle:
        handle.write(json.dumps({"step": 6, "epoch": 1, "loss": 1.0}) + '\n{"step": 7, "ep')
    train(_options(tmp_path, interrupted, max_steps=8))  # resumes from step 5
    _assert_same_checkpoint(straight_run, interrupted)
    assert [r["step"] for r in _log(interrupted) if "loss" in r] == list(range(1, 9))


def test_ctrl_c_saves_a_checkpoint_and_resume_is_exact(tmp_path, straight_run):
    out = tmp_path / "run"

    def interrupt_at_step_3(record):
        if record.get("step") == 3 and "loss" in record:
            os.kill(os.getpid(), signal.SIGINT)

    previous = signal.getsignal(signal.SIGINT)
    result = train(_options(tmp_path, out, max_steps=8, checkpoint_every=100), interrupt_at_step_3)
    assert signal.getsignal(signal.SIGINT) is previous  # handler restored
    assert result.interrupted and result.steps == 3
    assert load_checkpoint(out / "checkpoint.safetensors")["trainer_state"]["step"] == 3
    train(_options(tmp_path, out, max_steps=8))
    _assert_same_checkpoint(straight_run, out)


def test_resume_from_checkpoint_written_before_ddp_support(tmp_path, straight_run):
    """A run folder written by the previous kldm (no world size, per-rank RNG or epoch timing in
    the checkpoint) resumes exactly."""
    out = tmp_path / "old"
    train(_options(tmp_path, out, max_steps=4))
    path = out / "checkpoint.safetensors"
    checkpoint = load_checkpoint(path)
    old_state = {
        key: checkpoint["trainer_state"][key]
        for key in ("step", "epoch", "position", "best_val", "elapsed")
    }
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as handle:
        metadata = handle.metadata()
    tensors = load_file(path)
    assert not [k for k in tensors if k.startswith("rng.noise.rank")]  # single process
    save_file(tensors, str(path), metadata={**metadata, "trainer_state": json.dumps(old_state)})
    train(_options(tmp_path, out, max_steps=8))
    _assert_same_checkpoint(straight_run, out)


def test_resume_refuses_other_data(tmp_path):
    out = tmp_path / "run"
    train(_options(tmp_path, out, max_steps=2))
    with pytest.raises(ValueError, match="other data"):
        train(_options(tmp_path, out, max_steps=3, data=FIXTURES / "mp20_small.csv"))


def test_learning_rate_schedule():
    assert learning_rate_at(0, 1e-3, "constant", 0, 100) == 1e-3
    assert learning_rate_at(4, 1e-3, "cosine", 10, 100) == pytest.approx(5e-4)
    assert learning_rate_at(100, 1e-3, "cosine", 0, 100) == pytest.approx(1e-4)
    with pytest.raises(ValueError, match="schedule"):
        learning_rate_at(0, 1e-3, "step", 0, 10)


def test_decay_start_holds_the_rate_then_decays_on_a_cosine():
    def lr(step):
        return learning_rate_at(step, 1e-3, "cosine", 10, 100, decay_start=60)

    assert lr(4) == pytest.approx(5e-4)  # the warm-up is unchanged
    assert [lr(step) for step in (10, 30, 60)] == pytest.approx([1e-3] * 3)
    assert lr(80) == pytest.approx(1e-3 * (0.1 + 0.45))  # half-way down the cosine
    assert lr(100) == pytest.approx(1e-4) and lr(150) == pytest.approx(1e-4)
    rates = [lr(step) for step in range(60, 101)]
    assert all(later < earlier for earlier, later in zip(rates, rates[1:], strict=False))
    # from the decay start on: the cosine of a warm-up that ends there (the old cooldown trick)
    for step in (60, 75, 100):
        assert lr(step) == learning_rate_at(step, 1e-3, "cosine", 60, 100)
    # a decay start inside the warm-up changes nothing: the cosine starts after the warm-up
    assert learning_rate_at(50, 1e-3, "cosine", 10, 100, decay_start=5) == learning_rate_at(
        50, 1e-3, "cosine", 10, 100
    )


def test_a_cooldown_resumes_a_finished_run_down_to_a_tenth(tmp_path):
    run = tmp_path / "run"
    train(_options(tmp_path, run, max_steps=4, learning_rate=2e-3))
    result = train(_options(tmp_path, run, max_steps=8, learning_rate=1e-3,
                            lr_schedule="cosine", decay_start=4))  # fmt: skip
    assert result.steps == 8
    logged = {r["step"]: r["lr"] for r in read_training_log(run / "train_log.jsonl") if "lr" in r}
    for step in range(5, 9):  # the record of step s holds the rate used for step s - 1
        progress = (step - 1 - 4) / 4
        expected = 1e-3 * (0.1 + 0.45 * (1 + math.cos(math.pi * progress)))
        assert logged[step] == pytest.approx(expected), step
    assert logged[4] == pytest.approx(2e-3)


def test_packed_dataset_gathers_the_batches_from_records_builds(tmp_path):
    records = load_dataset(FIXTURES / "mp20_small.csv", cache_dir=tmp_path / "cache").records
    packed = PackedCrystals(records)
    generator = torch.Generator().manual_seed(0)
    for size in (1, 7, len(records)):
        indices = torch.randperm(len(records), generator=generator)[:size]
        expected = CrystalBatch.from_records([records[i] for i in indices.tolist()])
        got = packed.batch(indices)
        for name, value in vars(expected).items():
            assert torch.equal(getattr(got, name), value), name
            assert getattr(got, name).dtype == value.dtype, name


def test_bf16_forward_runs_the_network_in_bf16_and_returns_float32(tmp_path):
    """The autocast wrapper (CPU autocast here; the CUDA path differs only by device type)."""
    records = load_dataset(FIXTURES / "mp20_small.csv", cache_dir=tmp_path / "cache").records
    from kldm_cli.training import build_config

    config = build_config(_options(tmp_path, tmp_path / "x"), records, "hash")
    torch.manual_seed(0)
    model = KLDM(config)
    batch = CrystalBatch.from_records(records[:6])
    reference = model.loss(batch, generator=torch.Generator().manual_seed(1))
    seen = []
    linear = next(m for m in model.network.modules() if isinstance(m, torch.nn.Linear))
    linear.register_forward_hook(lambda module, args, output: seen.append(output.dtype))
    model.network = _TrainingForward(model.network, torch.bfloat16)
    losses = model.loss(batch, generator=torch.Generator().manual_seed(1))
    assert torch.bfloat16 in seen
    assert losses.total.dtype == torch.float32
    torch.testing.assert_close(losses.total, reference.total, rtol=5e-2, atol=1e-3)
    losses.total.backward()  # gradients flow through autocast into float32 parameters
    assert all(p.grad is None or p.grad.dtype == torch.float32 for p in model.parameters())


def test_loss_at_fixed_times(tmp_path, monkeypatch):
    """``loss(t01=...)`` noises every process at the given times instead of drawing them."""
    records = load_dataset(FIXTURES / "mp20_small.csv", cache_dir=tmp_path / "cache").records
    from kldm_cli.training import build_config

    model = KLDM(build_config(_options(tmp_path, tmp_path / "x"), records, "hash"))
    batch = CrystalBatch.from_records(records[:4])
    seen = {}
    for name in ("positions", "lattice"):
        process = getattr(model, name)
        original = process.sample_training

        def spy(t01, *args, _name=name, _original=original, **kwargs):
            seen[_name] = t01.clone()
            return _original(t01, *args, **kwargs)

        monkeypatch.setattr(process, "sample_training", spy)
    times = torch.tensor([0.01, 0.2, 0.5, 0.9])
    model.loss(batch, generator=torch.Generator().manual_seed(0), t01=times)
    assert torch.equal(seen["positions"], times) and torch.equal(seen["lattice"], times)
    model.loss(batch, generator=torch.Generator().manual_seed(0))
    assert not torch.equal(seen["positions"], times)
    with pytest.raises(ValueError, match="t01 has shape"):
        model.loss(batch, t01=times[:3])


def test_cpu_flags_and_native_bf16(tmp_path):
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text(
        "processor\t: 0\nflags\t\t: fpu sse2 avx2 avx512f avx512_bf16\n\n"
        "processor\t: 1\nflags\t\t: fpu\n"
    )
    assert cpu_flags(cpuinfo) == {"fpu", "sse2", "avx2", "avx512f", "avx512_bf16"}
    assert cpu_has_native_bf16(cpuinfo)
    cpuinfo.write_text("processor\t: 0\nflags\t\t: fpu amx_tile amx_bf16\n")
    assert cpu_has_native_bf16(cpuinfo)
    cpuinfo.write_text("processor\t: 0\nflags\t\t: fpu sse2 avx2 avx512f avx512bw\n")
    assert not cpu_has_native_bf16(cpuinfo)  # AVX-512 alone only emulates bf16
    cpuinfo.write_text("processor\t: 0\nFeatures\t: fp asimd bf16\n")  # aarch64 names it bf16
    assert cpu_flags(cpuinfo) == {"fp", "asimd", "bf16"} and not cpu_has_native_bf16(cpuinfo)
    assert cpu_flags(tmp_path / "missing") == set()


def test_bf16_on_cpu_needs_native_bf16(tmp_path, monkeypatch):
    import kldm_cli.training.precision as train_module

    monkeypatch.setattr(train_module, "cpu_has_native_bf16", lambda: False)
    with pytest.raises(ValueError, match="needs --device cuda or a CPU with native bf16"):
        train(_options(tmp_path, tmp_path / "x", max_steps=1, precision="bf16"))
    assert not (tmp_path / "x" / "checkpoint.safetensors").exists()
    monkeypatch.setattr(train_module, "cpu_has_native_bf16", lambda: True)
    result = train(_options(tmp_path, tmp_path / "run", max_steps=2, precision="bf16"))
    assert result.steps == 2 and torch.isfinite(torch.tensor(result.last_loss))
    assert "- precision: bf16" in (tmp_path / "run" / "README.md").read_text()


@pytest.mark.cuda
@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_train_on_cuda(tmp_path, precision):
    if precision == "bf16" and not torch.cuda.is_bf16_supported():
        pytest.skip("GPU without bf16")
    result = train(_options(tmp_path, tmp_path / "run", max_steps=4, device="cuda",
                            precision=precision))  # fmt: skip
    assert result.steps == 4 and torch.isfinite(torch.tensor(result.last_loss))
    train(_options(tmp_path, tmp_path / "run", max_steps=6, device="cuda", precision=precision))


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (dict(task="nope"), "task"),
        (dict(precision="fp16"), "precision"),
        (dict(val_sampler="ode"), "validation sampler"),
        (dict(val_every=1), "needs a validation set"),
        (dict(lr_schedule="step"), "schedule"),
        (dict(decay_start=1), "needs --lr-schedule cosine"),
        (dict(decay_start=1, lr_schedule="cosine"), "below --max-steps"),
        (dict(device="tpu"), "device"),
    ],
)
def test_bad_options_are_refused(tmp_path, change, message):
    with pytest.raises(ValueError, match=message):
        train(_options(tmp_path, tmp_path / "x", max_steps=1, **change))


def test_plot_training_log_reads_every_kind_of_record(tmp_path):
    pytest.importorskip("matplotlib")
    from kldm_cli.training import plot_training_log, read_training_log

    log = tmp_path / "run" / "train_log.jsonl"
    log.parent.mkdir()
    records = [{"step": s, "epoch": 0, "loss": 2.0 / s, "loss_v": 1.0 / s, "loss_l": 1.0 / s,
                "loss_a": 0.5 / s} for s in range(1, 30)]  # fmt: skip
    records += [
        {"step": 10, "epoch": 1, "epoch_seconds": 1.5},
        {"step": 10, "epoch": 1, "val_loss": 0.3, "val_match_rate": 0.2, "best": True},
        {"step": 20, "epoch": 2, "epoch_seconds": None},
        {"step": 20, "epoch": 2, "val_loss": 0.2, "val_match_rate": 0.1},
    ]
    log.write_text("".join(json.dumps(r) + "\n" for r in records) + '{"step": 30, "lo')
    assert len(read_training_log(log)) == len(records)  # the torn last line is skipped
    png = plot_training_log(log, tmp_path / "curves.png")
    assert png.read_bytes()[:4] == b"\x89PNG" and not list(tmp_path.glob(".*.tmp"))
    log.write_text("")  # an empty log still gives a (blank) figure
    assert plot_training_log(log, tmp_path / "empty.png").exists()
