"""End to end on a GPU: the tiny DAG through the real CLI, then one FLUX.1-dev-shaped iteration per algorithm.

    python benchmarks/gpu_e2e.py                      # on a CUDA machine; one call of <= 9 minutes
    python benchmarks/gpu_e2e.py --algorithms egrpo dancegrpo --resolution 720
    python benchmarks/gpu_e2e.py --smoke              # anywhere: the same code at toy shapes on the CPU
    python benchmarks/gpu_e2e.py --parts fsdp         # full fine-tuning sharded over this machine's GPUs

Part 1 (`dag`): Snakemake runs the micro DAG (build-model -> profile -> threshold -> train ->
evaluate -> report; tests/data/micro.yaml) with `model.device: cuda` forced, so every stage that runs
a model must run it on the GPU (a stage that cannot fails the DAG); train's metrics.json must say cuda.

Part 2 (`flux`): a FluxPipeline with FLUX.1-dev's shapes and random bf16 weights (transformer
egrpo/models/presets.py, 11.9 B; T5-XXL encoder, 4.7 B; CLIP-L text; FLUX's VAE),
nothing downloaded, and a random CLIP ViT-H-14 (HPS v2.1's shape) as the reward. The real `Trainer`
runs one iteration of each algorithm with config/paper.yaml's recipe and its one-GPU overlay
config/paper-1gpu.yaml: LoRA (rank 32),
gradient checkpointing, text encoders offloaded to the CPU, VAE decoding 8 images a call. Printed
per algorithm and phase (rollout, scoring, training): seconds and peak allocated GiB, and the
seconds per rollout NFE and per training NFE. Exit status 1 if any phase peaks above --max-gib
(70 by default, the issue's target on an 80 GB card) or anything fails.

Part 3 (`fsdp`, on a machine with 2 or more GPUs; skipped with a line otherwise): config/paper.yaml as
it is, full fine-tuning sharded (FSDP) over one process per GPU, one prompt each, the same random
weights; one iteration per algorithm, process 0's phase peaks and the memory it holds after sharding.

Parts `sd35` and `qwenimage` (on request: `--parts sd35 qwenimage`): the same per-algorithm iteration on
SD3.5-Medium's shapes (SD3Transformer2DModel 2.5 B, CLIP-L and CLIP-G with projection, T5-XXL, SD3's VAE;
config/sd35.yaml: 512 px, G = 24, 10 steps, true CFG 4.5, LoRA rank 32) and Qwen-Image's
(QwenImageTransformer2DModel 20 B, Qwen2.5-VL 7B text encoder offloaded to the CPU, its VAE;
config/qwenimage.yaml at 720 px, G = 12, 20 steps, with LoRA rank 32 on one GPU where the recipe fine-tunes
all weights over 8), random bf16 weights, nothing downloaded.

--smoke runs the parts on the CPU on the tiny preset (part 3 on 2 processes; every family on its tiny instance;
tests/system/test_benchmarks.py runs it): it checks the code path, not the figures.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
import yaml

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

ALGORITHMS = ("egrpo", "dancegrpo", "mixgrpo", "flowgrpo", "branchgrpo", "diffusionnft")
UNSHARDED = ("diffusionnft",)   # its old policy is an unsharded copy: refused under FSDP (docs/baselines.md)
VIT_H_14 = dict(vision=dict(hidden_size=1280, intermediate_size=5120, num_hidden_layers=32, num_attention_heads=16,
                            patch_size=14, image_size=224, hidden_act="gelu"),
                text=dict(hidden_size=1024, intermediate_size=4096, num_hidden_layers=24, num_attention_heads=16,
                          max_position_embeddings=77, hidden_act="gelu"),
                projection_dim=1024)
TOY_VIT = dict(vision=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2,
                           patch_size=8, image_size=32),
               text=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2,
                         max_position_embeddings=77),
               projection_dim=32)


# the family's published recipe (config/<file>) and the part's name
FAMILY_CONFIGS = {"sd35": ("sd3", "config/sd35.yaml"), "qwenimage": ("qwenimage", "config/qwenimage.yaml")}


# ---- part 1: the micro DAG through Snakemake, every model on the GPU ---------------------------------

def run_dag(device: str, work: Path) -> dict:
    """Snakemake on tests/data/micro.yaml with model.device forced; returns what train recorded."""
    cfg = yaml.safe_load((ROOT / "tests/data/micro.yaml").read_text())
    # a shape benchmark: the shipped captions stand in for the HPD prompts (docs/paper-data.md)
    cfg["prompts"] = {"train": str(ROOT / "config/prompts/train.txt"), "eval": str(ROOT / "config/prompts/eval.txt"),
                      "benchmark": None}
    cfg["model"]["device"] = device
    cfg["mlflow"] = {"tracking_uri": f"sqlite:///{work}/mlflow.db"}
    work.mkdir(parents=True, exist_ok=True)
    (work / "config.yaml").write_text(yaml.safe_dump(cfg))
    start = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "snakemake", "-s", str(ROOT / "Snakefile"), "-d", str(work),
                           "--configfile", str(work / "config.yaml"), "--cores", "4", "--quiet", "all"],
                          capture_output=True, text=True)
    wall = time.perf_counter() - start
    if proc.returncode:
        sys.stderr.write(proc.stdout[-4000:] + proc.stderr[-8000:])
        raise SystemExit(f"gpu_e2e: the micro DAG failed on {device} (exit {proc.returncode})")
    metrics = sorted((work / "results").glob("*/train/*/*/*/metrics.json"))
    devices = {json.loads(m.read_text())["device"] for m in metrics}
    if devices != {torch.device(device).type}:
        raise SystemExit(f"gpu_e2e: train ran on {devices}, expected {device}")
    return {"wall_s": wall, "train_runs": len(metrics), "device": device}


# ---- part 2: FLUX.1-dev-shaped iterations through the real Trainer -----------------------------------

def _tokenizers(words: list[str], t5_length: int):  # the reward's tokenizer
    """The tiny world's offline tokenizers with FLUX's lengths: CLIP 77 tokens, T5 `t5_length`."""
    from egrpo.models.tokenizers import build_tokenizers

    clip_tok, t5_tok = build_tokenizers(words, t5_length)
    clip_tok.model_max_length = 77
    return clip_tok, t5_tok


def flux_shaped_pipeline(smoke: bool, device: torch.device, words: list[str], cfg: dict):
    """A FluxPipeline of FLUX.1-dev's classes and shapes with random weights built directly on `device`
    in bf16 (egrpo/models/presets.py); with smoke, the tiny preset of the config's model.tiny."""
    from egrpo.models import build_pipeline

    return build_pipeline(cfg, words, "tiny" if smoke else "paper", device)


