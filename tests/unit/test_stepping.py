"""Optimizer steps per iteration of every shipped recipe config, counted from egrpo's update units on
one process's share of the prompts, against what the official script does per iteration (each count
with the script and flags it comes from). A recipe whose stepping drifts from its script fails here."""
import pytest
import torch
from helpers import ROOT

from egrpo.algorithms import build_algorithm
from egrpo.config import load
from egrpo.cost import CountingModel, plan_without_profile
from egrpo.models.base import Conditioning


def steps_per_iteration(cfg: dict, algorithm: str) -> int:
    """egrpo's optimizer steps in one iteration on one process (its share of the iteration's prompts)."""
    r = cfg["resources"]["train"]
    per_process = cfg["train"]["prompts_per_iteration"] // (r["gpu"] * r.get("nodes", 1))
    plan = plan_without_profile(cfg) if algorithm == "egrpo" else None
    algo = build_algorithm(algorithm, cfg, plan)
    model, cond = CountingModel(1), Conditioning({"embeds": torch.zeros(1, 1, device="cpu")})
    groups = [g for p in range(per_process) for g in algo.rollout(model, cond, p, torch.Generator().manual_seed(p), 0)]
    if algo.update == "nft":   # its update (egrpo/train/nft.py) steps once per member chunk
        return len(algo.member_chunks())
    return len(algo.update_units(groups))


OFFICIAL = [
    # DanceGRPO finetune_flux_grpo.sh: 1 prompt per GPU, 12 samples, --gradient_accumulation_steps 4
    ("config/paper.yaml", None, "dancegrpo", 3),
    # VisualGRPO grpo_trainer.py: one optimizer step per plan entry of the merge plan
    ("config/paper.yaml", None, "egrpo", len(plan_without_profile(load(ROOT / "config/paper.yaml")))),
    # DanceGRPO finetune_qwenimage_grpo.sh: --train_batch_size 2 x 12 samples, a step every 12 samples
    ("config/qwenimage.yaml", None, "dancegrpo", 2),
    # flow_grpo config/grpo.py: gradient_accumulation_steps = num_batches_per_epoch // 2
    ("config/sd35.yaml", None, "flowgrpo", 2),
    # DiffusionNFT config/nft.py _get_config: gradient_step_per_epoch 1 (sd3_pickscore, sd3_hpsv2)
    ("config/sd35.yaml", "config/sd35-nft.yaml", "diffusionnft", 1),
]


@pytest.mark.parametrize("config,overlay,algorithm,official", OFFICIAL)
def test_optimizer_steps_per_iteration_match_the_official_scripts(config, overlay, algorithm, official):
    cfg = load(ROOT / config, *([ROOT / overlay] if overlay else []))
    assert steps_per_iteration(cfg, algorithm) == official


def test_two_prompts_per_process_step_one_prompt_at_a_time():
    """Qwen-Image's DanceGRPO: each of the two steps covers all 12 samples of one of the process's two
    prompts (the first step every ratio 1, the second after an update: PPO can clip)."""
    cfg = load(ROOT / "config/qwenimage.yaml")
    algo = build_algorithm("dancegrpo", cfg)
    model, cond = CountingModel(1), Conditioning({"embeds": torch.zeros(1, 1, device="cpu")})
    groups = [g for p in range(2) for g in algo.rollout(model, cond, p, torch.Generator().manual_seed(p), 0)]
    units = algo.update_units(groups)
    assert [{gi for gi, _ in unit} for unit in units] == [{0}, {1}]
    assert all(sorted({m for _, tr in unit for m in tr.member_ids()}) == list(range(12)) for unit in units)
    cfg["algorithm_params"]["dancegrpo"]["prompts_per_process"] = 1   # the earlier reading: one step over both
    assert len(build_algorithm("dancegrpo", cfg).update_units(groups)) == 1
