"""The GRPO training loop, shared by every algorithm: rollout -> score -> update (PPO-clip).

The phases: `Trainer.rollout` (the algorithm's groups, egrpo.rollout), `score_groups` (decode,
rewards, group advantages: egrpo.scoring), `Trainer.update` (PPO-clip over the stored transitions,
one optimizer step per unit of the algorithm). Randomness of iteration t is drawn from a generator
seeded by (seed, t) alone, so a run resumed from its resume state (egrpo.resume) draws exactly what
an unbroken run draws. The held-out curve is egrpo.heldout.

A run ends early, with one line, when the job's time limit nears (egrpo.timelimit: resume state
saved, the next job continues), when a peer process stops answering for `train.peer_timeout_s`
(egrpo.launch), or when a phase runs out of device memory (egrpo.device.memory_phase).
"""
from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import time
from datetime import timedelta
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd
import torch
from tqdm import tqdm

from egrpo import ema, sde
from egrpo.algorithms import build_algorithm
from egrpo.device import memory_phase, peak_memory_gib, reset_peak_memory, select_device
from egrpo.errors import PeerLost, TimeLimitStop, UserError
from egrpo.heldout import HeldoutCurve
from egrpo.io import atomic_dir, atomic_write_json, atomic_write_text, load_prompts
from egrpo.models import FlowModel, add_lora, load_pipeline, save_policy
from egrpo.resume import ResumeState
from egrpo.rewards import RewardSetting
from egrpo.scoring import ScoredGroups, score_groups
from egrpo.timelimit import JobClock
from egrpo.tracking import stage_run

log = logging.getLogger("egrpo.train")


def iteration_generator(seed: int, iteration: int) -> torch.Generator:
    """All randomness of one iteration: prompts, noises, subsets (a pure function of seed, t)."""
    return torch.Generator().manual_seed(seed * 1_000_003 + iteration)


def forward_equivalents(state: dict) -> int:
    """Cost axis: rollout forwards + 3 x training forward+backward + reference (KL) forwards."""
    return state["nfe_rollout"] + 3 * state["nfe_train"] + state.get("nfe_reference", 0)


