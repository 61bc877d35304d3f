"""Per-process memory of full fine-tuning over 2 processes: sharded (FSDP) against unsharded.

    python benchmarks/sharding.py [--algorithm egrpo] [--processes 2]

Runs `egrpo train` (full fine-tuning, 2 iterations) under torch.distributed.run on the CPU (gloo),
once with `train.sharding: none` and once with `fsdp`, on a tiny FLUX large enough that its
training state is large (44 M transformer parameters: 16 bytes each of fp32 weight, gradient and
two AdamW moments, 674 MiB). Each run is measured in its own wrapper process, whose
RUSAGE_CHILDREN maximum is the peak RSS of its largest process. The runtime of a process that only
imports the stack is measured the same way and subtracted.

By construction, unsharded every process holds the whole state (16 B per parameter) and sharded 1/N
of it, plus the weights as loaded (before sharding) and one block gathered at a time. RSS on the
CPU adds what the allocator keeps of the gathers (a new buffer per block and forward): measured
(benchmarks/RESULTS.md), that outweighs the saved state at this size, so this is not the figure
for GPUs, whose caching allocator reuses the buffers; gpu_e2e.py's part 3 measures those.
RESULT = sharded peak over the runtime / unsharded peak over the runtime.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import benchmark_config, machine  # noqa: E402

# 8 heads x 64 (dim 512), 2 double + 6 single blocks: 44 M parameters in the transformer
LARGE = {"seed": 0, "text_hidden": 64, "text_layers": 1, "attention_heads": 8, "head_dim": 64,
         "num_layers": 2, "num_single_layers": 6, "vae_channels": 8, "vae_blocks": 2, "latent_channels": 4}


def peak_rss_mib(command: list[str], env: dict | None = None) -> float:
    """Peak RSS (MiB) of the largest process that `command` starts, in a wrapper of its own."""
    probe = ("import resource, subprocess, sys, json; r = subprocess.run(json.loads(sys.argv[1]), capture_output=True, "
             "text=True); sys.stderr.write(r.stderr[-3000:] if r.returncode else ''); "
             "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss); sys.exit(r.returncode)")
    result = subprocess.run([sys.executable, "-c", probe, json.dumps(command)], capture_output=True, text=True, env=env)
    if result.returncode:
        raise SystemExit(f"failed: {' '.join(command)}\n{result.stderr}")
    return int(result.stdout.split()[-1]) / 1024


def main() -> None:
    import os

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--algorithm", default="egrpo")
    parser.add_argument("--processes", type=int, default=2)
    args = parser.parse_args()

    from egrpo.models import load_pipeline
    from egrpo.stages.build_model import run_build_model
    from egrpo.plan import make_plan

    cfg = benchmark_config(LARGE, resolution=32, group_size=4, num_steps=8)
    tmp = Path(cfg.pop("_tmp"))
    cfg["train"].update(iterations=2, prompts_per_iteration=args.processes, finetune="full", checkpoint_every=100,
                        heldout={"every": None, "every_forward_equivalents": None})
    model_dir = run_build_model(cfg, tmp / "model")
    params = sum(p.numel() for p in load_pipeline(cfg, model_dir).transformer.parameters())
    (tmp / "plan.json").write_text(json.dumps(make_plan(cfg, None)))
    env = dict(os.environ, OMP_NUM_THREADS="1")
    runtime = peak_rss_mib([sys.executable, "-c", "import torch, diffusers, transformers, peft, accelerate, mlflow, "
                            "egrpo.train.trainer"], env)
    peaks = {}
    for sharding in ("none", "fsdp"):
        cfg["train"]["sharding"] = sharding
        (tmp / f"{sharding}.yaml").write_text(yaml.safe_dump(cfg))
        peaks[sharding] = peak_rss_mib(
            [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(args.processes),
             "-m", "egrpo", "train", "--config", str(tmp / f"{sharding}.yaml"), "--model", str(model_dir),
             "--plan", str(tmp / "plan.json"), "--algorithm", args.algorithm, "--reward-setting", "color",
             "--seed", "0", "--out", str(tmp / sharding), "--resume-dir", str(tmp / f"resume-{sharding}")], env)
    state = 16 * params / 2**20
    print(f"machine: {machine()}")
    print(f"transformer {params / 1e6:.1f} M parameters; fp32 weights + gradients + 2 AdamW moments = {state:.0f} MiB "
          f"(1/{args.processes}: {state / args.processes:.0f} MiB); {args.processes} processes, {args.algorithm}")
    print(f"| sharding | peak RSS of the largest process | over the runtime ({runtime:.0f} MiB) |")
    print("|---|---|---|")
    for sharding, peak in peaks.items():
        print(f"| {sharding} | {peak:.0f} MiB | {peak - runtime:.0f} MiB |")
    print(f"RESULT sharded_over_unsharded {(peaks['fsdp'] - runtime) / (peaks['none'] - runtime):.2f}")


if __name__ == "__main__":
    main()
