"""What a train run has done so far (`RunState`, the json part of the resume state) and what it cost
(`CostMeter`: NFE per phase, forward-equivalents, measured against the algorithm's closed forms,
the train_log.csv row of an iteration and metrics.json of the run).

Forward-equivalents, the cost axis of every comparison: rollout forwards + 3 x training
forward+backward passes (a backward costs about two forwards) + reference (KL) forwards.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field

import pandas as pd
import torch


@dataclass
class RunState:
    iteration: int = 0
    nfe_rollout: int = 0
    nfe_train: int = 0
    prompts_seen: int = 0
    optimizer_steps: int = 0
    wall_s: float = 0.0
    rows: list = field(default_factory=list)          # train_log.csv so far
    heldout: list = field(default_factory=list)       # held-out curve points so far
    mlflow_run_id: str | None = None
    resumed_from: int | None = None
    time_limit_stops: int = 0
    nfe_reference: int = 0
    nfe_heldout: int = 0          # the held-out curve's sampling: a measurement, not part of the budget
    nfe_health: int = 0           # health.kl_to_base's reference forwards: a measurement, likewise

    def to_json(self) -> dict:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict) -> "RunState":
        return cls(**{k: v for k, v in data.items() if k in cls.__dataclass_fields__})

    @property
    def forward_equivalents(self) -> int:
        return self.nfe_rollout + 3 * self.nfe_train + self.nfe_reference


@dataclass
class UpdateStats:
    """What the PPO update of one iteration measured (per trained transition / optimizer step)."""
    losses: list = field(default_factory=list)       # mean PPO(+KL) term per trained transition
    ratios: list = field(default_factory=list)       # ratio tensors of every evaluated pair
    first_dev: list = field(default_factory=list)    # |ratio - 1| before the first optimizer step
    logp_gap: list = field(default_factory=list)     # |log p replayed - log p at rollout| before it
    clipped: list = field(default_factory=list)      # |ratio - 1| > eps, every pair
    clipped_after: list = field(default_factory=list)  # ... after the first optimizer step
    kls: list = field(default_factory=list)
    kls_to_base: list = field(default_factory=list)  # health.kl_to_base: KL to the base before the first step
    health_nfe: int = 0                              # ... its reference forwards
    grad_norms: list = field(default_factory=list)
    skipped: int = 0
    dropped: int = 0
    padded: int = 0                                  # zero-weight transitions that keep sharded processes in step
    pairs: int = 0

    def row(self) -> dict:
        cat = lambda xs: torch.cat(xs) if xs else torch.zeros(0, device="cpu")  # logged statistics
        mean = lambda xs: float(cat(xs).mean()) if xs and cat(xs).numel() else math.nan
        return {
            "loss": sum(self.losses) / len(self.losses) if self.losses else math.nan,
            "kl": sum(self.kls) / len(self.kls) if self.kls else math.nan,
            "kl_to_base": sum(self.kls_to_base) / len(self.kls_to_base) if self.kls_to_base else math.nan,
            "ratio_mean": mean(self.ratios),
            "ratio_abs_dev_first": mean(self.first_dev),
            "logp_gap_first": mean(self.logp_gap),
            "clip_fraction": mean(self.clipped),
            "clip_fraction_after_first_step": mean(self.clipped_after),
            "grad_norm": sum(self.grad_norms) / len(self.grad_norms) if self.grad_norms else math.nan,
            "grad_norm_max": max(self.grad_norms) if self.grad_norms else math.nan,
            "optimizer_steps": len(self.grad_norms),
            "trained_pairs": self.pairs,
            "skipped_steps": self.skipped,
            "padded_transitions": self.padded,
        }


class CostMeter:
    """Accounts each iteration's cost into the run state and writes it down (log row, metrics)."""

    def __init__(self, state: RunState, processes, algorithm, inner_epochs: int):
        self.state, self.processes, self.algo, self.inner_epochs = state, processes, algorithm, inner_epochs

    def spent(self, budget: int | None) -> bool:
        return budget is not None and self.state.forward_equivalents >= budget

    def account(self, it: int, epoch: int, rollout, scored, stats: UpdateStats, nfe_train: int, nfe_reference: int,
                evaluations_per_call: int, elapsed: float) -> dict:
        """Add the iteration's counts (summed over processes) to the run state; its train_log.csv row."""
        expected_train = self.algo.expected_train_nfe(rollout.groups) * self.inner_epochs * evaluations_per_call
        nfe_rollout, nfe_train, nfe_reference, expected_nfe, expected_train, n_prompts = self.processes.sum_counts(
            [rollout.nfe, nfe_train, nfe_reference, rollout.expected_nfe, expected_train, rollout.prompts])
        scored.rewards = self.processes.gather(scored.rewards)
        st = self.state
        st.nfe_rollout += nfe_rollout
        st.nfe_train += nfe_train
        st.nfe_reference += nfe_reference
        st.nfe_health += self.processes.sum_counts([stats.health_nfe])[0]
        st.prompts_seen += n_prompts
        st.wall_s += elapsed
        finite_rewards = scored.rewards[torch.isfinite(scored.rewards)]
        return {
            "iteration": it + 1,
            "epoch": epoch,
            "reward_mean": float(finite_rewards.mean()) if finite_rewards.numel() else math.nan,
            "reward_std": float(finite_rewards.std(unbiased=False)) if finite_rewards.numel() else math.nan,
            **{f"reward_{k}_mean": float(v[torch.isfinite(v)].mean()) for k, v in scored.components.items()},
            "zero_std_ratio": scored.zero_std_ratio,
            "group_reward_std": scored.group_std,
            "diversity": scored.diversity,
            **stats.row(),
            "groups": len(rollout.groups),
            "transitions": sum(len(g.transitions) for g in rollout.groups),
            "nfe_rollout": nfe_rollout,
            "nfe_train": nfe_train,
            "nfe_reference": nfe_reference,
            "nfe_rollout_expected": expected_nfe,
            "nfe_train_expected": expected_train,
            "nfe_total": st.nfe_rollout + st.nfe_train,
            "forward_equivalents": st.forward_equivalents,
            "nonfinite_samples": scored.nonfinite + stats.dropped,
            "iteration_s": elapsed,
            "wall_s": st.wall_s,
        }

    def metrics(self, run: dict) -> dict:
        """metrics.json: `run` (what names the run: algorithm, seed, plan, recipe, ...) and the cost."""
        st, rows = self.state, self.state.rows
        prompts_seen = max(1, st.prompts_seen)
        head = {k: run.pop(k) for k in ("algorithm", "reward_setting", "seed")}
        return {
            **head,
            "iterations": st.iteration,
            "nfe_total": st.nfe_rollout + st.nfe_train,
            "nfe_rollout_total": st.nfe_rollout, "nfe_train_total": st.nfe_train,
            "nfe_reference_total": st.nfe_reference,
            "nfe_heldout_total": st.nfe_heldout,
            "nfe_health_total": st.nfe_health,
            "forward_equivalents": st.forward_equivalents,
            "nfe_per_prompt": (st.nfe_rollout + st.nfe_train) / prompts_seen,
            "nfe_rollout_per_prompt": st.nfe_rollout / prompts_seen,
            "nfe_train_per_prompt": st.nfe_train / prompts_seen,
            "wall_s": st.wall_s,
            "final_train_reward": rows[-1]["reward_mean"] if rows else math.nan,
            "mean_ratio_abs_dev_first": float(pd.DataFrame(rows)["ratio_abs_dev_first"].mean()) if rows else math.nan,
            "plan": run.pop("plan"),
            "recipe": run.pop("recipe"),
            "max_forward_equivalents": run.pop("max_forward_equivalents"),
            "heldout_curve": st.heldout,
            "resumed_from_iteration": st.resumed_from,
            "mlflow_run_id": st.mlflow_run_id,
            **{k: v for k, v in run.items() if k not in ("health", "stopped_by")},
            "time_limit_stops": st.time_limit_stops,
            **{k: run[k] for k in ("health", "stopped_by") if k in run},
        }
