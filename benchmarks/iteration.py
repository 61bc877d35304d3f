"""One training iteration against its floor.

    python benchmarks/iteration.py [--algorithm egrpo] [--tiny]

Times one real `Trainer.iteration` (rollout, decode, reward, advantages, PPO-clip forward and
backward, optimizer step), recording the shape of every model call. Then, in the same run, the
floor: the same model calls replayed on their own (rollout forwards without grad, training
forward+backward), one decode of all final samples and one reward call on them. RESULT = the
iteration's time / the sum of those parts (1.0 = no overhead beyond the work itself).
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import benchmark_config, best_of, build_model, machine  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--algorithm", default="egrpo")
    parser.add_argument("--tiny", action="store_true")
    args = parser.parse_args()

    import json

    from egrpo.rewards import RewardSetting
    from egrpo.plan import make_plan
    from egrpo.train.trainer import Trainer

    cfg = benchmark_config(group_size=12)
    if args.tiny:
        cfg["model"]["tiny"].update(text_hidden=32, attention_heads=2, head_dim=16, num_layers=1, num_single_layers=1)
    cfg["train"].update(prompts_per_iteration=1)
    model_dir, _ = build_model(cfg)
    tmp = Path(cfg["_tmp"])
    (tmp / "plan.json").write_text(json.dumps(make_plan(cfg, None)))
    clean = {k: v for k, v in cfg.items() if k != "_tmp"}
    trainer = Trainer(clean, args.algorithm, "color", 0, str(model_dir), str(tmp / "plan.json"), tmp / "out", tmp / "r")
    model = trainer.model
    calls = []
    velocity = model.velocity

    def recording(x, sigma, cond, reference=False):
        calls.append((tuple(x.shape), torch.is_grad_enabled(), cond))
        return velocity(x, sigma, cond, reference)

    model.velocity = recording
    trainer.iteration(0)                      # warm-up
    calls.clear()
    start = time.perf_counter()
    row = trainer.iteration(1)
    t_iteration = time.perf_counter() - start
    model.velocity = velocity

    # the floor, part by part
    def rollout_forwards():
        with torch.no_grad():
            for shape, grad, cond in calls:
                if not grad:
                    velocity(torch.randn(shape), 0.5, cond)

    def train_passes():
        for shape, grad, cond in calls:
            if grad:
                velocity(torch.randn(shape), 0.5, cond).square().mean().backward()
        trainer.trainable.optimizer.zero_grad(set_to_none=True)

    finals = row["groups"] * 12
    latents = torch.randn(finals, *model.family.latent_shape)
    images = model.decode(latents)
    setting = RewardSetting(cfg["reward_settings"]["color"], cfg)
    prompts = ["a red circle on a blue background"] * finals
    parts = {"rollout forwards": best_of(rollout_forwards, 2), "train forward+backward": best_of(train_passes, 2),
             "decode": best_of(lambda: model.decode(latents), 2),
             "reward": best_of(lambda: setting.components(images, prompts), 2)}
    floor = sum(parts.values())
    print(f"machine: {machine()}")
    print(f"algorithm {args.algorithm}: {len(calls)} model calls, {finals} final samples")
    for name, t in parts.items():
        print(f"  {name:24s} {t:7.3f} s")
    print(f"  {'floor (sum)':24s} {floor:7.3f} s")
    print(f"  {'iteration':24s} {t_iteration:7.3f} s")
    print(f"RESULT iteration_over_floor {t_iteration / floor:.3f}")


if __name__ == "__main__":
    main()
