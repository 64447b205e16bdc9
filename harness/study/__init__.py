"""Studies: a grid file -> jobs -> a scheduler -> local workers or Ray tasks -> run directories -> a table.
(`harness report` reads what they write: harness.report; nothing here imports it.)

    plans.py         the plain values a grid expands into: points, pre-training runs, task plans, the study
    grid.py          the typed grid file (pydantic): base, scientific arms and axes, zip, nuisance, seeds, tasks,
                     scales; `load_grid` validates it completely and expands it into runs and task settings
    downstream.py    each task's fine-tuning settings, and the check that the data of every task and corpus is there
    jobs.py          runs and trials as jobs, each owning one run record (harness.runs); status; compute left;
                     study.json (what `harness report` needs to re-expand the plan)
    scheduler.py     `sweep`: plan, run what is missing, record failures, print the table
    launch_local.py  worker processes on this machine (threads split between them)
    launch_ray.py    the same jobs as Ray tasks, on a local Ray instance or a cluster (`--launcher ray`)
    worker.py        the worker process: one job at a time, failures recorded in the job's directory, the job's own
                     console lines in its console.log (unless --verbose)
    results.py       the comparison table rebuilt from the run directories (best nuisance by median over seeds)

Nothing under harness/data or harness/models imports this package. The grid file format is documented in grid.py
and in the README; `harness sweep FILE [--scale S]` is the command.
"""

from harness.study.grid import GridError, Study, load_grid
from harness.study.scheduler import SweepResult, sweep

__all__ = ["GridError", "Study", "SweepResult", "load_grid", "sweep"]
