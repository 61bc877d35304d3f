"""Stage `train`: GRPO training of one (algorithm, reward setting, seed) -> metrics.json,
train_log.csv, checkpoint/ (the loop: egrpo/train/trainer.py)."""
from __future__ import annotations

import logging
import sys
from pathlib import Path

from egrpo.algorithms.facts import ALGORITHMS, uses_plan
from egrpo.errors import UserError
from egrpo.runtime import launch

NAME = "train"
HELP = "GRPO training of one (algorithm, reward setting, seed)."
PHASE = "loading"   # what runs outside the trainer's own phases
INPUTS = ("plan",)


def add_arguments(p) -> None:
    p.add_argument("--model", help="pipeline directory (default: model.path)")
    p.add_argument("--plan", help="plan.json (algorithms that use the merge plan)")
    p.add_argument("--algorithm", required=True, choices=sorted(ALGORITHMS), help="which algorithm to train")
    p.add_argument("--reward-setting", required=True)
    p.add_argument("--seed", type=int, required=True)
    p.add_argument("--out", required=True, help="output directory (metrics.json, train_log.csv, checkpoint/)")
    p.add_argument("--resume-dir", required=True, help="resume state, kept outside the outputs until success")
    p.add_argument("--gpus", type=int, default=0,
                   help="GPUs per node; with more than one, re-run under `accelerate launch`, one process per GPU")
    p.add_argument("--nodes", type=int, default=1,
                   help="nodes of the job (SLURM): run as one task per node under srun, each starting torchrun with "
                        "--gpus processes that meet at the first node (egrpo/runtime/launch.py)")


def run(args, cfg) -> None:

    argv = sys.argv[1:] if args.argv is None else args.argv
    if args.nodes > 1 and not launch.launched():   # this node's launcher (one srun task per node)
        code = launch.run_node(args.nodes, args.gpus, launch.worker_argv(argv))
        if code:
            raise SystemExit(code)
        return
    if args.gpus > 1 and not launch.launched():
        launch.relaunch_with_accelerate(args.gpus, launch.worker_argv(argv))
    m = run_train(cfg, args.algorithm, args.reward_setting, args.seed, args.model, args.plan, args.out, args.resume_dir)
    if m is not None:  # the main process of a multi-process run, or a single process
        logging.getLogger("egrpo").info("final train reward %.5f, NFE %d, %.1f s", m["final_train_reward"],
                                        m["nfe_total"], m["wall_s"])


def run_train(cfg, algorithm, reward_setting, seed, model_dir, plan_path, out_dir, resume_dir) -> dict | None:
    """Train one run; its metrics (None on the processes other than the main one)."""
    from egrpo.train.trainer import Trainer  # here: a node launcher (several nodes) never trains itself

    if reward_setting not in cfg["reward_settings"]:
        raise UserError(f"--reward-setting: {reward_setting!r} is not a key of reward_settings ({sorted(cfg['reward_settings'])})")
    if uses_plan(algorithm) and not plan_path:
        raise UserError(f"--plan: algorithm {algorithm} needs the merge plan (plan.json from `egrpo threshold`)")
    if plan_path and not Path(plan_path).is_file():
        raise UserError(f"--plan: file not found: {plan_path}")
    trainer = Trainer(cfg, algorithm, reward_setting, seed, model_dir, plan_path if uses_plan(algorithm) else None,
                      out_dir, resume_dir)
    metrics = trainer.run()
    trainer.accelerator.end_training()
    return metrics
