#!/usr/bin/env bash
# Start a Spark standalone cluster on 127.0.0.1: one master and N workers, from the classes of the
# installed pyspark package (no separate Spark download). Pids, logs, work folders and the
# cluster's address go to a state folder; infra/spark/stop-cluster.sh stops exactly what this
# started.
#
#   infra/spark/start-cluster.sh [--workers N] [--cores C] [--memory M] [--port P]
#                                [--webui-port W] [--worker-webui-port W0] [--state-dir DIR]
#                                [--timeout S]
#
# Everything listens on 127.0.0.1 only, and the REST submission server (port 6066) is off.
# Environment: PYTHON (the interpreter whose pyspark is used and that executors run; default
# .venv/bin/python of this checkout, else python3), CURAMIX_SPARK_STATE (default state folder),
# SPARK_DAEMON_MEMORY (heap of the master and worker JVMs, default 512m), CURAMIX_SPARK_SECRET
# (turns on spark.authenticate with this shared secret: only drivers with the same
# CURAMIX_SPARK_SECRET can use the cluster; make one with: openssl rand -hex 32).
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
repo=$(cd "$here/../.." && pwd)

workers=2
cores=1
memory=2g
port=7077
webui_port=8080
worker_webui_port=8081
state_dir=${CURAMIX_SPARK_STATE:-${TMPDIR:-/tmp}/curamix-spark-$(id -u)}
timeout_s=120

usage() { sed -n '2,16p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'; }
die() {
  echo "start-cluster: $1" >&2
  exit "${2:-1}"
}
need_value() { [ $# -ge 2 ] && [ -n "$2" ] || die "$1 needs a value" 2; }

while [ $# -gt 0 ]; do
  case "$1" in
    --workers) need_value "$@"; workers=$2; shift 2 ;;
    --cores) need_value "$@"; cores=$2; shift 2 ;;
    --memory) need_value "$@"; memory=$2; shift 2 ;;
    --port) need_value "$@"; port=$2; shift 2 ;;
    --webui-port) need_value "$@"; webui_port=$2; shift 2 ;;
    --worker-webui-port) need_value "$@"; worker_webui_port=$2; shift 2 ;;
    --state-dir) need_value "$@"; state_dir=$2; shift 2 ;;
    --timeout) need_value "$@"; timeout_s=$2; shift 2 ;;
    -h | --help) usage; exit 0 ;;
    *) usage >&2; die "unknown argument: $1" 2 ;;
  esac
done

is_int() { [[ $1 =~ ^[0-9]+$ ]]; }
is_int "$workers" && [ "$workers" -ge 1 ] || die "--workers must be a positive integer, got '$workers'" 2
is_int "$cores" && [ "$cores" -ge 1 ] || die "--cores must be a positive integer, got '$cores'" 2
[[ $memory =~ ^[0-9]+[mMgG]$ ]] || die "--memory must look like 2g or 1536m, got '$memory'" 2
for p in "$port" "$webui_port" "$worker_webui_port"; do
  is_int "$p" && [ "$p" -le 65535 ] || die "ports must be integers 0-65535, got '$p'" 2
done
[ "$port" -ge 1 ] && [ "$webui_port" -ge 1 ] || die "--port and --webui-port must be fixed ports (not 0)" 2
is_int "$timeout_s" || die "--timeout must be a number of seconds, got '$timeout_s'" 2
if [ -n "${CURAMIX_SPARK_SECRET:-}" ]; then
  [[ $CURAMIX_SPARK_SECRET =~ ^[A-Za-z0-9._+/=-]{16,}$ ]] ||
    die "CURAMIX_SPARK_SECRET must be 16 or more letters, digits or ._+/=- (openssl rand -hex 32)" 2
fi

bash "$repo/infra/check_java.sh"

if [ -z "${PYTHON:-}" ]; then
  if [ -x "$repo/.venv/bin/python" ]; then PYTHON="$repo/.venv/bin/python"; else PYTHON=python3; fi
fi
PYTHON=$(command -v "$PYTHON") || die "no python interpreter '$PYTHON'"
spark_home=$("$PYTHON" -c 'import os, pyspark; print(os.path.dirname(pyspark.__file__))') ||
  die "$PYTHON cannot import pyspark: install curamix (make install) or set PYTHON"

