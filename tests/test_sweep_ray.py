"""`harness sweep --launcher ray` end to end on tiny runs of the real data, against the local launcher on the same
grid (two arms fine-tuned on SST-2, and an arm whose corpus cannot be read):

- a Ray sweep on its own local Ray instance is stopped with Ctrl-C after its first finished job, then continued
  on an existing Ray instance (`--address`): the finished job is not run again, the failing job is recorded by the
  worker code path inside a Ray worker, the others finish, the exit status is 1, and `harness report` gives the
  tidy table of the local launcher's sweep of the same grid (conftest's `sweep_reference`);
- the local launcher never imports ray; bad --launcher / --address input and a missing ray are one line each.
Ray is a dev extra: CI has it, so a missing ray fails this module instead of skipping it."""

from __future__ import annotations

import os
import signal
import sys

import pandas as pd
import pytest
import ray
from test_sweep_e2e import ARMS, _wait_for, grid_file, harness

from harness.cli import main
from harness.report.report import PRETRAIN_METRICS
from harness.runs import FINAL_METRICS_FILE, read_failure
from harness.study import load_grid
from harness.study.jobs import expand
from harness.study.launch_local import threads_per_worker
from harness.study.launch_ray import RayLauncher, cluster_threads, death_message, gpus_asked


@pytest.fixture(scope="module")
def ray_instance():
    """A local Ray instance of this process, with 2 CPUs; its address for `--address`."""
    context = ray.init(address="local", num_cpus=2, include_dashboard=False, logging_level="WARNING")
    yield context.address_info["gcs_address"]
    ray.shutdown()


@pytest.fixture(scope="module")
def sweeps(request, tmp_path_factory, shared_data, sweep_reference):
    """The Ray sweeps (interrupted, then continued on this process's Ray instance, started meanwhile) of the grid
    conftest's local-launcher reference sweeps, and beside them a local sweep of the broken arm alone that records
    every module it imports: on 2 busy cores, one after the other would take longer."""
    root = tmp_path_factory.mktemp("ray-sweep")
    cache = tmp_path_factory.getbasetemp() / "harness-cache"  # conftest's cache: tokenizers and corpora shared
    broken = root / "broken.raw"
    broken.write_bytes(b" = Title = \n\nSome text \xff\xfe that is not UTF-8 .\n")
    grid = grid_file(root, {**ARMS, "broken": {"corpus.path": str(broken)}}, "with_broken.yaml")
    broken_only = grid_file(root, {"broken": {"corpus.path": str(broken)}}, "broken_only.yaml")
    # One worker where two would only add a second import of torch on 2 busy cores; the continued sweep has two.
    args = ("sweep", grid, "--data-dir", shared_data)
    with pytest.MonkeyPatch.context() as env:  # every module the sweep and its worker import, on stderr
        env.setenv("PYTHONPROFILEIMPORTTIME", "1")
        local = harness("sweep", broken_only, "--data-dir", shared_data, "--results", root / "local", cache=cache)
    first_launch = harness(*args, "--results", root / "ray", "--launcher", "ray", cache=cache,
                           start_new_session=True)
    address = request.getfixturevalue("ray_instance")
    plan = expand(load_grid(grid, data_dir=shared_data), root / "ray")
    finals = [job.path / FINAL_METRICS_FILE for job in plan.pretrain]
    _wait_for(lambda: any(path.is_file() for path in finals), first_launch, timeout=300)
    os.killpg(first_launch.pid, signal.SIGINT)  # Ctrl-C in its terminal: the sweep and its Ray instance
    interrupted = first_launch.communicate(timeout=120)
    stamps = {path: path.stat().st_mtime_ns for path in finals if path.is_file()}
    continued = harness(*args, "--results", root / "ray", "--launcher", "ray", "--workers", 2, "--address", address,
                        cache=cache)
    out, err = continued.communicate(timeout=300)
    local_out = local.communicate(timeout=300)
    return {"root": root, "reference": sweep_reference["root"] / "ref", "plan": plan, "stamps": stamps,
            "interrupted": interrupted, "interrupted_status": first_launch.returncode, "local": local_out,
            "local_status": local.returncode, "out": out, "err": err, "status": continued.returncode}


@pytest.mark.slow  # starts a Ray instance and runs two sweeps: over a minute on 2 cores
def test_a_relaunch_skips_finished_jobs_and_matches_the_local_launcher(sweeps, tmp_path):
    out, err = sweeps["interrupted"]
    assert sweeps["interrupted_status"] == 130 and "run the same command to continue" in err, err[-3000:]
    assert sweeps["stamps"], "the first launch finished no job before Ctrl-C"
    assert sweeps["status"] == 1, sweeps["err"][-3000:]  # the broken arm
    assert "ran 0 job(s)" not in sweeps["out"] and "to do 0" not in sweeps["out"]
    for path, stamp in sweeps["stamps"].items():
        assert path.stat().st_mtime_ns == stamp, f"{path} was written again"
    assert sweeps["local_status"] == 1, sweeps["local"][1][-3000:]

    tidy = {}
    for launcher, results in (("local", sweeps["reference"]), ("ray", sweeps["root"] / "ray")):
        assert main(["report", str(results), "--out", str(tmp_path / launcher)]) == 0
        frame = pd.read_csv(tmp_path / launcher / "e2e" / "tidy.csv").drop(columns="run_dir")
        frame = frame[frame["point"] != "broken"]  # the reference's broken arm may have been retried meanwhile
        tidy[launcher] = frame.sort_values(["point", "task"]).reset_index(drop=True)
    local, ray_ = tidy["local"], tidy["ray"]
    assert list(local.columns) == list(ray_.columns) and sorted(local["point"]) == ["dynamic", "static"]
    # train_* are the last launch's training figures: a run resumed after its last update has none (either launcher)
    metrics = [c for c in local.columns if (c in PRETRAIN_METRICS and not c.startswith("train_")) or c == "score"
               or c.startswith("dev.")]
    assert {"score", "val_mlm_loss", "common_val_bpc", "tokens_seen"} <= set(metrics)
    pd.testing.assert_frame_equal(local[metrics], ray_[metrics], rtol=1e-5)
    config = [c for c in local.columns if c not in PRETRAIN_METRICS]
    pd.testing.assert_frame_equal(local[config], ray_[config])


