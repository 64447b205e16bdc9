"""The run directory: config first, refusal of a different config, done / resumable detection, atomic final metrics."""

from __future__ import annotations

import json

import pytest
import torch

from harness import runs
from harness.config import dump_yaml, load_config, read_yaml
from harness.runs import RunDirError, prepare_run_dir, read_final_metrics, run_dir, write_final_metrics


@pytest.fixture
def config():
    return load_config(preset="tiny", overrides=["experiment=unit", "seed=3"])


def test_run_dir_layout(tmp_path, config):
    path = run_dir(tmp_path, config)
    assert path == tmp_path / "unit" / "runs" / f"{config.run_name()}__{config.run_id()}"
    assert path.name.startswith("roberta-tiny-full_sentences-nonsp-dynamic-bs32__")


def test_new_run_writes_config_and_environment(tmp_path, config):
    run = prepare_run_dir(config, tmp_path)
    assert run.status == "new" and not run.done and run.last_checkpoint is None
    assert run.config_path.read_text() == dump_yaml(config)
    env = json.loads(run.env_path.read_text())
    assert env["run_id"] == config.run_id() and env["seed"] == 3
    assert env["packages"]["torch"] == torch.__version__
    assert {"python", "platform", "hardware", "git"} <= set(env)


def test_config_is_written_before_anything_else(tmp_path, config, monkeypatch):
    def broken_environment(_config):
        raise RuntimeError("environment probe failed")

    monkeypatch.setattr(runs, "environment_record", broken_environment)
    with pytest.raises(RuntimeError):
        prepare_run_dir(config, tmp_path)
    path = run_dir(tmp_path, config)
    assert sorted(p.name for p in path.iterdir()) == ["config.yaml"]
    monkeypatch.undo()
    assert prepare_run_dir(config, tmp_path).status == "new"  # the half-created directory is usable
    assert (path / "env.json").is_file()


def test_directory_with_a_different_config_is_refused(tmp_path, config):
    run = prepare_run_dir(config, tmp_path)
    other = load_config(preset="tiny", overrides=["experiment=unit", "seed=4"])
    run.config_path.write_text(dump_yaml(other))  # e.g. edited by hand, or defaults changed between versions
    with pytest.raises(RunDirError) as info:
        prepare_run_dir(config, tmp_path)
    message = str(info.value)
    assert "\n" not in message and "seed: 4 there, 3 now" in message


def test_speed_only_settings_may_change_on_relaunch(tmp_path, config):
    first = prepare_run_dir(config, tmp_path)
    faster = load_config(preset="tiny", overrides=["experiment=unit", "seed=3", "impl.threads=2"])
    again = prepare_run_dir(faster, tmp_path)
    assert again.path == first.path and again.status == "new"
    assert read_yaml(again.config_path)["impl"]["threads"] is None  # the first config is kept, not rewritten
    assert len(json.loads(again.env_path.read_text())["resumes"]) == 1


def test_foreign_directory_is_refused(tmp_path, config):
    path = run_dir(tmp_path, config)
    path.mkdir(parents=True)
    (path / "notes.txt").write_text("someone else's files")
    with pytest.raises(RunDirError, match=r"no config.yaml \(first: notes.txt\)"):
        prepare_run_dir(config, tmp_path)


def test_a_kill_inside_the_configs_atomic_write_does_not_strand_the_run(tmp_path, config):
    """SIGKILL between atomic_write_text's temporary file and its rename (a sweep killed as a job starts) leaves
    .config.yaml.XXXXXXXX and no config: the next launch removes it and starts the run, as after no launch at all."""
    path = run_dir(tmp_path, config)
    path.mkdir(parents=True)
    (path / ".config.yaml.k7d2q9ab").write_text("experiment: unit\nseed: 3\n")  # half-written, never renamed
    (path / runs.CONSOLE_FILE).write_text("worker output\n")
    run = prepare_run_dir(config, tmp_path)
    assert run.status == "new" and run.config_path.read_text() == dump_yaml(config)
    assert sorted(p.name for p in path.iterdir()) == sorted([runs.CONSOLE_FILE, "config.yaml", "env.json"])


