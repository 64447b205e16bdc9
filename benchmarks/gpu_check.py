"""One command for a lent GPU: the harness's real commands on CUDA, timed and checked, written to one JSON and one page.

    python benchmarks/gpu_check.py [--out gpu_check/] [--data-dir DIR]    a machine with one or more CUDA GPUs
    python benchmarks/gpu_check.py --device cpu --out /tmp/gpu_check      the same steps at the tiny size, on the CPU

Every step runs through the command a user would type (written into the summary, to rerun it), each in its own
process; a step runs even when an earlier one failed, unless it needs that one's output:
  matmul_ceiling  the bf16 matmul rate measured on the device (8192^3 on a GPU): the best case for MFU
  pretrain        `harness pretrain --preset base --set data.max_seq_length=128`, 300 updates of 256 sequences in
                  bf16 on one GPU: tokens/s (steady state, the run's own train/tokens_per_s) and MFU against the
                  datasheet peak (gpu_throughput.PEAK_BF16_TFLOPS; null for a GPU not in it) and the measured ceiling
  hf_trainer      the transformers Trainer (bf16, SDPA, dense MLM head) on the same model and shape:
                  gpu_throughput.py's baseline arm, run as its `--child` process
  ddp             the pre-training again over all GPUs (impl.devices=N impl.strategy=ddp); skipped on one device
  resume          a pre-training run killed (SIGKILL) once its first checkpoint exists (impl.checkpoint_every_steps),
                  then the same command again: its run directory must record the relaunch as resumed (env.json), the
                  relaunch must start after step 0 (its own log) and the run must finish
  finetune        `harness finetune --task rte` from the pre-trained run's model/
  blimp           `harness evaluate --task blimp` on the first pairs of every paradigm
Model FLOPs per token are gpu_throughput.py's (6N + 12 x layers x hidden x seq + 15% x 6 x hidden x vocab).
Writes <out>/gpu_check.json, <out>/gpu_check.md, each command's output in <out>/logs/, the runs in <out>/results/
(replaced on a new check). Exit status 0 when no step failed, 1 when one did; 2 (one line) before any work when there
is no CUDA device and no --device cpu, or no data.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import torch

REPO = Path(__file__).resolve().parents[1]
# benchmarks/gpu_throughput.py (the peak table, the HF baseline arm, FLOPs, the matmul ceiling) and benchmarks/blimp.py
# (CPU_FLAGS, machine_line: what the other benchmarks print); imported by main(), after the one-line refusals, for
# they load Lightning and transformers.
gt: Any = None
blimp: Any = None
SEQ_LEN = 128
STEP_NAMES = ("matmul_ceiling", "pretrain", "hf_trainer", "ddp", "resume", "finetune", "blimp")


@dataclass(frozen=True)
class Profile:
    """What the steps run at on one kind of device."""

    preset: str  # harness size preset (the model size of the same name)
    vocab_size: int
    batch_size: int  # sequences per update, for ours and the HF Trainer alike
    steps: int  # updates of the measured pre-training run
    log_every: int
    hf_script: str  # the HF Trainer arm: a benchmark script's `--child hf-trainer-bf16`, with these arguments
    hf_args: tuple[str, ...]
    hf_warmup: int  # untimed HF Trainer updates, then hf_steps timed ones
    hf_steps: int
    resume_steps: int  # updates of the run that is killed and relaunched
    checkpoint_every: int
    pretrain_set: tuple[str, ...]  # corpus slice, speed settings and evaluation size of every pre-training run
    finetune_task: str
    finetune_set: tuple[str, ...]
    blimp_set: tuple[str, ...]
    timeout_s: int  # per command
    parallel: int  # steps at a time after pretrain (1: each alone)


PROFILES: dict[str, Profile] = {
    "cuda": Profile(
        preset="base", vocab_size=50_265, batch_size=256, steps=300, log_every=10,
        hf_script="gpu_throughput.py", hf_args=("--device", "cuda"), hf_warmup=10, hf_steps=40,
        resume_steps=90, checkpoint_every=30,
        pretrain_set=("impl.accelerator=gpu", "impl.num_proc=8", "budget.val_max_examples=256",
                      "budget.common_val_max_chars=20000"),
        finetune_task="rte", finetune_set=("learning_rates=[2e-5]", "seeds=[0]", "epochs=3", "batch_size=32",
                                           "max_seq_length=128", "impl.precision=bf16-mixed"),
        blimp_set=("blimp.pairs_per_paradigm=100",), timeout_s=600, parallel=1),
    # A test of the same steps in about a minute: the tiny model on the tests' 12 WikiText-2 documents (their
    # segmentation cache), a handful of updates, 64 RTE examples, 2 BLiMP pairs per paradigm, two steps at a time
    # after pretrain (each step is a fresh process, and importing Lightning alone takes ~5 CPU-s). The HF arm runs on
    # pretrain_throughput's synthetic tokens: gpu_throughput's arm always segments all of WikiText-2 (pysbd, about
    # 15 s on 2 cores) and adds nothing else on a CPU (its CUDA clock and device pinning are GPU-only).
    "cpu": Profile(
        preset="tiny", vocab_size=1000, batch_size=8, steps=8, log_every=1,
        hf_script="pretrain_throughput.py", hf_args=("--data", "synthetic"), hf_warmup=1, hf_steps=3,
        resume_steps=24, checkpoint_every=3,
        pretrain_set=("corpus.max_documents=12", "corpus.validation_fraction=0.25", "impl.accelerator=cpu",
                      "budget.val_max_examples=32", "budget.common_val_max_chars=2000"),
        finetune_task="rte", finetune_set=("learning_rates=[1e-3]", "seeds=[0]", "epochs=1", "batch_size=16",
                                           "max_seq_length=64", "train_subsample=64"),
        blimp_set=("blimp.pairs_per_paradigm=2",), timeout_s=300, parallel=2),
}


def hf_argv(profile: Profile) -> list[str]:
    """The HF Trainer arm's arguments (before `--child`), for profile.hf_script."""
    return [*profile.hf_args, "--size", profile.preset, "--seq-len", str(SEQ_LEN), "--batch-size",
            str(profile.batch_size), "--vocab-size", str(profile.vocab_size), "--warmup", str(profile.hf_warmup),
            "--steps", str(profile.hf_steps)]


