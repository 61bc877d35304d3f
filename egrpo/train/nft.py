"""The update phase of DiffusionNFT (egrpo/algorithms/diffusionnft.py): the NFT loss of egrpo.sde over
every trained (sample, sigma) of the iteration, one optimizer step per chunk of members
(`optimizer_step`, its recipe: one per iteration), then the old (sampling) policy moves towards the
trained weights by the decay schedule.

Per trained (sample x0, sigma t): a fresh noise e (drawn from the group's seed, so a resumed run draws
the same), x_t = (1 - t) x0 + t e, the old policy's velocity (no gradient), the policy's velocity and,
with kl_beta > 0, the base model's; loss = nft_loss + kl_beta * mean |v - v_base|^2. A unit's loss is the
mean over its rows, as the official trainer's accumulation divides by its count. The old policy's
velocities of a unit are computed first, under one swap of its weights (they do not change within the
iteration), then the policy's in chunks of `train.transitions_per_forward` rows of one prompt.
"""
from __future__ import annotations

import logging

import torch

from egrpo import sde
from egrpo.errors import UserError
from egrpo.train.ema import holding
from egrpo.train.state import UpdateStats

log = logging.getLogger("egrpo.train")


class OldPolicy:
    """A copy of the trained parameters that samples the rollouts: old <- d old + (1 - d) theta."""

    def __init__(self, params: list[torch.Tensor]):
        self.params = list(params)
        self.shadow = [p.detach().clone() for p in self.params]

    def applied(self):
        """Within the block the parameters hold the old policy's weights."""
        return holding(self.params, self.shadow)

    @torch.no_grad()
    def update(self, decay: float) -> None:
        for s, p in zip(self.shadow, self.params):
            s.mul_(decay).add_(p.detach(), alpha=1.0 - decay)

    def state(self) -> dict[str, torch.Tensor]:
        return {f"old.{i}": s for i, s in enumerate(self.shadow)}


class NFTUpdate:
    def __init__(self, model, algorithm, trainable, processes, accelerator, tcfg: dict, kl_to_base: bool = False):
        if processes.sharded:
            raise UserError("diffusionnft: train.sharding fsdp is not supported yet (its old policy is an "
                            "unsharded copy of the trained weights); use sharding none")
        self.model, self.algo, self.trainable = model, algorithm, trainable
        self.processes, self.accelerator = processes, accelerator
        self.inner_epochs, self.clip_max = tcfg["inner_epochs"], tcfg["adv_clip_max"]
        self.per_forward = tcfg.get("transitions_per_forward", 1)
        self.old = OldPolicy(trainable.params)
        if kl_to_base and algorithm.kl_beta == 0:
            log.warning("health.kl_to_base: DiffusionNFT measures its KL to the base only with kl_beta > 0")

    def sampling_policy(self):
        """The rollouts sample the old policy."""
        return self.old.applied()

    def extra_state(self) -> dict[str, torch.Tensor]:
        return self.old.state()

    def rows(self, group, members: list[int]) -> list[tuple[int, int]]:
        """The (member, step index) pairs the group trains for `members`."""
        steps = group.info["trained_steps"]
        return [(m, i) for m in members for i in steps[m]]

    def noisy(self, group, rows: list[tuple[int, int]]):
        """x0, x_t and t of the rows: the noise of (member m, step i) drawn from its own generator,
        seeded by the group's seed and (m, i), so it is the same for the old policy's and the policy's
        forwards and for a resumed run, and only the rows asked for are drawn."""
        x0_all = group.finals["g1"]
        shape = tuple(x0_all.shape[1:])
        base, n = group.info["noise_seed"], self.algo.num_steps
        e = torch.stack([torch.randn(shape, generator=torch.Generator().manual_seed((base + m * n + i) % 2**63),
                                     device="cpu") for m, i in rows])  # on the CPU: drawn on the CPU for reproducibility, moved below
        m = torch.tensor([r[0] for r in rows], device=x0_all.device)
        t = self.algo.sigmas.double()[torch.tensor([r[1] for r in rows], device="cpu")]  # on the CPU: indexes the schedule
        x0 = x0_all[m]
        tt = t.view(-1, *([1] * (x0.ndim - 1))).to(x0.device, x0.dtype)
        return x0, (1 - tt) * x0 + tt * e.to(x0.device), t

    def __call__(self, rollout, advantages: list[torch.Tensor], state) -> UpdateStats:
        stats = UpdateStats()
        for _ in range(self.inner_epochs):
            for chunk in self.algo.member_chunks():
                work = [(gi, group, self.rows(group, chunk)) for gi, group in enumerate(rollout.groups)]
                total = sum(len(rows) for _, _, rows in work)
                old = self.old_velocities(work, rollout)
                for gi, group, rows in work:
                    cond = rollout.conds[group.prompt_index]
                    for start in range(0, len(rows), self.per_forward):
                        part = rows[start:start + self.per_forward]
                        self.train_rows(group, part, advantages[gi], cond, old[gi][start:start + self.per_forward],
                                        total, stats)
                stats.grad_norms.append(self.trainable.step(state))
        self.old.update(sde.nft_decay(state.optimizer_steps, self.algo.decay_type))
        return stats

    @torch.no_grad()
    def old_velocities(self, work, rollout) -> list[torch.Tensor]:
        """The old policy's velocities of every row of the unit (forwards counted as reference forwards)."""
        model, out = self.model, []
        nfe = model.nfe
        with self.old.applied():
            for _, group, rows in work:
                cond = rollout.conds[group.prompt_index]
                parts = []
                for start in range(0, len(rows), self.per_forward):
                    _, x_t, t = self.noisy(group, rows[start:start + self.per_forward])
                    parts.append(model.velocity(x_t, t, cond))
                out.append(torch.cat(parts) if parts else None)
        model.nfe_reference += model.nfe - nfe
        model.nfe = nfe
        return out

    def train_rows(self, group, rows, group_advantages: torch.Tensor, cond, v_old: torch.Tensor, total: int,
                   stats: UpdateStats) -> None:
        """Backward of the rows' NFT(+KL) terms, each weighted 1/total (the unit's mean)."""
        model, algo = self.model, self.algo
        x0, x_t, t = self.noisy(group, rows)
        members = torch.tensor([m for m, _ in rows], device=group_advantages.device)
        r = sde.nft_optimality(group_advantages[members].to(model.device), self.clip_max)
        v = model.velocity(x_t, t, cond)
        loss = sde.nft_loss(v, v_old, x_t, x0, t.to(model.device), r, algo.beta, self.clip_max)
        if algo.kl_beta > 0:
            v_ref = model.velocity(x_t, t, cond, reference=True)
            kl = ((v - v_ref) ** 2).mean(dim=tuple(range(1, v.ndim)))
            stats.kls.append(float(kl.detach().mean()))
            loss = loss + algo.kl_beta * kl
        if not torch.isfinite(loss).all():
            stats.skipped += 1
            log.warning("non-finite NFT loss, %d rows skipped", len(rows))
            self.processes.zero_backward(v)
            return
        stats.losses.append(float(loss.detach().mean()))
        stats.pairs += len(rows)
        self.accelerator.backward(loss.sum() / total)
