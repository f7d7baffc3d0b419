#!/usr/bin/env bash
# Start or stop a local Ray head bound to 127.0.0.1, for `ray job submit` / `raydund submit`.
#   infra/local/ray-head.sh start [--num-cpus N]   dashboard/job server on http://$RAY_HOST:${RAY_DASHBOARD_PORT:-8265}
#   infra/local/ray-head.sh worker                 add a worker node to that head
#   infra/local/ray-head.sh stop                   stop exactly what start/worker started (never `ray stop`,
#                                                  which would kill every Ray process of the user, other jobs included)
# Every node runs as `ray start --block` in its own session; its pid goes to $RAYDUND_HEAD_DIR/<node>.pid
# (default $RAYDUND_HOME/ray-head) and its Ray temp dir is $RAYDUND_HEAD_DIR/ray[-worker-N]. `stop` ends
# those process groups only.
# RAY_HOST (default 127.0.0.1) other than loopback requires RAY_AUTH_MODE=token (Ray's token auth;
# token in RAY_AUTH_TOKEN, RAY_AUTH_TOKEN_PATH or ~/.ray/auth_token, see `ray get-auth-token --generate`).
# For several nodes with their own ports and an MLflow server: infra/local/ray-cluster.sh.
set -euo pipefail
HOST=${RAY_HOST:-127.0.0.1}
GCS_PORT=${RAY_GCS_PORT:-6379}
DASH_PORT=${RAY_DASHBOARD_PORT:-8265}
HOME_DIR=$(realpath -m "${RAYDUND_HOME:-$HOME/.raydund}")
STATE=$(realpath -m "${RAYDUND_HEAD_DIR:-$HOME_DIR/ray-head}")
PYTHON=${PYTHON:-python3}
RAY=${RAY_BIN:-ray}
case "$HOST" in
  127.*|localhost|::1) ;;
  *) if [ "${RAY_AUTH_MODE:-}" != "token" ]; then
       echo "refusing to bind Ray to $HOST without token auth: export RAY_AUTH_MODE=token" >&2; exit 2
     fi;;
esac

start_node() {  # start_node NAME ray-start-args...: `ray start --block` in its own session, pid recorded
  local name=$1; shift
  if [ -f "$STATE/$name.pid" ] && kill -0 "$(cat "$STATE/$name.pid")" 2>/dev/null; then
    echo "$name is already running (pid $(cat "$STATE/$name.pid")); stop it first" >&2; exit 2
  fi
  mkdir -p "$STATE"
  setsid nohup "$RAY" start --block --disable-usage-stats "$@" > "$STATE/$name.log" 2>&1 < /dev/null &
  echo $! > "$STATE/$name.pid"
}

wait_nodes() {  # wait_nodes PID N: until the GCS reports N alive nodes (fails early when PID exits)
  "$PYTHON" - "$HOST:$GCS_PORT" "$2" "$1" <<'PY'
import os, sys, time
import ray
deadline = time.time() + 180
while time.time() < deadline:
    try:
        os.kill(int(sys.argv[3]), 0)
    except OSError:
        sys.exit("the Ray node exited")
    try:
        ray.init(address=sys.argv[1], log_to_driver=False, logging_level="ERROR")
        alive = [n for n in ray.nodes() if n["Alive"]]
        ray.shutdown()
        if len(alive) >= int(sys.argv[2]):
            sys.exit(0)
    except Exception:
        ray.shutdown()
    time.sleep(2)
sys.exit("the Ray node did not come up in 180 s")
PY
}

stop_node() {  # stop_node PIDFILE: the node's whole process group, nothing else
  local pidfile=$1 pid
  pid=$(cat "$pidfile")
  kill -TERM -- "-$pid" 2>/dev/null || true
  for _ in $(seq 1 15); do kill -0 "$pid" 2>/dev/null || break; sleep 1; done
  kill -KILL -- "-$pid" 2>/dev/null || true
  rm -f "$pidfile"
}

case "${1:-}" in
  start)
    shift
    start_node head --head --node-ip-address "$HOST" --port "$GCS_PORT" --dashboard-host "$HOST" \
      --dashboard-port "$DASH_PORT" --temp-dir "$STATE/ray" "$@"
    wait_nodes "$(cat "$STATE/head.pid")" 1 || { echo "see $STATE/head.log" >&2; exit 1; }
    echo "Ray head up (pid $(cat "$STATE/head.pid"), log $STATE/head.log)"
    echo "submit jobs with: raydund submit --address http://$HOST:$DASH_PORT extract --model minilm --corpus conll2000 --split dev"
    ;;
  worker)
    shift
    n=1
    while [ -e "$STATE/worker-$n.pid" ]; do n=$((n + 1)); done
    # its own temp dir: nodes sharing one would garbage-collect each other's job working dirs
    start_node "worker-$n" --address "$HOST:$GCS_PORT" --node-ip-address "$HOST" --temp-dir "$STATE/ray-worker-$n" "$@"
    echo "worker-$n started (pid $(cat "$STATE/worker-$n.pid"), log $STATE/worker-$n.log)"
    ;;
  stop)
    for pidfile in $(ls "$STATE"/worker-*.pid 2>/dev/null) "$STATE/head.pid"; do
      [ -e "$pidfile" ] || continue
      stop_node "$pidfile"
    done
    echo "stopped what $0 started"
    ;;
  *)
    echo "usage: $0 start|worker|stop [ray start options]" >&2; exit 2;;
esac
