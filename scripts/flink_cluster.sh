#!/usr/bin/env bash
# scripts/flink_cluster.sh start|stop|status|flags|fetch   a Flink session cluster on loopback
#
# start   a JobManager and two TaskManagers (separate JVMs, 2 slots each) and Beam's EXTERNAL
#         worker pool (scripts/worker_pool.py, the SDK workers as its child processes), all on
#         127.0.0.1; prints the job's flags on stdout, one per line
# stop    stops every process start recorded, by its recorded pid (and its process group)
# status  each recorded process, running or gone, the pool's SDK worker pids, the ports
# flags   the job's flags for the running cluster
# fetch   only fetch Flink: `pip download --no-deps apache-flink-libraries==FLINK_VERSION`
#         (PyPI's Flink jars), unpacked once into .engines/flink-dist-FLINK_VERSION/
# State (pids, logs, config.yaml, ports.env) in FLINK_STATE (default .engines/clusters/flink).
# Settings: FLINK_VERSION (1.19.3), FLINK_REST_PORT (8081), FLINK_POOL_PORT (50000; 0: a free
# port for each), FLINK_RESTART_ATTEMPTS (3: the cluster's fixed-delay restart strategy for
# batch jobs; 0: none, a failed task fails the job), FLINK_RESTART_DELAY (1 s).
# Exit codes: 0 done, 1 a fetch or start failed (log tail on stderr), 2 usage or already
# running, 3 java or the venv's python is missing.
set -euo pipefail
CLUSTER=flink
source "$(dirname "$0")/_cluster_lib.sh"
FLINK_VERSION=${FLINK_VERSION:-1.19.3}
DIST=$ENGINES_DIR/flink-dist-$FLINK_VERSION
STATE=${FLINK_STATE:-$ENGINES_DIR/clusters/flink}
STATE=$(realpath -m "$STATE")
TASKMANAGERS=2

