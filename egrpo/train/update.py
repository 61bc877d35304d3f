"""The update phase of an iteration: PPO-clip (+ KL to the reference) over the transitions stored at
rollout time, one optimizer step per unit of the algorithm's `update_units` (per plan entry, every n
samples, n per iteration, or once), `train.inner_epochs` times. The math is egrpo/sde.py's.

A unit's loss is the mean PPO(+KL) term over its (member, transition) pairs: each transition's mean
term weighted by its share of the unit's pairs. `train.transitions_per_forward` > 1 evaluates up to
that many transitions of one group (one prompt's conditioning) in one forward, their states stacked
with one sigma per row, and backpropagates their weighted sum once: the same loss and gradients as
one forward and backward per transition, in fewer, larger calls."""
from __future__ import annotations

import contextlib
import logging

import torch

from egrpo import sde
from egrpo.train.state import UpdateStats

log = logging.getLogger("egrpo.train")


class PPOUpdate:
    def __init__(self, model, algorithm, trainable, processes, accelerator, tcfg: dict, kl_to_base: bool = False):
        self.model, self.algo, self.trainable = model, algorithm, trainable
        self.kl_to_base = kl_to_base
        self.processes, self.accelerator = processes, accelerator
        self.inner_epochs = tcfg["inner_epochs"]
        self.clip_range = algorithm.clip_range if algorithm.clip_range is not None else tcfg["clip_range"]
        self.per_forward = tcfg.get("transitions_per_forward", 1)

    def sampling_policy(self):
        """The rollouts sample the trained weights (the old policy of the ratio is their log-probs)."""
        return contextlib.nullcontext()

    def extra_state(self) -> dict | None:
        return None

    def __call__(self, rollout, advantages: list[torch.Tensor], state) -> UpdateStats:
        stats = UpdateStats()
        units = self.algo.update_units(rollout.groups, advantages)
        padding = self.processes.padding(units)
        for epoch in range(self.inner_epochs):
            for u, pad in enumerate(padding):
                unit = units[u] if u < len(units) else []
                pairs = self.algo.loss_denominator(unit)
                for chunk in self.chunks(unit, rollout):
                    if len(chunk) == 1:
                        gi, tr = chunk[0]
                        self.train_transition(tr, advantages[gi], rollout.conds[rollout.groups[gi].prompt_index],
                                              tr.x_to.shape[0] / pairs, stats, first_epoch=epoch == 0)
                    else:
                        self.train_transitions(chunk, advantages, rollout, pairs, stats, first_epoch=epoch == 0)
                for _ in range(pad):
                    self.pad_transition(rollout, advantages, stats)
                stats.grad_norms.append(self.trainable.step(state))
        return stats

    def chunks(self, unit: list, rollout) -> list[list]:
        """Consecutive transitions of the unit that share a prompt, at most `per_forward` each."""
        out = []
        for gi, tr in unit:
            prompt = rollout.groups[gi].prompt_index
            if out and len(out[-1]) < self.per_forward and rollout.groups[out[-1][0][0]].prompt_index == prompt:
                out[-1].append((gi, tr))
            else:
                out.append([(gi, tr)])
        return out

    def train_transitions(self, chunk: list, advantages: list[torch.Tensor], rollout, pairs: int, stats: UpdateStats,
                          first_epoch: bool) -> None:
        """Several transitions of one prompt in one forward (one sigma per row) and one backward of
        their terms, each weighted by its share of the unit's pairs, as `train_transition` does one."""
        algo, model = self.algo, self.model
        cond = rollout.conds[rollout.groups[chunk[0][0]].prompt_index]
        rows = [tr.x_from.shape[0] for _, tr in chunk]
        x = torch.cat([tr.x_from for _, tr in chunk])
        sigma = torch.cat([torch.full((n,), float(algo.sigmas[tr.i]), dtype=torch.float64, device=model.device)
                           for n, (_, tr) in zip(rows, chunk)])
        v_all = model.velocity(x, sigma, cond)
        v_ref_all = self.reference_velocity(x, sigma, cond, stats, first_epoch)
        total = None
        for k, ((gi, tr), v, x_from) in enumerate(zip(chunk, v_all.split(rows), x.split(rows))):
            v_ref = None if v_ref_all is None else v_ref_all.split(rows)[k]
            loss = self.transition_loss(tr, advantages[gi], v, v_ref, stats, first_epoch)
            if loss is not None:
                term = loss * (tr.x_to.shape[0] / pairs)
                total = term if total is None else total + term
        if total is None:
            self.processes.zero_backward(v_all)
        else:
            self.accelerator.backward(total)

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
        algo, model = self.algo, self.model
        sigma = float(algo.sigmas[tr.i])
        v = model.velocity(tr.x_from, sigma, cond)
        v_ref = self.reference_velocity(tr.x_from, sigma, cond, stats, first_epoch)
        loss = self.transition_loss(tr, group_advantages, v, v_ref, stats, first_epoch)
        if loss is None:
            self.processes.zero_backward(v)
            return
        self.accelerator.backward(loss * weight)

    def reference_velocity(self, x, sigma, cond, stats: UpdateStats, first_epoch: bool) -> torch.Tensor | None:
        """The base model's velocity where the KL term needs it (counted in the budget), or where
        health.kl_to_base measures the KL to the base before the iteration's first optimizer step
        (without gradients; its forwards counted apart, in stats.health_nfe); else None."""
        model = self.model
        if self.algo.kl_beta > 0:
            return model.velocity(x, sigma, cond, reference=True)
        if not (self.kl_to_base and first_epoch and not stats.grad_norms):
            return None
        before = model.nfe_reference
        with torch.no_grad():
            v_ref = model.velocity(x, sigma, cond, reference=True)
        stats.health_nfe += model.nfe_reference - before
        model.nfe_reference = before
        return v_ref

    def transition_loss(self, tr, group_advantages: torch.Tensor, v: torch.Tensor, v_ref: torch.Tensor | None,
                        stats: UpdateStats, first_epoch: bool) -> torch.Tensor | None:
        """The mean PPO(+KL) term of one transition from its velocity (and the reference's), with its
        statistics recorded; None (and counted as skipped) when it is not finite."""
        algo, model, clip_range = self.algo, self.model, self.clip_range
        device = model.device
        adv = group_advantages[torch.as_tensor(tr.member_ids(), device=group_advantages.device)].to(device)
        logp_old = tr.logp_old.to(device)
        keep = torch.isfinite(logp_old)
        stats.dropped += int((~keep).sum()) if first_epoch else 0
        adv = torch.where(keep, adv, torch.zeros_like(adv))
        logp_old = torch.where(keep, logp_old, torch.zeros_like(logp_old))
        mean, std = algo.mean_std(tr.x_from, v, algo.sigmas, tr.i, tr.j, algo.eta)
        logp_new = sde.gaussian_log_prob(tr.x_to, mean.expand_as(tr.x_to), std)
        logp_new = torch.where(keep, logp_new, torch.zeros_like(logp_new))
        loss, ratio = sde.ppo_clip_loss(logp_new, logp_old, adv, clip_range)
        if v_ref is not None:
            mean_ref, _ = algo.mean_std(tr.x_from, v_ref, algo.sigmas, tr.i, tr.j, algo.eta)
            kl = sde.kl_to_reference(mean, mean_ref, std, algo.sigmas, tr.i, tr.j, algo.kl_divisor).mean()
            if first_epoch and not stats.grad_norms:
                stats.kls_to_base.append(float(kl.detach()))
            if algo.kl_beta > 0:
                stats.kls.append(float(kl.detach()))
                loss = loss + algo.kl_beta * kl
        if not torch.isfinite(loss):  # skip it; gradients accumulated so far are kept
            stats.skipped += 1
            log.warning("non-finite loss at transition %d -> %d, skipped", tr.i, tr.j)
            return None
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
            stats.logp_gap.append((logp_new - logp_old).detach()[keep].abs())
        return loss
