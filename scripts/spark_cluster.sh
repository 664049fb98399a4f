#!/usr/bin/env bash
# scripts/spark_cluster.sh start|stop|status|flags|fetch   a Spark standalone cluster on loopback
#
# start   a master and two workers (separate JVMs, 1 core and 1 GB each) and Beam's EXTERNAL
#         worker pool (scripts/worker_pool.py, the SDK workers as its child processes), all on
#         127.0.0.1; prints the job's flags on stdout, one per line
# stop    stops every process start recorded, by its recorded pid (and its process group)
# status  each recorded process, running or gone, the pool's SDK worker pids, the ports
# flags   the job's flags for the running cluster
# fetch   only fetch Spark: `pip install --no-deps --target` of pyspark==SPARK_VERSION (its
#         jars and bin/spark-class), once, into .engines/spark-dist-SPARK_VERSION/
# State (pids, logs, work folders, ports.env, the jobs' Spark event logs in events/) in
# SPARK_STATE (default .engines/clusters/spark).
# Settings: SPARK_VERSION (3.5.0), SPARK_MASTER_PORT (7077), SPARK_UI_PORT (8090, the master's;
# workers take the next two), SPARK_POOL_PORT (50001); 0 picks free ports.
# SPARK_TASK_MAX_FAILURES (4, Spark's default: a failed task is retried 3 times; 1: a failed
# task fails the job) goes into the printed flags: retries are the job's setting on Spark.
# Exit codes: 0 done, 1 a fetch or start failed (log tail on stderr), 2 usage or already
# running, 3 java or the venv's python is missing.
set -euo pipefail
CLUSTER=spark
source "$(dirname "$0")/_cluster_lib.sh"
SPARK_VERSION=${SPARK_VERSION:-3.5.0}
DIST=$ENGINES_DIR/spark-dist-$SPARK_VERSION
STATE=${SPARK_STATE:-$ENGINES_DIR/clusters/spark}
STATE=$(realpath -m "$STATE")  # Spark wants an absolute event log folder
WORKERS=2

fetch() {
  [ -x "$DIST/pyspark/bin/spark-class" ] && return 0
  [ -x "$PYTHON" ] || die 3 "no python at $PYTHON (run ./run_local.sh once)"
  mkdir -p "$ENGINES_DIR"
  exec 8>"$ENGINES_DIR/.spark-dist.lock"
  flock 8
  [ -x "$DIST/pyspark/bin/spark-class" ] && return 0
  say "installing pyspark==$SPARK_VERSION from PyPI into $DIST (about 320 MB, once) ..."
  rm -rf "$DIST.tmp"
  if ! "$PYTHON" -m pip install --no-deps --no-compile --target "$DIST.tmp" \
      "pyspark==$SPARK_VERSION" >"$ENGINES_DIR/spark-dist-fetch.log" 2>&1; then
    tail -5 "$ENGINES_DIR/spark-dist-fetch.log" >&2
    die 1 "pip install failed (log: $ENGINES_DIR/spark-dist-fetch.log)"
  fi
  echo "pip install --no-deps --target of pyspark==$SPARK_VERSION; SPARK_HOME is pyspark/" \
    >"$DIST.tmp/SOURCE.txt"
  rm -rf "$DIST" && mv "$DIST.tmp" "$DIST"
}

# spark_class NAME CLASS ARGS...: Spark's own launcher for CLASS, as process NAME.
spark_class() {
  local name=$1; shift
  start_bg "$name" env SPARK_HOME="$DIST/pyspark" SPARK_LOCAL_IP=127.0.0.1 \
    SPARK_CONF_DIR="$STATE/conf" SPARK_LOG_DIR="$STATE" "$DIST/pyspark/bin/spark-class" "$@"
}

workers_registered() {
  local n
  n=$(curl -sf "http://127.0.0.1:$UI_PORT/json/" | grep -o '"state" *: *"ALIVE"' | wc -l) \
    || return 1
  [ "$n" -ge "$WORKERS" ]
}

