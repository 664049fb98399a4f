# Shared by scripts/flink_cluster.sh and scripts/spark_cluster.sh (sourced, not run).
#
# A cluster lives in a state folder ($STATE): one NAME.pid and NAME.log per process it
# started, ports.env with the ports it chose, and the generated configuration. Every process
# is started in its own session (setsid), so stop signals the recorded pid's process group:
# that pid and what it started (the worker pool's SDK workers), nothing found by name.
ROOT=${ROOT:-$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)}
ENGINES_DIR=${ENGINES_DIR:-$ROOT/.engines}
PYTHON=${PYTHON:-$ROOT/.venv/bin/python}
START_TIMEOUT_S=${START_TIMEOUT_S:-180}

say() { echo "${CLUSTER:-cluster}: $*" >&2; }
die() { local code=$1; shift; say "$*"; exit "$code"; }

need() {
  local tool
  for tool in "$@"; do
    command -v "$tool" >/dev/null 2>&1 || die 3 "$tool not found on PATH"
  done
}

pid_of() { cat "$STATE/$1.pid" 2>/dev/null || true; }

alive() {
  local pid
  pid=$(pid_of "$1")
  [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null
}

# start_bg NAME CMD...: CMD in its own session, output in $STATE/NAME.log, pid in NAME.pid.
start_bg() {
  local name=$1; shift
  setsid "$@" >"$STATE/$name.log" 2>&1 </dev/null &
  echo $! >"$STATE/$name.pid"
  echo "$name" >>"$STATE/processes"
}

listening() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

# wait_until NAME TIMEOUT_S CMD...: until CMD succeeds; fails (log tail) if NAME dies first.
wait_until() {
  local name=$1 timeout=$2 deadline; shift 2
  deadline=$((SECONDS + timeout))
  until "$@"; do
    if ! alive "$name"; then
      say "$name exited while starting; the end of $STATE/$name.log:"
      tail -15 "$STATE/$name.log" >&2
      return 1
    fi
    if [ "$SECONDS" -ge "$deadline" ]; then
      say "$name not ready after $timeout s; the end of $STATE/$name.log:"
      tail -15 "$STATE/$name.log" >&2
      return 1
    fi
    sleep 0.5
  done
}

# free_port: a loopback TCP port nobody listens on now.
free_port() {
  "$PYTHON" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

# start_pool PORT: Beam's EXTERNAL worker pool on 127.0.0.1:PORT. Its SDK workers are plain
# `python` from PATH (the venv first) with PYTHONPATH=$ROOT, so they import this checkout's
# beam_pipeline and transforms, whatever the venv has installed.
start_pool() {
  local port=$1
  PATH="$(dirname "$PYTHON"):$PATH" PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}" \
    TF_CPP_MIN_LOG_LEVEL=${TF_CPP_MIN_LOG_LEVEL:-2} \
    start_bg worker-pool "$PYTHON" "$ROOT/scripts/worker_pool.py" "$port"
  wait_until worker-pool 60 listening "$port"
}

# sdk_workers: the pids of the SDK worker processes the pool started (its children).
sdk_workers() {
  local pool
  pool=$(pid_of worker-pool)
  [ -n "$pool" ] && ps -o pid= --ppid "$pool" 2>/dev/null | tr -d ' ' || true
}

# stop_one NAME: TERM to the process group of NAME's recorded pid, KILL after 15 s.
stop_one() {
  local name=$1 pid i
  pid=$(pid_of "$name")
  [ -n "$pid" ] || return 0
  if kill -0 "$pid" 2>/dev/null; then
    kill -TERM -- "-$pid" 2>/dev/null || kill -TERM "$pid" 2>/dev/null || true
    for i in $(seq 30); do kill -0 "$pid" 2>/dev/null || break; sleep 0.5; done
    if kill -0 "$pid" 2>/dev/null; then
      say "$name (pid $pid) did not stop on TERM: KILL"
      kill -KILL -- "-$pid" 2>/dev/null || kill -KILL "$pid" 2>/dev/null || true
    fi
  fi
  # What the group leader started may outlive it (a worker pool's SDK workers).
  kill -KILL -- "-$pid" 2>/dev/null || true
  rm -f "$STATE/$name.pid"
}

# stop_all: every recorded process, the last started first; logs stay in $STATE.
stop_all() {
  [ -f "$STATE/processes" ] || { say "nothing recorded in $STATE"; return 0; }
  local name
  for name in $(tac "$STATE/processes"); do stop_one "$name"; done
  rm -f "$STATE/processes"
  say "stopped; logs in $STATE"
}

# status_all: each recorded process, alive or not, and the pool's SDK workers.
# Exit code 0 when all are alive, 1 otherwise.
status_all() {
  [ -f "$STATE/processes" ] || { say "not running (nothing recorded in $STATE)"; return 1; }
  local name ok=0
  for name in $(cat "$STATE/processes"); do
    if alive "$name"; then echo "$name pid $(pid_of "$name") running"
    else echo "$name pid $(pid_of "$name") gone"; ok=1; fi
  done
  echo "sdk-workers $(sdk_workers | tr '\n' ' ')"
  [ -f "$STATE/ports.env" ] && cat "$STATE/ports.env"
  return $ok
}

refuse_if_running() {
  if [ -f "$STATE/processes" ]; then
    local name
    for name in $(cat "$STATE/processes"); do
      alive "$name" && die 2 "already running in $STATE ($name pid $(pid_of "$name")); stop it first"
    done
    rm -f "$STATE/processes"
  fi
}