def test_resumable_when_a_last_checkpoint_exists(tmp_path, config):
    run = prepare_run_dir(config, tmp_path)
    run.checkpoint_dir.mkdir()
    (run.checkpoint_dir / "last.ckpt").write_bytes(b"checkpoint")
    again = prepare_run_dir(config, tmp_path)
    assert again.status == "resumable" and again.last_checkpoint == run.checkpoint_dir / "last.ckpt"


def test_final_metrics_mark_the_run_done_and_are_never_overwritten(tmp_path, config):
    run = prepare_run_dir(config, tmp_path)
    run.checkpoint_dir.mkdir()
    (run.checkpoint_dir / "last.ckpt").write_bytes(b"checkpoint")
    write_final_metrics(run, {"val/ppl": torch.tensor(3.5), "steps": 200})
    assert read_final_metrics(run) == {"val/ppl": 3.5, "steps": 200}
    env_before = run.env_path.read_text()

    done = prepare_run_dir(config, tmp_path)
    assert done.status == "done" and done.done
    assert run.env_path.read_text() == env_before  # a finished run is left untouched
    with pytest.raises(RunDirError, match="already done"):
        write_final_metrics(done, {"val/ppl": 1.0})
    assert read_final_metrics(run)["val/ppl"] == 3.5


def test_failed_final_metrics_write_leaves_the_run_unfinished(tmp_path, config):
    run = prepare_run_dir(config, tmp_path)
    with pytest.raises(TypeError):
        write_final_metrics(run, {"val/ppl": 3.5, "bad": object()})
    assert not run.final_metrics_path.exists()
    assert [p.name for p in run.path.iterdir() if p.name.startswith(".final_metrics")] == []
    assert prepare_run_dir(config, tmp_path).status == "new"


def test_record_status_and_the_failure_record(tmp_path, config):
    path = run_dir(tmp_path, config)
    assert runs.record_status(path) == "new"
    runs.write_failure(path, ValueError("data error\nsecond line"), "Traceback (most recent call last): ...")
    assert runs.record_status(path) == "failed"  # a job may fail before its config is written
    run = prepare_run_dir(config, tmp_path)  # and is launched again in the same directory
    failure = runs.read_failure(run.path)
    assert failure["error"] == "ValueError: data error second line" and failure["traceback"].startswith("Traceback")
    assert {"time_utc", "argv", "hostname"} <= set(failure)
    runs.clear_failure(run.path)
    assert runs.read_failure(run.path) is None and runs.record_status(run.path) == "partial"
    write_final_metrics(run, {"steps": 1})
    assert runs.record_status(run.path) == "done"
    with pytest.raises(RunDirError, match="is done"):
        runs.write_failure(run.path, "killed")
    assert not (run.path / runs.FAILED_FILE).exists()


def test_one_protocol_for_any_record_names_the_first_differing_field(tmp_path):
    path = tmp_path / "trial"

    def open_trial(outcome):
        return runs.open_record(path, runs.TRIAL_CONFIG_FILE, json.dumps(outcome), outcome,
                                lambda p: json.loads(p.read_text()), lambda: runs.environment({"seed": 1}))

    assert open_trial({"task": "sst2", "settings": {"epochs": 3}}) == "new"
    assert open_trial({"task": "sst2", "settings": {"epochs": 3}}) == "new"  # a relaunch without a checkpoint
    assert len(json.loads((path / "env.json").read_text())["resumes"]) == 1
    with pytest.raises(RunDirError, match=r"\(settings.epochs: 3 there, 2 now\)"):
        open_trial({"task": "sst2", "settings": {"epochs": 2}})
    assert runs.record_status(path) == "partial"


def test_a_relaunch_resumes_from_the_newer_of_last_and_a_slurm_preemption_checkpoint(tmp_path, config):
    """SLURM pre-emption makes Lightning save hpc_ckpt_N.ckpt in the run directory; a relaunch takes it when it is
    newer than checkpoints/last.ckpt (and a run pre-empted before its first checkpoint is resumable)."""
    import os

    path = prepare_run_dir(config, tmp_path).path
    hpc = path / "hpc_ckpt_1.ckpt"
    hpc.write_bytes(b"x")
    assert prepare_run_dir(config, tmp_path).status == "resumable"
    assert prepare_run_dir(config, tmp_path).last_checkpoint == hpc
    last = path / "checkpoints" / "last.ckpt"
    last.parent.mkdir()
    last.write_bytes(b"y")
    os.utime(hpc, (1, 1))
    assert prepare_run_dir(config, tmp_path).last_checkpoint == last


