"""The GRPO training loop, shared by every algorithm: rollout -> score -> update (PPO-clip).

An iteration: `Trainer.rollout` (the algorithm's groups, egrpo/rollout.py), `score_groups` (decode,
rewards, group advantages: egrpo/scoring.py), the update (egrpo/train/update.py). Randomness of
iteration t is drawn from a generator seeded by (seed, t) alone (egrpo/train/sampler.py), so a run
resumed from its resume state (egrpo/train/resume.py) draws exactly what an unbroken run draws.

Everything else is delegated: processes (egrpo/train/processes.py: one, data-parallel or sharded),
what is trained (trainable.py), the run's counters and cost (state.py), and the concerns around the
loop as callbacks (callbacks.py: held-out curve, MLflow, progress, checkpoints, faults, time limit).
"""
from __future__ import annotations

import contextlib
import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import torch

from egrpo import health
from egrpo.algorithms import build_algorithm
from egrpo.models import FlowModel, load_pipeline, save_policy
from egrpo.rewards import RewardSetting
from egrpo.runtime.device import memory_phase, peak_memory_gib, reset_peak_memory
from egrpo.runtime.io import atomic_dir, atomic_write_json, atomic_write_text, load_prompts
from egrpo.scoring import score_groups
from egrpo.train.callbacks import default_callbacks
from egrpo.train.heldout import HeldoutCurve
from egrpo.train.processes import make_processes
from egrpo.train.resume import ResumeState
from egrpo.train.sampler import PromptSampler, iteration_generator
from egrpo.train.state import CostMeter, RunState
from egrpo.train.nft import NFTUpdate
from egrpo.train.trainable import Trainable
from egrpo.train.update import PPOUpdate

log = logging.getLogger("egrpo.train")
UPDATES = {"ppo": PPOUpdate, "nft": NFTUpdate}   # Algorithm.update -> its update phase


@dataclass
class Rollout:
    groups: list                      # every group of the iteration's prompts (this process)
    conds: dict                       # prompt index -> its [1]-batch conditioning
    nfe: int                          # measured policy forwards
    expected_nfe: int                 # the algorithm's closed form
    prompts: int


