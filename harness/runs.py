"""The run directory: the unit of record.

    results/<experiment>/runs/<run-name>__<run-id>/
        config.yaml          the resolved config, written first and never rewritten
        env.json             git commit, package versions, machine, seed, run id (+ one entry per resume)
        checkpoints/last.ckpt  the Lightning checkpoint a half-finished run resumes from
        final_metrics.json   written atomically last; its presence means the run is done

Tables and figures are rebuilt from these directories. A finished run is never touched again, a
half-finished one resumes, and a directory whose config.yaml describes a different experiment is refused.
"""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
from dataclasses import dataclass
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path
from typing import Any, Literal

from harness.config import OUTCOME_SECTIONS, HarnessError, RunConfig, dump_yaml, from_dict, read_yaml, to_dict
from harness.paths import atomic_write_text

CONFIG_FILE = "config.yaml"
ENV_FILE = "env.json"
FINAL_METRICS_FILE = "final_metrics.json"
CHECKPOINT_DIR = "checkpoints"
LAST_CHECKPOINT = "last.ckpt"
RECORDED_PACKAGES = ("torch", "transformers", "pytorch-lightning", "tokenizers", "datasets", "torchmetrics",
                     "wandb", "pysbd", "seqeval", "harness")

RunStatus = Literal["new", "resumable", "done"]


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
        last = self.checkpoint_dir / LAST_CHECKPOINT
        return last if last.is_file() else None

    @property
    def final_metrics_path(self) -> Path:
        return self.path / FINAL_METRICS_FILE

    @property
    def done(self) -> bool:
        return self.status == "done"


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
    config_path = path / CONFIG_FILE
    if not config_path.is_file():
        _refuse_unknown_contents(path)
        atomic_write_text(config_path, dump_yaml(config))
        atomic_write_text(path / ENV_FILE, _to_json({**environment_record(config), "resumes": []}))
        return RunDir(path, "new")
    _check_same_experiment(config, config_path)
    if is_done(path):
        return RunDir(path, "done")
    status: RunStatus = "resumable" if (path / CHECKPOINT_DIR / LAST_CHECKPOINT).is_file() else "new"
    _record_relaunch(path / ENV_FILE, config, status)
    return RunDir(path, status)


def _refuse_unknown_contents(path: Path) -> None:
    # config.yaml is written atomically first, so a directory with files but no config is not one of ours.
    if path.is_dir() and any(path.iterdir()):
        raise RunDirError(f"run directory {path} has files but no {CONFIG_FILE}; move it away or delete it")


def _check_same_experiment(config: RunConfig, config_path: Path) -> None:
    try:
        stored = to_dict(from_dict(read_yaml(config_path)))
    except HarnessError as err:
        raise RunDirError(f"{config_path} is not a valid run config ({err}); move the run directory away") from None
    wanted = to_dict(config)
    for section in OUTCOME_SECTIONS:
        field = _first_difference(stored[section], wanted[section], section)
        if field is not None:
            raise RunDirError(
                f"run directory {config_path.parent} holds a different config ({field}: "
                f"{_lookup(stored, field)!r} there, {_lookup(wanted, field)!r} now); refusing to mix two experiments"
            )


def _first_difference(stored: Any, wanted: Any, prefix: str) -> str | None:
    if isinstance(stored, dict) and isinstance(wanted, dict):
        for key in sorted(set(stored) | set(wanted)):
            found = _first_difference(stored.get(key), wanted.get(key), f"{prefix}.{key}")
            if found is not None:
                return found
        return None
    return None if stored == wanted else prefix


def _lookup(data: dict[str, Any], dotted: str) -> Any:
    node: Any = data
    for key in dotted.split("."):
        node = node.get(key) if isinstance(node, dict) else None
    return node


def _record_relaunch(env_path: Path, config: RunConfig, status: RunStatus) -> None:
    """A relaunch may run on another machine or library version: keep its environment beside the first one."""
    try:
        record = json.loads(env_path.read_text(encoding="utf-8"))
    except (FileNotFoundError, json.JSONDecodeError):
        record = {**environment_record(config), "resumes": []}
    record.setdefault("resumes", []).append({**environment_record(config), "status": status})
    atomic_write_text(env_path, _to_json(record))


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
    return {
        "run_id": config.run_id(),
        "run_name": config.run_name(),
        "seed": config.seed,
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
    """Commit and dirty flag of the harness checkout; None outside a git checkout (e.g. an installed wheel)."""
    repo = repo or Path(__file__).resolve().parents[1]

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
