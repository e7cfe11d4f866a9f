#!/usr/bin/env bash
# A one-machine SLURM cluster (controller and node on localhost) for trying and testing --executor slurm.
set -euo pipefail

usage() {
  cat <<'USAGE'
usage: scripts/slurm_local.sh start|stop|status [--base DIR]

start   install Debian's munge, slurmctld, slurmd and slurm-client if missing (root, apt-get), write a
        slurm.conf for this machine (one node, one partition "debug", no accounting), start munged,
        slurmctld and slurmd, and wait until the node is idle. Safe to re-run: what runs is left running.
stop    cancel every job and stop the daemons.
status  print sinfo, or say that no cluster answers.

State, logs and pid files go to --base (default /tmp/lighthubert_slurm). Without accounting (slurmdbd), submitit
cannot tell a job that died without a result from one still running: fine for tests, not for a real site.
USAGE
}

ACTION="${1:-}"
shift || true
BASE=/tmp/lighthubert_slurm
while [[ $# -gt 0 ]]; do
  case "$1" in
    --base) BASE="$2"; shift 2 ;;
    -h|--help) usage; exit 0 ;;
    *) echo "slurm_local.sh: unknown option $1 (see --help)" >&2; exit 2 ;;
  esac
done
if [[ "$ACTION" == "-h" || "$ACTION" == "--help" ]]; then usage; exit 0; fi

say() { echo "[slurm_local] $*"; }

wait_until() {  # seconds what command...
  local limit=$1 what=$2 end
  shift 2
  end=$(( $(date +%s) + limit ))
  until "$@" >/dev/null 2>&1; do
    if (( $(date +%s) >= end )); then say "error: no $what after ${limit}s (logs: $BASE/log/)" >&2; return 1; fi
    sleep 0.3
  done
}

alive() {  # pidfile: the daemon it names still runs (a stale file's pid may belong to another process)
  [[ -s "$1" ]] || return 1
  local pid
  pid="$(cat "$1")"
  kill -0 "$pid" 2>/dev/null && [[ "$(cat "/proc/$pid/comm" 2>/dev/null)" == "$(basename "$1" .pid)" ]]
}

node_ready() {
  [[ "$(sinfo -h -N -o '%t' 2>/dev/null | head -1)" =~ ^(idle|mix|alloc)$ ]]
}

start() {
  [[ "$(id -u)" == 0 ]] || { say "error: starting the daemons needs root (they switch to the munge/slurm users)" >&2; exit 2; }
  local missing=() pkg
  for pkg in munge slurm-client slurmctld slurmd; do
    dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
  done
  if (( ${#missing[@]} )); then
    say "apt-get install ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null 2>&1 || {
      apt-get update -qq >/dev/null
      apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
    }
  fi
  mkdir -p "$BASE"/{state,spool,log} /run/munge /etc/slurm
  chown slurm:slurm "$BASE/state" "$BASE/log"
  chmod 755 "$BASE" "$BASE/log" /run/munge
  chown munge:munge /run/munge
  local host
  host="$(hostname -s)"
  getent hosts "$host" >/dev/null || echo "127.0.0.1 $host" >> /etc/hosts
  if [[ ! -s /etc/munge/munge.key ]]; then
    runuser -u munge -- mungekey --create --keyfile=/etc/munge/munge.key
  fi
  if ! munge -n 2>/dev/null | unmunge >/dev/null 2>&1; then
    runuser -u munge -- /usr/sbin/munged --force
    wait_until 20 munged sh -c 'munge -n | unmunge'
  fi
  # the node as slurmd sees it; memory with headroom, or slurmd drains a node that reports less
  local cpus mem
  cpus="$(slurmd -C | sed -n 's/.*CPUs=\([0-9]*\).*/\1/p' | head -1)"
  mem="$(slurmd -C | sed -n 's/.*RealMemory=\([0-9]*\).*/\1/p' | head -1)"
  cat > /etc/slurm/slurm.conf <<EOF
ClusterName=local
SlurmctldHost=$host(127.0.0.1)
SlurmUser=slurm
AuthType=auth/munge
# requeued jobs may start again after cred_expire seconds (default 120)
AuthInfo=cred_expire=10
CredType=cred/munge
MailProg=/bin/true
StateSaveLocation=$BASE/state
SlurmdSpoolDir=$BASE/spool
SlurmctldPidFile=$BASE/slurmctld.pid
SlurmdPidFile=$BASE/slurmd.pid
SlurmctldLogFile=$BASE/log/slurmctld.log
SlurmdLogFile=$BASE/log/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
MpiDefault=none
SwitchType=switch/none
SchedulerType=sched/backfill
SchedulerParameters=bf_interval=2,sched_interval=5
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
ReturnToService=2
JobRequeue=1
NodeName=$host NodeAddr=127.0.0.1 CPUs=$cpus RealMemory=$(( mem * 9 / 10 )) State=UNKNOWN
PartitionName=debug Nodes=$host Default=YES MaxTime=INFINITE State=UP
EOF
  local daemon
  for daemon in slurmctld slurmd; do
    if ! alive "$BASE/$daemon.pid" && ! "/usr/sbin/$daemon"; then
      say "error: $daemon did not start; the end of $BASE/log/$daemon.log:" >&2
      tail -5 "$BASE/log/$daemon.log" >&2 || true
      exit 1
    fi
  done
  wait_until 60 "idle node" node_ready
  say "running: $(sinfo -h -o '%P %D node(s) %t' | head -1); stop with: scripts/slurm_local.sh stop"
}

stop() {
  command -v scancel >/dev/null 2>&1 && scancel --user "$(id -un)" 2>/dev/null || true
  local name
  local name pid tries
  for name in slurmd slurmctld; do
    if alive "$BASE/$name.pid"; then
      pid="$(cat "$BASE/$name.pid")"
      kill "$pid"
      # slurmctld saves its state before it exits: a start right after must not find it still alive
      for (( tries = 0; tries < 100; tries++ )); do
        kill -0 "$pid" 2>/dev/null || break
        sleep 0.3
      done
      kill -0 "$pid" 2>/dev/null && kill -9 "$pid"
      say "stopped $name"
    fi
    rm -f "$BASE/$name.pid"
  done
  pkill -x munged 2>/dev/null && say "stopped munged" || true
}

case "$ACTION" in
  start) start ;;
  stop) stop ;;
  status) if node_ready; then sinfo; else say "no SLURM cluster answers"; exit 1; fi ;;
  *) usage >&2; exit 2 ;;
esac
