#!/usr/bin/env bash
# Stop the Spark standalone cluster that infra/spark/start-cluster.sh started: the workers first,
# then the master, each by the pid in the state folder (SIGTERM, then SIGKILL after --grace
# seconds). A pid that no longer belongs to a Spark master or worker JVM is left alone.
#
#   infra/spark/stop-cluster.sh [--state-dir DIR] [--grace S]
set -euo pipefail

state_dir=${CURAMIX_SPARK_STATE:-${TMPDIR:-/tmp}/curamix-spark-$(id -u)}
grace=20

die() {
  echo "stop-cluster: $1" >&2
  exit "${2:-1}"
}
while [ $# -gt 0 ]; do
  case "$1" in
    --state-dir) [ $# -ge 2 ] || die "--state-dir needs a value" 2; state_dir=$2; shift 2 ;;
    --grace) [ $# -ge 2 ] || die "--grace needs a value" 2; grace=$2; shift 2 ;;
    -h | --help) sed -n '2,6p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) die "unknown argument: $1" 2 ;;
  esac
done
[[ $grace =~ ^[0-9]+$ ]] || die "--grace must be a number of seconds, got '$grace'" 2
[ -d "$state_dir" ] || die "no cluster state folder at $state_dir (nothing to stop)"

ours() {
  local pid=$1
  [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null &&
    tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null | grep -q 'org\.apache\.spark\.deploy\.'
}

stop_pid_file() {
  local file=$1 name pid i
  name=$(basename "$file" .pid)
  pid=$(cat "$file" 2>/dev/null || true)
  if ! ours "$pid"; then
    echo "$name: not running"
    rm -f "$file"
    return 0
  fi
  kill -TERM "$pid" 2>/dev/null || true
  for ((i = 0; i < grace * 10; i++)); do
    ours "$pid" || break
    sleep 0.1
  done
  if ours "$pid"; then
    echo "$name: still running after ${grace}s, sending SIGKILL"
    kill -KILL "$pid" 2>/dev/null || true
  fi
  echo "$name: stopped (pid $pid)"
  rm -f "$file"
}

shopt -s nullglob
found=0
for f in "$state_dir"/worker-*.pid; do
  found=1
  stop_pid_file "$f"
done
if [ -f "$state_dir/master.pid" ]; then
  found=1
  stop_pid_file "$state_dir/master.pid"
fi
[ "$found" = 1 ] || echo "no pid files in $state_dir: nothing to stop"
rm -f "$state_dir/cluster.env"
