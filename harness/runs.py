"""The run record: one protocol for pre-training runs and fine-tuning trials alike.

    results/<experiment>/runs/<run-name>__<run-id>/          a pre-training run (config.yaml)
    results/<experiment>/finetune/<study>/lr<lr>__seed<seed>/  a fine-tuning trial (config.json)
        config.*             the resolved config, written first and never rewritten
        env.json             git commit, package versions, machine, seed (+ one entry per relaunch); "data": the
                             corpus and tokenizer digests a pre-training run started on (a relaunch must match)
        checkpoints/last.ckpt  the Lightning checkpoint a half-finished record resumes from
        failed.json          why the last launch failed (message, traceback); removed when it is launched again
        final_metrics.json   written atomically last; its presence means the record is done

`open_record` is the protocol: create, return a finished record untouched, resume a half-finished one, refuse a
directory holding another config (naming the first differing outcome field). `record_status` reads a directory
as new / partial / failed / done. Tables and figures are rebuilt from these directories, never appended to.
"""

from __future__ import annotations

import functools
import json
import os
import platform
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path
from typing import Any, Literal

from harness.config import OUTCOME_SECTIONS, HarnessError, RunConfig, dump_yaml, from_dict, read_yaml, to_dict
from harness.paths import atomic_write_text

CONFIG_FILE = "config.yaml"
TRIAL_CONFIG_FILE = "config.json"  # fine-tuning trials: settings, task and resolved data figures
RECORD_CONFIG_FILES = (CONFIG_FILE, TRIAL_CONFIG_FILE)
FAILED_FILE = "failed.json"
CONSOLE_FILE = "console.log"  # a sweep job's own console lines (Lightning, wandb, warnings); see harness.study.worker
ENV_FILE = "env.json"
REFUSED = "refused"  # the status of a relaunch stopped before training (check_run_data)
FINAL_METRICS_FILE = "final_metrics.json"
CHECKPOINT_DIR = "checkpoints"
LAST_CHECKPOINT = "last.ckpt"
RECORDED_PACKAGES = ("torch", "transformers", "pytorch-lightning", "tokenizers", "datasets", "torchmetrics",
                     "wandb", "pysbd", "seqeval", "harness")

RunStatus = Literal["new", "resumable", "done"]  # what a launch should do with a record
RecordStatus = Literal["new", "partial", "done", "failed"]  # what a sweep sees in a job's directory


class RunDirError(HarnessError):
    """A run directory that cannot be used as asked (different config, already finished); one-line message."""


@dataclass(frozen=True)
class RunDir:
    path: Path
    status: RunStatus  # new: start from scratch; resumable: continue from last_checkpoint; done: nothing to do

    @property
    def config_path(self) -> Path:
        return self.path / CONFIG_FILE

    @property
    def env_path(self) -> Path:
        return self.path / ENV_FILE

    @property
    def checkpoint_dir(self) -> Path:
        return self.path / CHECKPOINT_DIR

    @property
    def last_checkpoint(self) -> Path | None:
        return newest_checkpoint(self.path)

    @property
    def final_metrics_path(self) -> Path:
        return self.path / FINAL_METRICS_FILE

    @property
    def done(self) -> bool:
        return self.status == "done"


def newest_checkpoint(path: Path) -> Path | None:
    """What a relaunch resumes from: checkpoints/last.ckpt (every impl.checkpoint_every_steps updates), or the
    checkpoint Lightning saves in the run directory when SLURM pre-empts a job (hpc_ckpt_N.ckpt), the newer one."""
    candidates = [p for p in (path / CHECKPOINT_DIR / LAST_CHECKPOINT, *path.glob("hpc_ckpt_*.ckpt")) if p.is_file()]
    return max(candidates, key=lambda p: p.stat().st_mtime, default=None)


def run_dir(results_root: str | Path, config: RunConfig) -> Path:
    """results/<experiment>/runs/<run-name>__<run-id>: the name for people, the id for identity."""
    return Path(results_root) / config.experiment / "runs" / f"{config.run_name()}__{config.run_id()}"


def is_done(path: str | Path) -> bool:
    return (Path(path) / FINAL_METRICS_FILE).is_file()


def prepare_run_dir(config: RunConfig, results_root: str | Path) -> RunDir:
    """Create (or re-open) the run directory of `config` and say what to do with it.

    A new directory gets config.yaml first, then env.json. An existing one must hold the same outcome config
    (speed-only `impl` and `logging` may differ); a done run is returned untouched with status 'done'.
    """
    path = run_dir(results_root, config)
    status = open_record(path, CONFIG_FILE, dump_yaml(config), _outcome_of(to_dict(config)), _stored_run_outcome,
                         lambda: environment_record(config))
    return RunDir(path, status)