class Trainer:
    def __init__(self, cfg: dict, algorithm: str, reward_setting: str, seed: int, model_dir: str | None,
                 plan_path: str | None, out_dir: str, resume_dir: str, callbacks: list | None = None):
        self.cfg, self.seed, self.tcfg = cfg, seed, cfg["train"]
        self.algorithm_name, self.reward_setting_name = algorithm, reward_setting
        self.out_dir = Path(out_dir)
        self.prompts = load_prompts(cfg["prompts"]["train"], "prompts.train")
        self.plan = ([(e["start"], e["length"]) for e in json.loads(Path(plan_path).read_text())["plan"]]
                     if plan_path else None)
        self.setting = RewardSetting(cfg["reward_settings"][reward_setting], cfg)
        self.processes = make_processes(cfg)
        self.accelerator = self.processes.accelerator
        torch.manual_seed(seed)
        # global (not the thread-local sdpa_kernel context): autograd runs the backward on its own thread
        torch.backends.cuda.enable_cudnn_sdp(self.tcfg["cudnn_attention"])
        self.model = FlowModel(load_pipeline(cfg, model_dir), cfg, self.processes.device)
        # the algorithm walks the model's schedule (sampling.schedule: static, or the family's pipeline's)
        # over its own number of steps where it has one (DiffusionNFT's num_steps)
        steps = cfg["algorithm_params"][algorithm].get("num_steps") or cfg["sampling"]["num_steps"]
        self.algo = build_algorithm(algorithm, cfg, self.plan, sigmas=self.model.sigmas(steps))
        self.model.round_timesteps = self.algo.timestep_rounding
        kl_to_base = cfg["health"]["kl_to_base"]
        self.trainable = Trainable(self.model, self.algo, self.tcfg, self.processes, kl_to_base)
        # the algorithm's update phase: PPO over stored transitions, or DiffusionNFT's loss
        self.update = UPDATES[self.algo.update](self.model, self.algo, self.trainable, self.processes, self.accelerator,
                                                self.tcfg, kl_to_base)
        self.sampler = PromptSampler(len(self.prompts), self.tcfg["prompts_per_iteration"], seed,
                                     self.tcfg["prompt_sampling"])
        self.state = RunState()
        self.meter = CostMeter(self.state, self.processes, self.algo, self.tcfg["inner_epochs"])
        self.resume = ResumeState(resume_dir, self.tcfg["finetune"], self.processes.sharded)
        curve = HeldoutCurve(cfg, self.processes.main, self.processes.sharded)
        self.callbacks = default_callbacks(self.processes, curve) if callbacks is None else callbacks
        self.tags = {"algorithm": algorithm, "reward_setting": reward_setting, "seed": seed,
                     "processes": self.processes.world, "device": self.model.device.type}
        self.run_name = f"train-{algorithm}-{reward_setting}-seed{seed}"
        self.stopped_by: str | None = None

    # ---- resume ---------------------------------------------------------------------------------
    def save_resume(self) -> None:
        """Write the resume state (every process that holds a part of it), then wait for the others."""
        if self.processes.writes_checkpoints:
            self.resume.save(self.model.transformer, self.trainable.optimizer, self.state.to_json(),
                             self.extra_state())
        self.processes.barrier()

    def extra_state(self) -> dict | None:
        """The resume state's tensors besides weights and optimizer: the EMA's and the old policy's."""
        extra = {**(self.trainable.extra_state() or {}), **(self.update.extra_state() or {})}
        return extra or None

    def load_resume(self) -> bool:
        state = self.resume.load(self.model.transformer, self.trainable.optimizer, self.extra_state())
        if state is not None:
            self.state = self.meter.state = RunState.from_json(state)
        return state is not None

    # ---- one iteration: rollout -> score -> update ------------------------------------------------
    def iteration(self, it: int) -> dict:
        """rollout -> score -> update; the row records each phase's seconds (and peak GiB on a GPU)."""
        start = time.perf_counter()
        phases = {}
        with self.phase("rollout", phases), self.update.sampling_policy():
            rollout = self.rollout(it)
        with self.phase("scoring", phases):
            scored = score_groups(rollout.groups, self.model, self.setting, self.prompts, self.tcfg["adv_clip_max"],
                                  self.algo.advantage)
        nfe0, ref0 = self.model.nfe, self.model.nfe_reference
        with self.phase("training", phases):
            stats = self.update(rollout, scored.advantages, self.state)
        row = self.meter.account(it, self.sampler.epoch(it), rollout, scored, stats, self.model.nfe - nfe0,
                                 self.model.nfe_reference - ref0, self.model.evaluations_per_call,
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
        prompt_ids = self.processes.prompt_share(self.sampler.prompts(it, generator))
        generator = self.processes.noise_generator(generator, self.seed, it)  # each process its own noises
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

    # ---- the whole run --------------------------------------------------------------------------
    def run(self) -> dict | None:
        """Train to the last iteration (or the budget); only the main process writes the outputs and
        returns metrics. A collective that fails because a peer died or hangs ends this process with
        one line."""
        try:
            return self._run()
        except RuntimeError as error:
            lost = self.processes.lost_peer(error, self.tcfg["peer_timeout_s"])
            if lost is not None:
                raise lost from None
            raise

    def _run(self) -> dict | None:
        self.load_resume()
        iterations, budget, metrics = self.tcfg["iterations"], self.tcfg["max_forward_equivalents"], None
        with contextlib.ExitStack() as session:
            for callback in self.callbacks:
                session.enter_context(callback.session(self))
            self._each("on_start")
            for it in range(self.state.iteration, iterations):
                if self.meter.spent(budget):
                    log.info("budget of %d forward-equivalents spent after %d iterations", budget, it)
                    break
                self._each("before_iteration", it)
                row = self.iteration(it)
                self.state.rows.append(row)
                self.state.iteration = it + 1
                self._each("after_iteration", it, row, it + 1 == iterations or self.meter.spent(budget))
                if self.tcfg["stop_on"]:   # a health rule of train.stop_on flagged the run (every process agrees)
                    self.stopped_by = self.processes.agree_to_stop(self.stopped_by)
                    if self.stopped_by:
                        log.warning("stopped after iteration %d: %s (train.stop_on)", it + 1, self.stopped_by)
                        break
            with self.trainable.applied("policy"):  # the EMA, where it is the policy
                policy = self.processes.policy_state(self.model.transformer)  # a collective when sharded
                if self.processes.main:
                    metrics = self.write_outputs(policy)
            if metrics is not None:
                self._each("on_outputs", metrics)
        self.processes.barrier()
        self._each("on_finish")
        return metrics

    def _each(self, hook: str, *args) -> None:
        for callback in self.callbacks:
            getattr(callback, hook)(self, *args)

    def health(self) -> dict:
        """The run's health verdict so far (egrpo/health.py) from its rows and held-out points."""
        return health.assess(self.state.rows, self.state.heldout, self.setting.weights, self.cfg["health"])

    def write_outputs(self, policy: dict | None = None) -> dict:
        """train_log.csv, metrics.json and the policy checkpoint (`policy`: its gathered weights when
        sharded, else read from the transformer)."""
        tcfg, family = self.tcfg, self.model.family
        meta = {"algorithm": self.algorithm_name, "reward_setting": self.reward_setting_name, "seed": self.seed,
                "iterations": self.state.iteration, "family": family.name, "lora_rank": tcfg["lora_rank"],
                "lora_alpha": tcfg["lora_alpha"], "lora_targets": list(family.lora_targets)}
        with atomic_dir(self.out_dir / "checkpoint") as tmp:
            save_policy(self.model.transformer, tcfg["finetune"], tmp, meta, state=policy)
        atomic_write_text(self.out_dir / "train_log.csv", pd.DataFrame(self.state.rows).to_csv(index=False))
        metrics = self.meter.metrics({
            "algorithm": self.algorithm_name, "reward_setting": self.reward_setting_name, "seed": self.seed,
            "plan": [{"start": s, "length": k} for s, k in self.plan] if self.plan else None,
            "recipe": self.algo.recipe(), "max_forward_equivalents": tcfg["max_forward_equivalents"],
            "device": self.model.device.type, "processes": self.processes.world,
            "sharding": "fsdp" if self.processes.sharded else "none", "family": family.name,
            "ema": self.trainable.ema_setting, "prompt_sampling": tcfg["prompt_sampling"],
            "health": self.health(), "stopped_by": self.stopped_by})
        atomic_write_json(self.out_dir / "metrics.json", metrics)
        return metrics