def save_random_clip_reward(smoke: bool, out: Path, words: list[str]) -> Path:
    """A random CLIPModel of HPS v2.1's shape (ViT-H-14) with a processor, saved for the clip reward."""
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel, CLIPProcessor

    shape = TOY_VIT if smoke else VIT_H_14
    clip_tok, _ = _tokenizers(words, 77)
    config = CLIPConfig(text_config={"vocab_size": 49408, "bos_token_id": clip_tok.bos_token_id,
                                     "eos_token_id": clip_tok.eos_token_id, "pad_token_id": clip_tok.eos_token_id,
                                     **shape["text"]},
                        vision_config=shape["vision"], projection_dim=shape["projection_dim"])
    CLIPModel(config).save_pretrained(out, safe_serialization=True)
    size = shape["vision"]["image_size"]
    CLIPProcessor(image_processor=CLIPImageProcessor(size={"shortest_edge": size},
                                                     crop_size={"height": size, "width": size}),
                  tokenizer=clip_tok).save_pretrained(out)
    return out


def shape_benchmark(cfg: dict, work: Path, reward_dir: Path, processes: int = 1) -> None:
    """What every shape part changes in a recipe: the shipped captions stand in for the HPD prompts
    (docs/paper-data.md), a random CLIP of HPS's shape is the only reward, MLflow lives in the work
    dir, one iteration of `processes` prompts without held-out points."""
    cfg["resources"]["train"]["gpu"] = processes
    cfg["prompts"] = {"train": str(ROOT / "config/prompts/train.txt"), "eval": str(ROOT / "config/prompts/eval.txt"),
                      "benchmark": None}
    cfg["mlflow"] = {"tracking_uri": f"sqlite:///{work}/mlflow.db"}
    cfg["model"].update(path="(random weights, built in memory)", device="auto")
    cfg["reward_models"] = {"clip": {"path": str(reward_dir)}}
    cfg["reward_settings"] = {"shape": {"clip": 1.0}}
    cfg["evaluate"]["metrics"] = ["clip"]
    cfg["train"].update(iterations=1, prompts_per_iteration=processes, checkpoint_every=1000,
                        heldout={"every": None, "every_forward_equivalents": None})