def open_prepared_run_dir(config: RunConfig, results_root: str | Path) -> RunDir:
    """The run directory as a process other than rank 0 sees it: prepared by rank 0 (config checked, relaunch
    recorded once), only read here."""
    path = run_dir(results_root, config)
    if not (path / CONFIG_FILE).is_file():
        raise RunDirError(f"run directory {path} has no {CONFIG_FILE}: rank 0 did not prepare it (is --results on a "
                          "file system every process sees?)")
    status: RunStatus = ("done" if is_done(path)
                         else "resumable" if newest_checkpoint(path) else "new")
    return RunDir(path, status)


def _outcome_of(config: dict[str, Any]) -> dict[str, Any]:
    return {section: config[section] for section in OUTCOME_SECTIONS}


def _stored_run_outcome(config_path: Path) -> dict[str, Any]:
    # Validated and re-dumped, so a field added since (with its default) is not a difference.
    return _outcome_of(to_dict(from_dict(read_yaml(config_path))))


# ---- the record protocol, shared by pre-training runs and fine-tuning trials -----------------------------------
def record_status(path: str | Path) -> RecordStatus:
    """new: nothing there; partial: started (a relaunch resumes it); failed: its last launch raised or was killed
    (failed.json); done: final_metrics.json exists. Costs a few stat calls: the sweep asks it of every job."""
    path = Path(path)
    if (path / FINAL_METRICS_FILE).is_file():
        return "done"
    if (path / FAILED_FILE).is_file():
        return "failed"
    return "partial" if any((path / name).is_file() for name in RECORD_CONFIG_FILES) else "new"


def open_record(path: Path, config_file: str, config_text: str, outcome: dict[str, Any],
                stored_outcome: Callable[[Path], dict[str, Any]],
                environment: Callable[[], dict[str, Any]]) -> RunStatus:
    """The one create / done / resume / refuse protocol.

    - no `config_file` yet: write it (first, atomically), then env.json -> 'new';
    - a config whose outcome fields (`stored_outcome(config path)`) differ from `outcome` -> RunDirError naming
      the first differing field; a config that cannot be read -> RunDirError;
    - final_metrics.json present -> 'done', untouched;
    - otherwise a relaunch: its environment is appended to env.json -> 'resumable' when it has a checkpoint
      (`newest_checkpoint`), else 'new'.
    `environment` is called only after the config is on disk: a failing probe never leaves a nameless directory.
    """
    config_path = path / config_file
    if not config_path.is_file():
        _refuse_unknown_contents(path, config_file)
        atomic_write_text(config_path, config_text)
        atomic_write_text(path / ENV_FILE, _to_json({**environment(), "resumes": []}))
        return "new"
    try:
        stored = stored_outcome(config_path)
    except (HarnessError, ValueError, KeyError) as err:
        raise RunDirError(f"{config_path} is not a valid record ({err}); move the directory away") from None
    _refuse_other_config(path, stored, json.loads(json.dumps(outcome)))  # compare as stored: tuples -> lists
    if is_done(path):
        return "done"
    status: RunStatus = "resumable" if newest_checkpoint(path) else "new"
    _record_relaunch(path / ENV_FILE, environment, status)
    return status


def _refuse_unknown_contents(path: Path, config_file: str) -> None:
    # The config is written atomically first, so a directory with files but no config is not one of ours
    # (failed.json aside: a job may fail before its config is known, e.g. while loading its data; console.log: a
    # sweep worker opens it before the job writes its config). A process killed inside that atomic write leaves its
    # temporary file (.config.yaml.XXXXXXXX, harness.paths.atomic_write_text): ours, removed, and the run starts.
    if not path.is_dir():
        return
    for leftover in path.glob(f".{config_file}.*"):
        leftover.unlink(missing_ok=True)
    unknown = sorted(p.name for p in path.iterdir() if p.name not in (FAILED_FILE, CONSOLE_FILE))
    if unknown:
        raise RunDirError(f"run directory {path} has files but no {config_file} (first: {unknown[0]}); move it away "
                          "or delete it")


def _refuse_other_config(path: Path, stored: dict[str, Any], wanted: dict[str, Any]) -> None:
    field = _first_difference(stored, wanted, "")
    if field is not None:
        raise RunDirError(
            f"run directory {path} holds a different config ({field}: {_lookup(stored, field)!r} there, "
            f"{_lookup(wanted, field)!r} now); refusing to mix two experiments"
        )


def _first_difference(stored: Any, wanted: Any, prefix: str) -> str | None:
    if isinstance(stored, dict) and isinstance(wanted, dict):
        for key in sorted(set(stored) | set(wanted)):
            found = _first_difference(stored.get(key), wanted.get(key), f"{prefix}.{key}" if prefix else key)
            if found is not None:
                return found
        return None
    return None if stored == wanted else prefix


