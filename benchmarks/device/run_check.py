"""One-call GPU check: every CUDA path of kldm, timed and compared, in under 8 minutes.

Made for a device machine lent for a few minutes (see ``benchmarks/device/README.md``)::

    python benchmarks/device/run_check.py --device cuda --out "$OUT"          # the full check
    python benchmarks/device/run_check.py --device cpu --tiny --out /tmp/dry  # CI's dry run

The check is split into parts, run in this order, each in its own subprocess with a time budget
(a CUDA error or a hang in one part cannot take the others down; a part that fails or runs out
of time is recorded and the next one starts):

``env``
    torch, CUDA, GPU name and memory, the versions of kldm's libraries.
``tests``
    ``pytest -m cuda tests/engine``: the GPU variants of the sampling and training tests
    (skipped, so only collected, on a CPU).
``same_samples``
    The same seed through every engine: CUDA fp32 against CPU (same CPU noise generator, so only
    the arithmetic differs), then bf16, the CUDA graph and graph + bf16 against CUDA fp32 (CUDA
    generator); CSP with the bundled MP-20 weights and DNG with the bundled DNG weights. Max
    deviations as ``docs/benchmarks.md`` reports them for CPU, plus the seconds of each run.
``generate_bundled``
    ``kldm generate --n 1000`` with the bundled DNG weights (wall time of the command).
``generate_paper``
    ``kldm generate --n 1000`` with a random network of the ``paper`` preset at 1,000 PC steps
    (the goal: under 40 s). A short probe first; the full run only if the probe predicts it fits.
``evaluate_csp``
    ``kldm evaluate csp`` on the first 200 MP-20 test rows in fp32 (the command) and bf16 (the
    same library call with the sampler's network under bf16 autocast); match rates compared
    pairwise.
``train_throughput``
    Optimizer steps/s of the ``paper`` preset, fp32 and bf16, as ``benchmarks/bench_train.py``.
``ddp``
    ``torchrun --nproc_per_node 1 -m kldm_cli train`` (NCCL on CUDA, Gloo on CPU), a few steps.
``train_smoke``
    ``kldm train --preset paper --precision bf16`` for 2 minutes (fewer if the overall deadline
    is near), stopped by SIGINT as a user would; the loss must fall.

Everything lands in ``--out``: ``results.json`` (rewritten after every part, so a run cut short
keeps what was done) and ``logs.tar.gz`` (each part's output, the evaluation records and training
logs). Few files on purpose: the device tool brings back at most 8.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import signal
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
import traceback
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PARTS = (
    "env", "tests", "same_samples", "generate_bundled", "generate_paper", "evaluate_csp",
    "train_throughput", "ddp", "train_smoke",
)  # fmt: skip
#: Seconds each part may take on an H100 (the expected times are about half of these).
BUDGETS = {
    "env": 30, "tests": 60, "same_samples": 60, "generate_bundled": 45, "generate_paper": 100,
    "evaluate_csp": 100, "train_throughput": 60, "ddp": 45, "train_smoke": 160,
}  # fmt: skip
#: Sizes of the full check and of the CPU dry run (``--tiny``).
SIZES = {
    "full": {
        "same_num_csp": 256, "same_num_dng": 200, "same_steps": 100,
        "generate_n": 1000, "generate_steps": None, "generate_preset": "paper",
        "paper_steps": 1000, "paper_probe_steps": 20, "batch_atoms": 16384,
        "eval_rows": 200, "eval_steps": 1000, "eval_workers": 8,
        "train_preset": "paper", "train_batch_sizes": [64, 256], "train_warmup": 5,
        "train_steps": 20, "ddp_preset": "small", "ddp_steps": 20, "smoke_seconds": 120,
        "smoke_batch_size": 64, "threads": None,
    },
    "tiny": {
        "same_num_csp": 4, "same_num_dng": 4, "same_steps": 3,
        "generate_n": 4, "generate_steps": 2, "generate_preset": "tiny",
        "paper_steps": 3, "paper_probe_steps": 1, "batch_atoms": 4096,
        "eval_rows": 3, "eval_steps": 2, "eval_workers": 0,
        "train_preset": "tiny", "train_batch_sizes": [8], "train_warmup": 1,
        "train_steps": 2, "ddp_preset": "tiny", "ddp_steps": 2, "smoke_seconds": 4,
        "smoke_batch_size": 8, "threads": 1,
    },
}  # fmt: skip
DEFAULT_TRAIN = ROOT / ".device" / "data" / "mp20_train_2048.csv.gz"
DEFAULT_TEST = ROOT / ".device" / "data" / "mp20_test_first200.csv.gz"


# ---------------------------------------------------------------------- small helpers
def write_json(path: Path, value: object) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(value, indent=2, default=str) + "\n")
    tmp.replace(path)


#: Process groups of the commands running now (a part stopped from outside stops them too).
_RUNNING: dict[int, subprocess.Popen] = {}


def run_command(command: list[str], log: Path, timeout: float, env: dict | None = None) -> dict:
    """Run ``command`` (its own process group, output appended to ``log``) for at most
    ``timeout`` seconds; a command past it is stopped with its children."""
    started = time.perf_counter()
    with log.open("a") as stream:
        stream.write(f"$ {' '.join(command)}\n")
        stream.flush()
        process = subprocess.Popen(
            command, stdout=stream, stderr=subprocess.STDOUT, cwd=ROOT, env=env,
            start_new_session=True,
        )  # fmt: skip
        _RUNNING[process.pid] = process
        try:
            returncode = process.wait(timeout=max(timeout, 1))
            timed_out = False
        except subprocess.TimeoutExpired:
            _kill_group(process)
            returncode, timed_out = process.returncode, True
        finally:
            _RUNNING.pop(process.pid, None)
    return {
        "returncode": returncode, "timed_out": timed_out,
        "seconds": time.perf_counter() - started, "tail": tail(log),
    }  # fmt: skip


def _kill_group(process: subprocess.Popen) -> None:
    for sig, wait in ((signal.SIGTERM, 10), (signal.SIGKILL, 10)):
        try:
            os.killpg(process.pid, sig)
        except ProcessLookupError:
            return
        try:
            process.wait(timeout=wait)
            return
        except subprocess.TimeoutExpired:
            continue


def tail(path: Path, lines: int = 15) -> list[str]:
    try:
        return path.read_text(errors="replace").splitlines()[-lines:]
    except OSError:
        return []


def kldm(ctx: dict, *args: str) -> list[str]:
    """A ``kldm`` command run by this interpreter (no installed script needed), with the CPU
    threads of the sizes (the dry run uses one: a busy CI machine spins idle OpenMP threads)."""
    return [sys.executable, "-m", "kldm_cli", *args, *_threads_flag(ctx)]


def _threads_flag(ctx: dict) -> list[str]:
    threads = ctx["sizes"]["threads"]
    return ["--threads", str(threads)] if threads else []


def synchronize(device: str) -> None:
    import torch

    if device.startswith("cuda"):
        torch.cuda.synchronize()


# ---------------------------------------------------------------------- parts
def part_env(ctx: dict) -> dict:
    import torch

    from kldm_cli.evaluation.records import library_versions

    info: dict = {
        "python": platform.python_version(), "torch": torch.__version__,
        "cuda_available": torch.cuda.is_available(), "torch_cuda": torch.version.cuda,
        "cpu_count": os.cpu_count(), "machine": platform.machine(),
        "versions": library_versions(), "float32_matmul_precision":
        torch.get_float32_matmul_precision(),
    }  # fmt: skip
    if torch.cuda.is_available():
        props = torch.cuda.get_device_properties(0)
        info.update(
            gpu=props.name, gpu_memory_gib=props.total_memory / 2**30,
            multiprocessors=props.multi_processor_count,
            bf16_supported=torch.cuda.is_bf16_supported(),
            cudnn=torch.backends.cudnn.version(),
        )  # fmt: skip
        done = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True, check=False)
        info["nvidia_smi"] = done.stdout.strip()
    elif ctx["device"].startswith("cuda"):
        raise RuntimeError("--device cuda, but torch sees no CUDA GPU")
    return info


def part_tests(ctx: dict) -> dict:
    log = Path(ctx["scratch"]) / "tests.log"
    command = [
        sys.executable, "-m", "pytest", "-q", "-rs", "-p", "no:cacheprovider",
        "tests/engine", "-m", "cuda",
    ]  # fmt: skip
    result = run_command(command, log, ctx["time_left"]())
    summary = next((line for line in reversed(result["tail"]) if " in " in line), None)
    pattern = r"(\d+) (passed|failed|skipped|errors?|deselected)"
    counts = {word.rstrip("s"): int(n) for n, word in re.findall(pattern, summary or "")}
    status = "ok" if result["returncode"] == 0 else "failed"
    return {"status": status, "summary": summary, "counts": counts, **result}


def _compare(reference, other) -> dict:
    """Largest differences between two sets of samples of the same crystals and seed."""
    import torch

    coords = torch.remainder(other.frac_coords - reference.frac_coords + 0.5, 1.0) - 0.5
    crystal = torch.repeat_interleave(
        torch.arange(len(reference.num_atoms)), reference.num_atoms.to(torch.long)
    )
    per_crystal = torch.zeros(len(reference.num_atoms), dtype=coords.dtype).scatter_reduce(
        0, crystal, coords.abs().amax(dim=1), reduce="amax"
    )
    lengths = (other.lengths - reference.lengths).abs()
    return {
        "max_abs_diff_frac_coords": float(coords.abs().max()),
        "median_per_crystal_frac_coords": float(per_crystal.median()),
        "crystals_over_1e-3_frac_coords": int((per_crystal > 1e-3).sum()),
        "max_abs_diff_lengths_angstrom": float(lengths.max()),
        "max_abs_diff_angles_degrees": float((other.angles - reference.angles).abs().max()),
        "atom_type_mismatches": int((other.atomic_numbers != reference.atomic_numbers).sum()),
        "crystals": len(reference.num_atoms),
    }


def part_same_samples(ctx: dict) -> dict:
    sizes = ctx["sizes"]
    report: dict = {"steps": sizes["same_steps"], "sampler": "pc", "seed": 0}
    for task in ("csp", "dng"):
        report[task] = _same_samples(ctx, task)
        ctx["save"](report)
    return report


def _same_samples(ctx: dict, task: str) -> dict:
    """The same seed through every engine for one task (see the module docstring)."""
    import torch

    from kldm_cli.config import SamplerConfig
    from kldm_cli.data.readers import load_dataset
    from kldm_cli.generate import plan_num_atoms
    from kldm_cli.sampling import batch_generator, load_model, sample

    device, sizes, seed = ctx["device"], ctx["sizes"], 0
    cuda = device.startswith("cuda")
    weights = ctx["csp_weights"] if task == "csp" else ctx["dng_weights"]
    models = {"cpu": load_model(weights, task, "cpu").model}
    if device != "cpu":
        models[device] = load_model(weights, task, device).model
    if task == "csp":
        records = load_dataset(ctx["test"]).records[: sizes["same_num_csp"]]
        num_atoms = torch.tensor([len(r.atomic_numbers) for r in records])
        numbers = torch.tensor([int(z) for r in records for z in r.atomic_numbers])
    else:
        plan = plan_num_atoms(models["cpu"].config, sizes["same_num_dng"], seed, None)
        num_atoms, numbers = torch.tensor(plan), None
    sampler = SamplerConfig(method="pc", num_steps=sizes["same_steps"])
    runs, seconds = {}, {}

    def run(name: str, model_device: str, generator_device: str, **engine) -> None:
        synchronize(model_device)
        started = time.perf_counter()
        runs[name] = sample(
            models[model_device], num_atoms, numbers, sampler,
            batch_generator(seed, 0, generator_device), **engine,
        )  # fmt: skip
        synchronize(model_device)
        seconds[name] = time.perf_counter() - started

    run("cpu", "cpu", "cpu")
    # The same CPU noise stream on the device: only the arithmetic differs from "cpu" (on a CPU
    # dry run the two runs must agree exactly).
    name = f"{device}_fp32_cpu_generator"
    run(name, device, "cpu")
    pairs = {f"{name}_vs_cpu": ("cpu", name)}
    skipped = {}
    if cuda:
        run("cuda_fp32", device, device)
        run("cuda_bf16", device, device, bf16=True)
        pairs["cuda_bf16_vs_cuda_fp32"] = ("cuda_fp32", "cuda_bf16")
        if task == "csp":  # the CUDA graph is CSP only
            run("cuda_graph", device, device, cuda_graph=True)
            run("cuda_graph_bf16", device, device, cuda_graph=True, bf16=True)
            pairs["cuda_graph_vs_cuda_fp32"] = ("cuda_fp32", "cuda_graph")
            pairs["cuda_graph_bf16_vs_cuda_bf16"] = ("cuda_bf16", "cuda_graph_bf16")
    else:
        skipped = {"bf16, cuda_graph": "need --device cuda"}
    return {
        "weights": str(weights), "crystals": int(num_atoms.numel()),
        "atoms": int(num_atoms.sum()), "seconds": seconds, "skipped": skipped,
        "comparisons": {key: _compare(runs[a], runs[b]) for key, (a, b) in pairs.items()},
    }  # fmt: skip


def _count_files(folder: Path, suffix: str) -> int:
    return len(list(folder.glob(f"*{suffix}"))) if folder.is_dir() else 0


def part_generate_bundled(ctx: dict) -> dict:
    sizes, scratch = ctx["sizes"], Path(ctx["scratch"])
    out = scratch / "generate-bundled"
    command = kldm(
        ctx,
        "generate", "--n", str(sizes["generate_n"]), "--weights", str(ctx["dng_weights"]),
        "--out", str(out), "--device", ctx["device"], "--batch-atoms", str(sizes["batch_atoms"]),
        "--seed", "0",
    )  # fmt: skip
    if sizes["generate_steps"]:
        command += ["--steps", str(sizes["generate_steps"])]
    result = run_command(command, scratch / "generate_bundled.log", ctx["time_left"]())
    written = _count_files(out, ".cif")
    ok = result["returncode"] == 0 and written == sizes["generate_n"]
    return {
        "status": "ok" if ok else "failed",
        "n": sizes["generate_n"], "written": written, "steps": sizes["generate_steps"] or "model's",
        "batch_atoms": sizes["batch_atoms"], "wall_seconds": result["seconds"], **result,
    }  # fmt: skip


def _random_model(ctx: dict, task: str, preset: str) -> Path:
    sys.path.insert(0, str(ROOT / "benchmarks"))
    from bench_sampling import random_model

    folder = Path(ctx["scratch"]) / f"random-{task}-{preset}"
    if not (folder / "model.safetensors").is_file():
        random_model(task, preset, Path(ctx["train"]), folder)
    return folder


def part_generate_paper(ctx: dict) -> dict:
    import torch

    from kldm_cli.config import SamplerConfig
    from kldm_cli.generate import plan_num_atoms
    from kldm_cli.sampling import batch_generator, load_model, plan_batches, sample

    sizes, scratch, device = ctx["sizes"], Path(ctx["scratch"]), ctx["device"]
    preset, n, steps = sizes["generate_preset"], sizes["generate_n"], sizes["paper_steps"]
    folder = _random_model(ctx, "dng", preset)
    report: dict = {"preset": preset, "weights": "random (seed 0)", "n": n, "sampler": "pc",
                    "steps": steps, "batch_atoms": sizes["batch_atoms"]}  # fmt: skip

    # Probe in this process: the same batches as the command, a few steps, to predict the full
    # run's sampling time (and bf16's, which kldm generate does not offer) before spending it.
    model = load_model(str(folder), "dng", device).model
    plan = plan_num_atoms(model.config, n, 0, None)
    batches = plan_batches(plan, sizes["batch_atoms"])

    def sampling_seconds(num_steps: int, **engine) -> float:
        synchronize(device)
        started = time.perf_counter()
        for number, indices in enumerate(batches):
            sample(
                model, torch.tensor([plan[i] for i in indices]), None,
                SamplerConfig(method="pc", num_steps=num_steps),
                batch_generator(0, number, device), **engine,
            )  # fmt: skip
        synchronize(device)
        return time.perf_counter() - started

    sampling_seconds(1)  # warm-up: library and kernel initialisation
    probe = sizes["paper_probe_steps"]
    per_step = sampling_seconds(probe) / probe
    report.update(
        batches=len(batches), atoms=sum(plan), probe_steps=probe, seconds_per_step=per_step,
        sampling_seconds_predicted=per_step * steps,
    )  # fmt: skip
    ctx["save"](report)
    if device.startswith("cuda"):
        sampling_seconds(1, bf16=True)
        bf16_per_step = sampling_seconds(probe, bf16=True) / probe
        report.update(
            bf16_seconds_per_step=bf16_per_step,
            bf16_sampling_seconds_predicted=bf16_per_step * steps,
        )  # fmt: skip
        report["peak_memory_gib"] = torch.cuda.max_memory_allocated() / 2**30
    model = None  # free the device memory for the command
    if device.startswith("cuda"):
        torch.cuda.empty_cache()
    # Start-up, model load and writing the files come on top of the sampling (margin: 30 s).
    if per_step * steps + 30 > 0.95 * ctx["time_left"]():
        return {**report, "status": "skipped", "reason": "the probe predicts a run past the budget"}
    out = scratch / "generate-paper"
    command = kldm(
        ctx,
        "generate", "--n", str(n), "--weights", str(folder), "--out", str(out), "--device",
        device, "--batch-atoms", str(sizes["batch_atoms"]), "--sampler", "pc", "--steps",
        str(steps), "--seed", "0",
    )  # fmt: skip
    full = run_command(command, scratch / "generate_paper.log", ctx["time_left"]())
    written = _count_files(out, ".cif")
    report.update(
        full=full, written=written, wall_seconds=full["seconds"],
        goal_under_40_s=full["seconds"] < 40,
        status="ok" if full["returncode"] == 0 and written == n else "failed",
    )  # fmt: skip
    return report


def _paired(fp32: dict, bf16: dict) -> dict:
    a = [t["matched"] for t in fp32["per_target"]]
    b = [t["matched"] for t in bf16["per_target"]]
    n = len(a)
    only_fp32 = sum(x and not y for x, y in zip(a, b, strict=True))
    only_bf16 = sum(y and not x for x, y in zip(a, b, strict=True))
    difference = (only_bf16 - only_fp32) / n
    # Paired standard error of the difference of two match rates on the same targets.
    se = max((only_fp32 + only_bf16) / n - difference**2, 0.0) ** 0.5 / n**0.5
    return {
        "match_rate_fp32": fp32["metrics"]["match_rate"],
        "match_rate_bf16": bf16["metrics"]["match_rate"],
        "difference_bf16_minus_fp32": difference, "paired_standard_error": se,
        "matched_by_fp32_only": only_fp32, "matched_by_bf16_only": only_bf16,
        "holds": abs(difference) <= max(0.03, 2 * se),
        "holds_rule": "|bf16 - fp32| <= max(3 points, 2 paired standard errors)",
    }  # fmt: skip


def part_evaluate_csp(ctx: dict) -> dict:
    from functools import partial
    from unittest import mock

    import kldm_cli.sampling.pipeline
    from kldm_cli.evaluation.csp_run import evaluate_csp
    from kldm_cli.sampling import sample

    sizes, scratch, device = ctx["sizes"], Path(ctx["scratch"]), ctx["device"]
    options = {
        "limit": sizes["eval_rows"], "steps": sizes["eval_steps"], "device": device,
        "batch_atoms": sizes["batch_atoms"], "workers": sizes["eval_workers"],
    }  # fmt: skip
    fp32_out = scratch / "eval_csp_fp32.json"
    flags = [
        x for key, value in options.items() if value is not None
        for x in (f"--{key.replace('_', '-')}", str(value))
    ]  # fmt: skip
    command = kldm(
        ctx,
        "evaluate", "csp", "--data", str(ctx["test"]), "--weights", str(ctx["csp_weights"]),
        "--out", str(fp32_out), *flags,
    )  # fmt: skip
    fp32 = run_command(command, scratch / "evaluate_csp.log", ctx["time_left"]())
    report: dict = {"rows": sizes["eval_rows"], "steps": sizes["eval_steps"], "fp32": fp32}
    if fp32["returncode"] != 0:
        return {**report, "status": "failed"}
    fp32_record = json.loads(fp32_out.read_text())
    report["fp32"].update(
        metrics=fp32_record["metrics"],
        timing_s=fp32_record["timing_s"],
        wall_seconds=fp32["seconds"],
    )
    ctx["save"](report)
    # bf16: the same library call, with the sampler's network under bf16 autocast. On a CPU (the
    # dry run) bf16 sampling is refused, so the same patched path runs in fp32 and must give the
    # command's matches exactly.
    cuda = device.startswith("cuda")
    engine = "bf16 autocast" if cuda else "fp32 (CPU dry run: the in-process path, no bf16)"
    started = time.perf_counter()
    with mock.patch.object(kldm_cli.sampling.pipeline, "sample", partial(sample, bf16=cuda)):
        bf16_record = evaluate_csp(
            ctx["test"], weights=str(ctx["csp_weights"]), out=scratch / "eval_csp_bf16.json",
            threads=sizes["threads"], **options,
        )  # fmt: skip
    report["bf16"] = {
        "engine": engine, "metrics": bf16_record["metrics"], "timing_s": bf16_record["timing_s"],
        "wall_seconds": time.perf_counter() - started,
    }  # fmt: skip
    report["comparison"] = _paired(fp32_record, bf16_record)
    report["status"] = "ok"
    return report


def part_train_throughput(ctx: dict) -> dict:
    import torch

    from kldm_cli.training import Trainer, TrainOptions
    from kldm_cli.training.dataset import epoch_order, iterate_batches

    sizes, device = ctx["sizes"], ctx["device"]
    rows = []
    for precision in ("fp32", "bf16"):
        for batch_size in sizes["train_batch_sizes"]:
            row: dict = {"preset": sizes["train_preset"], "precision": precision,
                         "batch_size": batch_size}  # fmt: skip
            try:
                with tempfile.TemporaryDirectory(dir=ctx["scratch"]) as folder:
                    options = TrainOptions(
                        data=Path(ctx["train"]), out=Path(folder), preset=sizes["train_preset"],
                        batch_size=batch_size, seed=0, precision=precision, device=device,
                        plot=False,
                    )  # fmt: skip
                    trainer = Trainer(options)
                    order = epoch_order(len(trainer.records), 0, 0)
                    batches = iterate_batches(trainer.data, order, batch_size, 0)
                    atoms = edges = 0
                    for index in range(sizes["train_warmup"] + sizes["train_steps"]):
                        if index == sizes["train_warmup"]:
                            synchronize(device)
                            started = time.perf_counter()
                        _, batch = next(batches)
                        trainer._train_step(batch)
                        if index >= sizes["train_warmup"]:
                            atoms += batch.batch_index.shape[0]
                            edges += batch.edge_index.shape[1]
                    synchronize(device)
                    seconds = time.perf_counter() - started
                    trainer.close()
                steps = sizes["train_steps"]
                row.update(
                    status="ok", steps=steps, seconds=seconds, steps_per_s=steps / seconds,
                    atoms_per_batch=atoms / steps, edges_per_batch=edges / steps,
                )  # fmt: skip
                if device.startswith("cuda"):
                    row["peak_memory_gib"] = torch.cuda.max_memory_allocated() / 2**30
                    torch.cuda.reset_peak_memory_stats()
            except ValueError as err:  # bf16 refused on a CPU without native bf16
                row.update(status="skipped", reason=str(err))
            rows.append(row)
            ctx["save"]({"rows": rows})
    return {"rows": rows, "status": "ok" if any(r["status"] == "ok" for r in rows) else "failed"}


def part_ddp(ctx: dict) -> dict:
    sizes, scratch = ctx["sizes"], Path(ctx["scratch"])
    out = scratch / "ddp-run"
    command = [
        sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "1",
        "-m", "kldm_cli", "train", "--data", str(ctx["train"]), "--out", str(out),
        "--preset", sizes["ddp_preset"], "--max-steps", str(sizes["ddp_steps"]),
        "--batch-size", "16", "--log-every", "1", "--device", ctx["device"],
        "--checkpoint-every", str(sizes["ddp_steps"]), *_threads_flag(ctx),
    ]  # fmt: skip
    result = run_command(command, scratch / "ddp.log", ctx["time_left"]())
    records = _log_records(out)
    backend = "nccl" if ctx["device"].startswith("cuda") else "gloo"
    ok = result["returncode"] == 0 and bool(records) and records[-1]["step"] == sizes["ddp_steps"]
    return {
        "status": "ok" if ok else "failed", "backend": backend, "world_size": 1,
        "logged_steps": len(records), "last_loss": records[-1]["loss"] if records else None,
        **result,
    }  # fmt: skip


def _log_records(run: Path) -> list[dict]:
    from kldm_cli.training import LOG_NAME, read_training_log

    path = run / LOG_NAME
    return [r for r in read_training_log(path) if "loss" in r] if path.is_file() else []


def part_train_smoke(ctx: dict) -> dict:
    sizes, scratch, device = ctx["sizes"], Path(ctx["scratch"]), ctx["device"]
    precision = "bf16" if device.startswith("cuda") else "fp32"
    out = scratch / "smoke-run"
    log = scratch / "train_smoke.log"
    command = kldm(
        ctx,
        "train", "--data", str(ctx["train"]), "--out", str(out), "--preset",
        sizes["train_preset"], "--precision", precision, "--device", device, "--batch-size",
        str(sizes["smoke_batch_size"]), "--max-steps", "1000000", "--epochs", "1000000",
        "--log-every", "10", "--checkpoint-every", "1000000", "--seed", "0",
    )  # fmt: skip
    with log.open("a") as stream:
        stream.write(f"$ {' '.join(command)}\n")
        stream.flush()
        process = subprocess.Popen(command, stdout=stream, stderr=subprocess.STDOUT, cwd=ROOT)
        # Train for ``seconds`` counted from the first logged step (start-up and data excluded),
        # fewer if the part's budget is short; 30 s are kept for the checkpoint and the exit.
        while not _log_records(out) and process.poll() is None and ctx["time_left"]() > 35:
            time.sleep(0.5)
        training_started = time.perf_counter()
        seconds = min(sizes["smoke_seconds"], max(ctx["time_left"]() - 30, 5))
        while process.poll() is None and time.perf_counter() - training_started < seconds:
            time.sleep(0.5)
        trained_seconds = time.perf_counter() - training_started
        interrupted = process.poll() is None
        if interrupted:
            process.send_signal(signal.SIGINT)  # as Ctrl-C: checkpoint, then exit 130
        try:
            returncode = process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            process.kill()
            returncode = process.wait()
    records = _log_records(out)
    losses = [r["loss"] for r in records]
    window = max(1, len(losses) // 5)
    first = statistics.fmean(losses[:window]) if losses else None
    last = statistics.fmean(losses[-window:]) if losses else None
    rates = [r["steps_per_s"] for r in records if r.get("steps_per_s")]
    report = {
        "preset": sizes["train_preset"], "precision": precision, "device": device,
        "batch_size": sizes["smoke_batch_size"], "seconds_asked": seconds,
        "training_seconds": trained_seconds, "returncode": returncode,
        "stopped_by_sigint": interrupted, "steps": records[-1]["step"] if records else 0,
        "logged": len(records), "loss_first_fifth": first, "loss_last_fifth": last,
        "loss_falls": first is not None and len(losses) >= 2 and last < first,
        "steps_per_s_median": statistics.median(rates) if rates else None,
        "tail": tail(log),
    }  # fmt: skip
    ok = returncode in (0, 130) and report["loss_falls"]
    report["status"] = "ok" if ok or (not ctx["full"] and records) else "failed"
    return report


PART_FUNCTIONS = {name: globals()[f"part_{name}"] for name in PARTS}


# ---------------------------------------------------------------------- orchestration
def _stop_commands(signum: int, frame: object) -> None:
    """SIGTERM from the orchestrator (the part ran past its budget): stop the part's commands,
    which run in process groups of their own, then exit."""
    for pid in list(_RUNNING):
        try:
            os.killpg(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    sys.exit(128 + signum)


def run_part(args: argparse.Namespace) -> None:
    """Child process: run one part and write its JSON to ``--result``."""
    signal.signal(signal.SIGTERM, _stop_commands)
    ctx = json.loads(Path(args.context).read_text())
    ends = time.perf_counter() + ctx["budget"]
    ctx["time_left"] = lambda: max(ends - time.perf_counter(), 1.0)
    # What a part has measured so far, kept if the part is stopped at its budget.
    ctx["save"] = lambda partial: write_json(Path(args.result), {**partial, "status": "partial"})
    if ctx["sizes"]["threads"]:
        from kldm_cli.sampling import set_threads

        set_threads(ctx["sizes"]["threads"])
    started = time.perf_counter()
    try:
        result = PART_FUNCTIONS[args.part](ctx)
        result.setdefault("status", "ok")
    except Exception as err:  # noqa: BLE001 - every failure is recorded, the check goes on
        result = {"status": "error", "error": f"{type(err).__name__}: {err}",
                  "traceback": traceback.format_exc().splitlines()[-12:]}  # fmt: skip
    result["part_seconds"] = time.perf_counter() - started
    write_json(Path(args.result), result)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add = parser.add_argument
    add("--device", default="cuda", help="cuda (the check) or cpu (the dry run).")
    add("--out", type=Path, default=Path(os.environ.get("OUT", "device-check")))
    add("--tiny", action="store_true", help="Tiny sizes (the CPU dry run in CI).")
    add("--parts", default=",".join(PARTS), help=f"Comma-separated from {', '.join(PARTS)}.")
    add("--deadline", type=float, default=450.0, help="Seconds for all parts together.")
    add("--budget-scale", type=float, default=1.0, help="Multiply every part's budget.")
    add("--train", type=Path, default=DEFAULT_TRAIN, help="Training rows (MP-20 subset).")
    add("--test", type=Path, default=DEFAULT_TEST, help="Test rows (first MP-20 test rows).")
    add("--csp-weights", type=Path, default=ROOT / "weights" / "kldm-csp-mp20")
    add("--dng-weights", type=Path, default=ROOT / "weights" / "kldm-dng-mp20")
    add("--part", help=argparse.SUPPRESS)
    add("--context", help=argparse.SUPPRESS)
    add("--result", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.part:
        run_part(args)
        return
    parts = [p.strip() for p in args.parts.split(",") if p.strip()]
    if unknown := [p for p in parts if p not in PARTS]:
        parser.error(f"unknown parts {unknown}; choose from {', '.join(PARTS)}")
    for label, path in (("--train", args.train), ("--test", args.test)):
        if not path.is_file():
            parser.error(f"{label} {path} does not exist (benchmarks/device/download_wheels.sh)")
    run_check(args, parts)


def run_check(args: argparse.Namespace, parts: list[str]) -> dict:
    started = time.perf_counter()
    args.out.mkdir(parents=True, exist_ok=True)
    scratch = Path(tempfile.mkdtemp(prefix="kldm-device-check-"))
    env = dict(os.environ)
    env.setdefault("KLDM_CACHE_DIR", str(scratch / "kldm-cache"))  # parse the data once
    env.setdefault("HF_HOME", str(scratch / "hf-home"))
    env["HF_HUB_OFFLINE"] = "1"  # the device machine has no network
    env["PYTHONUNBUFFERED"] = "1"
    env["PYTHONPATH"] = os.pathsep.join(
        p for p in (str(ROOT / "src"), env.get("PYTHONPATH", "")) if p
    )  # fmt: skip
    sizes = SIZES["tiny" if args.tiny else "full"]
    results: dict = {
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "device": args.device, "sizes": "tiny" if args.tiny else "full", "size_table": sizes,
        "deadline_s": args.deadline, "started": time.strftime("%Y-%m-%d %H:%M:%S"),
        "git_commit": _git_commit(), "parts": {},
    }  # fmt: skip
    results_path = args.out / "results.json"
    for name in parts:
        left = args.deadline - (time.perf_counter() - started)
        if left < 5:
            results["parts"][name] = {"status": "skipped", "reason": "overall deadline reached"}
            continue
        budget = min(BUDGETS[name] * args.budget_scale, left)
        context = {
            "device": args.device, "sizes": sizes, "full": not args.tiny, "budget": budget,
            "scratch": str(scratch), "train": str(args.train.resolve()),
            "test": str(args.test.resolve()), "csp_weights": str(args.csp_weights.resolve()),
            "dng_weights": str(args.dng_weights.resolve()),
        }  # fmt: skip
        context_path, result_path = scratch / f"{name}.context.json", scratch / f"{name}.json"
        write_json(context_path, context)
        print(
            f"[{time.perf_counter() - started:6.1f} s] {name} (budget {budget:.0f} s)", flush=True
        )
        command = [
            sys.executable, str(Path(__file__).resolve()), "--part", name,
            "--context", str(context_path), "--result", str(result_path),
        ]  # fmt: skip
        # A little beyond the budget: the part stops its own commands at the budget.
        cpu_before = _children_cpu_seconds()
        outcome = run_command(command, scratch / f"{name}.part.log", budget + 20, env)
        if result_path.is_file():
            result = json.loads(result_path.read_text())
            if result["status"] == "partial":  # stopped (or crashed) after saving something
                result.update(
                    status="timeout" if outcome["timed_out"] else "error", tail=outcome["tail"]
                )
        else:
            result = {
                "status": "timeout" if outcome["timed_out"] else "error",
                "error": f"the part's process ended with {outcome['returncode']}",
                "tail": outcome["tail"],
            }  # fmt: skip
        result["budget_s"] = budget
        result["cpu_seconds"] = _children_cpu_seconds() - cpu_before
        results["parts"][name] = result
        print(f"    {name}: {result['status']} ({outcome['seconds']:.1f} s)", flush=True)
        results["total_seconds"] = time.perf_counter() - started
        write_json(results_path, results)
        _pack_logs(scratch, args.out / "logs.tar.gz")
    results["summary"] = {name: r["status"] for name, r in results["parts"].items()}
    results["total_seconds"] = time.perf_counter() - started
    write_json(results_path, results)
    _pack_logs(scratch, args.out / "logs.tar.gz")
    print(json.dumps(results["summary"]), flush=True)
    return results


def _children_cpu_seconds() -> float:
    """CPU time (user + system) of the finished child processes of this process."""
    import resource

    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def _pack_logs(scratch: Path, target: Path) -> None:
    """The parts' logs, JSON results, evaluation records and training logs, in one file."""
    with tarfile.open(target, "w:gz") as tar:
        for path in sorted(scratch.rglob("*")):
            if path.is_file() and (
                path.suffix in (".log", ".json", ".jsonl") and path.stat().st_size < 20 * 2**20
            ):
                tar.add(path, arcname=str(path.relative_to(scratch)))


def _git_commit() -> str | None:
    done = subprocess.run(
        ["git", "describe", "--always", "--dirty"], capture_output=True, text=True, cwd=ROOT,
        check=False,
    )  # fmt: skip
    return done.stdout.strip() or None


if __name__ == "__main__":
    main()
