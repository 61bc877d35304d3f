"""BranchGRPO against its official code (Fredreic1849/BranchGRPO 19fbb9f, fastvideo/train_branchgrpo_flux.py):
node rewards and per-depth advantages, the split step's log-prob, and depth/width pruning run on the
same trees as transcriptions of the official functions (file and lines with each) and agree."""
import math
from types import SimpleNamespace

import pytest
import torch

from egrpo import sde
from egrpo.algorithms import build_algorithm
from egrpo.config import validate
from egrpo.rollout import Group, tree_rollout

from helpers import micro_config


# ---- references, transcribed from the official code ------------------------------------------------

class TreeNode:
    """train_branchgrpo_flux.py lines 183-222 (the fields the reward and advantage code reads)."""
    def __init__(self, node_id, parent=None, step=0):
        self.node_id, self.parent, self.children, self.step = node_id, parent, [], step
        self.log_prob = self.reward = self.advantage = None
        self.depth = 0 if parent is None else parent.depth + 1

    def is_leaf(self):
        return len(self.children) == 0

    def get_all_leaf_descendants(self):
        if self.is_leaf():
            return [self]
        return [leaf for child in self.children for leaf in child.get_all_leaf_descendants()]


def official_node_rewards(root, leaf_rewards, leaf_nodes, use_prob_weighted):
    """compute_node_rewards_from_leaves, lines 545-652 (statistics printing left out)."""
    for i, leaf in enumerate(leaf_nodes):
        leaf.reward = leaf_rewards[i]
    all_nodes = []

    def collect(node):
        all_nodes.append(node)
        for child in node.children:
            collect(child)
    collect(root)
    max_depth = max(n.depth for n in all_nodes)
    by_depth = {d: [] for d in range(max_depth + 1)}
    for n in all_nodes:
        by_depth[n.depth].append(n)
    for depth in reversed(range(max_depth)):
        for node in by_depth[depth]:
            if node.is_leaf():
                continue
            if use_prob_weighted:
                if len(node.children) == 1:
                    node.reward = node.children[0].reward
                else:
                    lps = torch.stack([c.log_prob.squeeze().to(torch.float32) for c in node.children])
                    weights = torch.softmax(1.0 * lps, dim=0)
                    node.reward = torch.sum(weights * torch.stack([c.reward.to(torch.float32) for c in node.children]))
            else:
                node.reward = torch.stack([leaf.reward for leaf in node.get_all_leaf_descendants()]).mean()
    return all_nodes, by_depth


def official_advantages(by_depth):
    """compute_hierarchical_advantages_by_depth, lines 655-689."""
    out = {}
    for depth, nodes in by_depth.items():
        if len(nodes) <= 1:
            for node in nodes:
                out[node.node_id] = torch.tensor(0.0)
            continue
        rewards = torch.stack([node.reward for node in nodes])
        std = rewards.std()
        adv = torch.zeros_like(rewards) if std < 1e-6 else (rewards - rewards.mean()) / (std + 1e-8)
        for i, node in enumerate(nodes):
            out[node.node_id] = adv[i]
    return out


def official_tree(parents, logps):
    """The official TreeNode tree of our parents list (node ids = ours)."""
    nodes = []
    for c, p in enumerate(parents):
        node = TreeNode(c, None if p < 0 else nodes[p], step=0 if p < 0 else nodes[p].step + 1)
        node.log_prob = logps[c:c + 1]
        if p >= 0:
            nodes[p].children.append(node)
        nodes.append(node)
    return nodes


