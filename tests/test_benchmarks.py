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
