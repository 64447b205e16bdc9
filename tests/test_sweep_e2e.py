"""`harness sweep` end to end on tiny runs of the real data: a failing job is recorded and the others go on, a
sweep killed with SIGKILL (and one stopped with Ctrl-C) continues where it stopped without re-running a finished
job, and 2 workers give the same results as 1. A worker killed mid-job is a failure, and is replaced."""

from __future__ import annotations

import io
import json
import os
import signal
import struct
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from harness.runs import FINAL_METRICS_FILE, read_failure
from harness.study import load_grid, sweep
from harness.study.jobs import expand
from harness.study.launch_local import LocalLauncher, threads_per_worker

TINY = {"corpus.path": "corpora/wikitext-2-raw/wiki.valid.raw", "corpus.max_documents": 12,
        "corpus.validation_fraction": 0.25, "tokenizer.vocab_size": 1000, "data.max_seq_length": 64,
        "optim.batch_size": 8, "budget.max_steps": 6, "budget.val_every_steps": 6, "budget.val_max_examples": 32,
        "impl.checkpoint_every_steps": 2, "logging.wandb": False, "impl.progress_bar": False, "impl.threads": 1}
FINETUNE = {"train_subsample": 32, "epochs": 1, "max_seq_length": 32, "batch_size": 16, "impl.threads": 1}
COMPARED = ("steps", "tokens_seen", "val_mlm_loss", "common_val_bpc", "score", "dev")


def grid_file(folder: Path, arms: dict, name: str) -> Path:
    grid = {"name": "e2e", "base": {"preset": "tiny", "recipe": "roberta", "set": TINY},
            "scientific": {"arms": arms}, "nuisance": {"finetune.learning_rate": [1e-3]},
            "seeds": {"pretrain": [0], "finetune": [0]}, "finetune": FINETUNE, "tasks": {"sst2": {}}}
    folder.mkdir(parents=True, exist_ok=True)
    (folder / name).write_text(yaml.safe_dump(grid, sort_keys=False))
    return folder / name


ARMS = {"dynamic": {}, "static": {"data.masking": "static", "data.dupe_factor": 2}}


def reference_sweep(root: Path, data_dir: Path) -> dict:
    """A reference sweep with 2 workers, one of whose three arms cannot read its corpus (conftest's session
    fixture `sweep_reference`: this module and tests/test_sweep_ray.py share it)."""
    broken = root / "broken.raw"
    broken.write_bytes(b" = Title = \n\nSome text \xff\xfe that is not UTF-8 .\n")
    # The broken arm also logs to wandb (offline; a speed-only field): its retry shows the study's grouping.
    grid = grid_file(root, {**ARMS, "broken": {"corpus.path": str(broken), "logging.wandb": True}}, "with_broken.yaml")
    out = io.StringIO()
    result = sweep(grid, results=root / "ref", data_dir=data_dir, workers=2, out=out)
    return {"root": root, "grid": grid, "broken": broken, "result": result, "out": out.getvalue()}


@pytest.fixture
def workspace(sweep_reference):
    return sweep_reference


def harness(*args, cache: Path, **kw) -> subprocess.Popen:
    env = {**os.environ, "HARNESS_CACHE_DIR": str(cache), "WANDB_MODE": "offline", "HF_HUB_OFFLINE": "1"}
    return subprocess.Popen([sys.executable, "-m", "harness.cli", *map(str, args)], env=env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, **kw)


def final_metrics(grid: Path, results: Path, data_dir: Path) -> dict[str, dict]:
    plan = expand(load_grid(grid, data_dir=data_dir), results)
    return {job.name: {k: v for k, v in json.loads((plan.path(job) / FINAL_METRICS_FILE).read_text()).items()
                       if k in COMPARED} for job in plan.jobs}


