"""Peak memory of a training job on the one-object tiny world against weights + gradients + optimizer.

    python benchmarks/memory.py [--algorithm egrpo] [--iterations 3] [--prompts-per-iteration N] [--config C]

Runs `egrpo train` on config/tinyworld.yaml (or C; a few iterations) in a child process and reads its
peak RSS; the reference is the bytes of every model weight (transformer, VAE, text encoders) plus
gradients and two AdamW moments of the trainable parameters. The Python + torch + diffusers
runtime of a process that only imports them is reported beside it. RESULT = peak RSS / reference.
"""
from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
from pathlib import Path

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import ROOT, machine  # noqa: E402


def child_peak_mb(cmd) -> float:
    before = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    result = subprocess.run(cmd, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-2000:]
    after = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    return max(after, before) / 1024


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--algorithm", default="egrpo")
    parser.add_argument("--iterations", type=int, default=3)
    parser.add_argument("--prompts-per-iteration", type=int, default=None, help="default: the config's")
    parser.add_argument("--config", type=Path, default=ROOT / "config/tinyworld.yaml", help="default: config/tinyworld.yaml")
    parser.add_argument("--skip-runtime", action="store_true",
                        help="leave out the imports-only process (an informational line; the smoke test's time)")
    args = parser.parse_args()

    from egrpo.config import validate
    from egrpo.models import add_lora, family_of, load_pipeline
    from egrpo.stages.build_model import run_build_model
    from egrpo.plan import make_plan

    tmp = Path(tempfile.mkdtemp(prefix="egrpo-mem-"))
    cfg = yaml.safe_load(args.config.read_text())
    for key in ("train", "eval"):
        cfg["prompts"][key] = str(ROOT / cfg["prompts"][key])
    cfg["train"]["iterations"] = args.iterations
    if args.prompts_per_iteration:
        cfg["train"]["prompts_per_iteration"] = args.prompts_per_iteration
    cfg["mlflow"] = {"tracking_uri": f"sqlite:///{tmp}/mlflow.db"}
    for settings in (cfg.get("reward_models") or {}).values():   # the shipped models/tinyclip, from anywhere
        if (ROOT / settings["path"]).exists():
            settings["path"] = str(ROOT / settings["path"])
    cfg = validate(cfg)
    (tmp / "cfg.yaml").write_text(yaml.safe_dump(cfg))
    # config/tinyworld.yaml trains the shipped pretrained one-object world; a tiny random model is built otherwise
    model_dir = (ROOT / cfg["model"]["path"] if cfg["model"]["source"] == "pretrained"
                 else run_build_model(cfg, tmp / "model"))
    setting = next(iter(cfg["reward_settings"]))
    (tmp / "plan.json").write_text(json.dumps(make_plan(cfg, None)))
    pipe = load_pipeline(cfg, model_dir)
    weights = sum(p.numel() * p.element_size() for m in (pipe.transformer, pipe.vae, pipe.text_encoder,
                                                          pipe.text_encoder_2) for p in m.parameters())
    if cfg["train"]["finetune"] == "lora":
        add_lora(pipe.transformer, cfg["train"]["lora_rank"], cfg["train"]["lora_alpha"], family_of(pipe).lora_targets)
    trainable = sum(p.numel() * p.element_size() for p in pipe.transformer.parameters() if p.requires_grad)
    reference_mb = (weights + 3 * trainable) / 2**20

    runtime_mb = None if args.skip_runtime else child_peak_mb(
        [sys.executable, "-c", "import torch, diffusers, transformers, peft, accelerate, mlflow, egrpo.train.trainer"])
    train_mb = child_peak_mb([sys.executable, "-m", "egrpo", "train", "--config", str(tmp / "cfg.yaml"), "--model",
                              str(model_dir), "--plan", str(tmp / "plan.json"), "--algorithm", args.algorithm,
                              "--reward-setting", setting, "--seed", "0", "--out", str(tmp / "out"),
                              "--resume-dir", str(tmp / "resume")])
    print(f"machine: {machine()}")
    print(f"weights {weights / 2**20:.2f} MiB, trainable {trainable / 2**20:.3f} MiB -> "
          f"weights + grads + AdamW = {reference_mb:.2f} MiB")
    if runtime_mb is None:
        print(f"peak RSS: training job {train_mb:.0f} MiB (runtime only: not measured, --skip-runtime)")
    else:
        print(f"peak RSS: runtime only (imports) {runtime_mb:.0f} MiB; training job {train_mb:.0f} MiB "
              f"(+{train_mb - runtime_mb:.0f} MiB over the runtime)")
    print(f"RESULT peak_rss_over_state {train_mb / reference_mb:.1f}")


if __name__ == "__main__":
    main()
