"""How a train job becomes processes: one node, or several through SLURM and torch.distributed.

One node (`resources.train.gpu` G > 1): `egrpo train --gpus G` replaces itself by
`accelerate launch --num_processes G`, one process per GPU.

Several nodes (`resources.train.nodes` N > 1, SLURM only): the train rule runs

    srun --nodes N --ntasks-per-node 1 --kill-on-bad-exit=1 egrpo train --nodes N --gpus G ...

and each of the N tasks is one node's launcher: torch.distributed's own (torchrun,
`torch.distributed.run`) with

    --nnodes N  --node-rank $SLURM_NODEID  --nproc-per-node G  --master-addr A  --master-port P

The rendezvous comes from SLURM's environment alone, the same on every node:

- A: the first host of the allocation (`scontrol show hostnames $SLURM_JOB_NODELIST`), as the address
  SLURM itself reaches it at (its `NodeAddr` in `scontrol show node`): a node's name need not
  resolve as a host name.
- P: `EGRPO_MASTER_PORT` when set, else 20000 + SLURM_JOB_ID mod 20000 (two jobs that share a
  first node get different ports).

The N × G processes form one data-parallel job: `train.prompts_per_iteration` is still the
recipe's count over all of them. A process that fails ends its node's launcher (torchrun stops the
node's other workers) and `srun --kill-on-bad-exit` the other nodes; a process that waits on a
peer that hangs gives up after `train.peer_timeout_s` with one line (`egrpo/train/trainer.py`).
"""
from __future__ import annotations

import logging
import os
import subprocess
from dataclasses import dataclass

from egrpo.errors import UserError

log = logging.getLogger("egrpo")


@dataclass(frozen=True)
class Rendezvous:
    nnodes: int
    node_rank: int
    master_addr: str
    master_port: int


def _scontrol(*args: str) -> str:
    out = subprocess.run(["scontrol", *args], capture_output=True, text=True, timeout=60)
    if out.returncode != 0:
        raise UserError(f"scontrol {' '.join(args)}: {(out.stderr.strip() or 'failed').splitlines()[-1]}")
    return out.stdout


def node_address(name: str) -> str:
    """The address SLURM reaches a node at (`NodeAddr`), else its name."""
    for field in _scontrol("show", "node", name, "-o").split():
        if field.startswith("NodeAddr="):
            return field.split("=", 1)[1] or name
    return name


def slurm_rendezvous(nodes: int, env=os.environ) -> Rendezvous:
    """This node's place in an N-node job step, from SLURM's environment."""
    if "SLURM_NODEID" not in env or "SLURM_JOB_NODELIST" not in env:
        raise UserError(f"--nodes {nodes}: a train job over several nodes runs as one SLURM task per node "
                        "(the train rule starts them with srun under `--profile slurm`); this process is not "
                        "a SLURM task (no SLURM_NODEID / SLURM_JOB_NODELIST)")
    step_nodes = int(env.get("SLURM_STEP_NUM_NODES") or env.get("SLURM_NNODES") or env.get("SLURM_JOB_NUM_NODES") or 0)
    if step_nodes != nodes:
        raise UserError(f"--nodes {nodes}: this SLURM step spans {step_nodes} node(s) "
                        f"(SLURM_NNODES); resources.train.nodes and the allocation disagree")
    hosts = _scontrol("show", "hostnames", env["SLURM_JOB_NODELIST"]).split()
    if len(hosts) < nodes:
        raise UserError(f"--nodes {nodes}: the allocation {env['SLURM_JOB_NODELIST']} has {len(hosts)} node(s)")
    port = env.get("EGRPO_MASTER_PORT")
    if port is None:
        port = 20000 + int(env.get("SLURM_JOB_ID", "0")) % 20000
    return Rendezvous(nnodes=nodes, node_rank=int(env["SLURM_NODEID"]), master_addr=node_address(hosts[0]),
                      master_port=int(port))


def run_node(nodes: int, gpus: int, argv: list[str]) -> int:
    """This node's launcher: torchrun with G processes (one on a CPU node) that join the others
    at the rendezvous; returns the exit code of the first process that failed (0 when none did).
    The failed process has printed its own one line; torchrun's report of it is not repeated."""
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.run import get_args_parser, run

    rdzv = slurm_rendezvous(nodes)
    per_node = max(gpus, 1)
    args = get_args_parser().parse_args([
        "--nnodes", str(rdzv.nnodes), "--node-rank", str(rdzv.node_rank), "--nproc-per-node", str(per_node),
        "--master-addr", rdzv.master_addr, "--master-port", str(rdzv.master_port), "--max-restarts", "0",
        "--module", "egrpo", *argv])
    log.info("node %d of %d: %d process(es), rendezvous %s:%d", rdzv.node_rank, rdzv.nnodes, per_node,
             rdzv.master_addr, rdzv.master_port)
    for name in ("torch.distributed.elastic", "torch.distributed.run"):
        logging.getLogger(name).setLevel(logging.CRITICAL)  # its own lines; a failed worker has printed its one line
    try:
        run(args)
    except ChildFailedError as error:
        _, failure = error.get_first_failure()
        code = failure.exitcode
        return code if code > 0 else 128 + abs(code)
    return 0


def relaunch_with_accelerate(gpus: int, argv: list[str]) -> None:
    """Replace this process by `accelerate launch` with one process per GPU (data parallel, one node)."""
    command = ["accelerate", "launch", "--multi_gpu", "--num_machines", "1", "--num_processes", str(gpus),
               "-m", "egrpo", *argv]
    log.info("launching: %s", " ".join(command))
    os.execvp(command[0], command)


def worker_argv(argv: list[str]) -> list[str]:
    """The command line without --gpus / --nodes: what each launched process runs."""
    out, skip = [], False
    for arg in argv:
        if skip:
            skip = False
        elif arg in ("--gpus", "--nodes"):
            skip = True
        elif not arg.startswith(("--gpus=", "--nodes=")):
            out.append(arg)
    return out


def launched() -> bool:
    """True in a process that a launcher started (torchrun / accelerate set WORLD_SIZE)."""
    return "WORLD_SIZE" in os.environ

