"""The GRPO training loop, shared by every algorithm: rollout -> reward -> advantage -> PPO-clip.

Randomness of iteration t is drawn from a generator seeded by (seed, t) alone, so a run resumed
from a checkpoint draws exactly what an unbroken run draws. Resume state (weights, optimizer,
iteration, counters, log rows, MLflow run id) lives in `resume_dir`, outside the job's declared
outputs, because Snakemake deletes the outputs of a failed job; it is cleared after success.
"""
from __future__ import annotations

import contextlib
import json
import logging
import math
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import torch
from tqdm import tqdm

from egrpo import sde
from egrpo.algorithms import build_algorithm
from egrpo.io import atomic_dir, atomic_write_json, atomic_write_text, load_prompts
from egrpo.model import FlowModel, add_lora, load_pipeline, save_policy, trainable_state_dict
from egrpo.rewards import RewardSetting
from egrpo.tracking import stage_run

log = logging.getLogger("egrpo.train")


def iteration_generator(seed: int, iteration: int) -> torch.Generator:
    """All randomness of one iteration: prompts, noises, subsets (a pure function of seed, t)."""
    return torch.Generator().manual_seed(seed * 1_000_003 + iteration)


def forward_equivalents(state: dict) -> int:
    """Cost axis: rollout forwards + 3 x training forward+backward + reference (KL) forwards."""
    return state["nfe_rollout"] + 3 * state["nfe_train"] + state.get("nfe_reference", 0)


@dataclass
class ScoredGroups:
    advantages: list[torch.Tensor]    # one [G] tensor per group
    rewards: torch.Tensor             # combined reward of every final sample [sum of G*labels]
    components: dict[str, torch.Tensor]
    zero_std_ratio: float
    nonfinite: int


def score_groups(groups, model: FlowModel, setting: RewardSetting, prompts, adv_clip: float) -> ScoredGroups:
    """Decode every final sample, score it, and normalize within (group, label, reward)."""
    keys = [(gi, label) for gi, g in enumerate(groups) for label in g.finals]
    latents = torch.cat([groups[gi].finals[label] for gi, label in keys])
    texts = [prompts[groups[gi].prompt_index].text for gi, label in keys for _ in range(groups[gi].finals[label].shape[0])]
    images = model.decode(latents)
    components = {name: scores.float().cpu() for name, scores in setting.components(images, texts).items()}
    combined = setting.combine(components)
    advantages = [torch.zeros(g.finals[next(iter(g.finals))].shape[0]) for g in groups]
    offset, zero_std, nonfinite = 0, 0, 0
    for gi, label in keys:
        size = groups[gi].finals[label].shape[0]
        part = slice(offset, offset + size)
        offset += size
        # a sample with any non-finite component is dropped from its group (advantage 0)
        valid = torch.stack([torch.isfinite(scores[part]) for scores in components.values()]).all(0)
        for name, scores in components.items():
            masked = torch.where(valid, scores[part], torch.full_like(scores[part], float("nan")))
            advantages[gi] += setting.weights[name] * sde.group_advantages(masked)
        group_combined = combined[part]
        finite = group_combined[torch.isfinite(group_combined)]
        nonfinite += size - finite.numel()
        zero_std += int(finite.numel() < 2 or float(finite.std(unbiased=False)) == 0.0)
    advantages = [a.clamp(-adv_clip, adv_clip) for a in advantages]
    return ScoredGroups(advantages, combined, components, zero_std / max(1, len(keys)), nonfinite)


