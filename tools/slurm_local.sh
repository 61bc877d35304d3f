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
# Knobs: SLURM_LOCAL_DIR (/tmp/egrpo-slurm), FAKE_GPUS (2), PARTITION (debug).
set -euo pipefail

DIR=${SLURM_LOCAL_DIR:-/tmp/egrpo-slurm}
FAKE_GPUS=${FAKE_GPUS:-2}
PARTITION=${PARTITION:-debug}
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
SlurmdPidFile=$DIR/slurmd.pid
StateSaveLocation=$DIR/state
SlurmdSpoolDir=$DIR/spool
SlurmctldLogFile=$DIR/log/slurmctld.log
SlurmdLogFile=$DIR/log/slurmd.log
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
# a job without --mem would otherwise take the node's whole memory and run alone
DefMemPerCPU=500
# keep finished jobs visible to `squeue --states=all` (the plugin's status polling) for 10 min
MinJobAge=600
AccountingStorageType=accounting_storage/none
JobAcctGatherType=jobacct_gather/none
JobCompType=jobcomp/filetxt
JobCompLoc=$DIR/log/jobcomp.txt
GresTypes=gpu
$node NodeAddr=127.0.0.1 Gres=gpu:$FAKE_GPUS State=UNKNOWN
PartitionName=$PARTITION Nodes=ALL Default=YES MaxTime=INFINITE State=UP
CONF
  # each gres line needs its own device file, else slurmd drops it and the node goes INVAL
  { echo "$MARK"; echo "AutoDetect=off"
    for ((i = 0; i < FAKE_GPUS; i++)); do
      dev=$DIR/fakegpu$i
      [ -e "$dev" ] || mknod -m 666 "$dev" c 1 3
      echo "NodeName=$host Name=gpu File=$dev"
    done; } > /etc/slurm/gres.conf
}

up() {
  install_packages
  mkdir -p "$DIR"/{state,spool,log}
  munge_up
  if ! { running "$DIR/slurmctld.pid" && running "$DIR/slurmd.pid"; }; then
    configure
    running "$DIR/slurmctld.pid" || /usr/sbin/slurmctld -i
    running "$DIR/slurmd.pid" || /usr/sbin/slurmd
  fi
  local host state=""
  host=$(hostname -s)
  for _ in $(seq 80); do
    state=$(sinfo -h -N -n "$host" -o %T 2>/dev/null || true)
    case "$state" in
      idle*|mixed*|alloc*) sinfo -N -o '%N %P %c %m %G %T'; return 0 ;;
      drain*|inval*|down*) scontrol update nodename="$host" state=resume >/dev/null 2>&1 || true ;;
    esac
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
  stop "$DIR/slurmd.pid"
  stop "$DIR/slurmctld.pid"
  if [ -e "$DIR/munge.ours" ]; then stop /run/munge/munged.pid; rm -f "$DIR/munge.ours"; fi
  say "stopped"
}

case "${1:-up}" in
  up) up ;;
  down) down ;;
  status) for p in "$DIR/slurmctld.pid" "$DIR/slurmd.pid" /run/munge/munged.pid; do
            running "$p" && echo "$p running" || echo "$p not running"; done; sinfo 2>/dev/null || true ;;
  *) echo "usage: $0 up|down|status" >&2; exit 2 ;;
esac
