"""The update phase of an iteration: PPO-clip (+ KL to the reference) over the transitions stored at
rollout time, one optimizer step per unit of the algorithm's `update_units` (per plan entry, every n
samples, n per iteration, or once), `train.inner_epochs` times. The math is egrpo/sde.py's."""
from __future__ import annotations

import logging

import torch

from egrpo import sde
from egrpo.train.state import UpdateStats

log = logging.getLogger("egrpo.train")


class PPOUpdate:
    def __init__(self, model, algorithm, trainable, processes, accelerator, tcfg: dict):
        self.model, self.algo, self.trainable = model, algorithm, trainable
        self.processes, self.accelerator = processes, accelerator
        self.inner_epochs, self.clip_range = tcfg["inner_epochs"], tcfg["clip_range"]

    def __call__(self, rollout, advantages: list[torch.Tensor], state) -> UpdateStats:
        stats = UpdateStats()
        units = self.algo.update_units(rollout.groups)
        padding = self.processes.padding(units)
        for epoch in range(self.inner_epochs):
            for u, pad in enumerate(padding):
                unit = units[u] if u < len(units) else []
                pairs = sum(tr.x_to.shape[0] for _, tr in unit)
                for gi, tr in unit:
                    group = rollout.groups[gi]
                    self.train_transition(tr, advantages[gi], rollout.conds[group.prompt_index],
                                          tr.x_to.shape[0] / pairs, stats, first_epoch=epoch == 0)
                for _ in range(pad):
                    self.pad_transition(rollout, advantages, stats)
                stats.grad_norms.append(self.trainable.step(state))
        return stats

    def pad_transition(self, rollout, advantages: list[torch.Tensor], stats: UpdateStats) -> None:
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
        algo, model, clip_range = self.algo, self.model, self.clip_range
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
            self.processes.zero_backward(v)
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
