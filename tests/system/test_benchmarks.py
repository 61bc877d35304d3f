"""Smoke runs of benchmarks at toy size: they start, check what they check, and print RESULT."""
import subprocess
import sys

from helpers import ROOT


def run(*args):
    result = subprocess.run([sys.executable, *args], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    return result.stdout


def test_rollout_benchmark_toy():
    out = run("benchmarks/rollout.py", "--tiny", "--num-steps", "4", "--group-size", "2")
    assert "RESULT rollout_speedup " in out and "RESULT rollout_speedup_vs_recompute " in out  # and its
    # batched == one-at-a-time assertion held against both references
    calls = {line.split()[0]: [int(v) for v in line.split()[3:5]] for line in out.splitlines()
             if line.split()[:1] in (["ours"], ["official"], ["recompute"])}
    # N = 4, G = 2, the quantile plan's 3 entries, strides [1, 2]: the official reference is batch 1
    # (calls = sample-forwards) with a full anchor of N calls; ours batches (fewer calls, fewer forwards)
    assert calls["official"][0] == calls["official"][1] and calls["recompute"][0] == calls["recompute"][1]
    assert calls["ours"][0] < calls["ours"][1] < calls["official"][1] < calls["recompute"][1]
    # sample-forwards against the closed forms (docs/design.md §3), with c(s, k, g) = ceil((N - s - k) / g):
    #   ours      s_max + 1 + sum_entries G * sum_g c          (anchor to s_max, shared branching velocity)
    #   official  N + sum_entries G * (1 + sum_g c)            (full anchor, one branching velocity per member)
    #   recompute sum_entries G * (s + 1 + sum_g c)            (every member re-integrates its prefix)
    import ast
    import math

    plan = ast.literal_eval(next(l for l in out.splitlines() if l.startswith("plan (start, length):")).split(":", 1)[1])
    n, g = 4, 2

    def c(s, k):
        return sum(math.ceil((n - s - k) / stride) for stride in (1, 2))

    assert calls["ours"][1] == max(s for s, _ in plan) + 1 + sum(g * c(s, k) for s, k in plan)
    assert calls["official"][1] == n + sum(g * (1 + c(s, k)) for s, k in plan)
    assert calls["recompute"][1] == sum(g * (s + 1 + c(s, k)) for s, k in plan)


def test_flux_gpu_benchmark_toy_and_skip():
    out = run("benchmarks/flux_gpu.py", "--tiny", "--device", "cpu", "--resolution", "64", "--group-size", "2",
              "--text-tokens", "8", "--repeats", "1", "--peak-tflops", "1")
    assert "forward+backward" in out and "RESULT flux_gpu_mfu" in out


def test_nfe_benchmark_toy():
    out = run("benchmarks/nfe.py", "--num-steps", "4", "--group-size", "2")
    assert "RESULT nfe_egrpo_over_dancegrpo" in out
    for line in out.splitlines():  # measured == closed form for every algorithm
        parts = line.split()
        if parts and parts[0] in ("egrpo", "dancegrpo", "mixgrpo", "flowgrpo", "branchgrpo", "diffusionnft"):
            assert parts[1] == parts[2] and parts[3] == parts[4], line
    assert "diffusionnft" in out and "branchgrpo" in out


def test_recipe_check_tool(tmp_path, tiny_model_dir):
    """tools/recipe_check.py: one iteration per algorithm with its default recipe."""
    import yaml

    from helpers import micro_config

    cfg = micro_config(tmp_path, sampling={"group_size": 4})
    path = tmp_path / "micro.yaml"
    path.write_text(yaml.safe_dump(cfg))
    out = run("tools/recipe_check.py", "--config", str(path), "--model", str(tiny_model_dir))
    assert out.count("optimizer steps") == 6
    assert "one tree per prompt: splits at [0, 3, 6, 9]" in out and "16 leaves" in out   # branchgrpo's 20 steps
    assert "deterministic dpm2 steps" in out and "optimizer steps 1;" in out   # diffusionnft
    assert "shared initial noise: True" in out and "shared initial noise: False" in out  # dancegrpo, flowgrpo
    assert "never step 3: True" in out


def test_bf16_ratio_benchmark_toy():
    """The ratio check evaluates transitions unit by unit as the trainer does: fp32 ratio 1 up to float error."""
    out = run("benchmarks/bf16_ratio.py", "--device", "cpu", "--prompts", "1", "--algorithms", "egrpo", "dancegrpo")
    values = {line.split()[1]: float(line.split()[2]) for line in out.splitlines() if line.startswith("RESULT")}
    assert set(values) == {f"bf16_ratio_{d}_{a}" for d in ("float32", "bfloat16") for a in ("egrpo", "dancegrpo")}
    assert values["bf16_ratio_float32_egrpo"] < 1e-6 and values["bf16_ratio_float32_dancegrpo"] < 1e-6


def test_iteration_benchmark_toy():
    out = run("benchmarks/iteration.py", "--tiny")
    assert "RESULT iteration_over_floor " in out and "floor (sum)" in out


def test_memory_benchmark_one_iteration():
    """From a fresh clone, on the micro config (config/tinyworld.yaml's run differs only in size)."""
    out = run("benchmarks/memory.py", "--iterations", "1", "--prompts-per-iteration", "1", "--config", "tests/data/micro.yaml",
              "--skip-runtime")
    assert "runtime only: not measured" in out
    ratio = float(next(l for l in out.splitlines() if l.startswith("RESULT peak_rss_over_state")).split()[-1])
    assert ratio > 1   # a process holds more than its weights, gradients and AdamW moments


def test_gpu_e2e_smoke_runs_every_algorithm_through_the_trainer():
    """benchmarks/gpu_e2e.py at toy shapes on the CPU (its Snakemake part is covered by test_dag):
    one iteration of each algorithm with paper.yaml's recipe, a row per algorithm with each phase's time."""
    out = run("benchmarks/gpu_e2e.py", "--smoke", "--parts", "flux")
    rows = [line.split("|")[1:-1] for line in out.splitlines() if line.startswith("| ") and "algorithm" not in line]
    assert [r[0].strip() for r in rows] == ["egrpo", "dancegrpo", "mixgrpo", "flowgrpo", "branchgrpo", "diffusionnft"]
    for r in rows:
        rollout_nfe, train_nfe = (int(v) for v in r[5].split("/"))
        assert rollout_nfe > 0 and train_nfe > 0 and float(r[1]) > 0
    assert "gpu_e2e: all parts passed" in out
    assert "no CUDA device" in run("benchmarks/gpu_e2e.py")  # without --smoke it needs a GPU, and says so


def test_gpu_e2e_smoke_shards_full_fine_tuning_over_two_processes():
    """Part 3 of gpu_e2e.py at toy shapes: paper.yaml's full fine-tuning sharded over 2 CPU processes."""
    out = run("benchmarks/gpu_e2e.py", "--smoke", "--parts", "fsdp", "--algorithms", "dancegrpo", "flowgrpo")
    assert "full fine-tuning sharded over 2 processes" in out
    rows = [line.split("|")[1:-1] for line in out.splitlines() if line.startswith("| ") and "algorithm" not in line]
    assert [r[0].strip() for r in rows] == ["dancegrpo", "flowgrpo"]
    assert all(int(v) > 0 for r in rows for v in r[5].split("/"))
    assert "gpu_e2e: all parts passed" in out


def test_gpu_e2e_smoke_runs_the_other_families_through_the_trainer():
    """Parts sd35 and qwenimage at their tiny instances: one iteration per algorithm with each family's
    recipe (config/sd35.yaml, config/qwenimage.yaml), true CFG counted in the rollout NFE."""
    out = run("benchmarks/gpu_e2e.py", "--smoke", "--parts", "sd35", "qwenimage", "--algorithms", "egrpo", "flowgrpo")
    assert "part sd35:" in out and "guidance 4.5" in out and "part qwenimage:" in out
    rows = [line.split("|")[1:-1] for line in out.splitlines() if line.startswith("| ") and "algorithm" not in line]
    assert [r[0].strip() for r in rows] == ["egrpo", "flowgrpo"] * 2
    assert all(int(v) > 0 for r in rows for v in r[5].split("/"))
    assert "gpu_e2e: all parts passed" in out


def test_gpu_e2e_builds_the_published_shapes_of_sd35_and_qwen_image():
    """The paper-shape pipelines (egrpo/models/presets.py, built on the meta device: no memory) have the
    published sizes: FLUX.1-dev's 11.9 B transformer with T5-XXL; SD3.5-Medium's 2.24 B transformer with CLIP-L, CLIP-G and T5-XXL; Qwen-Image's 20.4 B transformer
    with Qwen2.5-VL 7B (8.3 B with its vision tower)."""
    import importlib.util

    import torch

    from egrpo.config import load
    from egrpo.runtime.io import load_prompts

    spec = importlib.util.spec_from_file_location("gpu_e2e", ROOT / "benchmarks/gpu_e2e.py")
    g = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(g)
    words = [p.text for p in load_prompts(str(ROOT / "config/prompts/train.txt"), "prompts.train")]
    billions = lambda m: round(sum(p.numel() for p in m.parameters()) / 1e9, 2)
    sd35 = g.family_shaped_pipeline("sd35", False, torch.device("meta"), words, load(ROOT / "config/sd35.yaml"))
    assert (billions(sd35.transformer), billions(sd35.text_encoder), billions(sd35.text_encoder_2),
            billions(sd35.text_encoder_3)) == (2.24, 0.12, 0.69, 4.76)
    qwen = g.family_shaped_pipeline("qwenimage", False, torch.device("meta"), words, load(ROOT / "config/qwenimage.yaml"))
    assert (billions(qwen.transformer), billions(qwen.text_encoder), billions(qwen.vae)) == (20.43, 8.29, 0.13)
    flux = g.flux_shaped_pipeline(False, torch.device("meta"), words, load(ROOT / "config/paper.yaml"))
    assert (billions(flux.transformer), billions(flux.text_encoder_2)) == (11.9, 4.76)
    assert flux.transformer.dtype == torch.bfloat16