class Trainer:
    def __init__(self, cfg: dict, algorithm: str, reward_setting: str, seed: int, model_dir: str | None,
                 plan_path: str | None, out_dir: str, resume_dir: str):
        from accelerate import Accelerator, DistributedDataParallelKwargs

        self.cfg, self.seed = cfg, seed
        self.algorithm_name, self.reward_setting_name = algorithm, reward_setting
        self.tcfg = cfg["train"]
        self.out_dir, self.resume_dir = Path(out_dir), Path(resume_dir)
        self.prompts = load_prompts(cfg["prompts"]["train"], "prompts.train")
        plan = None
        if plan_path:
            plan = [(e["start"], e["length"]) for e in json.loads(Path(plan_path).read_text())["plan"]]
        self.algo = build_algorithm(algorithm, cfg, plan)
        self.plan = plan
        self.setting = RewardSetting(cfg["reward_settings"][reward_setting], cfg)
        # FLUX's last double block computes a text branch that no loss uses: DDP must allow that
        self.accelerator = Accelerator(mixed_precision=self.tcfg["mixed_precision"], cpu=not torch.cuda.is_available(),
                                       kwargs_handlers=[DistributedDataParallelKwargs(find_unused_parameters=True)])
        torch.manual_seed(seed)
        # global (not the thread-local sdpa_kernel context): autograd runs the backward on its own thread
        torch.backends.cuda.enable_cudnn_sdp(self.tcfg["cudnn_attention"])
        self.model = FlowModel(load_pipeline(cfg, model_dir), cfg, self.accelerator.device)
        transformer = self.model.transformer
        if self.tcfg["finetune"] == "lora":
            add_lora(transformer, self.tcfg["lora_rank"], self.tcfg["lora_alpha"])
        else:
            if self.algo.kl_beta > 0:  # the reference policy of the KL term: a frozen copy of the base
                import copy
                self.model.reference = copy.deepcopy(transformer).requires_grad_(False).eval()
            transformer.requires_grad_(True)
        self.params = [p for p in transformer.parameters() if p.requires_grad]
        self.optimizer = torch.optim.AdamW(self.params, lr=self.tcfg["learning_rate"],
                                           weight_decay=self.tcfg["weight_decay"])
        # single process: returned as is; several (accelerate launch): DDP all-reduces the gradients
        self.model.net, self.optimizer = self.accelerator.prepare(transformer, self.optimizer)
        self.world, self.rank = self.accelerator.num_processes, self.accelerator.process_index
        self.state = {"iteration": 0, "nfe_rollout": 0, "nfe_train": 0, "prompts_seen": 0,
                      "wall_s": 0.0, "rows": [], "heldout": [], "mlflow_run_id": None, "resumed_from": None}
        self._heldout_rewards = None

    # ---- resume ---------------------------------------------------------------------------------
    @property
    def state_dir(self) -> Path:
        return self.resume_dir / "state"

    def save_resume(self) -> None:
        from safetensors.torch import save_file

        with atomic_dir(self.state_dir) as tmp:
            save_file(trainable_state_dict(self.model.transformer, self.tcfg["finetune"]), str(tmp / "weights.safetensors"))
            torch.save(self.optimizer.state_dict(), tmp / "optimizer.pt")
            (tmp / "state.json").write_text(json.dumps(self.state))

    def load_resume(self) -> bool:
        from safetensors.torch import load_file

        if not (self.state_dir / "state.json").is_file():
            return False
        weights = load_file(str(self.state_dir / "weights.safetensors"))
        if self.tcfg["finetune"] == "lora":
            from peft import set_peft_model_state_dict
            set_peft_model_state_dict(self.model.transformer, weights)
        else:
            self.model.transformer.load_state_dict(weights, strict=True)
        self.optimizer.load_state_dict(torch.load(self.state_dir / "optimizer.pt", weights_only=True))
        self.state = json.loads((self.state_dir / "state.json").read_text())
        self.state["resumed_from"] = self.state["iteration"]
        log.info("resuming from iteration %d (%s)", self.state["iteration"], self.state_dir)
        return True

    def optimizer_step(self) -> float:
        """Clip the gradient norm, step, clear; returns the norm before clipping."""
        norm = float(self.accelerator.clip_grad_norm_(self.params, self.tcfg["max_grad_norm"]))
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        return norm

    # ---- one iteration -------------------------------------------------------------------------
    def iteration(self, it: int) -> dict:
        tcfg, model = self.tcfg, self.model
        start = time.perf_counter()
        generator = iteration_generator(self.seed, it)
        drawn = torch.randint(len(self.prompts), (tcfg["prompts_per_iteration"] * self.world,), generator=generator)
        prompt_ids = drawn[self.rank::self.world].tolist()  # each process rolls out its share of the prompts
        if self.world > 1:  # and draws its own noises
            generator = torch.Generator().manual_seed(iteration_generator(self.seed, it).initial_seed() * 64 + self.rank)
        nfe0 = model.nfe
        groups, conds, expected_nfe = [], {}, 0
        for p in prompt_ids:
            if p not in conds:
                conds[p] = model.encode([self.prompts[p].text])
            prompt_groups = self.algo.rollout(model, conds[p], p, generator, it)
            expected_nfe += self.algo.expected_rollout_nfe(prompt_groups)
            groups += prompt_groups
        nfe_rollout = model.nfe - nfe0
        scored = score_groups(groups, model, self.setting, self.prompts, tcfg["adv_clip_max"])

        items = [(g, t, adv) for g, adv in zip(groups, scored.advantages) for t in g.transitions]
        nfe1 = model.nfe
        losses, ratios, first_dev, clipped, grad_norms, skipped, dropped = [], [], [], [], [], 0, 0
        kls, nfe_ref0 = [], model.nfe_reference
        updated = False  # |ratio - 1| is recorded only before the first optimizer step of the iteration
        per_entry = tcfg["optimizer_step"] == "per_entry"
        for epoch in range(tcfg["inner_epochs"]):
            for group, tr, adv in items:
                keep = torch.isfinite(tr.logp_old)
                dropped += int((~keep).sum()) if epoch == 0 else 0
                adv_used = torch.where(keep, adv, torch.zeros_like(adv)).to(model.device)
                logp_old = torch.where(keep, tr.logp_old, torch.zeros_like(tr.logp_old))
                v = model.velocity(tr.x_from, float(self.algo.sigmas[tr.i]), conds[group.prompt_index])
                mean, std = self.algo.mean_std(tr.x_from, v, self.algo.sigmas, tr.i, tr.j, self.algo.eta)
                logp_new = sde.gaussian_log_prob(tr.x_to, mean.expand_as(tr.x_to), std)
                logp_new = torch.where(keep, logp_new, torch.zeros_like(logp_new))
                loss, ratio = sde.ppo_clip_loss(logp_new, logp_old, adv_used, tcfg["clip_range"])
                if self.algo.kl_beta > 0:
                    v_ref = model.velocity(tr.x_from, float(self.algo.sigmas[tr.i]), conds[group.prompt_index], reference=True)
                    mean_ref, _ = self.algo.mean_std(tr.x_from, v_ref, self.algo.sigmas, tr.i, tr.j, self.algo.eta)
                    kl = sde.gaussian_kl_same_std(mean, mean_ref, std).mean()
                    kls.append(float(kl.detach()))
                    loss = loss + self.algo.kl_beta * kl
                if not torch.isfinite(loss):  # skip it; gradients accumulated so far are kept
                    skipped += 1
                    log.warning("iteration %d: non-finite loss, step skipped", it)
                    if self.world == 1:
                        continue
                    # other processes do call backward: keep DDP's collective calls in step
                    self.accelerator.backward(sum(p.sum() for p in self.params) * 0.0)
                    continue
                self.accelerator.backward(loss if per_entry else loss / len(items))
                losses.append(float(loss.detach()))
                r = ratio.detach()[keep]
                ratios.append(r)
                clipped.append(((r - 1).abs() > tcfg["clip_range"]).float())
                if not updated:
                    first_dev.append((r - 1).abs())
                if per_entry:
                    grad_norms.append(self.optimizer_step())
                    updated = True
            if not per_entry:
                grad_norms.append(self.optimizer_step())
                updated = True
        nfe_train = model.nfe - nfe1
        nfe_reference = model.nfe_reference - nfe_ref0
        elapsed = time.perf_counter() - start

        if self.world > 1:  # totals over processes
            counts = self.accelerator.reduce(torch.tensor([nfe_rollout, nfe_train, nfe_reference, expected_nfe,
                                                           len(prompt_ids)], device=model.device), "sum").tolist()
            nfe_rollout, nfe_train, nfe_reference, expected_nfe, n_prompts = (int(c) for c in counts)
            scored.rewards = self.accelerator.gather(scored.rewards.to(model.device)).cpu()
        else:
            n_prompts = len(prompt_ids)
        st = self.state
        st["nfe_rollout"] += nfe_rollout
        st["nfe_train"] += nfe_train
        st["nfe_reference"] = st.get("nfe_reference", 0) + nfe_reference
        st["prompts_seen"] += n_prompts
        st["wall_s"] += elapsed
        cat = lambda xs: torch.cat(xs) if xs else torch.zeros(0)
        finite_rewards = scored.rewards[torch.isfinite(scored.rewards)]
        row = {
            "iteration": it + 1,
            "reward_mean": float(finite_rewards.mean()) if finite_rewards.numel() else math.nan,
            "reward_std": float(finite_rewards.std(unbiased=False)) if finite_rewards.numel() else math.nan,
            **{f"reward_{k}_mean": float(v[torch.isfinite(v)].mean()) for k, v in scored.components.items()},
            "zero_std_ratio": scored.zero_std_ratio,
            "loss": sum(losses) / len(losses) if losses else math.nan,
            "kl": sum(kls) / len(kls) if kls else math.nan,
            "ratio_mean": float(cat(ratios).mean()) if ratios else math.nan,
            "ratio_abs_dev_first": float(cat(first_dev).mean()) if first_dev else math.nan,
            "clip_fraction": float(cat(clipped).mean()) if clipped else math.nan,
            "grad_norm": sum(grad_norms) / len(grad_norms) if grad_norms else math.nan,
            "grad_norm_max": max(grad_norms) if grad_norms else math.nan,
            "groups": len(groups),
            "transitions": len(items),
            "nfe_rollout": nfe_rollout,
            "nfe_train": nfe_train,
            "nfe_reference": nfe_reference,
            "nfe_rollout_expected": expected_nfe,
            "nfe_train_expected": self.algo.expected_train_nfe(groups) * tcfg["inner_epochs"] * self.world,
            "nfe_total": st["nfe_rollout"] + st["nfe_train"],
            "forward_equivalents": forward_equivalents(st),
            "nonfinite_samples": scored.nonfinite + dropped,
            "skipped_steps": skipped,
            "iteration_s": elapsed,
            "wall_s": st["wall_s"],
        }
        return row

    # ---- held-out curve -------------------------------------------------------------------------
    @torch.no_grad()
    def heldout(self) -> dict:
        """Mean held-out rewards of the current policy: ODE samples of the first eval prompts from
        fixed noise (the same for every algorithm and seed), as `egrpo evaluate` samples them."""
        from egrpo.evaluate import sample_images

        h, model = self.tcfg["heldout"], self.model
        if self._heldout_rewards is None:
            from egrpo.rewards import build_reward
            self._heldout_rewards = {r: build_reward(r, self.cfg) for r in h["metrics"]}
            self._heldout_prompts = load_prompts(self.cfg["prompts"]["eval"], "prompts.eval")[:h["num_prompts"]]
        net, model.net = model.net, model.transformer  # unwrapped: no DDP collectives, main process only
        nfe = model.nfe
        try:
            images, texts = [], []
            for p, m, s, image in sample_images(model, self._heldout_prompts, self.cfg["sampling"]["num_steps"],
                                                self.cfg["sampling"]["shift"], h["images_per_prompt"], h["seed"],
                                                progress=False):
                images.append(image)
                texts.append(self._heldout_prompts[p].text)
        finally:
            model.net, model.nfe = net, nfe  # measurement, not training cost
        batch = torch.stack(images)
        return {f"heldout_{r}": float(fn(batch, texts).float().mean()) for r, fn in self._heldout_rewards.items()}

    def heldout_point(self) -> dict:
        st = self.state
        return {"iteration": st["iteration"], "forward_equivalents": forward_equivalents(st),
                "wall_s": st["wall_s"], **self.heldout()}

    def budget_spent(self) -> bool:
        budget = self.tcfg["max_forward_equivalents"]
        return budget is not None and forward_equivalents(self.state) >= budget

    # ---- the whole run --------------------------------------------------------------------------
    def run(self) -> dict | None:
        """Train to the last iteration; only the main process writes files and logs to MLflow."""
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
                if self.plan and self.state["resumed_from"] is None:
                    mlflow.log_param("plan", json.dumps(self.plan))
            bar = tqdm(range(self.state["iteration"], iterations), initial=self.state["iteration"], total=iterations,
                       desc=f"train {self.algorithm_name}/{self.reward_setting_name}/seed{self.seed}", unit="it",
                       disable=not main)
            every, every_fe = self.tcfg["heldout"]["every"], self.tcfg["heldout"]["every_forward_equivalents"]
            heldout_on = every is not None or every_fe is not None
            if heldout_on and main and not self.state.get("heldout"):
                self.state["heldout"] = [self.heldout_point()]  # the base model, at zero cost
            for it in bar:
                if self.budget_spent():
                    log.info("budget of %d forward-equivalents spent after %d iterations",
                             self.tcfg["max_forward_equivalents"], it)
                    break
                fe_before = forward_equivalents(self.state)
                row = self.iteration(it)
                self.state["rows"].append(row)
                self.state["iteration"] = it + 1
                last = it + 1 == iterations or self.budget_spent()
                due = (every is not None and (it + 1) % every == 0) or \
                    (every_fe is not None and forward_equivalents(self.state) // every_fe > fe_before // every_fe)
                if heldout_on and main and (due or last):
                    point = self.heldout_point()
                    self.state["heldout"].append(point)
                    row.update({k: v for k, v in point.items() if k.startswith("heldout_")})
                if main:
                    mlflow.log_metrics({k: float(v) for k, v in row.items()
                                        if k != "iteration" and math.isfinite(float(v))}, step=it + 1)
                    bar.set_postfix(reward=f"{row['reward_mean']:.4f}", nfe=row["nfe_total"])
                if (it + 1) % self.tcfg["checkpoint_every"] == 0 or last:
                    if main:
                        self.save_resume()
                    self.accelerator.wait_for_everyone()
                if self.state["resumed_from"] is None:
                    _fault_injection(it + 1)
            if main:
                metrics = self.write_outputs()
                mlflow.log_artifact(str(self.out_dir / "metrics.json"))
                mlflow.log_artifact(str(self.out_dir / "train_log.csv"))
        self.accelerator.wait_for_everyone()
        if main:
            shutil.rmtree(self.resume_dir, ignore_errors=True)
        return metrics

    def write_outputs(self) -> dict:
        st, rows = self.state, self.state["rows"]
        prompts_seen = max(1, st["prompts_seen"])
        meta = {"algorithm": self.algorithm_name, "reward_setting": self.reward_setting_name, "seed": self.seed,
                "iterations": st["iteration"], "lora_rank": self.tcfg["lora_rank"], "lora_alpha": self.tcfg["lora_alpha"]}
        with atomic_dir(self.out_dir / "checkpoint") as tmp:
            save_policy(self.model.transformer, self.tcfg["finetune"], tmp, meta)
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
            "max_forward_equivalents": self.tcfg["max_forward_equivalents"],
            "heldout_curve": st.get("heldout", []),
            "resumed_from_iteration": st["resumed_from"],
            "mlflow_run_id": st["mlflow_run_id"],
            "device": self.model.device.type,
            "processes": self.world,
        }
        atomic_write_json(self.out_dir / "metrics.json", metrics)
        return metrics


def _fault_injection(done: int) -> None:
    """Tests set EGRPO_KILL_AFTER_ITERATION=k to SIGKILL a fresh (not resumed) run after iteration k."""
    import os
    import signal

    if os.environ.get("EGRPO_KILL_AFTER_ITERATION") == str(done):
        os.kill(os.getpid(), signal.SIGKILL)


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