class StepFailed(Exception):
    """A step's check did not hold; the message is its one-line reason."""


@dataclass
class Check:
    args: argparse.Namespace
    profile: Profile
    out: Path
    data_dir: Path
    steps: dict[str, dict[str, Any]] = field(default_factory=dict)
    ceiling_tflops: dict[str, float] = field(default_factory=dict)  # by precision: bf16 (and fp32 on a CPU)
    peak_tflops: float | None = None  # datasheet dense bf16
    vocab: int | None = None  # the trained tokenizer's size (what the FLOPs count)
    model_dir: Path | None = None

    @property
    def results(self) -> Path:
        return self.out / "results"


# ---- commands -------------------------------------------------------------------------------------------------
def shown(command: list[str]) -> str:
    """The command as a user types it in the repository root (where it runs)."""
    words = [str(Path(word).relative_to(REPO)) if Path(word).is_relative_to(REPO) else str(word)
             for word in command[1:]]
    return shlex.join(["python", *words])


def harness_command(*args: str | Path) -> list[str]:
    return [sys.executable, "-m", "harness", *map(str, args)]


def sets(items: tuple[str, ...] | list[str]) -> list[str]:
    return [arg for item in items for arg in ("--set", item)]


def pretrain_command(check: Check, experiment: str, steps: int, extra: tuple[str, ...] = ()) -> list[str]:
    p = check.profile
    return harness_command("pretrain", "--preset", p.preset, *sets([
        f"experiment={experiment}", f"data.max_seq_length={SEQ_LEN}", f"tokenizer.vocab_size={p.vocab_size}",
        f"optim.batch_size={p.batch_size}", f"budget.max_steps={steps}", f"budget.val_every_steps={steps}",
        f"logging.log_every_steps={p.log_every}", "logging.wandb=false", "impl.progress_bar=false",
        *p.pretrain_set, *check.args.set, *extra]), "--data-dir", check.data_dir, "--results", check.results)