fetch() {
  [ -f "$DIST/lib/flink-dist-$FLINK_VERSION.jar" ] && return 0
  [ -x "$PYTHON" ] || die 3 "no python at $PYTHON (run ./run_local.sh once)"
  mkdir -p "$ENGINES_DIR"
  exec 8>"$ENGINES_DIR/.flink-dist.lock"
  flock 8
  [ -f "$DIST/lib/flink-dist-$FLINK_VERSION.jar" ] && return 0
  say "fetching apache-flink-libraries==$FLINK_VERSION from PyPI (about 230 MB, once) ..."
  rm -rf "$DIST.tmp" && mkdir -p "$DIST.tmp"
  if ! "$PYTHON" -m pip download --no-deps -d "$DIST.tmp" \
      "apache-flink-libraries==$FLINK_VERSION" >"$DIST.tmp/fetch.log" 2>&1; then
    tail -5 "$DIST.tmp/fetch.log" >&2
    die 1 "pip download failed (log: $DIST.tmp/fetch.log)"
  fi
  tar -xzf "$DIST.tmp"/apache-flink-libraries-*.tar.gz -C "$DIST.tmp" \
    --wildcards '*/deps/lib/*' '*/deps/bin/*' || die 1 "could not unpack the sdist"
  mv "$DIST.tmp"/apache-flink-libraries-*/deps/lib "$DIST.tmp"/apache-flink-libraries-*/deps/bin \
    "$DIST.tmp/"
  rm -rf "$DIST.tmp"/apache-flink-libraries-* "$DIST.tmp"/*.tar.gz
  echo "pip download --no-deps apache-flink-libraries==$FLINK_VERSION: deps/lib, deps/bin" \
    >"$DIST.tmp/SOURCE.txt"
  rm -rf "$DIST" && mv "$DIST.tmp" "$DIST"
}

# Java 17: the --add-opens/--add-exports that Flink's own default config.yaml sets.
JAVA_OPENS="--add-exports=java.base/sun.net.util=ALL-UNNAMED
--add-exports=java.rmi/sun.rmi.registry=ALL-UNNAMED
--add-exports=java.security.jgss/sun.security.krb5=ALL-UNNAMED
--add-opens=java.base/java.lang=ALL-UNNAMED --add-opens=java.base/java.net=ALL-UNNAMED
--add-opens=java.base/java.io=ALL-UNNAMED --add-opens=java.base/java.nio=ALL-UNNAMED
--add-opens=java.base/sun.nio.ch=ALL-UNNAMED --add-opens=java.base/java.lang.reflect=ALL-UNNAMED
--add-opens=java.base/java.text=ALL-UNNAMED --add-opens=java.base/java.time=ALL-UNNAMED
--add-opens=java.base/java.util=ALL-UNNAMED --add-opens=java.base/java.util.concurrent=ALL-UNNAMED
--add-opens=java.base/java.util.concurrent.atomic=ALL-UNNAMED
--add-opens=java.base/java.util.concurrent.locks=ALL-UNNAMED"

write_config() {
  local restart
  if [ "${FLINK_RESTART_ATTEMPTS:-3}" -gt 0 ]; then
    restart="restart-strategy.type: fixed-delay
restart-strategy.fixed-delay.attempts: ${FLINK_RESTART_ATTEMPTS:-3}
restart-strategy.fixed-delay.delay: ${FLINK_RESTART_DELAY:-1} s"
  else
    restart="restart-strategy.type: none"
  fi
  mkdir -p "$STATE/conf"
  cat >"$STATE/conf/config.yaml" <<EOF
jobmanager.rpc.address: localhost
jobmanager.rpc.port: $JM_RPC_PORT
jobmanager.bind-host: localhost
jobmanager.memory.process.size: 1024m
taskmanager.host: localhost
taskmanager.bind-host: localhost
taskmanager.numberOfTaskSlots: 2
taskmanager.memory.process.size: 1280m
taskmanager.memory.network.min: 128m
taskmanager.memory.network.max: 128m
taskmanager.network.sort-shuffle.min-buffers: 128
rest.address: localhost
rest.bind-address: localhost
rest.port: $REST_PORT
blob.server.port: 0
parallelism.default: 2
$restart
EOF
  cat >"$STATE/conf/log4j.properties" <<'EOF'
rootLogger.level = INFO
rootLogger.appenderRef.file.ref = MainAppender
appender.main.name = MainAppender
appender.main.type = File
appender.main.fileName = ${sys:log.file}
appender.main.layout.type = PatternLayout
appender.main.layout.pattern = %d{yyyy-MM-dd HH:mm:ss,SSS} %-5p %-60c %x - %m%n
EOF
}

# resource_params JM|TM: Flink's own memory flags (BashJavaUtils, as Flink's scripts do):
# line 1 the JVM flags, line 2 the dynamic -D settings.
resource_params() {
  local out
  out=$(java -cp "$DIST/bin/bash-java-utils.jar:$DIST/lib/flink-dist-$FLINK_VERSION.jar" \
    org.apache.flink.runtime.util.bash.BashJavaUtils "GET_$1_RESOURCE_PARAMS" \
    --configDir "$STATE/conf" 2>&1) || { echo "$out" | tail -5 >&2; die 1 "BashJavaUtils failed"; }
  echo "$out" | sed -n '/^BASH_JAVA_UTILS_EXEC_RESULT:/{s/^BASH_JAVA_UTILS_EXEC_RESULT://;p}' \
    | tail -2
}

# start_jvm NAME MAIN_CLASS JM|TM
start_jvm() {
  local name=$1 main=$2 kind=$3 params jvm dynamic
  params=$(resource_params "$kind")
  jvm=$(echo "$params" | sed -n 1p)
  dynamic=$(echo "$params" | sed -n 2p)
  # shellcheck disable=SC2086  # flags are words
  start_bg "$name" java $jvm $JAVA_OPENS -Dlog.file="$STATE/$name.log" \
    -Dlog4j.configurationFile="file:$STATE/conf/log4j.properties" \
    -cp "$DIST/lib/*" "$main" --configDir "$STATE/conf" $dynamic
}

taskmanagers_registered() {
  local n
  n=$(curl -sf "http://localhost:$REST_PORT/taskmanagers" | grep -o '"id"' | wc -l) || return 1
  [ "$n" -ge "$TASKMANAGERS" ]
}

start() {
  need java curl
  refuse_if_running
  fetch
  mkdir -p "$STATE"
  local t0=$SECONDS i
  REST_PORT=${FLINK_REST_PORT:-8081}
  POOL_PORT=${FLINK_POOL_PORT:-50000}
  JM_RPC_PORT=${FLINK_JM_RPC_PORT:-6123}
  [ "$REST_PORT" = 0 ] && REST_PORT=$(free_port)
  [ "$POOL_PORT" = 0 ] && POOL_PORT=$(free_port)
  [ "$JM_RPC_PORT" = 0 ] && JM_RPC_PORT=$(free_port)
  for i in $REST_PORT $POOL_PORT $JM_RPC_PORT; do
    listening "$i" && die 2 "port $i on 127.0.0.1 is taken (another cluster?)"
  done
  write_config
  printf 'REST_PORT=%s\nPOOL_PORT=%s\nJM_RPC_PORT=%s\n' "$REST_PORT" "$POOL_PORT" \
    "$JM_RPC_PORT" >"$STATE/ports.env"
  start_jvm jobmanager org.apache.flink.runtime.entrypoint.StandaloneSessionClusterEntrypoint JM
  wait_until jobmanager "$START_TIMEOUT_S" listening "$REST_PORT" || { stop_all; exit 1; }
  for i in $(seq "$TASKMANAGERS"); do
    start_jvm "taskmanager-$i" org.apache.flink.runtime.taskexecutor.TaskManagerRunner TM
  done
  wait_until taskmanager-1 "$START_TIMEOUT_S" taskmanagers_registered || { stop_all; exit 1; }
  start_pool "$POOL_PORT" || { stop_all; exit 1; }
  say "up in $((SECONDS - t0)) s: JobManager, $TASKMANAGERS TaskManagers, worker pool" \
    "(web UI http://localhost:$REST_PORT); state and logs in $STATE"
  flags
}

flags() {
  [ -f "$STATE/ports.env" ] || die 1 "no cluster state in $STATE (start it first)"
  # shellcheck disable=SC1091
  source "$STATE/ports.env"
  local jar
  jar=$(ENGINES_DIR=$ENGINES_DIR "$ROOT/scripts/engines.sh" flink) || die 1 "no Flink job server"
  printf '%s\n' --runner=FlinkRunner "--flink_master=localhost:$REST_PORT" \
    --flink_version=1.19 "--flink_job_server_jar=$jar" \
    --parallelism=2 --environment_type=EXTERNAL "--environment_config=localhost:$POOL_PORT"
}

case "${1:-}" in
  start) start ;;
  stop) stop_all ;;
  status) status_all ;;
  flags) flags ;;
  fetch) fetch; echo "$DIST" ;;
  *) awk 'NR > 1 && !/^#/ { exit } NR > 1 { sub(/^# ?/, ""); print }' "$0" >&2; exit 2 ;;
esac
