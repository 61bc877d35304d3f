"""Score a rollout: decode every final sample, score it with the reward setting, and turn the
rewards into group advantages by the algorithm's rule (egrpo.sde.group_advantages)."""
from __future__ import annotations

from dataclasses import dataclass

import torch

from egrpo import sde
from egrpo.algorithms.base import AdvantageRule
from egrpo.rewards import RewardSetting


@dataclass
class ScoredGroups:
    advantages: list[torch.Tensor]    # one [G] tensor per group (or what rule.per_group gives: a tree's, one per node)
    rewards: torch.Tensor             # combined reward of every final sample [sum of G*labels]
    components: dict[str, torch.Tensor]
    zero_std_ratio: float
    nonfinite: int
    group_std: float = float("nan")     # mean within-group std of the combined reward (groups of 2 or more)
    diversity: float = float("nan")     # mean pairwise RMS pixel distance of a group's images


def score_groups(groups, model, setting: RewardSetting, prompts, adv_clip: float,
                 rule: AdvantageRule = AdvantageRule()) -> ScoredGroups:
    """Decode every final sample, score it, and turn the rewards into advantages per (group, label).

    rule.combination sum_then_normalize: A = norm(sum_r w_r r_r); normalize_then_sum:
    A = sum_r w_r norm(r_r). norm uses rule's std (sample / population, or the whole batch's with
    global_std) and eps. The labels of a group (E-GRPO's strides) are normalized separately and their
    advantages summed. A sample with any non-finite component is dropped (advantage 0). Advantages
    come back on the model's device.
    """
    keys = [(gi, label) for gi, g in enumerate(groups) for label in g.finals]
    latents = torch.cat([groups[gi].finals[label] for gi, label in keys])
    texts = [prompts[groups[gi].prompt_index].text for gi, label in keys for _ in range(groups[gi].finals[label].shape[0])]
    images = model.decode(latents)
    components = {name: scores.float().cpu() for name, scores in setting.components(images, texts).items()}
    combined = setting.combine(components)
    valid = torch.stack([torch.isfinite(scores) for scores in components.values()]).all(0)
    nan = torch.full_like(combined, float("nan"))
    to_normalize = {"combined": (torch.where(valid, combined, nan), 1.0)} if rule.combination == "sum_then_normalize" \
        else {name: (torch.where(valid, scores, nan), setting.weights[name]) for name, scores in components.items()}
    global_std = {name: sde.batch_std(r, rule.unbiased) for name, (r, _) in to_normalize.items()} if rule.global_std else {}
    advantages = [torch.zeros(g.finals[next(iter(g.finals))].shape[0], device="cpu") for g in groups]  # on the CPU: advantages live on the CPU; train_transition moves them
    offset, zero_std, nonfinite, stds, distances = 0, 0, 0, [], []
    for gi, label in keys:
        size = groups[gi].finals[label].shape[0]
        part = slice(offset, offset + size)
        offset += size
        if size > 1:   # how different the group's images are: no spread, nothing to learn from
            flat = images[part].detach().float().flatten(1)
            pairwise = torch.cdist(flat, flat) / flat.shape[1] ** 0.5
            distances.append(float(pairwise.sum() / (size * (size - 1))))
        if rule.per_group is not None:   # the algorithm's own rule, from the combined reward (BranchGRPO's tree)
            advantages[gi] = rule.per_group(groups[gi], torch.where(valid, combined, nan)[part])
        else:
            for name, (rewards, weight) in to_normalize.items():
                advantages[gi] += weight * sde.group_advantages(rewards[part], rule.eps, rule.unbiased, global_std.get(name))
        finite = combined[part][valid[part]]
        nonfinite += size - finite.numel()
        zero_std += int(finite.numel() < 2 or float(finite.std(unbiased=False)) == 0.0)
        if finite.numel() > 1:
            stds.append(float(finite.std(unbiased=False)))
    device = getattr(model, "device", torch.device("cpu"))
    advantages = [a.clamp(-adv_clip, adv_clip).to(device) for a in advantages]
    mean = lambda xs: sum(xs) / len(xs) if xs else float("nan")
    return ScoredGroups(advantages, torch.where(valid, combined, nan), components, zero_std / max(1, len(keys)), nonfinite,
                        mean(stds), mean(distances))