def test_a_failing_job_does_not_stop_the_others_and_is_retried(workspace, shared_data):
    result, out, root = workspace["result"], workspace["out"], workspace["root"]
    assert result.exit_status == 1 and set(result.failures) == {"pretrain/broken-s0",
                                                               "finetune/broken-s0/sst2/lr0.001-seed0"}
    assert "blocked: pretrain/broken-s0 did not finish" in result.failures["finetune/broken-s0/sst2/lr0.001-seed0"]
    assert sorted(result.ran) == sorted(["pretrain/dynamic-s0", "pretrain/static-s0",
                                         "finetune/dynamic-s0/sst2/lr0.001-seed0",
                                         "finetune/static-s0/sst2/lr0.001-seed0"])
    assert "FAILED pretrain/broken-s0: " in out and "ran 4 job(s); 2 failure(s)" in out
    broken_dir = next(job.path for job in result.plan.pretrain if job.name == "pretrain/broken-s0")
    failure = read_failure(broken_dir)
    assert "UTF-8" in failure["error"] and "Traceback" in failure["traceback"]
    assert not (broken_dir / FINAL_METRICS_FILE).exists()
    env = json.loads((result.plan.pretrain[0].path / "env.json").read_text())
    assert env["hardware"]["torch_threads"] == threads_per_worker(2)  # 2 workers share the cores

    again = sweep(workspace["grid"], results=root / "ref", data_dir=shared_data, out=io.StringIO())
    assert again.ran == [] and again.exit_status == 1  # not retried without --retry-failed, still reported
    assert again.failures["pretrain/broken-s0"].startswith("failed earlier, not retried")
    workspace["broken"].write_text((shared_data / "corpora/wikitext-2-raw/wiki.valid.raw").read_text()[:20_000])
    retried = sweep(workspace["grid"], results=root / "ref", data_dir=shared_data, retry_failed=True,
                    out=io.StringIO())
    assert retried.exit_status == 0 and sorted(retried.ran) == ["finetune/broken-s0/sst2/lr0.001-seed0",
                                                               "pretrain/broken-s0"]
    assert read_failure(broken_dir) is None and (broken_dir / FINAL_METRICS_FILE).is_file()

    logged = {run.job_type: (run.run_group, json.loads(study)) for path in root.glob("ref/**/*.wandb")
              for run, study in wandb_runs(path)}
    assert logged["pretrain"] == ("e2e", {"point": "broken", "arm": "broken", "seed": 0})
    assert logged["finetune"] == ("e2e", {"point": "broken", "arm": "broken", "seed": 0, "task": "sst2",
                                          "learning_rate": 1e-3, "finetune_seed": 0})


def wandb_runs(path: Path):
    """(run record, its `study` config value) from an offline .wandb file: a W&B header, then leveldb-log blocks
    of protobuf records (what `wandb sync` uploads)."""
    from wandb.proto import wandb_internal_pb2

    data, pos, block, parts, run = path.read_bytes(), 7, 32768, b"", None
    while pos + 7 <= len(data):
        if block - pos % block < 7:  # a block's tail too short for a header is padding
            pos += block - pos % block
            continue
        _, length, kind = struct.unpack("<IHB", data[pos:pos + 7])
        parts, pos = parts + data[pos + 7:pos + 7 + length], pos + 7 + length
        if kind in (1, 4):  # FULL or LAST: a whole record
            record = wandb_internal_pb2.Record.FromString(parts)
            parts = b""
            run = record.run if record.WhichOneof("record_type") == "run" else run
            if record.WhichOneof("record_type") == "config":
                yield from ((run, item.value_json) for item in record.config.update if item.key == "study")


def _launches(run: Path) -> int:
    """Launches recorded in a run's env.json (the first one and each relaunch); 0 before the run starts."""
    try:
        return 1 + len(json.loads((run / "env.json").read_text())["resumes"])
    except (FileNotFoundError, json.JSONDecodeError):
        return 0


def _group_alive(group: int) -> bool:
    """Whether any process of the process group (a sweep started in a session of its own, and its workers) lives."""
    try:
        os.killpg(group, 0)
    except ProcessLookupError:
        return False
    return True


