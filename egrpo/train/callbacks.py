"""What happens around the training loop, one concern per callback: the held-out curve, MLflow,
the progress bar, resume checkpoints, faults on purpose (tests), the job's time limit.

The trainer calls, in list order: `session` (a context around the whole run), `on_start` (before
the first iteration), `before_iteration`, `after_iteration` (with the iteration's row and whether
it was the last), `on_outputs` (after the outputs are written, inside the session) and `on_finish`
(after every process wrote). `default_callbacks` builds the list of one process of a run.
"""
from __future__ import annotations

import contextlib
import json
import logging
import math
import time

from tqdm import tqdm

from egrpo.errors import TimeLimitStop
from egrpo.runtime import faults
from egrpo.runtime.device import memory_phase
from egrpo.runtime.timelimit import JobClock
from egrpo.runtime.tracking import stage_run

log = logging.getLogger("egrpo.train")


class Callback:
    def session(self, trainer):
        return contextlib.nullcontext()

    def on_start(self, trainer) -> None: ...
    def before_iteration(self, trainer, it: int) -> None: ...
    def after_iteration(self, trainer, it: int, row: dict, last: bool) -> None: ...
    def on_outputs(self, trainer, metrics: dict) -> None: ...
    def on_finish(self, trainer) -> None: ...


class Heldout(Callback):
    """The held-out curve (egrpo/train/heldout.py): the base model at zero cost, then whenever due."""

    def __init__(self, curve):
        self.curve = curve

    def point(self, trainer) -> dict:
        st = trainer.state
        with trainer.trainable.applied("heldout"), memory_phase("heldout", trainer.model.device):
            rewards = self.curve.measure(trainer.model)
        st.nfe_heldout += self.curve.last_nfe
        return {"iteration": st.iteration, "forward_equivalents": st.forward_equivalents, "wall_s": st.wall_s,
                **rewards}

    def on_start(self, trainer):
        if self.curve.measured_here and not trainer.state.heldout:
            trainer.state.heldout = [self.point(trainer)]

    def before_iteration(self, trainer, it):
        self.fe_before = trainer.state.forward_equivalents

    def after_iteration(self, trainer, it, row, last):
        if self.curve.due(it + 1, self.fe_before, trainer.state.forward_equivalents, last):
            point = self.point(trainer)
            trainer.state.heldout.append(point)
            row.update({k: v for k, v in point.items() if k.startswith("heldout_")})


class MLflow(Callback):
    """The run's MLflow run (resumed by id after a requeue): params once, a row of metrics per
    iteration, metrics.json and train_log.csv as artifacts."""

    def session(self, trainer):
        @contextlib.contextmanager
        def run():
            with stage_run(trainer.cfg, "train", trainer.tags, run_id=trainer.state.mlflow_run_id,
                           run_name=trainer.run_name, out=trainer.out_dir) as (mlflow, mlrun):
                self.mlflow = mlflow
                trainer.state.mlflow_run_id = mlrun.info.run_id
                if trainer.state.resumed_from is None:
                    mlflow.log_params({f"recipe.{k}": json.dumps(v) for k, v in trainer.algo.recipe().items()})
                    if trainer.plan:
                        mlflow.log_param("plan", json.dumps(trainer.plan))
                yield
        return run()

    def after_iteration(self, trainer, it, row, last):
        self.mlflow.log_metrics({k: float(v) for k, v in row.items()
                                 if k != "iteration" and math.isfinite(float(v))}, step=it + 1)

    def on_outputs(self, trainer, metrics):
        self.mlflow.set_tag("health", metrics["health"]["verdict"])
        self.mlflow.log_artifact(str(trainer.out_dir / "metrics.json"))
        self.mlflow.log_artifact(str(trainer.out_dir / "train_log.csv"))


class Progress(Callback):
    """A tqdm bar: iteration / total, reward, NFE, ETA."""

    def __init__(self, enabled: bool = True):
        self.enabled = enabled

    def session(self, trainer):
        @contextlib.contextmanager
        def bar():
            total = trainer.tcfg["iterations"]
            self.bar = tqdm(initial=trainer.state.iteration, total=total, unit="it", disable=not self.enabled,
                            desc=f"train {trainer.algorithm_name}/{trainer.reward_setting_name}/seed{trainer.seed}")
            try:
                yield
            finally:
                self.bar.close()
        return bar()

    def after_iteration(self, trainer, it, row, last):
        # redrawn by update(), at tqdm's mininterval (TQDM_MININTERVAL: 30 s in the DAG's jobs, whose logs are files)
        self.bar.set_postfix(reward=f"{row['reward_mean']:.4f}", nfe=row["nfe_total"], refresh=False)
        self.bar.update(1)