def paper_config(smoke: bool, work: Path, resolution: int, group_size: int, reward_dir: Path,
                 processes: int = 1) -> dict:
    """One process: config/paper.yaml with config/paper-1gpu.yaml (LoRA on one GPU instead of full
    fine-tuning over 8). Several: paper.yaml as it is (full fine-tuning sharded over them), one prompt each."""
    from snakemake.utils import update_config

    from egrpo.config import load, validate

    cfg = load(ROOT / "config/paper.yaml")
    if processes == 1:  # the one-GPU overlay (LoRA rank 32), merged as Snakemake merges --configfile a b
        update_config(cfg, yaml.safe_load((ROOT / "config/paper-1gpu.yaml").read_text()))
    shape_benchmark(cfg, work, reward_dir, processes)
    cfg["sampling"].update(resolution=resolution, group_size=group_size)
    if smoke:
        cfg["model"].update(dtype="float32", max_sequence_length=64, device="cpu")
        cfg["train"]["mixed_precision"] = "no"
    return validate(cfg)


def run_flux(args, work: Path) -> list[dict]:
    import egrpo.train.trainer
    from egrpo.runtime.io import load_prompts
    from egrpo.plan import make_plan

    device = torch.device("cpu") if args.smoke else torch.device("cuda")
    words = [p.text for p in load_prompts(str(ROOT / "config/prompts/train.txt"), "prompts.train")]
    work.mkdir(parents=True, exist_ok=True)
    reward_dir = save_random_clip_reward(args.smoke, work / "reward", words)
    cfg = paper_config(args.smoke, work, args.resolution, args.group_size, reward_dir)
    (work / "plan.json").write_text(json.dumps(make_plan(cfg, None)))
    rows = []
    for algorithm in args.algorithms:
        start = time.perf_counter()
        pipe = flux_shaped_pipeline(args.smoke, device, words, cfg)
        egrpo.train.trainer.load_pipeline = lambda cfg, model_dir=None, pipe=pipe: pipe  # the random pipeline, not a path
        trainer = egrpo.train.trainer.Trainer(cfg, algorithm, "shape", 0, None, str(work / "plan.json"),
                                      work / "out" / algorithm, work / "resume" / algorithm)
        setup_s = time.perf_counter() - start
        row = trainer.iteration(0)
        rows.append({"algorithm": algorithm, "setup_s": setup_s, **row})
        print(format_row(rows[-1]), flush=True)
        del trainer, pipe
        if device.type == "cuda":
            torch.cuda.empty_cache()
    return rows


# ---- parts sd35, qwenimage: the other families' shapes and recipes ------------------------------------

def family_shaped_pipeline(part: str, smoke: bool, device: torch.device, words: list[str], cfg: dict):
    """SD3.5-Medium's or Qwen-Image's pipeline with their classes and shapes and random weights built on
    `device` in bf16 (egrpo/models/presets.py); with smoke, the family's tiny instance (the tests' shapes)."""
    from egrpo.models import build_pipeline

    cfg = {**cfg, "model": {**cfg["model"], "family": FAMILY_CONFIGS[part][0]}}
    return build_pipeline(cfg, words, "tiny" if smoke else "paper", device)


