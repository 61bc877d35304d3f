"""Faults on purpose: what the fault tests inject, read from one environment variable, a no-op when
it is unset. Production code only offers the two points where a fault can happen (after a train
iteration, as a memory phase starts); it never names a test.

    EGRPO_FAULT="kill-after-iteration:2"        SIGKILL a fresh (not resumed) run after iteration 2
    EGRPO_FAULT="hang-after-iteration:1"        hang after iteration 1 (a peer that stops answering),
                                                until its parent process is gone
    EGRPO_FAULT="slow-iteration:12"             every iteration 12 s longer (a run that outlasts a limit)
    EGRPO_FAULT="kill-after-prompts:3"          SIGKILL an evaluate job (not resumed) after it scored 3 prompts
    EGRPO_FAULT="oom:train:training"            a CUDA out-of-memory error as phase `training` of stage
                                                `train` starts (any stage and phase of device.memory_phase)

Several faults are separated by ';'.
"""
from __future__ import annotations

import os
import signal
import time
from dataclasses import dataclass

VARIABLE = "EGRPO_FAULT"
KINDS = ("kill-after-iteration", "hang-after-iteration", "slow-iteration", "kill-after-prompts", "oom")


@dataclass(frozen=True)
class FaultPlan:
    kill_after: int | None = None
    hang_after: int | None = None
    slow_s: float = 0.0
    oom_at: tuple[str, str] | None = None
    kill_after_prompts: int | None = None

    @classmethod
    def parse(cls, text: str) -> "FaultPlan":
        fields = {}
        for fault in filter(None, (f.strip() for f in text.split(";"))):
            kind, _, arg = fault.partition(":")
            if kind == "kill-after-iteration":
                fields["kill_after"] = int(arg)
            elif kind == "hang-after-iteration":
                fields["hang_after"] = int(arg)
            elif kind == "slow-iteration":
                fields["slow_s"] = float(arg)
            elif kind == "kill-after-prompts":
                fields["kill_after_prompts"] = int(arg)
            elif kind == "oom" and arg.count(":") == 1:
                fields["oom_at"] = tuple(arg.split(":"))
            else:
                raise ValueError(f"{VARIABLE}: unknown fault {fault!r} (kinds: {', '.join(KINDS)}; see egrpo/runtime/faults.py)")
        return cls(**fields)

    def after_iteration(self, done: int, resumed: bool) -> None:
        if self.kill_after == done and not resumed:
            os.kill(os.getpid(), signal.SIGKILL)
        if self.hang_after == done:   # until the process that started this one is gone (no orphan)
            parent = os.getppid()
            while os.getppid() == parent:
                time.sleep(1)
            os._exit(1)
        if self.slow_s:
            time.sleep(self.slow_s)

    def after_prompts(self, done: int, resumed: bool) -> None:
        if self.kill_after_prompts == done and not resumed:
            os.kill(os.getpid(), signal.SIGKILL)

    def at_phase(self, stage: str, phase: str) -> None:
        if self.oom_at == (stage, phase):
            import torch
            raise torch.OutOfMemoryError(f"CUDA out of memory. Tried to allocate 2.00 GiB (injected by {VARIABLE})")


def plan() -> FaultPlan:
    """The faults asked for in this process's environment (none when the variable is unset)."""
    return FaultPlan.parse(os.environ.get(VARIABLE, ""))