class StatusLine(Callback):
    """One short line on stdout every `interval` seconds (and after the first and the last iteration):
    under Snakemake, whose jobs send stderr (the tqdm bar) to their log, this is what the terminal
    shows of a running train job: iteration / total, reward, cost, ETA (budget-aware)."""

    def __init__(self, interval_s: float = 30.0):
        self.interval_s = interval_s

    def on_start(self, trainer):
        self.started, self.first, self.last_print = time.monotonic(), trainer.state.iteration, -math.inf

    def after_iteration(self, trainer, it, row, last):
        now = time.monotonic()
        if not (last or it == self.first or now - self.last_print >= self.interval_s):
            return
        self.last_print = now
        st, total = trainer.state, trainer.tcfg["iterations"]
        done = st.iteration - self.first
        per_iteration = (now - self.started) / max(done, 1)
        left = total - st.iteration
        budget = trainer.tcfg["max_forward_equivalents"]
        if budget is not None and st.iteration:
            left = min(left, math.ceil(max(budget - st.forward_equivalents, 0) / (st.forward_equivalents / st.iteration)))
        eta = "done" if last else f"ETA {int(per_iteration * left) // 60}:{int(per_iteration * left) % 60:02d}"
        print(f"egrpo train {trainer.algorithm_name}/{trainer.reward_setting_name}/seed{trainer.seed}: iteration "
              f"{st.iteration}/{total}, reward {row['reward_mean']:.4f}, {st.forward_equivalents / 1000:.1f}k "
              f"forward-equivalents, {eta}", flush=True)


class HealthStop(Callback):
    """train.stop_on: after each iteration, the health rules named there; a flag ends the run (its
    outputs written as at the end) with one line."""

    def after_iteration(self, trainer, it, row, last):
        stop_on = trainer.tcfg["stop_on"]
        if stop_on:
            flags = [f for f in trainer.health()["flags"] if f["rule"] in stop_on]
            if flags:
                trainer.stopped_by = flags[0]["line"]


class Checkpoint(Callback):
    """The resume state every `train.checkpoint_every` iterations and after the last; cleared after
    success (egrpo/train/resume.py)."""

    def after_iteration(self, trainer, it, row, last):
        if (it + 1) % trainer.tcfg["checkpoint_every"] == 0 or last:
            trainer.save_resume()

    def on_finish(self, trainer):
        if trainer.processes.main:
            trainer.resume.clear()


class Faults(Callback):
    """Faults on purpose after an iteration (egrpo/runtime/faults.py; none unless EGRPO_FAULT is set)."""

    def __init__(self, plan: faults.FaultPlan | None = None):
        self.plan = plan or faults.plan()

    def after_iteration(self, trainer, it, row, last):
        self.plan.after_iteration(it + 1, resumed=trainer.state.resumed_from is not None)


class TimeLimit(Callback):
    """Stop before an iteration that would not end (with its state saved) before the job's time
    limit, or after a SIGUSR1: exit 75, the next job continues (egrpo/runtime/timelimit.py). At least
    one iteration per job, so that a margin longer than the job cannot loop."""

    def on_start(self, trainer):
        self.clock, self.done_here = JobClock(trainer.tcfg["time_limit_margin_s"]), 0

    def before_iteration(self, trainer, it):
        reason = trainer.processes.agree_to_stop(self.clock.reason_to_stop()) if self.done_here else None
        if reason:
            trainer.state.time_limit_stops += 1
            trainer.save_resume()
            raise TimeLimitStop(f"{reason}; stopped after iteration {it} of {trainer.tcfg['iterations']} with the "
                                f"resume state saved in {trainer.resume.resume_dir}: the next job continues from it "
                                "(Snakemake's retries submit it again)")
        self.started = time.perf_counter()

    def after_iteration(self, trainer, it, row, last):
        self.done_here += 1
        self.clock.iteration_took(time.perf_counter() - self.started)


def default_callbacks(processes, heldout_curve) -> list[Callback]:
    """The callbacks of one process: the main one logs to MLflow and shows progress."""
    main_only = [MLflow(), StatusLine()] if processes.main else []
    return [Heldout(heldout_curve), *main_only, Progress(enabled=processes.main), HealthStop(), Checkpoint(), Faults(),
            TimeLimit()]