def family_config(part: str, smoke: bool, work: Path, reward_dir: Path, resolution, group_size) -> dict:
    """The family's recipe (config/sd35.yaml, config/qwenimage.yaml) on one GPU: LoRA rank 32 where the
    recipe fine-tunes fully over 8 (Qwen-Image), one prompt; toy shapes with smoke."""
    from egrpo.config import load, validate

    cfg = load(ROOT / FAMILY_CONFIGS[part][1])
    if cfg["train"]["finetune"] != "lora":
        cfg["train"].update(finetune="lora", sharding="none", lora_rank=32, lora_alpha=32)
    shape_benchmark(cfg, work, reward_dir)
    if resolution:
        cfg["sampling"]["resolution"] = resolution
    if group_size:
        cfg["sampling"]["group_size"] = group_size
    if smoke:
        micro = yaml.safe_load((ROOT / "tests/data/micro.yaml").read_text())
        cfg["model"].update(dtype="float32", max_sequence_length=16, device="cpu", tiny=micro["model"]["tiny"])
        cfg["sampling"].update(resolution=resolution or micro["sampling"]["resolution"], group_size=group_size or 2,
                               num_steps=micro["sampling"]["num_steps"])
        cfg["threshold"]["max_steps"] = None
        cfg["train"]["mixed_precision"] = "no"
    return validate(cfg)


def run_family(args, part: str, work: Path) -> list[dict]:
    """One iteration per algorithm with the family's recipe and shapes (part 4)."""
    import egrpo.train.trainer
    from egrpo.runtime.io import load_prompts
    from egrpo.plan import make_plan

    device = torch.device("cpu") if args.smoke else torch.device("cuda")
    words = [p.text for p in load_prompts(str(ROOT / "config/prompts/train.txt"), "prompts.train")]
    work.mkdir(parents=True, exist_ok=True)
    reward_dir = save_random_clip_reward(args.smoke, work / "reward", words)
    cfg = family_config(part, args.smoke, work, reward_dir, args.family_resolution, args.family_group_size)
    print(f"part {part}: one iteration per algorithm, {cfg['sampling']['resolution']} px, "
          f"G = {cfg['sampling']['group_size']}, N = {cfg['sampling']['num_steps']}, "
          f"guidance {cfg['sampling']['guidance']}\n{HEADER}", flush=True)
    rows = []
    for algorithm in args.algorithms:
        start = time.perf_counter()
        torch.manual_seed(0)
        pipe = family_shaped_pipeline(part, args.smoke, device, words, cfg)
        if not (work / "plan.json").exists():  # the threshold on the pipeline's own schedule (sampling.schedule)
            import pandas as pd

            from egrpo.models import FlowModel
            s = FlowModel(pipe, cfg, device).sigmas(cfg["sampling"]["num_steps"]).tolist()
            schedule = pd.DataFrame({"step": range(len(s) - 1), "sigma": s[:-1], "sigma_next": s[1:]})
            (work / "plan.json").write_text(json.dumps(make_plan(cfg, schedule)))
        egrpo.train.trainer.load_pipeline = lambda cfg, model_dir=None, pipe=pipe: pipe
        trainer = egrpo.train.trainer.Trainer(cfg, algorithm, "shape", 0, None, str(work / "plan.json"),
                                      work / "out" / algorithm, work / "resume" / algorithm)
        row = trainer.iteration(0)
        rows.append({"algorithm": algorithm, "setup_s": time.perf_counter() - start - row["iteration_s"], **row})
        print(format_row(rows[-1]), flush=True)
        del trainer, pipe
        if device.type == "cuda":
            torch.cuda.empty_cache()
    return rows


# ---- part 3: full fine-tuning sharded over the machine's GPUs (FSDP) ------------------------------------