def run_command(check: Check, record: dict[str, Any], name: str, command: list[str]) -> str:
    """Run to completion with its output appended to logs/<name>.log; stdout back; a failure is one line."""
    record["commands"].append(shown(command))
    log = check.out / "logs" / f"{name}.log"
    try:
        done = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=check.profile.timeout_s)
    except subprocess.TimeoutExpired as err:
        raise StepFailed(f"no result within {err.timeout:.0f} s: {shown(command)}") from None
    with log.open("a", encoding="utf-8") as handle:
        handle.write(f"$ {shown(command)}\n{done.stdout}{done.stderr}\n")
    if done.returncode != 0:
        lines = [line for line in done.stderr.splitlines() if line.strip()] or ["no output"]
        raise StepFailed(f"exit status {done.returncode}: {lines[-1].strip()} (log: {log})")
    return done.stdout


def last_json(stdout: str) -> dict[str, Any]:
    """The JSON object a harness command prints last (a library may print lines before it)."""
    start = stdout.rfind("\n{")
    return json.loads(stdout[start + 1 if start >= 0 else 0:])


def only_run(runs: Path) -> Path:
    found = sorted(path for path in runs.glob("*") if path.is_dir())
    if len(found) != 1:
        raise StepFailed(f"expected one run directory in {runs}, found {len(found)}")
    return found[0]


# ---- figures --------------------------------------------------------------------------------------------------
def flops_per_token(check: Check) -> float:
    """gpu_throughput's useful model FLOPs per token for the profile's size, at the trained vocabulary."""
    vocab = check.vocab or check.profile.vocab_size
    args = SimpleNamespace(size=check.profile.preset, seq_len=SEQ_LEN)
    data = SimpleNamespace(vocab_size=vocab, pad_token_id=1, bos_token_id=0, eos_token_id=2)  # ids: no FLOPs
    model_flops, vocab_flops = gt.pt.flops_per_token(args, data)
    return model_flops + gt.MASK_RATE * vocab_flops


def rate_figures(check: Check, tokens_per_s: float, precision: str) -> dict[str, Any]:
    tflops = tokens_per_s * flops_per_token(check) / 1e12
    bf16 = "bf16" in precision
    ceiling = check.ceiling_tflops.get("bf16" if bf16 else "fp32")
    return {"tokens_per_s": round(tokens_per_s, 1), "model_tflops": round(tflops, 4),
            "mfu_vs_datasheet": round(tflops / check.peak_tflops, 4) if check.peak_tflops and bf16 else None,
            "mfu_vs_measured_ceiling": round(tflops / ceiling, 4) if ceiling else None}


