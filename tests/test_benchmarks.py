"""Smoke runs of benchmarks at toy size: they start, check what they check, and print RESULT."""
import subprocess
import sys

from conftest import ROOT


def run(*args):
    result = subprocess.run([sys.executable, *args], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    return result.stdout


def test_rollout_benchmark_toy():
    out = run("benchmarks/rollout.py", "--tiny", "--num-steps", "4", "--group-size", "2")
    assert "RESULT rollout_speedup" in out  # and its batched == one-at-a-time assertion held


def test_flux_gpu_benchmark_toy_and_skip():
    out = run("benchmarks/flux_gpu.py", "--tiny", "--device", "cpu", "--resolution", "64", "--group-size", "2",
              "--text-tokens", "8", "--repeats", "1", "--peak-tflops", "1")
    assert "forward+backward" in out and "RESULT flux_gpu_mfu" in out


def test_nfe_benchmark_toy():
    out = run("benchmarks/nfe.py", "--num-steps", "4", "--group-size", "2")
    assert "RESULT nfe_egrpo_over_dancegrpo" in out
    for line in out.splitlines():  # measured == closed form for every algorithm
        parts = line.split()
        if parts and parts[0] in ("egrpo", "dancegrpo", "mixgrpo", "flowgrpo"):
            assert parts[1] == parts[2] and parts[3] == parts[4], line


def test_recipe_check_tool(tmp_path, tiny_model_dir):
    """tools/recipe_check.py: one iteration per algorithm with its default recipe."""
    import yaml

    from conftest import micro_config

    cfg = micro_config(tmp_path, sampling={"group_size": 4})
    path = tmp_path / "micro.yaml"
    path.write_text(yaml.safe_dump(cfg))
    out = run("tools/recipe_check.py", "--config", str(path), "--model", str(tiny_model_dir))
    assert out.count("optimizer steps") == 4
    assert "shared initial noise: True" in out and "shared initial noise: False" in out  # dancegrpo, flowgrpo
    assert "never step 3: True" in out


def test_bf16_ratio_benchmark_toy():
    """The ratio check evaluates transitions unit by unit as the trainer does: fp32 ratio 1 up to float error."""
    out = run("benchmarks/bf16_ratio.py", "--device", "cpu", "--prompts", "1", "--algorithms", "egrpo", "dancegrpo")
    values = {line.split()[1]: float(line.split()[2]) for line in out.splitlines() if line.startswith("RESULT")}
    assert set(values) == {f"bf16_ratio_{d}_{a}" for d in ("float32", "bfloat16") for a in ("egrpo", "dancegrpo")}
    assert values["bf16_ratio_float32_egrpo"] < 1e-6 and values["bf16_ratio_float32_dancegrpo"] < 1e-6