def official_pruning(samples, args, current_step, max_steps, split_points):
    """The depth and width pruning of train_one_step_tree, lines 1247-1420 (logging left out)."""
    if current_step > int(max_steps * args.pruning_step_ratio):
        return samples
    if args.depth_pruning:
        base = sorted(args.depth_pruning)
        active = base
        if args.depth_pruning_slide:
            stop = args.depth_pruning_stop_depth if args.depth_pruning_stop_depth is not None else max(split_points)
            shift = min(max(0, int(current_step // max(1, args.depth_pruning_slide_interval))), max(0, base[0] - stop))
            active = [d - shift for d in base]
        samples = [s for s in samples if s["child_depth"] not in set(active)]
    if args.width_pruning_mode > 0:
        last = max(split_points)
        last_layer = [s for s in samples if s["step"] > last]
        other = [s for s in samples if s["step"] <= last]
        if args.width_pruning_mode == 1:
            groups = {}
            for s in last_layer:
                node = s["parent"]
                while node.step != last + 1:
                    node = node.parent
                groups.setdefault(node, []).append(s)   # the official ids are unique over trees: the node itself here
            kept = []
            for group in groups.values():
                keep = max(1, int(len(group) * args.width_pruning_ratio))
                kept += sorted(group, key=lambda x: x["advantage"].item(), reverse=True)[:keep]
        else:
            ranked = sorted(last_layer, key=lambda x: x["advantage"].item(), reverse=True)
            keep = max(2, int(len(ranked) * args.width_pruning_ratio))
            best = keep // 2
            kept = ranked[:best] + (ranked[-(keep - best):] if keep - best > 0 else [])
        samples = other + kept
    return samples


# ---- helpers ---------------------------------------------------------------------------------------------

def branch_cfg(tmp_path, **params):
    cfg = validate(micro_config(tmp_path, train={"iterations": 40}))
    cfg["algorithm_params"]["branchgrpo"].update({"num_steps": 8, "split_points": [0, 2, 3], **params})
    return cfg


def a_tree(algo, seed=0):
    """A tree rolled out by egrpo on a toy velocity field."""
    g = torch.Generator().manual_seed(seed)
    v = lambda x, s, c=None: torch.tanh(x) * (1 + float(s))
    tree, transitions, x0_hat = tree_rollout(v, torch.randn(1, 4, 8, generator=g), None, algo.sigmas, algo.eta, g,
                                             set(algo.split_points), algo.split_noise, algo.mean_std)
    return tree, transitions, x0_hat


# ---- agreement -----------------------------------------------------------------------------------------------

@pytest.mark.parametrize("prob_weighted", [False, True])
def test_node_rewards_and_depth_advantages_match_the_official_code(tmp_path, prob_weighted):
    algo = build_algorithm("branchgrpo", branch_cfg(tmp_path))
    tree, _, x0_hat = a_tree(algo)
    assert len(tree.leaves) == x0_hat.shape[0] == 8 == algo.group_size
    leaf_rewards = torch.rand(8, generator=torch.Generator().manual_seed(3))
    ours = sde.tree_advantages(tree.parents, sde.tree_node_rewards(tree.parents, tree.leaves, leaf_rewards,
                                                                   tree.logps if prob_weighted else None))
    nodes = official_tree(tree.parents, tree.logps)
    _, by_depth = official_node_rewards(nodes[0], leaf_rewards, [nodes[i] for i in tree.leaves], prob_weighted)
    theirs = official_advantages(by_depth)
    assert torch.allclose(ours, torch.stack([theirs[i] for i in range(len(nodes))]).float(), atol=1e-6)
    assert ours[0] == 0 and ours.abs().max() > 0.5
    tie = sde.tree_advantages(tree.parents, sde.tree_node_rewards(tree.parents, tree.leaves, torch.ones(8)))
    assert (tie == 0).all(), "equal rewards: no signal, never NaN"


def test_split_steps_double_the_nodes_scale_the_noise_and_keep_the_unscaled_log_prob(tmp_path):
    """Official flux_step_with_split (lines 229-311): a split child is mean + 4 * std * e with log-prob
    under N(mean, std^2); other steps mean + std * e. Checked on the children egrpo draws."""
    algo = build_algorithm("branchgrpo", branch_cfg(tmp_path))
    g = torch.Generator().manual_seed(1)
    v = lambda x, s, c=None: torch.tanh(x) * (1 + float(s))
    tree, transitions, _ = tree_rollout(v, torch.randn(1, 64, 32, generator=g), None, algo.sigmas, algo.eta, g,
                                        {0, 2, 3}, 4.0, algo.mean_std)
    assert [tr.x_to.shape[0] for tr in transitions] == [2, 2, 4, 8, 8, 8, 8, 8]
    assert algo.nodes_per_step() == [1, 2, 2, 4, 8, 8, 8, 8] and algo.expected_rollout_nfe([None]) == 41
    for tr in transitions:
        mean, std = sde.dance_mean_std(tr.x_from, v(tr.x_from, algo.sigmas[tr.i]), algo.sigmas, tr.i, tr.j, algo.eta)
        spread = float(((tr.x_to - mean) / std).std())
        assert spread == pytest.approx(4.0 if tr.i in (0, 2, 3) else 1.0, rel=0.1)
        two_pi = torch.as_tensor(2 * math.pi)
        official = (-((tr.x_to - mean) ** 2) / (2 * std**2) - math.log(std) - 0.5 * torch.log(two_pi)).mean(dim=(1, 2))
        assert torch.allclose(tr.logp_old, official, atol=1e-5)


@pytest.mark.parametrize("params,step", [
    ({}, 1),
    ({"depth_pruning": [7, 8]}, 1),
    ({"depth_pruning": [7, 8], "depth_slide_interval": 2, "depth_stop": 4}, 5),
    ({"depth_pruning": [7, 8], "depth_slide_interval": 1, "depth_stop": None}, 30),
    ({"width_pruning": "per_branch"}, 1),
    ({"width_pruning": "best_and_worst", "width_ratio": 0.3}, 1),
    ({"depth_pruning": [8], "width_pruning": "per_branch", "pruning_step_ratio": 0.5}, 21),   # past the ratio: none
])
def test_pruning_keeps_the_edges_the_official_code_keeps(tmp_path, params, step):
    algo = build_algorithm("branchgrpo", branch_cfg(tmp_path, **params))
    groups, advantages = [], []
    for seed in range(2):   # two trees on the process: best_and_worst ranks over both
        tree, transitions, x0_hat = a_tree(algo, seed)
        groups.append(Group(seed, {"g1": x0_hat}, transitions, {"tree": tree, "step": step, "order_seed": 5}))
        rewards = torch.rand(len(tree.leaves), generator=torch.Generator().manual_seed(10 + seed))
        advantages.append(sde.tree_advantages(tree.parents, sde.tree_node_rewards(tree.parents, tree.leaves, rewards)))
    ours = sorted((gi, c) for unit in algo.update_units(groups, advantages) for gi, tr in unit for c in tr.member_ids())
    samples = []
    for gi, g in enumerate(groups):
        nodes = official_tree(g.info["tree"].parents, g.info["tree"].logps)

        def collect(node):   # collect_all_transitions, lines 1198-1222: depth first
            for child in node.children:
                samples.append({"parent": node, "child": (gi, child.node_id), "step": node.step,
                                "child_depth": child.depth, "advantage": advantages[gi][child.node_id]})
                collect(child)
        collect(nodes[0])
    p = algo.params
    args = SimpleNamespace(pruning_step_ratio=p["pruning_step_ratio"], depth_pruning=p["depth_pruning"],
                           depth_pruning_slide=p["depth_slide"], depth_pruning_slide_interval=p["depth_slide_interval"],
                           depth_pruning_stop_depth=p["depth_stop"],
                           width_pruning_mode={"off": 0, "per_branch": 1, "best_and_worst": 2}[p["width_pruning"]],
                           width_pruning_ratio=p["width_ratio"])
    theirs = sorted(s["child"] for s in official_pruning(samples, args, step, 40, algo.split_points))
    assert ours == theirs
    assert (len(ours) < len(samples)) == (bool(params) and step <= int(40 * p["pruning_step_ratio"]))


def test_branchgrpo_trains_every_edge_in_steps_of_twelve(tmp_path, tiny_model_dir):
    """One tree per prompt (8 leaves), the rollout's model calls as the closed form, one forward+backward
    per edge, an optimizer step per 12 edges (the last takes the rest), ratio 1 before the first step."""
    import pandas as pd
    from helpers import train_cfg

    from egrpo.stages.train import run_train

    cfg = train_cfg(tmp_path, iterations=2)
    cfg["algorithm_params"]["branchgrpo"].update(num_steps=8, split_points=[0, 2, 3])
    m = run_train(cfg, "branchgrpo", "color", 0, str(tiny_model_dir), None, tmp_path / "o", tmp_path / "r")
    log = pd.read_csv(tmp_path / "o/train_log.csv")
    prompts, edges = cfg["train"]["prompts_per_iteration"], 2 + 2 + 4 + 8 * 5
    assert (log["nfe_rollout"] == prompts * 41).all() and (log["nfe_rollout"] == log["nfe_rollout_expected"]).all()
    assert (log["nfe_train"] == prompts * edges).all() and (log["nfe_train"] == log["nfe_train_expected"]).all()
    assert (log["optimizer_steps"] == math.ceil(prompts * edges / 12)).all()
    assert log["ratio_abs_dev_first"].max() < 1e-5 and log["loss"].notna().all()
    assert m["recipe"]["split_points"] == [0, 2, 3] and m["recipe"]["clip_range"] == 1e-3