@pytest.mark.slow  # starts a Ray instance and runs two sweeps: over a minute on 2 cores
def test_a_failing_job_under_ray_is_recorded_and_the_others_finish(sweeps):
    plan, out = sweeps["plan"], sweeps["out"]
    assert "FAILED pretrain/broken-s0: " in out
    assert "FAILED finetune/broken-s0/sst2/lr0.001-seed0: blocked: pretrain/broken-s0 did not finish" in out
    done = [job.name for job in plan.jobs if plan.status(job) == "done"]
    assert sorted(done) == ["finetune/dynamic-s0/sst2/lr0.001-seed0", "finetune/static-s0/sst2/lr0.001-seed0",
                            "pretrain/dynamic-s0", "pretrain/static-s0"]
    broken = next(job.path for job in plan.pretrain if job.name == "pretrain/broken-s0")
    failure = read_failure(broken)
    assert "UTF-8" in failure["error"] and "run_payload" in failure["traceback"]
    assert any("ray" in arg and "default_worker" in arg for arg in failure["argv"])  # recorded inside a Ray worker
    assert not (broken / FINAL_METRICS_FILE).exists()


@pytest.mark.slow  # starts a Ray instance and runs two sweeps: over a minute on 2 cores
def test_the_local_launcher_never_imports_ray(sweeps):
    imported = [line.rsplit("|", 1)[-1].strip() for line in sweeps["local"][1].splitlines()
                if line.startswith("import time:")]
    assert "harness.study.scheduler" in imported and "torch" in imported  # the profile covers sweep and workers
    assert not [name for name in imported if name == "ray" or name.startswith("ray.")]


def test_launcher_flags_are_checked_before_any_work(tmp_path, capsys, monkeypatch):
    results = tmp_path / "results"

    def error(*flags: str) -> str:
        assert main(["sweep", str(tmp_path / "grid.yaml"), "--results", str(results), *flags]) == 2
        lines = capsys.readouterr().err.strip().splitlines()
        assert len(lines) == 1, lines
        return lines[0]

    assert "--launcher slurm: allowed: local, ray" in error("--launcher", "slurm")
    assert "--address auto: only with --launcher ray" in error("--address", "auto")
    monkeypatch.setitem(sys.modules, "ray", None)  # as if ray were not installed
    monkeypatch.delitem(sys.modules, "harness.study.launch_ray")
    assert error("--launcher", "ray").endswith("--launcher ray: ray is not installed; install it with "
                                               "pip install 'harness[ray]'")
    assert not results.exists()


@pytest.mark.slow  # starts a Ray instance and runs two sweeps: over a minute on 2 cores
def test_ray_resources_per_task(ray_instance):
    assert [cluster_threads({"CPU": 2}, 2, n) for n in (1, 2, 3)] == [threads_per_worker(n, cores=2) for n in (1, 2, 3)]
    assert cluster_threads({"CPU": 64}, 16, 2) == 16  # never more than one node has
    gpu = {"name": "pretrain/gpu", "kind": "pretrain", "path": "x", "threads": 1,
           "config": {"impl": {"accelerator": "gpu", "devices": 2}}}
    assert gpus_asked(gpu) == 2 and gpus_asked({**gpu, "config": {"impl": {"accelerator": "auto"}}}) == 0
    assert gpus_asked({"kind": "finetune", "settings": {"impl": {"accelerator": "gpu"}}}) == 1
    launcher = RayLauncher(slots=1, workers=1)  # joins this module's Ray instance, which has no GPU
    try:
        launcher.submit(0, gpu)
        assert launcher.running() == ["pretrain/gpu"]
        assert launcher.poll(timeout=1.0) == [("died", "pretrain/gpu", "needs 2 GPU(s) (impl.accelerator: gpu); "
                                                                      "the Ray cluster has 0")]
        assert launcher.idle() == [0]
    finally:
        launcher.shutdown()
    assert ray.is_initialized()  # not ours to stop
    assert death_message(ray.exceptions.WorkerCrashedError()).startswith("Ray worker died while running the job")
    oom = death_message(ray.exceptions.OutOfMemoryError("Task was killed\n due to low memory"))
    assert oom == "Ray task killed for memory (Ray's memory monitor): Task was killed due to low memory"
