#!/usr/bin/env bash
# A real one-node Slurm cluster on loopback for the tests, from Debian's packages (slurm-wlm).
#
#   bash scripts/slurm.sh start    # install if missing, write the config, start munged,
#                                  # slurmctld and slurmd, wait until the node is idle
#   bash scripts/slurm.sh stop     # stop the daemons this script started (by their PIDs)
#   bash scripts/slurm.sh status   # exit 0 if the node answers and is usable
#
# The cluster: one node "localhost" (127.0.0.1) with this machine's CPUs, two partitions sharing
# it ("debug", the default, and "batch"), no accounting (no slurmdbd). Every daemon runs as
# root except munged (as the munge user), as Debian packages them.
#
# `start` is idempotent: if the node already answers, it changes nothing and prints
# "already running" on stdout; otherwise it prints "started". A slurm.conf that this script did
# not write is never overwritten (start fails and says so). Progress goes to stderr.
# Every wait is bounded.
set -euo pipefail

CONF=/etc/slurm/slurm.conf
MARK="# managed by spotd scripts/slurm.sh"
STATE=/var/spool/slurmctld
SPOOL=/var/spool/slurmd
LOGDIR=/var/log/slurm
CTLD_PID=/run/slurmctld.pid
SLURMD_PID=/run/slurmd.pid
MUNGE_PID=/run/munge/munged.pid
OURS=/run/spotd-slurm.started   # PIDs of the daemons this script started, for `stop`
NODE=localhost

log() { echo "slurm.sh: $*" >&2; }
die() { log "$*"; exit 1; }

as_root() {
  if [ "$(id -u)" = 0 ]; then "$@"; else sudo -n -- "$@"; fi
}

install() {
  if command -v slurmctld >/dev/null 2>&1 && command -v slurmd >/dev/null 2>&1 \
     && command -v munged >/dev/null 2>&1 && command -v sbatch >/dev/null 2>&1; then
    return
  fi
  log "installing slurm-wlm and munge (apt-get)"
  export DEBIAN_FRONTEND=noninteractive
  as_root apt-get install -y -q slurm-wlm munge >&2 || {
    as_root apt-get update -q >&2
    as_root apt-get install -y -q slurm-wlm munge >&2
  } || die "apt-get install slurm-wlm munge failed"
  # the packages' own services are not used (no systemd here, and we start our own)
}

render_conf() {
  local cpus
  cpus=$(nproc)
  cat <<EOF
$MARK
ClusterName=spotd
SlurmctldHost=localhost(127.0.0.1)
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
MpiDefault=none
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
SchedulerType=sched/backfill
AccountingStorageType=accounting_storage/none
JobAcctGatherType=jobacct_gather/none
JobCompType=jobcomp/none
ReturnToService=2
SlurmctldPort=6817
SlurmdPort=6818
SlurmctldPidFile=$CTLD_PID
SlurmdPidFile=$SLURMD_PID
SlurmdSpoolDir=$SPOOL
StateSaveLocation=$STATE
SlurmctldLogFile=$LOGDIR/slurmctld.log
SlurmdLogFile=$LOGDIR/slurmd.log
SlurmctldTimeout=30
SlurmdTimeout=30
MessageTimeout=10
KillWait=3
MinJobAge=300
NodeName=$NODE NodeAddr=127.0.0.1 CPUs=$cpus RealMemory=1000 State=UNKNOWN
PartitionName=debug Nodes=$NODE Default=YES MaxTime=INFINITE State=UP
PartitionName=batch Nodes=$NODE MaxTime=INFINITE State=UP
EOF
}

write_conf() {  # prints "changed" when it (re)wrote the file
  if [ -f "$CONF" ] && ! head -n1 "$CONF" | grep -qF "$MARK"; then
    die "$CONF exists and was not written by this script; refusing to overwrite it"
  fi
  as_root mkdir -p /etc/slurm "$STATE" "$SPOOL" "$LOGDIR"
  if [ -f "$CONF" ] && render_conf | cmp -s - "$CONF"; then
    return 0
  fi
  render_conf | as_root tee "$CONF" >/dev/null
  echo changed
}

munge_key() {
  if [ ! -s /etc/munge/munge.key ]; then
    log "creating the munge key"
    as_root mkdir -p /etc/munge
    as_root dd if=/dev/urandom of=/etc/munge/munge.key bs=1024 count=1 status=none
  fi
  as_root chown munge:munge /etc/munge/munge.key
  as_root chmod 400 /etc/munge/munge.key
  as_root mkdir -p /run/munge /var/log/munge /var/lib/munge
  as_root chown munge:munge /run/munge /var/log/munge /var/lib/munge
  as_root chmod 755 /run/munge
}

