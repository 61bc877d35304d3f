"""SLURM preflight: before Snakemake submits anything, check that every job's resources fit some
node of its partition, so that a request no node can ever satisfy stops the workflow with one line
instead of being refused by sbatch or pending forever (reason PartitionConfig / Resources).

What a partition can ever give is read from `sinfo` (one line per node and partition):

    sinfo -h -N -o "%P|%c|%m|%G|%l"      partition (* = default) | CPUs | memory MB | gres | time limit

A job fits when one node of its partition has at least its CPUs (cpus_per_task, else threads),
memory (mem_mb, or mem_mb_per_cpu x CPUs), GPUs (gpu, or a gres "gpu[:type]:N"), and its runtime
(minutes) is within the partition's time limit; a job over several nodes (`nodes`: the train job)
needs that many such nodes, each of them giving those per-node sizes. The Snakefile's `onstart` calls `preflight` when
the executor is slurm.
"""
from __future__ import annotations

import re
import subprocess
from dataclasses import dataclass


@dataclass
class Node:
    partition: str
    cpus: int
    mem_mb: int
    gpus: int
    max_minutes: float      # the partition's time limit; inf when unlimited
    default: bool = False


def gres_gpus(gres: str) -> int:
    """GPUs in a gres string: "gpu:4", "gpu:a100:4(S:0-1)", "gpu:2,shard:8", "(null)" -> 4, 4, 2, 0."""
    total = 0
    for item in (gres or "").split(","):
        item = re.sub(r"\(.*?\)", "", item.strip())
        parts = item.split(":")
        if parts[0] == "gpu":
            total += int(parts[-1]) if len(parts) > 1 and parts[-1].isdigit() else 1
    return total


def minutes(limit: str) -> float:
    """A SLURM time limit in minutes: "infinite"/"UNLIMITED" -> inf, "1-00:00:00" -> 1440, "2:00:00"
    -> 120, "30:00" -> 30, "45" -> 45."""
    limit = limit.strip()
    if limit.lower() in ("infinite", "unlimited", "n/a", ""):
        return float("inf")
    days, _, rest = limit.rpartition("-")
    fields = [int(f) for f in rest.split(":")]
    if len(fields) == 1:
        hours, mins, secs = 0, fields[0], 0
    elif len(fields) == 2:
        hours, mins, secs = 0, fields[0], fields[1]
    else:
        hours, mins, secs = fields[-3:]
    return (int(days) if days else 0) * 1440 + hours * 60 + mins + secs / 60


def parse_sinfo(text: str) -> list[Node]:
    nodes = []
    for line in text.splitlines():
        if not line.strip():
            continue
        partition, cpus, mem, gres, limit = line.strip().split("|")[:5]
        nodes.append(Node(partition.rstrip("*"), int(cpus.rstrip("+")), int(mem.rstrip("+")), gres_gpus(gres),
                          minutes(limit), partition.endswith("*")))
    return nodes


def read_nodes() -> list[Node]:
    out = subprocess.run(["sinfo", "-h", "-N", "-o", "%P|%c|%m|%G|%l"], capture_output=True, text=True, timeout=60)
    if out.returncode != 0:
        raise RuntimeError(out.stderr.strip().splitlines()[-1] if out.stderr.strip() else "sinfo failed")
    return parse_sinfo(out.stdout)


def request(resources: dict, threads: int = 1) -> dict:
    """What a job asks SLURM for, from Snakemake's resources (the slurm plugin's names)."""
    cpus = int(resources.get("cpus_per_task") or threads or 1)
    mem = resources.get("mem_mb")
    if mem is None and resources.get("mem_mb_per_cpu") is not None:
        mem = int(resources["mem_mb_per_cpu"]) * cpus
    gpus = resources.get("gpu")
    if gpus is None:
        gpus = gres_gpus(str(resources.get("gres") or ""))
    return {"partition": resources.get("slurm_partition"), "cpus_per_task": cpus,
            "mem_mb": int(mem) if mem is not None else 0, "gpu": int(gpus or 0),
            "runtime": float(resources.get("runtime") or 0), "nodes": int(resources.get("nodes") or 1)}


def check(rule: str, asked: dict, nodes: list[Node]) -> str | None:
    """None when some node of the job's partition can run it, else one line saying what does not fit."""
    partition = asked["partition"] or next((n.partition for n in nodes if n.default), None)
    mine = [n for n in nodes if n.partition == partition]
    if not mine:
        known = sorted({n.partition for n in nodes})
        return f"rule {rule}: partition {partition!r} does not exist (sinfo lists {known}); set slurm_partition"
    fitting = [n for n in mine if asked["cpus_per_task"] <= n.cpus and asked["mem_mb"] <= n.mem_mb
               and asked["gpu"] <= n.gpus and asked["runtime"] <= n.max_minutes]
    if len(fitting) >= asked.get("nodes", 1):
        return None
    if fitting:
        return (f"rule {rule}: nodes={asked['nodes']} > {len(fitting)} (the nodes of partition {partition!r} that "
                f"give cpus_per_task={asked['cpus_per_task']}, mem_mb={asked['mem_mb']}, gpu={asked['gpu']} each)")
    limits = {"cpus_per_task": max(n.cpus for n in mine), "mem_mb": max(n.mem_mb for n in mine),
              "gpu": max(n.gpus for n in mine), "runtime": max(n.max_minutes for n in mine)}
    over = [f"{key}={asked[key]:g} > {limit:g}" for key, limit in limits.items() if asked[key] > limit]
    if over:
        return f"rule {rule}: {', '.join(over)} (the most a node of partition {partition!r} gives)"
    return (f"rule {rule}: cpus_per_task={asked['cpus_per_task']}, mem_mb={asked['mem_mb']}, gpu={asked['gpu']} "
            f"together, which no single node of partition {partition!r} has")


def message(problems: list[str]) -> str:
    """The one line that stops the workflow."""
    return ("egrpo: slurm preflight: no node can ever run these jobs: " + "; ".join(problems)
            + ". Lower them in the config's `resources:` or with --set-resources <rule>:<key>=<value>")


def preflight(jobs, nodes: list[Node] | None = None) -> list[str]:
    """Problems of the jobs Snakemake is about to submit (one line each, one per rule).

    jobs: Snakemake jobs (rule.name, resources, threads) or (rule, resources dict, threads) tuples.
    """
    nodes = read_nodes() if nodes is None else nodes
    problems, seen = [], set()
    for job in jobs:
        if isinstance(job, tuple):
            rule, resources, threads = job
        else:
            rule, resources, threads = job.rule.name, dict(job.resources), job.threads
        if rule in seen or getattr(job, "is_local", False):
            continue
        problem = check(rule, request(resources, threads), nodes)
        if problem:
            seen.add(rule)
            problems.append(problem)
    return problems