def _wait_for(predicate, process: subprocess.Popen, timeout: float = 240) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if process.poll() is not None:
            out, err = process.communicate()
            raise AssertionError(f"the sweep ended (status {process.returncode}) before {predicate}:\n"
                                 f"{out[-3000:]}\n{err[-5000:]}")
        assert time.monotonic() < deadline, f"{predicate} still false after {timeout} s"
        time.sleep(0.2)


def test_killed_and_interrupted_sweeps_continue_with_the_same_results(workspace, shared_data):
    root = workspace["root"]
    grid = grid_file(root, ARMS, "two_arms.yaml")
    results, cache = root / "killed", Path(os.environ["HARNESS_CACHE_DIR"])
    plan = expand(load_grid(grid, data_dir=shared_data), results)
    first, second = (job.path / FINAL_METRICS_FILE for job in plan.pretrain)
    args = ("sweep", grid, "--results", results, "--data-dir", shared_data)

    sweep_process = harness(*args, cache=cache, start_new_session=True)
    _wait_for(first.is_file, sweep_process)
    # the sweep alone, not its workers: the orphaned worker of the second run must leave it partial, not failed
    # (its progress reports meet a broken pipe); a machine crash (the whole group) is the simpler case
    sweep_process.kill()
    sweep_process.wait()
    stamp = first.stat().st_mtime_ns
    assert not second.is_file()
    deadline = time.monotonic() + 30
    while _group_alive(sweep_process.pid):  # the orphan notices within a second (broken pipe, or its parent gone)
        assert time.monotonic() < deadline, "an orphaned worker outlived its sweep by 30 s"
        time.sleep(0.2)
    assert not (second.parent / "failed.json").exists()

    launches = _launches(second.parent)
    interrupted = harness(*args, cache=cache)
    _wait_for(lambda: _launches(second.parent) > launches, interrupted)  # its worker has taken up the second run
    interrupted.send_signal(signal.SIGTERM)  # `kill`, or a batch system's stop: the sweep stops as on Ctrl-C
    _, err = interrupted.communicate(timeout=60)
    assert interrupted.returncode == 130 and "run the same command to continue" in err
    assert not (second.parent / "failed.json").exists()

    finished = harness(*args, cache=cache)
    out, err = finished.communicate(timeout=300)
    assert finished.returncode == 0, err[-3000:]
    assert "done 1, partial 1, failed 0, to do 3" in out and "ran 3 job(s); 0 failure(s)" in out
    assert first.stat().st_mtime_ns == stamp  # the finished run was not run again
    reference = final_metrics(grid, root / "ref", shared_data)  # 2 workers, never interrupted
    got = final_metrics(grid, results, shared_data)
    assert got.keys() == reference.keys() and len(got) == 4
    for name, metrics in reference.items():
        assert set(metrics) == set(got[name]) and metrics, name
        for key, value in metrics.items():
            assert got[name][key] == pytest.approx(value, rel=1e-5), (name, key)


def test_a_killed_worker_is_a_failure_and_is_replaced(tmp_path):
    assert [threads_per_worker(n, cores=4) for n in (1, 2, 3, 8)] == [4, 2, 1, 1]

    launcher = LocalLauncher(workers=1, threads=1)
    try:
        victim = launcher.slots[0].process
        launcher.submit(0, {"name": "pretrain/victim", "kind": "pretrain", "path": str(tmp_path / "victim")})
        os.kill(victim.pid, signal.SIGKILL)  # as the kernel's out-of-memory killer would
        events = []
        deadline = time.monotonic() + 60
        while not events and time.monotonic() < deadline:
            events = launcher.poll(timeout=1.0)
        assert events == [("died", "pretrain/victim", "worker process killed by SIGKILL (the kernel's "
                                                      "out-of-memory killer sends SIGKILL)")]
        assert launcher.idle() == [0] and launcher.slots[0].process.pid != victim.pid
        assert launcher.slots[0].process.is_alive()
    finally:
        launcher.shutdown(now=True)
    assert not launcher.slots[0].process.is_alive()
