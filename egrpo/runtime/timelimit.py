"""Time limits that cost nothing: a train job stops at an iteration boundary before its limit,
saves its resume state and exits for Snakemake to submit it again; the next job continues.

When to stop. Before each iteration (after the first of this job) the trainer asks `JobClock`:

    stop  if  SIGUSR1 was received
          or  end − now < train.time_limit_margin_s + (the longest iteration of this job so far)

`end` is the job's end time as SLURM schedules it (`squeue -j $SLURM_JOB_ID -o %e`, read once at
the start: it includes a limit an administrator extended before the job started). No SLURM job, no
end time: only the signal stops a run early.

Why read the end time instead of asking for `--signal=B:USR1@<s>`: Snakemake's SLURM executor runs
a job as `sbatch --wrap "snakemake …"` whose batch shell runs `srun … snakemake …`, and neither the
batch shell nor the Snakemake processes handle USR1. With `B:` the batch shell dies on it; without,
SLURM signals every process of the step, the Snakemake process that waits on egrpo included, and
the step ends before egrpo has saved. The end time needs no signal to reach anyone. A hand-written
sbatch script that passes USR1 on to egrpo (`--signal=USR1@<s>`, or `B:` with a trap) works as well.

Snakemake's `retries` (profiles/slurm: 2) bounds how many jobs a run may take: set it to at least
the run's length over the partition's limit. metrics.json counts the stops (`time_limit_stops`).
"""
from __future__ import annotations

import logging
import os
import signal
import subprocess
import threading
import time
from datetime import datetime

log = logging.getLogger("egrpo")

# the job's end time as a Unix time, set by another scheduler (or to rehearse a limit) in place of SLURM's
END_TIME_VARIABLE = "EGRPO_JOB_END_TIME"


def slurm_end_time(env=os.environ) -> float | None:
    """The Unix time at which SLURM ends this job, or None (not a SLURM job, no limit, squeue failed)."""
    if env.get(END_TIME_VARIABLE):
        return float(env[END_TIME_VARIABLE])
    job = env.get("SLURM_JOB_ID")
    if not job:
        return None
    try:
        out = subprocess.run(["squeue", "-h", "-j", job, "-o", "%e"], capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired) as error:
        log.warning("cannot read the job's end time (%s): no stop before the time limit", error)
        return None
    text = out.stdout.strip()
    try:
        return datetime.strptime(text, "%Y-%m-%dT%H:%M:%S").timestamp()  # local time, as squeue prints it
    except ValueError:   # "N/A", "Unknown", "NONE" (no limit), or an error
        return None


class JobClock:
    """Tells the trainer when to stop so that saving ends before the job's time limit."""

    def __init__(self, margin_s: float, env=os.environ):
        self.margin_s = float(margin_s)
        self.end = slurm_end_time(env)
        self.signal: str | None = None
        self.longest_iteration_s = 0.0
        if threading.current_thread() is threading.main_thread():
            signal.signal(signal.SIGUSR1, self._on_signal)
        if self.end is not None:
            log.info("job ends at %s: stopping at the last iteration boundary that leaves %.0f s",
                     datetime.fromtimestamp(self.end).isoformat(timespec="seconds"), self.margin_s)

    def _on_signal(self, signum, frame) -> None:
        self.signal = signal.Signals(signum).name

    def iteration_took(self, seconds: float) -> None:
        self.longest_iteration_s = max(self.longest_iteration_s, seconds)

    def reason_to_stop(self) -> str | None:
        """Why the next iteration must not start, or None."""
        if self.signal:
            return f"{self.signal} received"
        if self.end is None:
            return None
        left = self.end - time.time()
        if left < self.margin_s + self.longest_iteration_s:
            return (f"{max(left, 0):.0f} s left before the job's time limit (an iteration takes up to "
                    f"{self.longest_iteration_s:.0f} s, train.time_limit_margin_s = {self.margin_s:g})")
        return None
