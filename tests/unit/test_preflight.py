"""The SLURM preflight's reading of sinfo and its verdicts, on canned sinfo output (no cluster)."""
import math

import pytest

from egrpo.runtime.slurm import gres_gpus, message, minutes, parse_sinfo, preflight, request

SINFO = """gpu*|64|512000|gpu:a100:8(S:0-1)|2-00:00:00
gpu*|96|256000|gpu:4,shard:8|2-00:00:00
cpu|128|1000000|(null)|infinite
short|8|16000|gpu:1|30:00
"""


def test_gres_and_time_limits_parse_like_slurm_writes_them():
    assert [gres_gpus(g) for g in ("gpu:4", "gpu:a100:4(S:0-1)", "gpu:2,shard:8", "(null)", "", "gpu")] == [4, 4, 2, 0, 0, 1]
    assert minutes("1-00:00:00") == 1440 and minutes("2:00:00") == 120 and minutes("30:00") == 30
    assert minutes("45") == 45 and minutes("1-12") == 1440 + 12 and math.isinf(minutes("infinite"))
    assert math.isinf(minutes("UNLIMITED"))
    nodes = parse_sinfo(SINFO)
    assert [(n.partition, n.cpus, n.mem_mb, n.gpus, n.max_minutes, n.default) for n in nodes] == [
        ("gpu", 64, 512000, 8, 2880, True), ("gpu", 96, 256000, 4, 2880, True),
        ("cpu", 128, 1000000, 0, math.inf, False), ("short", 8, 16000, 1, 30, False)]


def test_requests_read_the_slurm_plugins_resource_names():
    assert request({"mem_mb": 4000, "cpus_per_task": 8, "gpu": 2, "runtime": 60, "slurm_partition": "gpu"}) == {
        "partition": "gpu", "cpus_per_task": 8, "mem_mb": 4000, "gpu": 2, "runtime": 60.0, "nodes": 1}
    # a train job over 2 nodes as common.smk writes it: per-node gres, tasks = nodes
    assert request({"nodes": 2, "tasks": 2, "mpi": "srun", "gres": "gpu:8", "mem_mb": 400000})["nodes"] == 2
    asked = request({"mem_mb_per_cpu": 1000, "gres": "gpu:a100:2"}, threads=4)
    assert (asked["cpus_per_task"], asked["mem_mb"], asked["gpu"], asked["partition"]) == (4, 4000, 2, None)


def job(rule, **resources):
    return (rule, resources, 1)


def test_jobs_that_fit_some_node_pass_and_the_rest_are_named():
    nodes = parse_sinfo(SINFO)
    fits = [job("train", slurm_partition="gpu", gpu=8, mem_mb=500000, cpus_per_task=64, runtime=2880),
            job("train", slurm_partition="gpu", gpu=4, cpus_per_task=96),         # the other node
            job("report", mem_mb=4000),                                             # default partition: gpu
            job("evaluate", slurm_partition="short", gpu=1, runtime=30)]
    assert preflight(fits, nodes) == []
    problems = preflight([job("train", slurm_partition="gpu", gpu=8, cpus_per_task=8, runtime=3000),
                          job("train", slurm_partition="gpu", gpu=16),            # the same rule: reported once
                          job("profile", slurm_partition="short", mem_mb=32000),
                          job("evaluate", slurm_partition="gpu", gpu=8, cpus_per_task=80),  # no single node
                          job("build_model", slurm_partition="debug")], nodes)
    assert problems == [
        "rule train: runtime=3000 > 2880 (the most a node of partition 'gpu' gives)",
        "rule profile: mem_mb=32000 > 16000 (the most a node of partition 'short' gives)",
        "rule evaluate: cpus_per_task=80, mem_mb=0, gpu=8 together, which no single node of partition 'gpu' has",
        "rule build_model: partition 'debug' does not exist (sinfo lists ['cpu', 'gpu', 'short']); set slurm_partition",
    ]
    line = message(problems)
    assert "\n" not in line and line.startswith("egrpo: slurm preflight: no node can ever run these jobs: rule train")


def test_a_job_over_several_nodes_needs_that_many_nodes_that_fit():
    nodes = parse_sinfo(SINFO)
    # partition gpu: one node gives 8 GPUs / 64 CPUs, the other 4 GPUs / 96 CPUs
    assert preflight([job("train", slurm_partition="gpu", nodes=2, gres="gpu:4", cpus_per_task=32)], nodes) == []
    assert preflight([job("train", slurm_partition="gpu", nodes=2, gres="gpu:8", cpus_per_task=32)], nodes) == [
        "rule train: nodes=2 > 1 (the nodes of partition 'gpu' that give cpus_per_task=32, mem_mb=0, gpu=8 each)"]
    assert preflight([job("train", slurm_partition="gpu", nodes=3, gres="gpu:1")], nodes) == [
        "rule train: nodes=3 > 2 (the nodes of partition 'gpu' that give cpus_per_task=1, mem_mb=0, gpu=1 each)"]


@pytest.mark.parametrize("bad", ["gpu*|x|1|(null)|1:00", "gpu*|4|1"])
def test_unreadable_sinfo_is_an_error(bad):
    with pytest.raises(ValueError):
        parse_sinfo(bad)