alive() {  # alive PIDFILE: the process named in the pid file exists
  [ -s "$1" ] && kill -0 "$(cat "$1")" 2>/dev/null
}

node_state() {
  # raw: a trailing '*' (not responding) or other flag means not ready yet
  timeout 10 sinfo -h -n "$NODE" -o %T 2>/dev/null | head -n1 || true
}

wait_idle() {  # wait_idle SECONDS
  local deadline=$((SECONDS + $1)) st=""
  while [ $SECONDS -lt $deadline ]; do
    st=$(node_state)
    case "$st" in
      idle|mixed|allocated) return 0 ;;
      down|drained|drain*)
        timeout 10 scontrol update nodename="$NODE" state=resume >/dev/null 2>&1 || true ;;
    esac
    sleep 0.5
  done
  die "node $NODE is not idle after $1s (state: '${st:-no answer}'); see $LOGDIR/slurmctld.log and $LOGDIR/slurmd.log"
}

start() {
  if command -v sinfo >/dev/null 2>&1 && alive "$CTLD_PID" && alive "$SLURMD_PID"; then
    case "$(node_state)" in
      idle|mixed|allocated)
        if [ "$(write_conf)" = changed ]; then
          log "slurm.conf changed: reconfiguring the running cluster"
          timeout 30 scontrol reconfigure >&2 || die "scontrol reconfigure failed"
          wait_idle 60
        fi
        echo "already running"; return 0 ;;
    esac
  fi
  install
  write_conf >/dev/null
  munge_key
  : | as_root tee "$OURS" >/dev/null
  if ! alive "$MUNGE_PID"; then
    log "starting munged"
    as_root runuser -u munge -- /usr/sbin/munged --force >&2 || die "munged did not start"
    echo "$MUNGE_PID" | as_root tee -a "$OURS" >/dev/null
  fi
  for _ in $(seq 1 50); do
    munge -n </dev/null >/dev/null 2>&1 && break
    sleep 0.1
  done
  munge -n </dev/null | unmunge >/dev/null 2>&1 || die "munge does not work (see /var/log/munge)"
  if ! alive "$CTLD_PID"; then
    log "starting slurmctld"
    as_root /usr/sbin/slurmctld >&2 || die "slurmctld did not start (see $LOGDIR/slurmctld.log)"
    echo "$CTLD_PID" | as_root tee -a "$OURS" >/dev/null
  fi
  for _ in $(seq 1 100); do
    timeout 5 scontrol ping 2>/dev/null | grep -q UP && break
    sleep 0.1
  done
  if ! alive "$SLURMD_PID"; then
    log "starting slurmd"
    as_root /usr/sbin/slurmd -N "$NODE" >&2 || die "slurmd did not start (see $LOGDIR/slurmd.log)"
    echo "$SLURMD_PID" | as_root tee -a "$OURS" >/dev/null
  fi
  wait_idle 60
  echo "started"
}

stop_pidfile() {  # stop_pidfile PIDFILE NAME
  local pid
  [ -s "$1" ] || return 0
  pid=$(cat "$1")
  kill -0 "$pid" 2>/dev/null || return 0
  log "stopping $2 (pid $pid)"
  as_root kill -TERM "$pid" 2>/dev/null || true
  for _ in $(seq 1 100); do
    kill -0 "$pid" 2>/dev/null || return 0
    sleep 0.1
  done
  as_root kill -KILL "$pid" 2>/dev/null || true
}

stop() {
  # only what `start` started, newest first; pid files name the exact processes
  [ -f "$OURS" ] || return 0
  grep -qxF "$SLURMD_PID" "$OURS" && stop_pidfile "$SLURMD_PID" slurmd
  grep -qxF "$CTLD_PID" "$OURS" && stop_pidfile "$CTLD_PID" slurmctld
  grep -qxF "$MUNGE_PID" "$OURS" && stop_pidfile "$MUNGE_PID" munged
  as_root rm -f "$OURS"
}

status() {
  command -v sinfo >/dev/null 2>&1 || die "slurm is not installed"
  case "$(node_state)" in
    idle|mixed|allocated) echo "up"; return 0 ;;
    *) die "node $NODE is not usable (state: '$(node_state)')" ;;
  esac
}

case "${1:-}" in
  start) start ;;
  stop) stop ;;
  status) status ;;
  *) echo "usage: $0 start|stop|status" >&2; exit 2 ;;
esac
