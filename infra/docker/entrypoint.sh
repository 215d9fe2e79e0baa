#!/usr/bin/env bash
# Entrypoint of the curamix image.
#   executor         a Spark executor pod created by a driver with master k8s://... (the same
#                    arguments Spark's own image entrypoint passes to KubernetesExecutorBackend)
#   spark-master     a Spark standalone master (REST submission off)
#   spark-worker URL a Spark standalone worker of the master at URL
#   anything else    run as given (curamix run ..., curamix serve ..., prefect ...)
# The standalone master and workers authenticate every connection (spark.authenticate) with the
# shared secret CURAMIX_SPARK_SECRET, and refuse to start without it; the drivers (curamix)
# read the same variable.
set -euo pipefail

spark_home=${SPARK_HOME:-/opt/spark}

# spark.authenticate and the secret in a conf folder that only this user can read, so that the
# secret is on no command line; the settings of an existing spark-defaults.conf are kept.
spark_auth() {
  if [ -z "${CURAMIX_SPARK_SECRET:-}" ]; then
    echo "entrypoint: $1 needs CURAMIX_SPARK_SECRET, the cluster's shared secret" \
      "(openssl rand -hex 32; see docs/deploy.md)" >&2
    exit 2
  fi
  local conf_dir defaults
  defaults=${SPARK_CONF_DIR:-$spark_home/conf}/spark-defaults.conf
  conf_dir=$(mktemp -d)
  (
    umask 077
    {
      if [ -f "$defaults" ]; then grep -v '^spark\.authenticate' "$defaults" || true; fi
      printf 'spark.authenticate true\nspark.authenticate.secret %s\n' "$CURAMIX_SPARK_SECRET"
    } >"$conf_dir/spark-defaults.conf"
  )
  export SPARK_CONF_DIR=$conf_dir
  unset CURAMIX_SPARK_SECRET
}

case "${1:-}" in
  executor)
    shift
    java_opts=()
    while IFS='=' read -r name _; do
      java_opts+=("${!name}")
    done < <(env | grep -o '^SPARK_JAVA_OPT_[0-9]*=' | sort -t_ -k4 -n)
    classpath="$spark_home/jars/*"
    [ -n "${SPARK_CLASSPATH:-}" ] && classpath="$SPARK_CLASSPATH:$classpath"
    exec "${JAVA_HOME:-/usr}/bin/java" "${java_opts[@]}" \
      -Xms"$SPARK_EXECUTOR_MEMORY" -Xmx"$SPARK_EXECUTOR_MEMORY" \
      -cp "$classpath" \
      org.apache.spark.scheduler.cluster.k8s.KubernetesExecutorBackend \
      --driver-url "$SPARK_DRIVER_URL" \
      --executor-id "$SPARK_EXECUTOR_ID" \
      --cores "$SPARK_EXECUTOR_CORES" \
      --app-id "$SPARK_APPLICATION_ID" \
      --hostname "$SPARK_EXECUTOR_POD_IP" \
      --resourceProfileId "${SPARK_RESOURCE_PROFILE_ID:-0}" \
      --podName "$SPARK_EXECUTOR_POD_NAME"
    ;;
  spark-master)
    shift
    spark_auth spark-master
    export SPARK_MASTER_OPTS="${SPARK_MASTER_OPTS:-} -Dspark.master.rest.enabled=false"
    exec "$spark_home/bin/spark-class" org.apache.spark.deploy.master.Master "$@"
    ;;
  spark-worker)
    shift
    spark_auth spark-worker
    exec "$spark_home/bin/spark-class" org.apache.spark.deploy.worker.Worker "$@"
    ;;
  *)
    exec "$@"
    ;;
esac
