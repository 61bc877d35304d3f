#!/usr/bin/env bash
# A throw-away single-node SLURM on localhost for egrpo's tests (Debian, run as root, no systemd).
#
#   tools/slurm_local.sh up      install Debian's slurmctld/slurmd/munge if missing, start them
#   tools/slurm_local.sh down    stop what `up` started
#   tools/slurm_local.sh status
#
# The node is this host with FAKE_GPUS gres/gpu entries backed by character devices, so jobs that
# ask for --gpus=N are scheduled (nothing runs on a GPU). There is no slurmdbd: `sacct` does not
# work, and Snakemake's slurm plugin must poll with `slurm-status-command: squeue` (profiles/slurm).
# Knobs: SLURM_LOCAL_DIR (/tmp/egrpo-slurm), FAKE_GPUS (2 per node), PARTITION (debug), NODES (1).
# NODES=2: two slurmd on this host (nodes n1, n2 with NodeAddr 127.0.0.1 and their own ports), so that
# jobs over two nodes (`srun --nodes 2`) run here; each node offers this host's CPUs and memory.
set -euo pipefail

DIR=${SLURM_LOCAL_DIR:-/tmp/egrpo-slurm}
FAKE_GPUS=${FAKE_GPUS:-2}
PARTITION=${PARTITION:-debug}
NODES=${NODES:-1}
MARK='# written by egrpo tools/slurm_local.sh'

say() { echo "slurm_local: $*" >&2; }
running() { [ -s "$1" ] && [ -d "/proc/$(cat "$1")" ] && ! grep -q '^State:.*Z' "/proc/$(cat "$1")/status" 2>/dev/null; }
retry() { local n=$1; shift; for _ in $(seq "$n"); do "$@" >/dev/null 2>&1 && return 0; sleep 0.25; done; return 1; }

install_packages() {
  if command -v slurmctld >/dev/null && command -v slurmd >/dev/null && command -v munged >/dev/null \
     && command -v sbatch >/dev/null; then return; fi
  say "installing slurmctld slurmd slurm-client munge (apt)"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends slurmctld slurmd slurm-client munge >/dev/null
}

munge_up() {
  if [ ! -s /etc/munge/munge.key ]; then
    install -d -o munge -g munge -m 0700 /etc/munge
    runuser -u munge -- /usr/sbin/mungekey -c
  fi
  chown munge:munge /etc/munge/munge.key
  chmod 0400 /etc/munge/munge.key
  install -d -o munge -g munge -m 0755 /run/munge
  if ! running /run/munge/munged.pid; then
    rm -f /run/munge/munge.socket.2*
    runuser -u munge -- /usr/sbin/munged
    touch "$DIR/munge.ours"
  fi
  retry 40 sh -c 'munge -n | unmunge' || { say "munge does not answer"; exit 1; }
}

# the node names: this host's short name, or n1..nN for NODES > 1
node_names() { if [ "$NODES" = 1 ]; then hostname -s; else seq -f 'n%g' 1 "$NODES"; fi; }

