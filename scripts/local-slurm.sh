#!/usr/bin/env bash
# A one-node SLURM on localhost for tests and demos, without systemd:
#   scripts/local-slurm.sh up       start munged (unless one runs), slurmctld, slurmd; wait until idle
#   scripts/local-slurm.sh down     stop what `up` started (by the PIDs it recorded), nothing else
#   scripts/local-slurm.sh status   print the daemons' state and sinfo
#   scripts/local-slurm.sh env      print `export SLURM_CONF=...` for the clients (eval "$(...)")
# The cluster's files live in $MIXSIM_SLURM_DIR (default /var/tmp/mixsim-slurm); the system's
# /etc/slurm is not touched. Facts behind the config: ../shared/docs/platform-notes.md, section 5.
set -euo pipefail
DIR="${MIXSIM_SLURM_DIR:-/var/tmp/mixsim-slurm}"
CONF="$DIR/slurm.conf"
export SLURM_CONF="$CONF"

die() { echo "local-slurm: $*" >&2; exit 1; }
log() { echo "local-slurm: $*"; }

require_packages() {
  local missing=()
  for b in slurmctld slurmd munged sbatch; do command -v "$b" >/dev/null || missing+=("$b"); done
  ((${#missing[@]} == 0)) || die "missing ${missing[*]}: install slurm-wlm munge libpmix-dev (scripts/setup.sh)"
  # slurmd's PMIx plugin dlopens the unversioned libpmix.so from libpmix-dev; a slurmd started
  # without it hangs every MPI step, so refuse to start instead.
  ldconfig -p | grep -q 'libpmix\.so ' || [[ -e /usr/lib/x86_64-linux-gnu/libpmix.so ]] ||
    die "libpmix.so not found: install libpmix-dev before starting slurmd"
}

alive() { [[ -f "$1" ]] && kill -0 "$(cat "$1")" 2>/dev/null; }

write_config() {
  local mem
  mem=$(slurmd -C | sed -n 's/.*RealMemory=\([0-9]*\).*/\1/p')
  [[ -n "$mem" ]] || mem=1024
  cat > "$CONF" <<CONF
# Written by scripts/local-slurm.sh: a one-node cluster on localhost for mixsim's tests.
ClusterName=mixsimci
SlurmctldHost=localhost(127.0.0.1)
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CryptoType=crypto/munge
StateSaveLocation=$DIR/ctld
SlurmdSpoolDir=$DIR/d
SlurmctldPidFile=$DIR/run/slurmctld.pid
SlurmdPidFile=$DIR/run/slurmd.pid
SlurmctldLogFile=$DIR/log/slurmctld.log
SlurmdLogFile=$DIR/log/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
MailProg=/bin/true
SchedulerType=sched/backfill
SchedulerParameters=batch_sched_delay=0,sched_min_interval=100000,bf_interval=1
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
MpiDefault=pmix
SlurmdParameters=config_overrides
EnforcePartLimits=ALL
ReturnToService=2
MinJobAge=600
KillWait=5
NodeName=localhost NodeAddr=127.0.0.1 CPUs=4 RealMemory=$mem State=UNKNOWN
PartitionName=debug Nodes=ALL Default=YES MaxTime=INFINITE State=UP
CONF
}

wait_idle() {
  local i
  for i in $(seq 1 100); do
    if scontrol ping 2>/dev/null | grep -q UP && [[ "$(sinfo -h -N -o %T 2>/dev/null)" == "idle" ]]; then
      timeout 30 srun -N1 -n1 -t1 true </dev/null >/dev/null 2>&1 && return 0
    fi
    sleep 0.2
  done
  return 1
}

# start_daemon NAME ARGS...: each daemon forks, and its parent exits non-zero when the daemon
# cannot initialise (seen: slurmd in a chroot without /sys/fs/cgroup mounted); say which, with its
# log, and stop what this `up` started, instead of a bare exit under set -e.
start_daemon() {
  "$@" </dev/null >/dev/null 2>&1 && return 0
  tail -5 "$DIR/log/$1.log" >&2 || true
  down >/dev/null 2>&1 || true
  die "$1 did not start (its log above, all of it in $DIR/log/$1.log)"
}

up() {
  require_packages
  if alive "$DIR/run/slurmctld.pid" && alive "$DIR/run/slurmd.pid"; then
    log "already up ($CONF)"; return 0
  fi
  mkdir -p "$DIR"/{ctld,d,log,run}
  write_config
  # munge: reuse a running munged (not ours to stop); else start one and remember it.
  if munge -n </dev/null 2>/dev/null | unmunge >/dev/null 2>&1; then
    log "using the munged that is already running"
  else
    install -d -o munge -g munge /run/munge
    [[ -f /etc/munge/munge.key ]] || die "/etc/munge/munge.key is missing: reinstall munge"
    runuser -u munge -- /usr/sbin/munged --pid-file=/run/munge/munged.pid </dev/null >/dev/null 2>&1
    cp /run/munge/munged.pid "$DIR/run/munged.pid"
    munge -n </dev/null | unmunge >/dev/null || die "munged did not start"
  fi
  start_daemon slurmctld -c -f "$CONF"
  start_daemon slurmd -N localhost -f "$CONF"
  if ! wait_idle; then
    tail -5 "$DIR/log/slurmctld.log" "$DIR/log/slurmd.log" >&2 || true
    die "the cluster did not become idle within 20 s (logs in $DIR/log)"
  fi
  log "up: $(sinfo -h -o '%P %a %D %T %C') (SLURM_CONF=$CONF)"
}

stop_pidfile() {  # stop_pidfile FILE NAME: SIGTERM, then SIGKILL after 15 s
  local f="$1" name="$2" pid i
  [[ -f "$f" ]] || return 0
  pid=$(cat "$f")
  if kill -0 "$pid" 2>/dev/null; then
    kill "$pid" 2>/dev/null || true
    for i in $(seq 1 75); do kill -0 "$pid" 2>/dev/null || break; sleep 0.2; done
    if kill -0 "$pid" 2>/dev/null; then
      log "$name ($pid) ignored SIGTERM; killing it"
      kill -9 "$pid" 2>/dev/null || true
    fi
  fi
  rm -f "$f"
}

down() {
  if [[ -f "$DIR/run/slurmctld.pid" ]] && alive "$DIR/run/slurmctld.pid"; then
    scancel --quiet --user="$(id -un)" 2>/dev/null || true
  fi
  stop_pidfile "$DIR/run/slurmd.pid" slurmd
  stop_pidfile "$DIR/run/slurmctld.pid" slurmctld
  stop_pidfile "$DIR/run/munged.pid" munged
  # Job state goes too, so the next `up` starts cold.
  rm -rf "$DIR/ctld" "$DIR/d"
  log "down"
}

status() {
  local d
  for d in slurmctld slurmd munged; do
    if alive "$DIR/run/$d.pid"; then echo "$d: running (pid $(cat "$DIR/run/$d.pid"))"
    else echo "$d: not started by local-slurm"; fi
  done
  if alive "$DIR/run/slurmctld.pid"; then sinfo; squeue; fi
}

case "${1:-}" in
  up) up ;;
  down) down ;;
  status) status ;;
  env) echo "export SLURM_CONF=$CONF" ;;
  *) echo "usage: $0 up|down|status|env" >&2; exit 2 ;;
esac
