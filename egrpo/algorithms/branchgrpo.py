"""BranchGRPO: tree rollouts with splits, rewards of internal nodes from their leaves, advantages per
depth, PPO on every edge, optional depth and width pruning (Fredreic1849/BranchGRPO 19fbb9f:
fastvideo/train_branchgrpo_flux.py with scripts/finetune/finetune_flux_branchgrpo_8gpus.sh; the
E-GRPO authors' VisualGRPO runs it as its third baseline; docs/baselines.md).

Recipe (the 8-GPU script):
  - N = 20 steps (sampling_steps), every step SDE with DanceGRPO's flux_step at eta 0.3; one initial
    noise per prompt (--init_same_noise)                                            (num_steps, sde, eta)
  - splits at steps 0, 3, 6, 9 (tree_split_points): 2 children each, their noise scaled by 4.0
    (tree_split_noise_scale), so 16 leaves (num_generations 16); the group is the tree  (split_points, split_noise)
  - the leaves' rewards on the x0-prediction of the last step; a node's reward the mean of its
    leaves' (tree_prob_weighted off)                                                (reward_aggregation)
  - each edge trains with its child's reward normalized over the tree's nodes of its depth
    (torch.std, + 1e-8; 0 below 1e-6), PPO-clip at 1e-3 (clip_range), advantages clipped at 5
  - the iteration's edges (all trees of the process, after pruning) shuffled, an optimizer step every
    12 edges (gradient_accumulation_steps 12), each edge's loss divided by 12 x (edges per tree)
  - no depth pruning (depth_pruning ""), no width pruning (width_pruning_mode 0): both are options.
Cost per prompt: the tree's nodes per step, sum_i 2^(splits before i) model calls (203 for the
recipe, against DanceGRPO's 305); one forward+backward per trained edge (218 per tree unpruned).
"""
from __future__ import annotations

import dataclasses
import random

import torch

from egrpo import sde
from egrpo.algorithms.base import Algorithm
from egrpo.rollout import Group, tree_rollout