start() {
  need java curl
  refuse_if_running
  fetch
  mkdir -p "$STATE/conf" "$STATE/events"
  local t0=$SECONDS i
  MASTER_PORT=${SPARK_MASTER_PORT:-7077}
  UI_PORT=${SPARK_UI_PORT:-8090}
  POOL_PORT=${SPARK_POOL_PORT:-50001}
  [ "$MASTER_PORT" = 0 ] && MASTER_PORT=$(free_port)
  [ "$UI_PORT" = 0 ] && UI_PORT=$(free_port)
  [ "$POOL_PORT" = 0 ] && POOL_PORT=$(free_port)
  for i in $MASTER_PORT $UI_PORT $POOL_PORT; do
    listening "$i" && die 2 "port $i on 127.0.0.1 is taken (another cluster?)"
  done
  printf 'MASTER_PORT=%s\nUI_PORT=%s\nPOOL_PORT=%s\nTASK_MAX_FAILURES=%s\n' "$MASTER_PORT" \
    "$UI_PORT" "$POOL_PORT" "${SPARK_TASK_MAX_FAILURES:-4}" >"$STATE/ports.env"
  spark_class master org.apache.spark.deploy.master.Master --host 127.0.0.1 \
    --port "$MASTER_PORT" --webui-port "$UI_PORT"
  wait_until master "$START_TIMEOUT_S" listening "$UI_PORT" || { stop_all; exit 1; }
  for i in $(seq "$WORKERS"); do
    mkdir -p "$STATE/work-$i"
    spark_class "worker-$i" org.apache.spark.deploy.worker.Worker \
      "spark://127.0.0.1:$MASTER_PORT" --host 127.0.0.1 --cores 1 --memory 1g \
      --webui-port 0 --work-dir "$STATE/work-$i"
  done
  wait_until worker-1 "$START_TIMEOUT_S" workers_registered || { stop_all; exit 1; }
  start_pool "$POOL_PORT" || { stop_all; exit 1; }
  say "up in $((SECONDS - t0)) s: master, $WORKERS workers, worker pool" \
    "(web UI http://127.0.0.1:$UI_PORT); state and logs in $STATE"
  flags
}

flags() {
  [ -f "$STATE/ports.env" ] || die 1 "no cluster state in $STATE (start it first)"
  # shellcheck disable=SC1091
  source "$STATE/ports.env"
  local jar dir
  jar=$(ENGINES_DIR=$ENGINES_DIR "$ROOT/scripts/engines.sh" spark) || die 1 "no Spark job server"
  dir=$(dirname "$jar")
  # The driver runs in Beam's job server: loopback only, and Beam's guava before pyspark's
  # guava-14 on the executors (else NoSuchMethodError in Preconditions.checkState).
  printf '%s\n' --runner=SparkRunner "--spark_master_url=spark://127.0.0.1:$MASTER_PORT" \
    "--spark_job_server_jar=$jar" \
    --environment_type=EXTERNAL "--environment_config=localhost:$POOL_PORT" \
    --job_server_jvm_properties=-Dspark.driver.host=127.0.0.1 \
    --job_server_jvm_properties=-Dspark.driver.bindAddress=127.0.0.1 \
    "--job_server_jvm_properties=-Dspark.executor.extraClassPath=$(ls "$dir"/lib/guava-*.jar \
      | grep -v vendor | head -1)" \
    "--job_server_jvm_properties=-Dspark.task.maxFailures=$TASK_MAX_FAILURES" \
    --job_server_jvm_properties=-Dspark.eventLog.enabled=true \
    "--job_server_jvm_properties=-Dspark.eventLog.dir=file://$STATE/events"
}

case "${1:-}" in
  start) start ;;
  stop) stop_all ;;
  status) status_all ;;
  flags) flags ;;
  fetch) fetch; echo "$DIST/pyspark" ;;
  *) awk 'NR > 1 && !/^#/ { exit } NR > 1 { sub(/^# ?/, ""); print }' "$0" >&2; exit 2 ;;
esac