def test_the_recorded_commit_is_the_one_the_process_started_with(tmp_path):
    """A sweep worker keeps running the code it imported: a commit made in the checkout meanwhile is not what
    produced its later jobs, so the git state is read once per process."""
    import subprocess

    from harness.runs import git_state

    def git(*args: str) -> None:
        subprocess.run(["git", "-c", "user.name=t", "-c", "user.email=t@t", *args], cwd=tmp_path, check=True,
                       capture_output=True)

    git("init", "-q")
    (tmp_path / "a.txt").write_text("a")
    git("add", "a.txt")
    git("commit", "-qm", "first")
    first = git_state(tmp_path)
    (tmp_path / "a.txt").write_text("b")
    git("commit", "-qam", "second")
    assert first is not None and git_state(tmp_path) == first


def _record(path, launches, ends, final_at):
    """A finished record made by hand: launch k started at launches[k] and last wrote its log folder at ends[k]."""
    import os
    from datetime import UTC, datetime, timedelta

    t0 = datetime(2026, 1, 1, tzinfo=UTC)
    stamp = lambda minutes: (t0 + timedelta(minutes=minutes)).isoformat(timespec="seconds")  # noqa: E731
    path.mkdir(parents=True)
    (path / "env.json").write_text(json.dumps({"time_utc": stamp(launches[0]),
                                               "resumes": [{"time_utc": stamp(m)} for m in launches[1:]]}))
    for k, end in enumerate(ends):
        log = path / "logs" / f"launch-{k}" / "metrics.csv"
        log.parent.mkdir(parents=True)
        log.write_text("step\n")
        os.utime(log, ((t0 + timedelta(minutes=end)).timestamp(),) * 2)
    final = path / "final_metrics.json"
    final.write_text("{}")
    os.utime(final, ((t0 + timedelta(minutes=final_at)).timestamp(),) * 2)


def test_launch_intervals_skip_the_time_between_sessions_and_count_parallel_jobs_once(tmp_path):
    # a run killed at minute 10 (its last log write), relaunched at minute 100, finished at minute 120
    _record(tmp_path / "a", launches=[0, 100], ends=[10], final_at=120)
    # a job on a second worker from minute 110 to 130: overlaps the first one by 10 minutes
    _record(tmp_path / "b", launches=[110], ends=[], final_at=130)
    a, b = runs.launch_intervals(tmp_path / "a"), runs.launch_intervals(tmp_path / "b")
    assert [(e - s).total_seconds() / 60 for s, e in a] == [10, 20] and len(b) == 1
    assert runs.busy_seconds(a + b) / 60 == 10 + 30
    (tmp_path / "a" / "final_metrics.json").unlink()
    assert runs.launch_intervals(tmp_path / "a") == []  # an unfinished record has not taken its time yet


def test_only_a_resuming_launch_must_find_the_data_its_run_started_on(tmp_path, config):
    data, other = {"corpus_digest": "a" * 16, "tokenizer_digest": "b" * 16}, {"corpus_digest": "c" * 16}
    run = prepare_run_dir(config, tmp_path)
    runs.check_run_data(run, data)
    assert json.loads((run.path / "env.json").read_text())["data"] == data
    relaunch = prepare_run_dir(config, tmp_path)  # no checkpoint yet: it starts from scratch, on whatever data
    runs.check_run_data(relaunch, {**data, **other})
    assert json.loads((run.path / "env.json").read_text())["data"]["corpus_digest"] == "c" * 16
    run.checkpoint_dir.mkdir()
    (run.checkpoint_dir / "last.ckpt").write_bytes(b"checkpoint")
    resuming = prepare_run_dir(config, tmp_path)
    assert resuming.status == "resumable"
    runs.check_run_data(resuming, {**data, **other})  # the data it started on
    with pytest.raises(RunDirError, match=f"corpus_digest: {'c' * 16} there, {'a' * 16} now"):
        runs.check_run_data(resuming, data)
    assert json.loads((run.path / "env.json").read_text())["resumes"][-1]["status"] == runs.REFUSED