def _lookup(data: dict[str, Any], dotted: str) -> Any:
    node: Any = data
    for key in dotted.split("."):
        node = node.get(key) if isinstance(node, dict) else None
    return node


def _record_relaunch(env_path: Path, environment: Callable[[], dict[str, Any]], status: RunStatus) -> None:
    """A relaunch may run on another machine or library version: keep its environment beside the first one."""
    current = environment()
    try:
        record = json.loads(env_path.read_text(encoding="utf-8"))
    except (FileNotFoundError, json.JSONDecodeError):
        record = {**current, "resumes": []}
    record.setdefault("resumes", []).append({**current, "status": status})
    atomic_write_text(env_path, _to_json(record))


def check_run_data(run: RunDir, identity: dict[str, str]) -> None:
    """The data of a pre-training run, by content (corpus_digest, tokenizer_digest): a launch that starts from
    scratch records it in env.json ("data"); a relaunch that resumes from a checkpoint and finds other data is
    refused, for resuming on other documents or other token ids would mix two experiments (a corpus edited between
    launches; a tokenizer retrained differently in a fresh cache, by another tokenizers release). A run recorded
    before this field existed gets it at its next launch."""
    env_path = run.path / ENV_FILE
    record = json.loads(env_path.read_text(encoding="utf-8"))
    recorded = record.get("data")
    if recorded is None or run.status != "resumable":
        atomic_write_text(env_path, _to_json({**record, "data": identity}))
        return
    field = next((key for key in sorted(identity) if key in recorded and recorded[key] != identity[key]), None)
    if field is not None:
        if record.get("resumes"):  # this launch's entry: it did not run
            record["resumes"][-1]["status"] = REFUSED
            atomic_write_text(env_path, _to_json(record))
        raise RunDirError(f"run directory {run.path} started on other data ({field}: {recorded[field]} there, "
                          f"{identity[field]} now); restore the corpus and tokenizer it started with, or move the "
                          "run away to start it again")


def write_failure(path: str | Path, error: BaseException | str, traceback_text: str | None = None) -> Path:
    """failed.json: why the last launch of a job did not finish (message, traceback, when, command). Never written
    into a finished record; removed by `clear_failure` when the job is launched again."""
    path = Path(path)
    if is_done(path):
        raise RunDirError(f"run {path} is done; a failure is not recorded over {FINAL_METRICS_FILE}")
    message = error if isinstance(error, str) else f"{type(error).__name__}: {error}"
    record = {"error": " ".join(message.split()) or "unknown error", "traceback": traceback_text,
              "time_utc": datetime.now(UTC).isoformat(timespec="seconds"), "argv": sys.argv,
              "hostname": platform.node()}
    atomic_write_text(path / FAILED_FILE, _to_json(record))
    return path / FAILED_FILE


def read_failure(path: str | Path) -> dict[str, Any] | None:
    try:
        return json.loads((Path(path) / FAILED_FILE).read_text(encoding="utf-8"))
    except (FileNotFoundError, json.JSONDecodeError):
        return None


def clear_failure(path: str | Path) -> None:
    (Path(path) / FAILED_FILE).unlink(missing_ok=True)


def write_final_metrics(run: RunDir | str | Path, metrics: dict[str, Any]) -> Path:
    """Write final_metrics.json atomically; its existence marks the run done, so it is written last, once."""
    path = Path(run.path if isinstance(run, RunDir) else run) / FINAL_METRICS_FILE
    if path.exists():
        raise RunDirError(f"run {path.parent} is already done ({FINAL_METRICS_FILE} exists); it is never overwritten")
    atomic_write_text(path, _to_json(metrics))
    return path


def read_final_metrics(run: RunDir | str | Path) -> dict[str, Any]:
    path = Path(run.path if isinstance(run, RunDir) else run) / FINAL_METRICS_FILE
    return json.loads(path.read_text(encoding="utf-8"))


def _to_json(data: dict[str, Any]) -> str:
    # Serialise before anything touches the disk, so an unserialisable value never leaves a partial file.
    return json.dumps(data, indent=2, sort_keys=True, default=_json_scalar) + "\n"


def _json_scalar(value: Any) -> Any:
    """Tensors and numpy scalars (what metrics usually are) as plain numbers or lists."""
    if hasattr(value, "tolist"):
        return value.tolist()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"metric value of type {type(value).__name__} is not JSON serialisable")


# ---- environment record -------------------------------------------------------------------------------------
def environment_record(config: RunConfig) -> dict[str, Any]:
    """A pre-training run's environment: its identity and `environment()`."""
    return environment({"run_id": config.run_id(), "run_name": config.run_name(), "seed": config.seed})