def launch_fsdp(args, work: Path) -> None:
    """Prepare the reward and the config once, then run part 3 in one process per GPU (2 CPU processes
    with --smoke) under torch.distributed.run; their table comes back on stdout."""
    from egrpo.runtime.io import load_prompts
    from egrpo.plan import make_plan

    processes = 2 if args.smoke else torch.cuda.device_count()
    if processes < 2:
        print(f"part 3: skipped: sharding needs at least 2 GPUs, this machine has {processes}", flush=True)
        return
    words = [p.text for p in load_prompts(str(ROOT / "config/prompts/train.txt"), "prompts.train")]
    work.mkdir(parents=True, exist_ok=True)
    reward_dir = save_random_clip_reward(args.smoke, work / "reward", words)
    cfg = paper_config(args.smoke, work, args.resolution, args.group_size, reward_dir, processes)
    (work / "config.yaml").write_text(yaml.safe_dump(cfg))
    (work / "plan.json").write_text(json.dumps(make_plan(cfg, None)))
    print(f"part 3: full fine-tuning sharded over {processes} processes, one iteration per algorithm "
          f"(phase peaks: process 0)\n{HEADER}", flush=True)
    sharded = [a for a in args.algorithms if a not in UNSHARDED]
    if len(sharded) < len(args.algorithms):
        print(f"part 3: {', '.join(a for a in args.algorithms if a in UNSHARDED)}: not run, it does not shard", flush=True)
    if not sharded:
        return
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(processes),
               __file__, "--fsdp-worker", str(work), "--algorithms", *sharded] + (["--smoke"] if args.smoke else [])
    env = dict(os.environ, OMP_NUM_THREADS="1") if args.smoke else None
    proc = subprocess.run(command, env=env)
    if proc.returncode:
        raise SystemExit(f"gpu_e2e: the sharded part failed (exit {proc.returncode})")


def fsdp_worker(args, work: Path) -> None:
    """One process of part 3: the same random FLUX-shaped weights on every process (same seed), sharded
    by the Trainer; process 0 prints each algorithm's row and the memory held after sharding."""
    import egrpo.train.trainer
    from egrpo.config import load
    from egrpo.runtime.io import load_prompts

    rank, local_rank = int(os.environ["RANK"]), int(os.environ["LOCAL_RANK"])
    device = torch.device("cpu") if args.smoke else torch.device("cuda", local_rank)
    if device.type == "cuda":
        torch.cuda.set_device(device)
    cfg = load(work / "config.yaml")
    words = [p.text for p in load_prompts(cfg["prompts"]["train"], "prompts.train")]
    for algorithm in args.algorithms:
        torch.manual_seed(0)  # identical random weights on every process
        pipe = flux_shaped_pipeline(args.smoke, device, words, cfg)
        egrpo.train.trainer.load_pipeline = lambda cfg, model_dir=None, pipe=pipe: pipe
        trainer = egrpo.train.trainer.Trainer(cfg, algorithm, "shape", 0, None, str(work / "plan.json"),
                                      work / "out" / algorithm, work / "resume" / algorithm)
        held = torch.cuda.memory_allocated(device) / 2**30 if device.type == "cuda" else None
        row = trainer.iteration(0)
        if rank == 0:
            print(format_row({"algorithm": algorithm, **row}) +
                  (f" after sharding: {held:.1f} GiB held" if held is not None else ""), flush=True)
        over = {p: row[f"{p}_peak_gib"] for p in ("rollout", "scoring", "training")
                if row.get(f"{p}_peak_gib", 0) > args.max_gib}
        if over:
            raise SystemExit(f"gpu_e2e: {algorithm} sharded: peak memory above {args.max_gib} GiB: {over}")
        assert trainer.processes.sharded and row["optimizer_steps"] > 0
        del trainer, pipe
        if device.type == "cuda":
            torch.cuda.empty_cache()


def format_row(r: dict) -> str:
    peak = lambda p: f"{r[f'{p}_peak_gib']:.1f} GiB" if f"{p}_peak_gib" in r else "-"
    per = lambda s, n: f"{s / n:.3f}" if n else "-"
    return (f"| {r['algorithm']} | {r['iteration_s']:.1f} | {r['rollout_s']:.1f} ({peak('rollout')}) | "
            f"{r['scoring_s']:.1f} ({peak('scoring')}) | {r['training_s']:.1f} ({peak('training')}) | "
            f"{r['nfe_rollout']} / {r['nfe_train']} | {per(r['rollout_s'], r['nfe_rollout'])} | "
            f"{per(r['training_s'], r['nfe_train'])} |")