class PromptSampler:
    """Which training prompts iteration t rolls out (over all processes), a pure function of
    (seed, t), so a resumed run draws what an unbroken one draws.

    epoch (the official trainers' shuffled DistributedSampler): epoch e is a permutation of the
    prompts seeded by (seed, e); its first floor(n / P) * P entries make floor(n / P) iterations of
    P prompts (the rest waits for a later epoch, as drop_last does): each prompt at most once per
    epoch, never twice in one iteration. replacement: P independent uniform draws per iteration from
    the iteration's generator (egrpo's earlier way: a prompt can form two groups of one step)."""

    def __init__(self, num_prompts: int, per_iteration: int, seed: int, mode: str):
        self.n, self.per_iteration, self.seed, self.mode = num_prompts, per_iteration, seed, mode
        if mode == "epoch" and per_iteration > num_prompts:
            raise UserError(f"train.prompts_per_iteration: {per_iteration} prompts per iteration but prompts.train has "
                            f"{num_prompts}; epoch sampling draws a prompt at most once per iteration (set "
                            "train.prompt_sampling: replacement, or give more prompts)")
        self.per_epoch = max(1, num_prompts // per_iteration)

    def epoch(self, iteration: int) -> int:
        return iteration // self.per_epoch if self.mode == "epoch" else 0

    def prompts(self, iteration: int, generator: torch.Generator) -> list[int]:
        if self.mode == "replacement":
            return torch.randint(self.n, (self.per_iteration,), generator=generator).tolist()  # cpu: prompt indices
        epoch, slot = divmod(iteration, self.per_epoch)
        order = torch.randperm(self.n, generator=torch.Generator().manual_seed(self.seed * 1_000_003 + epoch))  # cpu: prompt order
        return order[slot * self.per_iteration:(slot + 1) * self.per_iteration].tolist()


@dataclass
class Rollout:
    groups: list                      # every group of the iteration's prompts (this process)
    conds: dict                       # prompt index -> its [1]-batch conditioning
    nfe: int                          # measured policy forwards
    expected_nfe: int                 # the algorithm's closed form
    prompts: int


@dataclass
class UpdateStats:
    losses: list = field(default_factory=list)       # mean PPO(+KL) term per trained transition
    ratios: list = field(default_factory=list)       # ratio tensors of every evaluated pair
    first_dev: list = field(default_factory=list)    # |ratio - 1| before the first optimizer step
    clipped: list = field(default_factory=list)      # |ratio - 1| > eps, every pair
    clipped_after: list = field(default_factory=list)  # ... after the first optimizer step
    kls: list = field(default_factory=list)
    grad_norms: list = field(default_factory=list)
    skipped: int = 0
    dropped: int = 0
    padded: int = 0                                  # zero-weight transitions that keep sharded processes in step
    pairs: int = 0

    def row(self) -> dict:
        cat = lambda xs: torch.cat(xs) if xs else torch.zeros(0)  # cpu: statistics
        mean = lambda xs: float(cat(xs).mean()) if xs and cat(xs).numel() else math.nan
        return {
            "loss": sum(self.losses) / len(self.losses) if self.losses else math.nan,
            "kl": sum(self.kls) / len(self.kls) if self.kls else math.nan,
            "ratio_mean": mean(self.ratios),
            "ratio_abs_dev_first": mean(self.first_dev),
            "clip_fraction": mean(self.clipped),
            "clip_fraction_after_first_step": mean(self.clipped_after),
            "grad_norm": sum(self.grad_norms) / len(self.grad_norms) if self.grad_norms else math.nan,
            "grad_norm_max": max(self.grad_norms) if self.grad_norms else math.nan,
            "optimizer_steps": len(self.grad_norms),
            "trained_pairs": self.pairs,
            "skipped_steps": self.skipped,
            "padded_transitions": self.padded,
        }


class Trainer:
    def __init__(self, cfg: dict, algorithm: str, reward_setting: str, seed: int, model_dir: str | None,
                 plan_path: str | None, out_dir: str, resume_dir: str):
        from accelerate import Accelerator

        self.cfg, self.seed = cfg, seed
        self.algorithm_name, self.reward_setting_name = algorithm, reward_setting
        self.tcfg = cfg["train"]
        self.out_dir = Path(out_dir)
        self.prompts = load_prompts(cfg["prompts"]["train"], "prompts.train")
        plan = None
        if plan_path:
            plan = [(e["start"], e["length"]) for e in json.loads(Path(plan_path).read_text())["plan"]]
        self.plan = plan
        self.setting = RewardSetting(cfg["reward_settings"][reward_setting], cfg)
        if int(os.environ.get("WORLD_SIZE", "1")) > 1:
            # the process group first, with train.peer_timeout_s: a collective that waits longer on a
            # peer fails (gloo raises; NCCL's watchdog aborts) instead of hanging until the job's limit
            from accelerate import PartialState
            PartialState(cpu=cfg["model"].get("device") == "cpu" or not torch.cuda.is_available(),
                         timeout=timedelta(seconds=self.tcfg["peer_timeout_s"]))
        device = select_device(cfg)  # model.device: auto (this process's GPU, else the CPU), cpu, cuda[:N]
        self.accelerator = Accelerator(mixed_precision=self.tcfg["mixed_precision"], cpu=device.type == "cpu")
        self.world, self.rank = self.accelerator.num_processes, self.accelerator.process_index
        if self.tcfg["prompts_per_iteration"] % self.world:
            raise UserError(f"train.prompts_per_iteration: {self.tcfg['prompts_per_iteration']} prompts per iteration "
                            f"cannot be split evenly over {self.world} processes")
        # train.sharding fsdp: every process holds 1/N of the weights, gradients and AdamW state
        # (egrpo/sharding.py); with one process there is nothing to shard
        self.sharded = self.tcfg["sharding"] == "fsdp" and self.world > 1
        if self.tcfg["sharding"] == "fsdp" and not self.sharded:
            log.info("train.sharding: fsdp with one process has nothing to shard; training unsharded")
        torch.manual_seed(seed)
        # global (not the thread-local sdpa_kernel context): autograd runs the backward on its own thread
        torch.backends.cuda.enable_cudnn_sdp(self.tcfg["cudnn_attention"])
        self.model = FlowModel(load_pipeline(cfg, model_dir), cfg, self.accelerator.device)
        # the algorithm walks the model's schedule (sampling.schedule: static, or the family's pipeline's)
        self.algo = build_algorithm(algorithm, cfg, plan, sigmas=self.model.sigmas(cfg["sampling"]["num_steps"]))
        self.model.round_timesteps = self.algo.timestep_rounding
        transformer = self.model.transformer
        blocks = self.model.family.block_lists
        if self.tcfg["gradient_checkpointing"]:  # recompute block activations in the backward (FLUX scale)
            transformer.enable_gradient_checkpointing()
        if self.tcfg["finetune"] == "lora":
            add_lora(transformer, self.tcfg["lora_rank"], self.tcfg["lora_alpha"], self.model.family.lora_targets)
        else:
            if self.algo.kl_beta > 0:  # the reference policy of the KL term: a frozen copy of the base
                import copy
                self.model.reference = copy.deepcopy(transformer).requires_grad_(False).eval()
                if self.sharded:  # at once: one full copy on the device at a time
                    from egrpo import sharding
                    sharding.shard(self.model.reference, self.model.compute_dtype, blocks=blocks)
            transformer.requires_grad_(True)
        # fp32 master weights of what is trained; the forward computes in model.dtype (autocast).
        # Sharded: each block becomes fp32 just before it is sharded, so no full fp32 copy exists.
        if self.sharded:
            from egrpo import sharding
            sharding.shard(transformer, self.model.compute_dtype, master_dtype=torch.float32, blocks=blocks)
        else:
            for p in transformer.parameters():
                if p.requires_grad:
                    p.data = p.data.float()
        self.params = [p for p in transformer.parameters() if p.requires_grad]  # sharded ones, under fsdp
        self.optimizer = torch.optim.AdamW(self.params, lr=self.algo.learning_rate,
                                           weight_decay=self.tcfg["weight_decay"])
        if not self.sharded:
            # several processes (accelerate launch): the DDP wrapper is made for its initial broadcast of
            # the weights and then left uncalled. Processes train different numbers of transitions per
            # optimizer step, which DDP's per-backward reduction cannot follow (a DDP forward outside
            # no_sync arms it): optimizer_step averages the gradients once per step instead.
            _, self.optimizer = self.accelerator.prepare(transformer, self.optimizer)
        # train.ema: an EMA of the trained weights, where the algorithm's recipe keeps one (egrpo/ema.py)
        self.ema_setting = ema.resolve(self.tcfg["ema"], self.algo)
        self.ema = ema.EMA(self.params, **self.ema_setting) if self.ema_setting else None
        self.sampler = PromptSampler(len(self.prompts), self.tcfg["prompts_per_iteration"], seed,
                                     self.tcfg["prompt_sampling"])
        self.state = {"iteration": 0, "nfe_rollout": 0, "nfe_train": 0, "prompts_seen": 0, "optimizer_steps": 0,
                      "wall_s": 0.0, "rows": [], "heldout": [], "mlflow_run_id": None, "resumed_from": None,
                      "time_limit_stops": 0}
        self.resume = ResumeState(resume_dir, self.tcfg["finetune"], self.sharded)
        self.heldout = HeldoutCurve(cfg, self.accelerator.is_main_process, self.sharded)

    # ---- resume ---------------------------------------------------------------------------------
    def save_resume(self) -> None:
        self.resume.save(self.model.transformer, self.optimizer, self.state, self.ema.state() if self.ema else None)

    def load_resume(self) -> bool:
        state = self.resume.load(self.model.transformer, self.optimizer, self.ema.state() if self.ema else None)
        if state is not None:
            self.state = state
        return state is not None

    def optimizer_step(self) -> float:
        """Average the gradients over processes, clip their norm, step, clear, fold the weights into
        the EMA when it is due; returns the norm before clipping."""
        norm = self._step()
        self.state["optimizer_steps"] = steps = self.state.get("optimizer_steps", 0) + 1
        if self.ema is not None:
            self.ema.update(steps)
        return norm

    def _step(self) -> float:
        """Sharded gradients were already averaged by FSDP at every backward."""
        if self.sharded:
            from egrpo import sharding
            norm = sharding.clip_grad_norm(self.params, self.tcfg["max_grad_norm"])
            self.optimizer.step()
            self.optimizer.zero_grad(set_to_none=True)
            return norm
        if self.world > 1:
            import torch.distributed as dist
            for p in self.params:
                if p.grad is None:
                    p.grad = torch.zeros_like(p)
                dist.all_reduce(p.grad, op=dist.ReduceOp.SUM)
                p.grad /= self.world
        norm = float(self.accelerator.clip_grad_norm_(self.params, self.tcfg["max_grad_norm"]))
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        return norm

    # ---- one iteration: rollout -> score -> update ------------------------------------------------
    def iteration(self, it: int) -> dict:
        """rollout -> score -> update; the row records each phase's seconds (and peak GiB on a GPU)."""
        start = time.perf_counter()
        phases = {}
        with self.phase("rollout", phases):
            rollout = self.rollout(it)
        with self.phase("scoring", phases):
            scored = score_groups(rollout.groups, self.model, self.setting, self.prompts, self.tcfg["adv_clip_max"],
                                  self.algo.advantage)
        nfe0, ref0 = self.model.nfe, self.model.nfe_reference
        with self.phase("training", phases):
            stats = self.update(rollout, scored.advantages)
        row = self.log_row(it, rollout, scored, stats, self.model.nfe - nfe0, self.model.nfe_reference - ref0,
                           time.perf_counter() - start)
        return {**row, **phases}

    @contextlib.contextmanager
    def phase(self, name: str, into: dict):
        """Time one phase of an iteration into `into`: {name}_s, and {name}_peak_gib on a CUDA device
        (the peak allocated memory of this phase alone)."""
        device = self.model.device
        reset_peak_memory(device)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        start = time.perf_counter()
        with memory_phase(name, device):
            yield
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        into[f"{name}_s"] = time.perf_counter() - start
        peak = peak_memory_gib(device)
        if peak is not None:
            into[f"{name}_peak_gib"] = peak

    def rollout(self, it: int) -> Rollout:
        """Draw this iteration's prompts (a pure function of seed and iteration) and sample their groups."""
        model = self.model
        generator = iteration_generator(self.seed, it)
        drawn = self.sampler.prompts(it, generator)
        prompt_ids = drawn[self.rank::self.world]  # each process rolls out its equal share of the prompts
        if self.world > 1:  # and draws its own noises
            generator = torch.Generator().manual_seed(iteration_generator(self.seed, it).initial_seed() * 64 + self.rank)
        nfe0 = model.nfe
        groups, conds, expected = [], {}, 0
        for p in prompt_ids:
            if p not in conds:
                conds[p] = model.encode([self.prompts[p].text])
            prompt_groups = self.algo.rollout(model, conds[p], p, generator, it)
            # the closed forms count model calls per sample; true CFG makes each call two evaluations
            expected += self.algo.expected_rollout_nfe(prompt_groups) * model.evaluations_per_call
            groups += prompt_groups
        return Rollout(groups, conds, model.nfe - nfe0, expected, len(prompt_ids))

    def update(self, rollout: Rollout, advantages: list[torch.Tensor]) -> UpdateStats:
        """PPO-clip over the stored transitions, one optimizer step per unit of the algorithm's
        `update_units` (per plan entry, every n samples, n per iteration, or once)."""
        stats = UpdateStats()
        units = self.algo.update_units(rollout.groups)
        padding = self._padding(units)
        for epoch in range(self.tcfg["inner_epochs"]):
            for u, pad in enumerate(padding):
                unit = units[u] if u < len(units) else []
                pairs = sum(tr.x_to.shape[0] for _, tr in unit)
                for gi, tr in unit:
                    group = rollout.groups[gi]
                    self.train_transition(tr, advantages[gi], rollout.conds[group.prompt_index],
                                          tr.x_to.shape[0] / pairs, stats, first_epoch=epoch == 0)
                for _ in range(pad):
                    self.pad_transition(rollout, advantages, stats)
                stats.grad_norms.append(self.optimizer_step())
        return stats

    def _padding(self, units: list) -> list[int]:
        """Per optimizer step, how many zero-weight transitions this process adds so that every
        process runs the same number of forwards and backwards: the most transitions any process
        has in that step (sharded), or none (a process without the step steps on zero gradients)."""
        if self.world == 1:
            return [0] * len(units)
        import torch.distributed as dist
        count = torch.tensor([len(units)], device=self.model.device)
        dist.all_reduce(count, op=dist.ReduceOp.MAX)
        if not self.sharded:
            return [0] * int(count)
        sizes = torch.zeros(int(count), dtype=torch.long, device=self.model.device)
        sizes[:len(units)] = torch.tensor([len(unit) for unit in units], dtype=torch.long, device=self.model.device)
        most = sizes.clone()
        dist.all_reduce(most, op=dist.ReduceOp.MAX)
        return (most - sizes).tolist()

    def pad_transition(self, rollout: Rollout, advantages: list[torch.Tensor], stats: UpdateStats) -> None:
        """A forward and backward with weight 0 (the first transition of this process's rollout): the
        sharded model's collectives stay in step, the gradients do not change, no cost is counted."""
        nfe, reference = self.model.nfe, self.model.nfe_reference
        group = rollout.groups[0]
        self.train_transition(group.transitions[0], advantages[0], rollout.conds[group.prompt_index], 0.0,
                              UpdateStats(), first_epoch=False)
        self.model.nfe, self.model.nfe_reference = nfe, reference
        stats.padded += 1

    def train_transition(self, tr, group_advantages: torch.Tensor, cond, weight: float, stats: UpdateStats,
                         first_epoch: bool) -> None:
        """Backward of one transition's mean PPO(+KL) term times `weight`, its share of the unit's pairs."""
        algo, model, clip_range = self.algo, self.model, self.tcfg["clip_range"]
        device = model.device
        adv = group_advantages[torch.as_tensor(tr.member_ids(), device=group_advantages.device)].to(device)
        logp_old = tr.logp_old.to(device)
        keep = torch.isfinite(logp_old)
        stats.dropped += int((~keep).sum()) if first_epoch else 0
        adv = torch.where(keep, adv, torch.zeros_like(adv))
        logp_old = torch.where(keep, logp_old, torch.zeros_like(logp_old))
        sigma = float(algo.sigmas[tr.i])
        v = model.velocity(tr.x_from, sigma, cond)
        mean, std = algo.mean_std(tr.x_from, v, algo.sigmas, tr.i, tr.j, algo.eta)
        logp_new = sde.gaussian_log_prob(tr.x_to, mean.expand_as(tr.x_to), std)
        logp_new = torch.where(keep, logp_new, torch.zeros_like(logp_new))
        loss, ratio = sde.ppo_clip_loss(logp_new, logp_old, adv, clip_range)
        if algo.kl_beta > 0:
            v_ref = model.velocity(tr.x_from, sigma, cond, reference=True)
            mean_ref, _ = algo.mean_std(tr.x_from, v_ref, algo.sigmas, tr.i, tr.j, algo.eta)
            kl = sde.kl_to_reference(mean, mean_ref, std, algo.sigmas, tr.i, tr.j, algo.kl_divisor).mean()
            stats.kls.append(float(kl.detach()))
            loss = loss + algo.kl_beta * kl
        if not torch.isfinite(loss):  # skip it; gradients accumulated so far are kept
            stats.skipped += 1
            log.warning("non-finite loss at transition %d -> %d, skipped", tr.i, tr.j)
            if self.sharded:  # every process must still run a backward (FSDP reduce-scatters in it)
                self.accelerator.backward(v.sum() * 0.0)
            return
        self.accelerator.backward(loss * weight)
        stats.losses.append(float(loss.detach()))
        stats.pairs += int(keep.sum())
        r = ratio.detach()[keep]
        stats.ratios.append(r)
        clipped = ((r - 1).abs() > clip_range).float()
        stats.clipped.append(clipped)
        if stats.grad_norms:
            stats.clipped_after.append(clipped)
        else:
            stats.first_dev.append((r - 1).abs())

    def log_row(self, it: int, rollout: Rollout, scored: ScoredGroups, stats: UpdateStats, nfe_train: int,
                nfe_reference: int, elapsed: float) -> dict:
        """Account the iteration's cost into the run state and build its train_log.csv row."""
        model, nfe_rollout, expected_nfe, n_prompts = self.model, rollout.nfe, rollout.expected_nfe, rollout.prompts
        expected_train = (self.algo.expected_train_nfe(rollout.groups) * self.tcfg["inner_epochs"]
                          * model.evaluations_per_call)
        if self.world > 1:  # totals over processes
            counts = self.accelerator.reduce(torch.tensor([nfe_rollout, nfe_train, nfe_reference, expected_nfe,
                                                           expected_train, n_prompts], device=model.device), "sum").tolist()
            nfe_rollout, nfe_train, nfe_reference, expected_nfe, expected_train, n_prompts = (int(c) for c in counts)
            scored.rewards = self.accelerator.gather(scored.rewards.to(model.device)).cpu()
        st = self.state
        st["nfe_rollout"] += nfe_rollout
        st["nfe_train"] += nfe_train
        st["nfe_reference"] = st.get("nfe_reference", 0) + nfe_reference
        st["prompts_seen"] += n_prompts
        st["wall_s"] += elapsed
        finite_rewards = scored.rewards[torch.isfinite(scored.rewards)]
        return {
            "iteration": it + 1,
            "epoch": self.sampler.epoch(it),
            "reward_mean": float(finite_rewards.mean()) if finite_rewards.numel() else math.nan,
            "reward_std": float(finite_rewards.std(unbiased=False)) if finite_rewards.numel() else math.nan,
            **{f"reward_{k}_mean": float(v[torch.isfinite(v)].mean()) for k, v in scored.components.items()},
            "zero_std_ratio": scored.zero_std_ratio,
            **stats.row(),
            "groups": len(rollout.groups),
            "transitions": sum(len(g.transitions) for g in rollout.groups),
            "nfe_rollout": nfe_rollout,
            "nfe_train": nfe_train,
            "nfe_reference": nfe_reference,
            "nfe_rollout_expected": expected_nfe,
            "nfe_train_expected": expected_train,
            "nfe_total": st["nfe_rollout"] + st["nfe_train"],
            "forward_equivalents": forward_equivalents(st),
            "nonfinite_samples": scored.nonfinite + stats.dropped,
            "iteration_s": elapsed,
            "wall_s": st["wall_s"],
        }

    def heldout_point(self) -> dict:
        """The held-out rewards at the current cost (on the processes that measure)."""
        st = self.state
        with self.ema.applied("heldout") if self.ema else contextlib.nullcontext(), memory_phase("heldout", self.model.device):
            rewards = self.heldout.measure(self.model)
        return {"iteration": st["iteration"], "forward_equivalents": forward_equivalents(st),
                "wall_s": st["wall_s"], **rewards}

    def budget_spent(self) -> bool:
        budget = self.tcfg["max_forward_equivalents"]
        return budget is not None and forward_equivalents(self.state) >= budget

    # ---- the whole run --------------------------------------------------------------------------
    def run(self) -> dict | None:
        """Train to the last iteration; only the main process writes files and logs to MLflow.
        A collective that fails because a peer died or hangs ends this process with one line."""
        try:
            return self._run()
        except RuntimeError as error:
            if self.world > 1 and _collective_failure(error):
                first = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
                raise PeerLost(f"process {self.rank} of {self.world}: a peer process stopped answering (a collective "
                               f"failed: {first[-200:]}; train.peer_timeout_s = {self.tcfg['peer_timeout_s']:g}); this "
                               "process exits too; the first error is in the log of the process that stopped") from None
            raise

    def stop_reason(self, clock: JobClock) -> str | None:
        """Why this job must stop before the next iteration; every process gets the same answer."""
        reason = clock.reason_to_stop()
        if self.world > 1:
            import torch.distributed as dist
            flag = torch.tensor([1.0 if reason else 0.0], device=self.accelerator.device)
            dist.all_reduce(flag, op=dist.ReduceOp.MAX)
            if flag.item() and not reason:
                reason = "another process of the job was told to stop"
        return reason

    def stop_for_time_limit(self, reason: str, iteration: int) -> None:
        """Save the resume state now and end the job; the next one continues from it."""
        self.state["time_limit_stops"] = self.state.get("time_limit_stops", 0) + 1
        if self.accelerator.is_main_process or self.sharded:
            self.save_resume()
        self.accelerator.wait_for_everyone()
        raise TimeLimitStop(f"{reason}; stopped after iteration {iteration} of {self.tcfg['iterations']} with the "
                            f"resume state saved in {self.resume.resume_dir}: the next job continues from it "
                            "(Snakemake's retries submit it again)")

    def _run(self) -> dict | None:
        self.load_resume()
        main = self.accelerator.is_main_process
        iterations = self.tcfg["iterations"]
        tags = {"algorithm": self.algorithm_name, "reward_setting": self.reward_setting_name, "seed": self.seed,
                "processes": self.world, "device": self.model.device.type}
        run_name = f"train-{self.algorithm_name}-{self.reward_setting_name}-seed{self.seed}"
        tracking = stage_run(self.cfg, "train", tags, run_id=self.state["mlflow_run_id"], run_name=run_name) \
            if main else contextlib.nullcontext((None, None))
        metrics = None
        with tracking as (mlflow, run):
            if main:
                self.state["mlflow_run_id"] = run.info.run_id
                if self.state["resumed_from"] is None:
                    mlflow.log_params({f"recipe.{k}": json.dumps(v) for k, v in self.algo.recipe().items()})
                    if self.plan:
                        mlflow.log_param("plan", json.dumps(self.plan))
            bar = tqdm(range(self.state["iteration"], iterations), initial=self.state["iteration"], total=iterations,
                       desc=f"train {self.algorithm_name}/{self.reward_setting_name}/seed{self.seed}", unit="it",
                       disable=not main)
            if self.heldout.measured_here and not self.state.get("heldout"):
                self.state["heldout"] = [self.heldout_point()]  # the base model, at zero cost
            clock, done_here = JobClock(self.tcfg["time_limit_margin_s"]), 0
            for it in bar:
                if self.budget_spent():
                    log.info("budget of %d forward-equivalents spent after %d iterations",
                             self.tcfg["max_forward_equivalents"], it)
                    break
                # at least one iteration per job, so that a margin longer than the job cannot loop
                reason = self.stop_reason(clock) if done_here else None
                if reason:
                    bar.close()
                    self.stop_for_time_limit(reason, it)
                started = time.perf_counter()
                fe_before = forward_equivalents(self.state)
                row = self.iteration(it)
                self.state["rows"].append(row)
                self.state["iteration"] = it + 1
                last = it + 1 == iterations or self.budget_spent()
                if self.heldout.due(it + 1, fe_before, forward_equivalents(self.state), last):
                    point = self.heldout_point()
                    self.state["heldout"].append(point)
                    row.update({k: v for k, v in point.items() if k.startswith("heldout_")})
                if main:
                    mlflow.log_metrics({k: float(v) for k, v in row.items()
                                        if k != "iteration" and math.isfinite(float(v))}, step=it + 1)
                    bar.set_postfix(reward=f"{row['reward_mean']:.4f}", nfe=row["nfe_total"])
                if (it + 1) % self.tcfg["checkpoint_every"] == 0 or last:
                    if main or self.sharded:  # sharded: every process writes its shards
                        self.save_resume()
                    self.accelerator.wait_for_everyone()
                if self.state["resumed_from"] is None:
                    _fault_injection(it + 1)
                _test_delays(it + 1)
                done_here += 1
                clock.iteration_took(time.perf_counter() - started)
            policy = None
            with self.ema.applied("policy") if self.ema else contextlib.nullcontext():  # the EMA, where it is the policy
                if self.sharded:  # gathered from every process's shards onto the main one
                    from egrpo import sharding
                    policy = sharding.full_state_dict(self.model.transformer)
                if main:
                    metrics = self.write_outputs(policy)
            if main:
                mlflow.log_artifact(str(self.out_dir / "metrics.json"))
                mlflow.log_artifact(str(self.out_dir / "train_log.csv"))
        self.accelerator.wait_for_everyone()
        if main:
            self.resume.clear()
        return metrics

    def write_outputs(self, policy: dict | None = None) -> dict:
        """train_log.csv, metrics.json and the policy checkpoint (`policy`: its gathered weights when
        sharded, else read from the transformer)."""
        st, rows = self.state, self.state["rows"]
        prompts_seen = max(1, st["prompts_seen"])
        meta = {"algorithm": self.algorithm_name, "reward_setting": self.reward_setting_name, "seed": self.seed,
                "iterations": st["iteration"], "family": self.model.family.name, "lora_rank": self.tcfg["lora_rank"],
                "lora_alpha": self.tcfg["lora_alpha"], "lora_targets": list(self.model.family.lora_targets)}
        with atomic_dir(self.out_dir / "checkpoint") as tmp:
            save_policy(self.model.transformer, self.tcfg["finetune"], tmp, meta, state=policy)
        atomic_write_text(self.out_dir / "train_log.csv", pd.DataFrame(rows).to_csv(index=False))
        metrics = {
            "algorithm": self.algorithm_name, "reward_setting": self.reward_setting_name, "seed": self.seed,
            "iterations": st["iteration"],
            "nfe_total": st["nfe_rollout"] + st["nfe_train"],
            "nfe_rollout_total": st["nfe_rollout"], "nfe_train_total": st["nfe_train"],
            "nfe_reference_total": st.get("nfe_reference", 0),
            "forward_equivalents": forward_equivalents(st),
            "nfe_per_prompt": (st["nfe_rollout"] + st["nfe_train"]) / prompts_seen,
            "nfe_rollout_per_prompt": st["nfe_rollout"] / prompts_seen,
            "nfe_train_per_prompt": st["nfe_train"] / prompts_seen,
            "wall_s": st["wall_s"],
            "final_train_reward": rows[-1]["reward_mean"] if rows else math.nan,
            "mean_ratio_abs_dev_first": float(pd.DataFrame(rows)["ratio_abs_dev_first"].mean()) if rows else math.nan,
            "plan": [{"start": s, "length": k} for s, k in self.plan] if self.plan else None,
            "recipe": self.algo.recipe(),
            "max_forward_equivalents": self.tcfg["max_forward_equivalents"],
            "heldout_curve": st.get("heldout", []),
            "resumed_from_iteration": st["resumed_from"],
            "mlflow_run_id": st["mlflow_run_id"],
            "device": self.model.device.type,
            "processes": self.world,
            "sharding": "fsdp" if self.sharded else "none",
            "family": self.model.family.name,
            "ema": self.ema_setting,
            "prompt_sampling": self.tcfg["prompt_sampling"],
            "time_limit_stops": st.get("time_limit_stops", 0),
        }
        atomic_write_json(self.out_dir / "metrics.json", metrics)
        return metrics


def _fault_injection(done: int) -> None:
    """Tests set EGRPO_KILL_AFTER_ITERATION=k to SIGKILL a fresh (not resumed) run after iteration k."""
    import signal

    if os.environ.get("EGRPO_KILL_AFTER_ITERATION") == str(done):
        os.kill(os.getpid(), signal.SIGKILL)


def _test_delays(done: int) -> None:
    """Tests: EGRPO_HANG_AFTER_ITERATION=k makes this process hang after iteration k (a stuck peer);
    EGRPO_SLOW_ITERATION_S=s makes every iteration s seconds longer (a run that outlasts a time limit)."""
    if os.environ.get("EGRPO_HANG_AFTER_ITERATION") == str(done):
        while True:
            time.sleep(60)
    if os.environ.get("EGRPO_SLOW_ITERATION_S"):
        time.sleep(float(os.environ["EGRPO_SLOW_ITERATION_S"]))


def _collective_failure(error: RuntimeError) -> bool:
    """A collective failed because a peer died or did not answer in time (gloo or NCCL)."""
    import torch.distributed as dist

    if isinstance(error, getattr(dist, "DistError", ())):
        return True
    text = str(error)
    return any(s in text for s in ("gloo", "NCCL", "Connection reset by peer", "Connection closed by peer",
                                   "Timed out", "Broken pipe"))


def run_train(cfg, algorithm, reward_setting, seed, model_dir, plan_path, out_dir, resume_dir) -> dict:
    from egrpo.config import ALGORITHMS_USING_PLAN
    from egrpo.errors import UserError

    if reward_setting not in cfg["reward_settings"]:
        raise UserError(f"--reward-setting: {reward_setting!r} is not a key of reward_settings ({sorted(cfg['reward_settings'])})")
    if algorithm in ALGORITHMS_USING_PLAN and not plan_path:
        raise UserError(f"--plan: algorithm {algorithm} needs the merge plan (plan.json from `egrpo threshold`)")
    if plan_path and not Path(plan_path).is_file():
        raise UserError(f"--plan: file not found: {plan_path}")
    trainer = Trainer(cfg, algorithm, reward_setting, seed, model_dir,
                      plan_path if algorithm in ALGORITHMS_USING_PLAN else None, out_dir, resume_dir)
    metrics = trainer.run()
    trainer.accelerator.end_training()
    return metrics