# A JVM we started, still running (the pid was not reused by something else).
ours() {
  local pid=$1
  [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null &&
    tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null | grep -q 'org\.apache\.spark\.deploy\.'
}

mkdir -p "$state_dir"
state_dir=$(cd "$state_dir" && pwd)
if [ -f "$state_dir/master.pid" ] && ours "$(cat "$state_dir/master.pid")"; then
  die "a cluster started from $state_dir is still running (master pid $(cat "$state_dir/master.pid")); stop it first: $here/stop-cluster.sh --state-dir $state_dir"
fi
rm -f "$state_dir"/*.pid "$state_dir/cluster.env"
mkdir -p "$state_dir/conf" "$state_dir/logs"

# Own conf folder: nothing from the pyspark package's conf/, REST submission off. The secret
# goes into this file (readable by this user only), not onto the JVMs' command lines.
chmod 700 "$state_dir/conf"
(
  umask 077
  cat >"$state_dir/conf/spark-defaults.conf" <<EOF
spark.master.rest.enabled false
spark.worker.cleanup.enabled true
EOF
  if [ -n "${CURAMIX_SPARK_SECRET:-}" ]; then
    printf 'spark.authenticate true\nspark.authenticate.secret %s\n' "$CURAMIX_SPARK_SECRET" \
      >>"$state_dir/conf/spark-defaults.conf"
  fi
)
chmod 600 "$state_dir/conf/spark-defaults.conf"

export SPARK_HOME=$spark_home
export SPARK_CONF_DIR=$state_dir/conf
export SPARK_LOCAL_IP=127.0.0.1 # the web UIs bind to SPARK_LOCAL_IP (else 0.0.0.0)
export SPARK_PUBLIC_DNS=127.0.0.1
export SPARK_DAEMON_MEMORY=${SPARK_DAEMON_MEMORY:-512m}
export SPARK_MASTER_OPTS="${SPARK_MASTER_OPTS:-} -Dspark.master.rest.enabled=false"
export PYSPARK_PYTHON=${PYSPARK_PYTHON:-$PYTHON}
master_url=spark://127.0.0.1:$port
master_ui=http://127.0.0.1:$webui_port

started=()
cleanup_on_error() {
  echo "start-cluster: stopping what was started" >&2
  for pid in "${started[@]}"; do kill "$pid" 2>/dev/null || true; done
}
trap 'cleanup_on_error' ERR

nohup "$spark_home/bin/spark-class" org.apache.spark.deploy.master.Master \
  --host 127.0.0.1 --port "$port" --webui-port "$webui_port" \
  >"$state_dir/logs/master.log" 2>&1 </dev/null &
echo $! >"$state_dir/master.pid"
started+=("$!")

for i in $(seq 1 "$workers"); do
  wport=0
  [ "$worker_webui_port" -gt 0 ] && wport=$((worker_webui_port + i - 1))
  mkdir -p "$state_dir/work/worker-$i" "$state_dir/local/worker-$i"
  # each worker its own scratch (shuffle, spills): nothing on disk is shared between workers
  SPARK_LOCAL_DIRS="$state_dir/local/worker-$i" \
  nohup "$spark_home/bin/spark-class" org.apache.spark.deploy.worker.Worker "$master_url" \
    --host 127.0.0.1 --cores "$cores" --memory "$memory" --webui-port "$wport" \
    --work-dir "$state_dir/work/worker-$i" \
    >"$state_dir/logs/worker-$i.log" 2>&1 </dev/null &
  echo $! >"$state_dir/worker-$i.pid"
  started+=("$!")
done

cat >"$state_dir/cluster.env" <<EOF
CURAMIX_SPARK__MASTER=$master_url
SPARK_MASTER_WEBUI=$master_ui
SPARK_CLUSTER_WORKERS=$workers
SPARK_CLUSTER_STATE=$state_dir
EOF

# Wait until the master's JSON reports all workers alive (workers retry registering for a while).
if ! "$PYTHON" - "$master_ui/json/" "$workers" "$timeout_s" "$state_dir" <<'PY'; then
import json, os, sys, time, urllib.request

url, want, timeout, state = sys.argv[1], int(sys.argv[2]), float(sys.argv[3]), sys.argv[4]
deadline = time.monotonic() + timeout
alive = -1
while time.monotonic() < deadline:
    pids = [f for f in os.listdir(state) if f.endswith(".pid")]
    for f in pids:
        pid = int(open(os.path.join(state, f)).read())
        if not os.path.exists(f"/proc/{pid}"):
            sys.exit(f"start-cluster: {f[:-4]} (pid {pid}) exited; see {state}/logs/{f[:-4]}.log")
    try:
        with urllib.request.urlopen(url, timeout=2) as r:
            alive = int(json.load(r).get("aliveworkers", 0))
        if alive >= want:
            sys.exit(0)
    except OSError:
        pass
    time.sleep(0.5)
sys.exit(f"start-cluster: {max(alive, 0)} of {want} workers alive after {timeout:.0f} s; see {state}/logs/")
PY
  cleanup_on_error
  tail -n 20 "$state_dir"/logs/*.log >&2 || true
  exit 1
fi
trap - ERR

if [ -n "${CURAMIX_SPARK_SECRET:-}" ]; then
  auth="on (spark.authenticate: drivers need the same CURAMIX_SPARK_SECRET)"
else
  auth="OFF: any local user can run code on it; set CURAMIX_SPARK_SECRET (infra/README.md)"
fi
cat <<EOF
Spark master: $master_url ($workers worker(s) alive, $cores core(s) and $memory each)
web UI:       $master_ui
auth:         $auth
state:        $state_dir (pids, logs/, work/, cluster.env)

Send curamix jobs to it, in the pipeline YAML:
  spark:
    master: "$master_url"
    executor_memory: 1g        # at most the worker memory ($memory)
or in the environment:
  export CURAMIX_SPARK__MASTER=$master_url

Stop it: $here/stop-cluster.sh --state-dir $state_dir
EOF