def run_figures(check: Check, run: Path) -> dict[str, Any]:
    """A finished pre-training run's throughput, read from its own record: the median of its logged
    train/tokens_per_s (10-update windows) after the first fifth of the updates, and over the whole fit."""
    from harness.runs import read_curves, read_final_metrics

    final, curves = read_final_metrics(run), read_curves(run)
    rates = curves["train/tokens_per_s"].dropna()
    steady = rates[rates.index >= max(2, final["steps"] // 5)]
    steady = steady if len(steady) else rates
    if not len(steady) or steady.median() <= 0:
        raise StepFailed(f"{run} logged no train/tokens_per_s")
    return {"steps": final["steps"], "precision": final["precision"], "tokens_seen": final["tokens_seen"],
            **rate_figures(check, float(steady.median()), final["precision"]),
            "tokens_per_s_whole_fit": round(final["tokens_seen"] / final["fit_seconds_this_launch"], 1),
            "fit_seconds": final["fit_seconds_this_launch"], "val_mlm_loss": round(final["val_mlm_loss"], 4),
            "run_dir": str(run)}


# ---- the steps --------------------------------------------------------------------------------------------------
def step_matmul_ceiling(check: Check, record: dict[str, Any]) -> None:
    check.ceiling_tflops = {name: round(tflops, 4) for name, tflops in gt.ceilings_tflops(check.args.device).items()}
    if check.args.device == "cuda":
        torch.cuda.empty_cache()  # the steps' own processes get the memory back
    record["commands"].append("in this process: pretrain_throughput.matmul_ceiling (via gpu_throughput."
                              "ceilings_tflops)")
    record["figures"] = {f"{name}_tflops": value for name, value in check.ceiling_tflops.items()}


def step_pretrain(check: Check, record: dict[str, Any]) -> None:
    run_command(check, record, "pretrain", pretrain_command(check, "gpu-check", check.profile.steps))
    run = only_run(check.results / "gpu-check" / "runs")
    check.model_dir = run / "model"
    check.vocab = json.loads((check.model_dir / "config.json").read_text(encoding="utf-8"))["vocab_size"]
    record["figures"] = {**run_figures(check, run), "vocab_size": check.vocab}


def step_hf_trainer(check: Check, record: dict[str, Any]) -> None:
    p = check.profile
    script, argv = str(Path(__file__).resolve().parent / p.hf_script), hf_argv(p)
    record["commands"].append(f"HARNESS_DATA_DIR={shlex.quote(str(check.data_dir))} "
                              + shown([sys.executable, script, *argv, "--child", gt.BASELINE]))
    try:
        tokens_per_s, _ = gt.pt.run_child(argv, gt.BASELINE, script=script)
    except SystemExit as err:  # run_child's way of reporting a failed arm
        raise StepFailed(" ".join(str(err).split())[-500:]) from None
    record["figures"] = {"arm": gt.BASELINE, "timed_updates": p.hf_steps, **rate_figures(check, tokens_per_s, "bf16")}
    ours = check.steps.get("pretrain", {}).get("figures", {}).get("tokens_per_s")
    if ours:
        record["figures"]["ours_over_hf"] = round(ours / tokens_per_s, 3)


def step_ddp(check: Check, record: dict[str, Any]) -> str | None:
    devices = torch.cuda.device_count() if check.args.device == "cuda" else 1
    if devices < 2:
        return f"one device ({'--device cpu' if check.args.device == 'cpu' else 'one GPU'}): DDP needs several GPUs"
    run_command(check, record, "ddp", pretrain_command(check, "gpu-check-ddp", check.profile.steps,
                                                       (f"impl.devices={devices}", "impl.strategy=ddp")))
    record["figures"] = {"devices": devices, **run_figures(check, only_run(check.results / "gpu-check-ddp" / "runs"))}
    single = check.steps.get("pretrain", {}).get("figures", {}).get("tokens_per_s")
    if single:
        record["figures"]["scaling_efficiency"] = round(record["figures"]["tokens_per_s"] / (devices * single), 3)
    return None


def step_resume(check: Check, record: dict[str, Any]) -> None:
    p = check.profile
    command = pretrain_command(check, "gpu-check-resume", p.resume_steps,
                               (f"impl.checkpoint_every_steps={p.checkpoint_every}",))
    runs = check.results / "gpu-check-resume" / "runs"
    killed_at = launch_and_kill(check, record, command, runs)
    run_command(check, record, "resume", command)  # the same command again
    run = only_run(runs)
    from harness.runs import ENV_FILE, read_final_metrics

    final = read_final_metrics(run)
    relaunches = [entry.get("status") for entry in
                  json.loads((run / ENV_FILE).read_text(encoding="utf-8")).get("resumes", [])]
    first_step = first_logged_step(run / "logs" / "launch-1" / "metrics.csv")
    record["figures"] = {"killed_at_checkpoint_step": killed_at, "relaunch_statuses": relaunches,
                         "resumed_first_logged_step": first_step, "steps": final["steps"],
                         "val_mlm_loss": round(final["val_mlm_loss"], 4), "run_dir": str(run)}
    if relaunches != ["resumable"]:
        raise StepFailed(f"env.json records the relaunch as {relaunches}, not ['resumable']")
    if not first_step or first_step < killed_at or killed_at <= 0:
        raise StepFailed(f"the relaunch logged step {first_step} first; the checkpoint was at step {killed_at}")
    if final["steps"] != p.resume_steps:
        raise StepFailed(f"the resumed run stopped at {final['steps']} updates, not {p.resume_steps}")


def launch_and_kill(check: Check, record: dict[str, Any], command: list[str], runs: Path) -> int:
    """Start the run, SIGKILL its process group as soon as checkpoints/last.ckpt exists (Lightning writes it
    atomically), return the checkpoint's step."""
    record["commands"].append(shown(command) + "   # killed (SIGKILL) once checkpoints/last.ckpt exists")
    with (check.out / "logs" / "resume.log").open("a", encoding="utf-8") as log:
        log.write(f"$ {shown(command)}   # to be killed\n")
        log.flush()
        process = subprocess.Popen(command, cwd=REPO, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        try:
            checkpoint = wait_for_checkpoint(process, runs, time.monotonic() + check.profile.timeout_s)
        finally:
            if process.poll() is None:
                os.killpg(process.pid, signal.SIGKILL)
            process.wait()
    from harness.runs import FINAL_METRICS_FILE

    if (checkpoint.parents[1] / FINAL_METRICS_FILE).exists():
        raise StepFailed("the run finished before it could be killed; give the resume run more updates")
    return int(torch.load(checkpoint, map_location="cpu", weights_only=False, mmap=True)["global_step"])


def wait_for_checkpoint(process: subprocess.Popen, runs: Path, deadline: float) -> Path:
    while (checkpoint := next(runs.glob("*/checkpoints/last.ckpt"), None)) is None:
        if process.poll() is not None:
            raise StepFailed(f"the run exited (status {process.returncode}) before its first checkpoint")
        if time.monotonic() > deadline:
            raise StepFailed("no checkpoint before the time limit")
        time.sleep(0.05)
    return checkpoint


def first_logged_step(metrics_csv: Path) -> int | None:
    import csv

    if not metrics_csv.is_file():
        return None
    with metrics_csv.open(encoding="utf-8") as handle:
        steps = [int(row["step"]) for row in csv.DictReader(handle) if row.get("step")]
    return min(steps, default=None)


def step_finetune(check: Check, record: dict[str, Any]) -> None:
    p = check.profile
    printed = last_json(run_command(check, record, "finetune", harness_command(
        "finetune", "--checkpoint", check.model_dir, "--task", p.finetune_task,
        *sets([*p.finetune_set, "impl.wandb_mode=disabled"]),  # as the pre-training runs: no wandb logs to check
        "--data-dir", check.data_dir, "--results", check.results)))
    record["figures"] = {"task": printed["task"], "metric": printed["selection_metric"],
                         "score": round(printed["best"]["median"], 2), "learning_rate": printed["best_learning_rate"],
                         "study_dir": printed["study_dir"]}


def step_blimp(check: Check, record: dict[str, Any]) -> None:
    printed = last_json(run_command(check, record, "blimp", harness_command(
        "evaluate", "--checkpoint", check.model_dir, "--task", "blimp", *sets(check.profile.blimp_set),
        "--data-dir", check.data_dir, "--results", check.results)))
    record["figures"] = {"accuracy": round(printed["overall"], 2), "pairs": printed["pairs"],
                         "paradigms": printed["paradigms"], "record": printed["record"]}


Step = Callable[[Check, dict[str, Any]], str | None]
STEPS: tuple[tuple[str, Step, tuple[str, ...]], ...] = (  # name, function, the steps whose output it needs
    ("matmul_ceiling", step_matmul_ceiling, ()), ("pretrain", step_pretrain, ()), ("hf_trainer", step_hf_trainer, ()),
    ("ddp", step_ddp, ()), ("resume", step_resume, ()), ("finetune", step_finetune, ("pretrain",)),
    ("blimp", step_blimp, ("pretrain",)))
FIRST_STEPS = 2  # matmul_ceiling and pretrain run alone, before the others


def run_steps(check: Check) -> None:
    """In STEPS order; the steps after FIRST_STEPS `profile.parallel` at a time (the CPU test only: on a GPU each
    step has the device to itself, or its figures would measure its neighbours)."""
    chosen = [entry for entry in STEPS if not check.args.only or entry[0] in check.args.only]
    for name, *_ in STEPS:
        check.steps[name] = {"status": "skipped", "seconds": 0.0, "commands": [], "figures": {},
                             "error": None if any(name == entry[0] for entry in chosen) else "not asked for (--only)"}
    for entry in chosen:  # the ceiling on an idle device; pretrain builds the data caches
        if entry in STEPS[:FIRST_STEPS]:
            run_step(check, *entry)
    with ThreadPoolExecutor(max_workers=check.profile.parallel) as pool:
        list(pool.map(lambda entry: run_step(check, *entry), [e for e in chosen if e not in STEPS[:FIRST_STEPS]]))


def run_step(check: Check, name: str, step: Step, needs: tuple[str, ...]) -> None:
    record = check.steps[name]
    missing = [need for need in needs if check.steps[need]["status"] != "ok"]
    started = time.perf_counter()
    if missing:
        record["error"] = f"needs {', '.join(missing)}, which did not succeed"
    else:
        print(f"gpu_check: {name} ...", flush=True)
        try:
            reason = step(check, record)
            record["status"], record["error"] = ("skipped", reason) if reason else ("ok", None)
        except Exception as err:  # a step's failure (StepFailed or any other) is recorded; the next steps still run
            record["status"], record["error"] = "failed", " ".join(f"{err}".split()) or type(err).__name__
    record["seconds"] = round(time.perf_counter() - started, 1)
    note = f" ({record['error']})" if record["error"] else ""
    print(f"gpu_check: {name} {record['status']} in {record['seconds']} s{note} {brief(record['figures'])}",
          flush=True)


def brief(figures: dict[str, Any]) -> str:
    return ", ".join(f"{key} {value:,.4g}" if isinstance(value, float) else f"{key} {value}"
                     for key, value in figures.items() if not key.endswith(("_dir", "record")))


# ---- machine and summary ----------------------------------------------------------------------------------------
def machine() -> dict[str, Any]:
    from harness.runs import hardware

    try:
        flags = next(line.split(":", 1)[1].split() for line in Path("/proc/cpuinfo").read_text().splitlines()
                     if line.startswith("flags"))
    except (OSError, StopIteration):
        flags = []
    gpus = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())] if torch.cuda.is_available() \
        else []
    return {"gpus": gpus, "gpu_count": len(gpus), "cuda": torch.version.cuda, "torch": torch.__version__,
            "cpu": hardware()["cpu"], "cpu_count": os.cpu_count(),
            "cpu_flags": {flag: flag in flags for flag in blimp.CPU_FLAGS}, "python": platform.python_version(),
            "hostname": platform.node()}


def summary(check: Check, started: datetime) -> dict[str, Any]:
    from harness.runs import git_state

    p = check.profile
    return {"time_utc": started.isoformat(timespec="seconds"), "command": shlex.join(["python", *sys.argv]),
            "ok": all(step["status"] != "failed" for step in check.steps.values()), "git": git_state(),
            "machine": machine(), "data_dir": str(check.data_dir),
            "profile": {"device": check.args.device, "preset": p.preset, "seq_len": SEQ_LEN,
                        "batch_size": p.batch_size, "updates": p.steps, "peak_bf16_tflops": check.peak_tflops,
                        "steps_at_a_time": p.parallel, "pretrain_settings": list(check.args.set)},
            "steps": check.steps}


def markdown(record: dict[str, Any]) -> str:
    m, p = record["machine"], record["profile"]
    failed = [name for name, step in record["steps"].items() if step["status"] == "failed"]
    flags = " ".join(flag for flag, present in m["cpu_flags"].items() if present) or "none of the listed"
    gpus = f"{m['gpu_count']} x {', '.join(sorted(set(m['gpus'])))}" if m["gpus"] else "no GPU"
    lines = [f"# GPU check, {record['time_utc']}: {'every step ok' if not failed else 'FAILED: ' + ', '.join(failed)}",
             "", f"- machine: {gpus}; CUDA {m['cuda']}, torch {m['torch']}; {m['cpu']} ({m['cpu_count']} cores; "
             f"flags {flags})", f"- profile: `{p['preset']}` preset, seq {p['seq_len']}, batch {p['batch_size']}, "
             f"{p['updates']} updates on {p['device']}; datasheet bf16 peak: {tflops(p['peak_bf16_tflops'])}",
             f"- command: `{record['command']}`"]
    if p["steps_at_a_time"] > 1:
        lines.append(f"- the steps after pretrain ran {p['steps_at_a_time']} at a time: their wall times overlap")
    lines += ["", "| step | status | wall s | figures |", "|---|---|---|---|"]
    for name, step in record["steps"].items():
        text = brief(step["figures"]) + (f" ({step['error']})" if step["error"] else "")
        lines.append(f"| {name} | {step['status']} | {step['seconds']} | {text.replace('|', '/')} |")
    lines += ["", *throughput_table(record), "", "## Commands (in the repository root; rerun a step with them)", ""]
    for name, step in record["steps"].items():
        lines += [f"### {name}", "", "```", *(step["commands"] or ["(not run)"]), "```", ""]
    return "\n".join(lines)


def throughput_table(record: dict[str, Any]) -> list[str]:
    steps = record["steps"]
    ceiling = steps["matmul_ceiling"]["figures"].get("bf16_tflops")
    lines = [f"## Pre-training throughput ({record['profile']['preset']}, seq {record['profile']['seq_len']})", "",
             f"MFU = model TFLOP/s / the datasheet dense bf16 peak ({tflops(record['profile']['peak_bf16_tflops'])}) "
             f"and / the bf16 matmul rate measured here ({tflops(ceiling)}).", "",
             "| arm | tokens/s | model TFLOP/s | MFU vs datasheet | MFU vs measured matmul |", "|---|---|---|---|---|"]
    arms = (("harness pretrain, 1 device", "pretrain"), ("HF Trainer (bf16, dense head), 1 device", "hf_trainer"),
            (f"harness pretrain, DDP x {steps['ddp']['figures'].get('devices', '-')}", "ddp"))
    for label, name in arms:
        figures = steps[name]["figures"]
        if steps[name]["status"] == "ok" and "tokens_per_s" in figures:
            lines.append(f"| {label} | {figures['tokens_per_s']:,.0f} | {figures['model_tflops']:.4g} | "
                         f"{percent(figures['mfu_vs_datasheet'])} | {percent(figures['mfu_vs_measured_ceiling'])} |")
        else:
            lines.append(f"| {label} | {steps[name]['status']} | | | |")
    return lines


def tflops(value: float | None) -> str:
    return "none" if value is None else f"{value:.4g} TFLOP/s"


def percent(value: float | None) -> str:
    return "null" if value is None else f"{value:.1%}"


# ---- main ---------------------------------------------------------------------------------------------------------
def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", choices=("cuda", "cpu"), default="cuda",
                        help="cuda: the check (base size); cpu: the same steps at the tiny size, as a test")
    parser.add_argument("--out", type=Path, default=Path("gpu_check"), help="folder for the JSON, Markdown, logs, runs")
    parser.add_argument("--data-dir", type=Path, default=None,
                        help="the shared data folder (default: $HARNESS_DATA_DIR, else ../shared/data)")
    parser.add_argument("--peak-tflops", type=float, default=None,
                        help="the GPU's dense bf16 peak, for a GPU the datasheet table does not know")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="a setting for every pre-training run of the check (repeatable), e.g. impl.compile=true")
    parser.add_argument("--only", default=None, metavar="STEP,...",
                        help=f"run only these steps (a step that needs pretrain needs it listed); of: "
                             f"{', '.join(STEP_NAMES)}")
    args = parser.parse_args(argv)
    if args.only is not None:
        args.only = [name.strip() for name in args.only.split(",") if name.strip()]
        unknown = [name for name in args.only if name not in STEP_NAMES]
        if unknown or not args.only:
            parser.exit(2, f"gpu_check: --only {unknown[0] if unknown else '(empty)'} is not a step; allowed: "
                           f"{', '.join(STEP_NAMES)}\n")
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.exit(2, "gpu_check: no CUDA device (torch.cuda.is_available() is False); use --device cpu to run the "
                       "same steps at the tiny size\n")
    args.data_dir = (args.data_dir or Path(os.environ.get("HARNESS_DATA_DIR") or REPO.parent / "shared" / "data"))
    if not (args.data_dir / "corpora").is_dir():
        parser.exit(2, f"gpu_check: no data at {args.data_dir} (no corpora/ in it); pass --data-dir or set "
                       "HARNESS_DATA_DIR\n")
    if any(args.out.glob("*")) and not (args.out / "gpu_check.json").exists() and not (args.out / "results").exists():
        parser.exit(2, f"gpu_check: --out {args.out} holds other files; give an empty or new folder\n")
    return args


