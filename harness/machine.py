"""What this machine lends the harness: the one place that counts usable CPU cores (data preparation's processes,
the sweep's workers, Ray's CPUs and the quickstart all ask here)."""

from __future__ import annotations

import os


def usable_cores() -> int:
    """The cores this process may run on: its CPU affinity (containers and `taskset` narrow it), else the machine's
    count."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1
