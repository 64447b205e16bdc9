"""A study's results, rebuilt from its run directories (never from a sweep's return values): one row per finished
job, and the comparison table with the nuisance tuned per scientific point.

Selection (the tuning playbook, and the paper's fine-tuning protocol): for each scientific point and task, every
nuisance combination (fine-tuning learning rate, pre-training nuisance values) is scored by the MEDIAN over seeds
(pre-training x fine-tuning seeds) of the task's selection metric; the best median is reported with its seeds'
min and max. A study without tasks picks its pre-training nuisance by the lowest median common held-out bpc (the
one loss that compares across input formats and tokenizers).
"""

from __future__ import annotations

from typing import Any

from harness.runs import read_final_metrics
from harness.study.grid import value_label
from harness.study.jobs import DownstreamJob, FinetuneJob, Plan

PRETRAIN_COLUMNS = ("steps", "common_val_bpc", "val_mlm_loss", "val_ppl")


def job_rows(plan: Plan) -> tuple[Any, Any]:
    """(pre-training frame, fine-tuning frame): one row per finished job, with its point, nuisance and seeds."""
    import pandas as pd

    pretrain = []
    for job in plan.pretrain:
        if plan.status(job) == "done":
            final = read_final_metrics(job.path)
            pretrain.append({"point": job.run.point.label, "nuisance": _label(job.run.nuisance), "seed": job.run.seed,
                             "run_id": final.get("run_id"), **{k: final.get(k) for k in PRETRAIN_COLUMNS}})
    finetune = []
    for job in plan.downstream:  # a zero-shot evaluation is a row without lr and fine-tuning seed
        if plan.status(job) == "done":
            final = read_final_metrics(plan.path(job))
            lr = {"lr": job.lr} if isinstance(job, FinetuneJob) else {}
            finetune.append({"point": job.pretrain.run.point.label, "task": job.task.name,
                             "nuisance": _label({**job.pretrain.run.nuisance, **lr}),
                             "pretrain_nuisance": _label(job.pretrain.run.nuisance), "seed": job.pretrain.run.seed,
                             "finetune_seed": getattr(job, "seed", None), "score": final["score"],
                             "metric": _metric(job)})
    return pd.DataFrame(pretrain), pd.DataFrame(finetune)


def comparison_table(plan: Plan) -> Any:
    """One row per scientific point: its axis values, pre-training figures (median over seeds at the chosen
    pre-training nuisance) and, per task, the best nuisance's median score over seeds with min, max and n."""
    import pandas as pd

    pretrain, finetune = job_rows(plan)
    rows = []
    for point in plan.study.points:
        row: dict[str, Any] = {"point": point.label, **{k: _short(v) for k, v in point.values.items()
                                                        if not (k == "arm" and v == point.label)}}
        chosen = None
        for task in plan.study.tasks:
            scores = finetune[(finetune["point"] == point.label) & (finetune["task"] == task)] if len(finetune) else []
            if not len(scores):
                continue
            best = best_by_median(scores, "nuisance")
            at_best = scores[scores["nuisance"] == best]["score"]
            metric = scores["metric"].iloc[0]
            row.update({f"{task}_{metric}_median": at_best.median(), f"{task}_min": at_best.min(),
                        f"{task}_max": at_best.max(), f"{task}_n": len(at_best), f"{task}_best": best})
            chosen = chosen or scores[scores["nuisance"] == best]["pretrain_nuisance"].iloc[0]
        runs = pretrain[pretrain["point"] == point.label] if len(pretrain) else pretrain
        if len(runs):
            if chosen is None:  # no fine-tuning result: the pre-training nuisance with the lowest median bpc
                by_bpc = runs.groupby("nuisance", sort=False)["common_val_bpc"].median()
                chosen = by_bpc.idxmin() if by_bpc.notna().any() else runs["nuisance"].iloc[0]
            runs = runs[runs["nuisance"] == chosen]
            row.update({"runs": len(runs), **{k: runs[k].median() for k in PRETRAIN_COLUMNS if k in runs}})
            if len(runs) > 1:  # the seeds' spread: arms differ only if their gap exceeds it
                row.update(common_val_bpc_min=runs["common_val_bpc"].min(),
                           common_val_bpc_max=runs["common_val_bpc"].max())
        rows.append(row)
    return pd.DataFrame(rows)


def format_table(frame: Any) -> str:
    if not len(frame):
        return "(no results yet)"
    return frame.to_string(index=False, float_format=lambda v: f"{v:.4g}")


def _metric(job: DownstreamJob) -> str:
    from harness.tasks import get_task

    return get_task(job.task.name).selection_metric


def _label(values: dict[str, Any]) -> str:
    return ",".join(value_label(k, v) for k, v in values.items()) or "-"


def _short(value: Any) -> Any:
    return value if isinstance(value, str | int | float | bool) or value is None else str(value)


def best_by_median(scores: Any, keys: str | list[str]) -> Any:
    """The nuisance value (a `keys` group of a frame of trials with a `score` column) with the highest median score
    over seeds: the paper's fine-tuning protocol and the playbook's. Ties go to the first group in the frame's order,
    which is the grid's (as harness.finetune.summarize breaks them). The one selection rule of the sweep's table and
    the report."""
    return scores.groupby(keys, sort=False)["score"].median().idxmax()