node_lines() {  # $1: `slurmd -C`'s NodeName=<host> CPUs=... line
  if [ "$NODES" = 1 ]; then echo "$1 NodeAddr=127.0.0.1 Gres=gpu:$FAKE_GPUS State=UNKNOWN"; return; fi
  local sizes=${1#NodeName=* } i
  for ((i = 1; i <= NODES; i++)); do
    echo "NodeName=n$i NodeHostname=$(hostname -s) NodeAddr=127.0.0.1 Port=$((6817 + i)) $sizes Gres=gpu:$FAKE_GPUS State=UNKNOWN"
  done
}

slurmd_pids() { for name in $(node_names); do echo "$DIR/slurmd-$name.pid"; done; }

configure() {
  local node host
  host=$(hostname -s)
  node=$(slurmd -C | head -n 1)   # NodeName=<host> CPUs=... RealMemory=...
  install -d /etc/slurm
  cat > /etc/slurm/slurm.conf <<CONF
$MARK
ClusterName=egrpo
SlurmctldHost=localhost
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
ReturnToService=2
SlurmctldPidFile=$DIR/slurmctld.pid
SlurmdPidFile=$DIR/slurmd-%n.pid
StateSaveLocation=$DIR/state
SlurmdSpoolDir=$DIR/spool-%n
SlurmctldLogFile=$DIR/log/slurmctld.log
SlurmdLogFile=$DIR/log/slurmd-%n.log
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
# a job without --mem would otherwise take the node's whole memory and run alone
DefMemPerCPU=500
# keep finished jobs visible to "squeue --states=all" (the plugin's status polling) for 10 min
MinJobAge=600
AccountingStorageType=accounting_storage/none
JobAcctGatherType=jobacct_gather/none
JobCompType=jobcomp/filetxt
JobCompLoc=$DIR/log/jobcomp.txt
GresTypes=gpu
$(node_lines "$node")
PartitionName=$PARTITION Nodes=ALL Default=YES MaxTime=INFINITE State=UP
CONF
  # each gres line needs its own device file, else slurmd drops it and the node goes INVAL
  { echo "$MARK"; echo "AutoDetect=off"
    for ((i = 0; i < FAKE_GPUS; i++)); do
      dev=$DIR/fakegpu$i
      [ -e "$dev" ] || mknod -m 666 "$dev" c 1 3
      for name in $(node_names); do echo "NodeName=$name Name=gpu File=$dev"; done
    done; } > /etc/slurm/gres.conf
}

up() {
  install_packages
  mkdir -p "$DIR"/{state,log}
  munge_up
  local all_up=1 pid name
  running "$DIR/slurmctld.pid" || all_up=0
  for pid in $(slurmd_pids); do running "$pid" || all_up=0; done
  if [ "$all_up" = 0 ]; then
    configure
    running "$DIR/slurmctld.pid" || /usr/sbin/slurmctld -i
    for name in $(node_names); do
      mkdir -p "$DIR/spool-$name"
      if [ "$NODES" = 1 ]; then running "$DIR/slurmd-$name.pid" || /usr/sbin/slurmd
      else running "$DIR/slurmd-$name.pid" || /usr/sbin/slurmd -N "$name"; fi
    done
  fi
  local state="" ready
  for _ in $(seq 80); do
    ready=1
    for name in $(node_names); do
      state=$(sinfo -h -N -n "$name" -o %T 2>/dev/null | head -n 1 || true)
      case "$state" in
        idle*|mixed*|alloc*) ;;
        drain*|inval*|down*) ready=0; scontrol update nodename="$name" state=resume >/dev/null 2>&1 || true ;;
        *) ready=0 ;;
      esac
    done
    if [ "$ready" = 1 ]; then sinfo -N -o '%N %P %c %m %G %T'; return 0; fi
    sleep 0.5
  done
  say "node not ready (state '$state')"
  tail -n 20 "$DIR"/log/*.log >&2 || true
  exit 1
}

stop() {
  running "$1" || { rm -f "$1"; return 0; }
  local pid; pid=$(cat "$1"); kill "$pid" 2>/dev/null || true
  for _ in $(seq 60); do [ -d "/proc/$pid" ] || break; sleep 0.1; done
  kill -9 "$pid" 2>/dev/null || true
  rm -f "$1"
}

down() {
  local pid
  for pid in "$DIR"/slurmd*.pid; do [ -e "$pid" ] && stop "$pid"; done
  stop "$DIR/slurmctld.pid"
  if [ -e "$DIR/munge.ours" ]; then stop /run/munge/munged.pid; rm -f "$DIR/munge.ours"; fi
  # Without a controller, every `scontrol` (Snakemake's slurm plugin asks `scontrol show config` at each
  # start, whatever the executor) retries for ~9 s; without a slurm.conf it fails at once. Our config
  # goes aside (the next `up` writes it again); a slurm.conf that is not ours stays.
  if head -n 1 /etc/slurm/slurm.conf 2>/dev/null | grep -qxF "$MARK"; then
    mkdir -p "$DIR" && mv /etc/slurm/slurm.conf "$DIR/slurm.conf.down"
  fi
  say "stopped"
}

case "${1:-up}" in
  up) up ;;
  down) down ;;
  status) for p in "$DIR/slurmctld.pid" $(slurmd_pids) /run/munge/munged.pid; do
            running "$p" && echo "$p running" || echo "$p not running"; done; sinfo 2>/dev/null || true ;;
  *) echo "usage: $0 up|down|status" >&2; exit 2 ;;
esac