def import_benchmarks() -> None:
    global gt, blimp
    sys.path[:0] = [str(REPO), str(Path(__file__).resolve().parent)]
    import blimp as blimp_benchmark
    import gpu_throughput

    gt, blimp = gpu_throughput, blimp_benchmark


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    import_benchmarks()
    started = datetime.now(UTC)
    args.data_dir, args.out = args.data_dir.resolve(), args.out.resolve()
    os.environ["HARNESS_DATA_DIR"] = str(args.data_dir)  # the HF arm's child reads the data through it
    for stale in ("results", "logs"):  # a check measures fresh runs: a finished run would be returned as it is
        shutil.rmtree(args.out / stale, ignore_errors=True)
    (args.out / "logs").mkdir(parents=True)
    check = Check(args, PROFILES[args.device], args.out, args.data_dir)
    if args.device == "cuda":
        check.peak_tflops = args.peak_tflops or gt.peak_bf16_tflops(torch.cuda.get_device_name(0))
    print(f"gpu_check: {blimp.machine_line()}")
    info = machine()
    print(f"gpu_check: {info['gpu_count']} GPU(s) {info['gpus']}, CUDA {info['cuda']}, torch {info['torch']}",
          flush=True)
    run_steps(check)
    record = summary(check, started)
    (args.out / "gpu_check.json").write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8")
    (args.out / "gpu_check.md").write_text(markdown(record) + "\n", encoding="utf-8")
    print(f"gpu_check: {'ok' if record['ok'] else 'FAILED'}; wrote {args.out / 'gpu_check.json'} and "
          f"{args.out / 'gpu_check.md'}")
    return 0 if record["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