def environment(identity: dict[str, Any]) -> dict[str, Any]:
    """What produced a record besides its config: `identity` plus time, git state, packages, machine, command."""
    return {
        **identity,
        "time_utc": datetime.now(UTC).isoformat(timespec="seconds"),
        "git": git_state(),
        "packages": package_versions(),
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "hostname": platform.node(),
        "hardware": hardware(),
        "argv": sys.argv,
    }


def git_state(repo: Path | None = None) -> dict[str, Any] | None:
    """Commit and dirty flag of the harness code this process runs; None outside a git checkout (e.g. an installed
    wheel). Read once per process: a long-lived sweep worker keeps running the code it imported, so a commit made
    in the checkout meanwhile must not be recorded as what produced its later jobs."""
    return _git_state(repo or Path(__file__).resolve().parents[1])


@functools.cache
def _git_state(repo: Path) -> dict[str, Any] | None:

    def git(*args: str) -> str:
        return subprocess.run(["git", *args], cwd=repo, capture_output=True, text=True, timeout=10,
                              check=True).stdout.strip()

    try:
        return {"commit": git("rev-parse", "HEAD"), "dirty": bool(git("status", "--porcelain", "--untracked-files=no"))}
    except (OSError, subprocess.SubprocessError):
        return None


def package_versions() -> dict[str, str | None]:
    versions: dict[str, str | None] = {}
    for name in RECORDED_PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    return versions


def hardware() -> dict[str, Any]:
    import torch  # here, not at module level: the CLI imports this module for --help

    info: dict[str, Any] = {"cpu": _cpu_model(), "cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads()}
    if torch.cuda.is_available():
        info["gpus"] = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
        info["cuda"] = torch.version.cuda
    return info


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text(encoding="utf-8").splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def read_curves(run: RunDir | str | Path) -> Any:
    """All logged metrics of a run as one pandas DataFrame indexed by step. A resumed run re-logs the steps after
    its last checkpoint; for each step the latest launch wins, which is what the finished run actually did."""
    import pandas as pd

    path = Path(run.path if isinstance(run, RunDir) else run) / "logs"
    launches = sorted(path.glob("launch-*/metrics.csv"), key=lambda p: int(p.parent.name.split("-")[1]))
    if not launches:
        return pd.DataFrame()
    frames = [pd.read_csv(csv).assign(launch=i) for i, csv in enumerate(launches)]
    curves = pd.concat(frames, ignore_index=True)
    latest = curves.groupby("step")["launch"].transform("max")
    return curves[curves["launch"] == latest].drop(columns="launch").groupby("step").first()


def launch_intervals(path: str | Path) -> list[tuple[datetime, datetime]]:
    """When each launch of a finished record ran, from the record itself: launch k starts at its env.json entry
    (the first launch's `time_utc`, then each relaunch's) and ends at the last write into its own log folder
    (logs/launch-k for pre-training, logs/version_k for fine-tuning); the last launch ends when final_metrics.json
    was written. A launch whose log folder is missing is taken to run until the next one starts. An unfinished
    or unreadable record has no intervals."""
    path = Path(path)
    final = path / FINAL_METRICS_FILE
    try:
        record = json.loads((path / ENV_FILE).read_text(encoding="utf-8"))
        starts = [datetime.fromisoformat(entry["time_utc"]) for entry in [record, *record.get("resumes", [])]
                  if entry.get("status") != REFUSED]  # refused before training: no log folder, no time
        finished = datetime.fromtimestamp(final.stat().st_mtime, UTC)
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return []
    folders = sorted((p for p in (path / "logs").glob("*") if p.is_dir() and p.name.split("-")[-1].split("_")[-1]
                      .isdigit()), key=lambda p: int(p.name.split("-")[-1].split("_")[-1]))
    intervals = []
    for k, start in enumerate(starts):
        if k == len(starts) - 1:
            end = finished
        else:
            end = starts[k + 1]
            writes = [f.stat().st_mtime for f in folders[k].rglob("*") if f.is_file()] if k < len(folders) else []
            if writes:
                end = min(end, datetime.fromtimestamp(max(writes), UTC))
        intervals.append((start, max(start, end)))
    return intervals


def busy_seconds(intervals: list[tuple[datetime, datetime]]) -> float:
    """Seconds during which at least one of the intervals was running (parallel workers are counted once, the time
    between sessions not at all)."""
    total, reach = 0.0, None
    for start, end in sorted(intervals):
        if reach is None or start > reach:
            total += (end - start).total_seconds()
            reach = end
        elif end > reach:
            total += (end - reach).total_seconds()
            reach = end
    return total
