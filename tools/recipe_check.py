"""One tiny-world iteration per algorithm, printing what its default recipe does (docs/baselines.md).

    python tools/recipe_check.py [--config config/claims.yaml] [--algorithms egrpo dancegrpo mixgrpo flowgrpo diffusionnft]

For each algorithm: the resolved recipe, the rollout's noise sharing, the trained steps of every
group member, the optimizer steps of the iteration, |ratio - 1| before the first step (0 up to
float error) and the clip fraction after it (> 0: PPO clips); for BranchGRPO its tree; for DiffusionNFT (no ratio) the samples,
trained (sample, sigma) rows and forwards per kind. Nothing is written except a temporary
MLflow-free output folder.
"""
from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="config/claims.yaml")
    parser.add_argument("--algorithms", nargs="+", default=["egrpo", "dancegrpo", "mixgrpo", "flowgrpo", "branchgrpo", "diffusionnft"])
    parser.add_argument("--model", default=None, help="model directory (default: model.path of the config)")
    parser.add_argument("--prompts-per-iteration", type=int, default=2)
    args = parser.parse_args()

    from egrpo.config import load
    from egrpo.stages.threshold import run_threshold
    from egrpo.scoring import score_groups
    from egrpo.train.trainer import Trainer

    cfg = load(args.config)
    tmp = Path(tempfile.mkdtemp(prefix="egrpo-recipe-"))
    cfg["train"]["prompts_per_iteration"] = args.prompts_per_iteration
    cfg["mlflow"] = {"tracking_uri": f"sqlite:///{tmp}/mlflow.db"}
    plan = tmp / "plan.json"
    run_threshold(cfg, None, plan)
    setting = next(iter(cfg["reward_settings"]))
    print(f"config {args.config}: N = {cfg['sampling']['num_steps']}, G = {cfg['sampling']['group_size']}, "
          f"{args.prompts_per_iteration} prompts, lr {cfg['train']['learning_rate']:g}, clip {cfg['train']['clip_range']:g}")
    for name in args.algorithms:
        trainer = Trainer(cfg, name, setting, 0, args.model or cfg["model"]["path"],
                          str(plan) if name == "egrpo" else None, tmp / name, tmp / f"r-{name}")
        recipe = trainer.algo.recipe()
        rollout = trainer.rollout(0)
        group = rollout.groups[0]
        print(f"\n== {name}: " + json.dumps({k: v for k, v in recipe.items() if k != "granular_list"}))
        if name == "diffusionnft":
            scored = score_groups(rollout.groups, trainer.model, trainer.setting, trainer.prompts,
                                  cfg["train"]["adv_clip_max"], trainer.algo.advantage)
            model = trainer.model
            train0, ref0 = model.nfe, model.nfe_reference
            stats = trainer.update(rollout, scored.advantages, trainer.state).row()
            steps = group.info["trained_steps"]
            print(f"  {sum(g.finals['g1'].shape[0] for g in rollout.groups)} samples from independent noises, "
                  f"{trainer.algo.num_steps} deterministic {recipe['solver']} steps each (rollout NFE {rollout.nfe}, "
                  f"expected {rollout.expected_nfe}); sigmas trained per sample: {len(steps[0])} of "
                  f"{trainer.algo.num_steps} (member 0: {steps[0]})")
            print(f"  optimizer steps {stats['optimizer_steps']}; trained rows {stats['trained_pairs']}; "
                  f"policy forward+backward {model.nfe - train0}, old-policy and base forwards {model.nfe_reference - ref0}")
            continue
        first = group.transitions[0]
        if name == "egrpo":
            entries = [(tr.i, tr.j - tr.i) for g in rollout.groups[:len(trainer.plan)] for tr in g.transitions]
            shared = all(tr.x_from.shape[0] == 1 for g in rollout.groups for tr in g.transitions)
            print(f"  plan entries (s, k) {entries}; strides {recipe['granular_list']}; the G members of every "
                  f"entry share x_s (one anchor, one initial noise per prompt): {shared}")
        elif name == "branchgrpo":
            tree = group.info["tree"]
            print(f"  one tree per prompt: splits at {trainer.algo.split_points} (noise x{trainer.algo.split_noise}), "
                  f"{len(tree.parents)} nodes, {len(tree.leaves)} leaves (the group), nodes per step "
                  f"{trainer.algo.nodes_per_step()}; edges trained {sum(len(tr.member_ids()) for tr in group.transitions)}, "
                  f"{trainer.algo.edges_per_step} per optimizer step")
        elif name == "mixgrpo":
            print(f"  window steps {[tr.i for tr in group.transitions]}; shared initial noise and prefix: "
                  f"{first.x_from.shape[0] == 1}")
        else:
            steps = group.info["trained_steps"]
            print(f"  shared initial noise: {trainer.algo.same_initial_noise}; trained steps per member "
                  f"(first prompt, {len(steps[0])} each, never step {trainer.algo.num_steps - 1}: "
                  f"{all(trainer.algo.num_steps - 1 not in s for s in steps)}):")
            for m, s in enumerate(steps):
                print(f"    member {m:2d}: {s}")
        scored = score_groups(rollout.groups, trainer.model, trainer.setting, trainer.prompts,
                              cfg["train"]["adv_clip_max"], trainer.algo.advantage)
        stats = trainer.update(rollout, scored.advantages, trainer.state).row()
        print(f"  optimizer steps {stats['optimizer_steps']}; |ratio - 1| before the first step "
              f"{stats['ratio_abs_dev_first']:.1e}; clip fraction after it {stats['clip_fraction_after_first_step']:.3f} "
              f"(all pairs {stats['clip_fraction']:.3f}); rollout NFE {rollout.nfe} (expected {rollout.expected_nfe})")


if __name__ == "__main__":
    main()