class BranchGRPO(Algorithm):
    name = "branchgrpo"

    def __init__(self, cfg, plan=None, sigmas=None):
        super().__init__(cfg, plan, sigmas)
        p = self.params
        self.split_points = sorted({min(max(s, 0), self.num_steps - 1) for s in p["split_points"]})  # parse_split_points
        self.group_size = 2 ** len(self.split_points)
        self.split_noise = p["split_noise"]
        self.prob_weighted = p["reward_aggregation"] == "prob_weighted"
        self.edges_per_step = p["edges_per_step"]
        self.depth_pruning = sorted(p["depth_pruning"])
        self.iterations = cfg["train"]["iterations"]
        self._per_tree = 1   # trained edges per tree of the last update_units call (the loss scaling)
        self.advantage = dataclasses.replace(self.advantage, per_group=self.node_advantages)

    def node_advantages(self, group, leaf_rewards: torch.Tensor) -> torch.Tensor:
        """One advantage per node of the group's tree: node rewards from the leaves, normalized per depth."""
        tree = group.info["tree"]
        logps = tree.logps if self.prob_weighted else None
        return sde.tree_advantages(tree.parents, sde.tree_node_rewards(tree.parents, tree.leaves, leaf_rewards, logps))

    def rollout(self, model, cond, prompt_index, generator, iteration):
        x0 = model.initial_noise(1, generator)
        tree, transitions, x0_hat = tree_rollout(model.velocity, x0, cond, self.sigmas, self.eta, generator,
                                                 set(self.split_points), self.split_noise, self.mean_std)
        seed = int(torch.randint(2**62, (1,), generator=generator, device="cpu"))  # on the CPU: seeds the edge order
        return [Group(prompt_index, {"g1": x0_hat}, transitions,
                      {"tree": tree, "step": iteration + 1, "order_seed": seed})]

    def nodes_per_step(self) -> list[int]:
        return [2 ** sum(s < i for s in self.split_points) for i in range(self.num_steps)]

    def expected_rollout_nfe(self, groups):
        return sum(self.nodes_per_step()) * len(groups)

    # ---- which edges train, in which optimizer steps ---------------------------------------------
    def edges(self, group) -> list[tuple[int, int]]:
        """The tree's edges in the official collection order (depth first, children in creation
        order) as (transition index, row)."""
        where = {c: (t, r) for t, tr in enumerate(group.transitions) for r, c in enumerate(tr.member_ids())}
        children: dict[int, list[int]] = {}
        for c, p in enumerate(group.info["tree"].parents):
            children.setdefault(p, []).append(c)
        out, stack = [], [0]
        while stack:
            node = stack.pop()
            for c in reversed(children.get(node, [])):
                stack.append(c)
            if node != 0:
                out.append(where[node])
        return out

    def pruned(self, edges: list, step: int) -> list:
        """Depth pruning (the window slides one depth every depth_slide_interval steps, down to
        depth_stop) and width pruning of the edges after the last split, in the first
        pruning_step_ratio of training; edges: (gi, transition index, row, child depth, advantage, branch)."""
        p = self.params
        if step > int(self.iterations * p["pruning_step_ratio"]):
            return edges
        if self.depth_pruning:
            depths = self.depth_pruning
            if p["depth_slide"]:
                stop = p["depth_stop"] if p["depth_stop"] is not None else max(self.split_points, default=0)
                shift = min(max(0, step // max(1, p["depth_slide_interval"])), max(0, depths[0] - stop))
                depths = [d - shift for d in depths]
            edges = [e for e in edges if e[3] not in set(depths)]
        mode, ratio = p["width_pruning"], p["width_ratio"]
        if mode == "off" or not self.split_points:
            return edges
        last = max(self.split_points)
        head = [e for e in edges if e[3] - 1 <= last]      # edges from steps up to the last split
        tail = [e for e in edges if e[3] - 1 > last]
        if not tail:
            return edges
        by_adv = lambda es: sorted(es, key=lambda e: e[4], reverse=True)  # stable, as the official sorted()
        if mode == "per_branch":
            branches: dict = {}
            for e in tail:
                branches.setdefault(e[5], []).append(e)
            kept = [e for es in branches.values() for e in by_adv(es)[:max(1, int(len(es) * ratio))]]
        else:   # best_and_worst over all trees of the process
            ranked, keep = by_adv(tail), max(2, int(len(tail) * ratio))
            best = keep // 2
            kept = ranked[:best] + (ranked[-(keep - best):] if keep - best > 0 else [])
        return head + kept

    def update_units(self, groups, advantages=None):
        """The iteration's edges, pruned (by the advantages where given; how many survive does not
        depend on them), shuffled, in optimizer steps of edges_per_step edges; each unit lists
        (group, one-row transition)."""
        edges = []
        for gi, g in enumerate(groups):
            tree = g.info["tree"]
            depth = [0] * len(tree.parents)
            for c, p in enumerate(tree.parents):
                depth[c] = 0 if p < 0 else depth[p] + 1
            last = max(self.split_points, default=-1)
            for t, r in self.edges(g):
                child = g.transitions[t].member_ids()[r]
                branch = child
                while branch >= 0 and depth[branch] > last + 1:   # the node the last split made
                    branch = tree.parents[branch]
                adv = float(advantages[gi][child]) if advantages is not None else 0.0
                edges.append((gi, t, r, depth[child], adv, (gi, branch)))
        if groups:
            edges = self.pruned(edges, groups[0].info["step"])
            random.Random(groups[0].info["order_seed"]).shuffle(edges)
        self._per_tree = max(1, len(edges) // max(1, len(groups)))
        units = [edges[s:s + self.edges_per_step] for s in range(0, len(edges), self.edges_per_step)]
        return [[(gi, groups[gi].transitions[t].select([r])) for gi, t, r, *_ in unit] for unit in units]

    def loss_denominator(self, unit) -> float:
        """The official scaling: every edge's loss / (edges_per_step x trained edges per tree), the last
        unit's too (its remainder step divides by the same)."""
        return float(self.edges_per_step * self._per_tree)