HEADER = ("| algorithm | iteration s | rollout s (peak) | scoring s (peak) | training s (peak) | NFE rollout / train "
          "| s / rollout NFE | s / training NFE |\n|---|---|---|---|---|---|---|---|")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--smoke", action="store_true", help="toy shapes on the CPU (checks the code path)")
    parser.add_argument("--parts", nargs="+", choices=["dag", "flux", "fsdp", "sd35", "qwenimage"],
                        default=["dag", "flux", "fsdp"],
                        help="fsdp runs only on a machine with 2 or more GPUs (2 CPU processes with --smoke); "
                             "sd35 and qwenimage (SD3.5-Medium, Qwen-Image at their recipes' shapes) on request")
    parser.add_argument("--fsdp-worker", type=Path, help=argparse.SUPPRESS)  # one process of part 3
    parser.add_argument("--algorithms", nargs="+", choices=ALGORITHMS, default=list(ALGORITHMS))
    parser.add_argument("--resolution", type=int, default=None, help="default 720 (paper), 32 with --smoke")
    parser.add_argument("--group-size", type=int, default=None, help="default 12 (paper), 2 with --smoke")
    parser.add_argument("--max-gib", type=float, default=70.0, help="fail if a phase peaks above this")
    parser.add_argument("--keep", action="store_true", help="keep the work directory")
    args = parser.parse_args()
    # sd35 / qwenimage: their recipes' resolution and group size unless given
    args.family_resolution, args.family_group_size = args.resolution, args.group_size
    args.resolution = args.resolution or (32 if args.smoke else 720)
    args.group_size = args.group_size or (2 if args.smoke else 12)
    if args.fsdp_worker:
        fsdp_worker(args, args.fsdp_worker)
        return
    if not args.smoke and not torch.cuda.is_available():
        print("gpu_e2e: no CUDA device; run with --smoke to check the code path on the CPU")
        return
    work = Path(tempfile.mkdtemp(prefix="egrpo-gpu-e2e-"))
    os.environ.setdefault("MLFLOW_ARTIFACT_LOCATION", str(work / "mlruns"))
    card = torch.cuda.get_device_name() if torch.cuda.is_available() and not args.smoke else "CPU (smoke)"
    print(f"gpu_e2e on {card}, torch {torch.__version__}, work dir {work}", flush=True)
    try:
        if "dag" in args.parts:
            dag = run_dag("cpu" if args.smoke else "cuda", work / "dag")
            print(f"part 1: micro DAG on {dag['device']}: {dag['train_runs']} train runs, {dag['wall_s']:.0f} s", flush=True)
        if "flux" in args.parts:
            print(f"part 2: one iteration per algorithm, {args.resolution} px, G = {args.group_size}\n{HEADER}", flush=True)
            rows = run_flux(args, work / "flux")
            peaks = {(r["algorithm"], p): r[f"{p}_peak_gib"] for r in rows for p in ("rollout", "scoring", "training")
                     if f"{p}_peak_gib" in r}
            over = {k: v for k, v in peaks.items() if v > args.max_gib}
            if over:
                raise SystemExit(f"gpu_e2e: peak memory above {args.max_gib} GiB: {over}")
        if "fsdp" in args.parts:
            launch_fsdp(args, work / "fsdp")
        for part in ("sd35", "qwenimage"):
            if part in args.parts:
                rows = run_family(args, part, work / part)
                over = {(r["algorithm"], p): r[f"{p}_peak_gib"] for r in rows for p in ("rollout", "scoring", "training")
                        if r.get(f"{p}_peak_gib", 0) > args.max_gib}
                if over:
                    raise SystemExit(f"gpu_e2e: {part}: peak memory above {args.max_gib} GiB: {over}")
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
    print("gpu_e2e: all parts passed", flush=True)


if __name__ == "__main__":
    main()
