#!/usr/bin/env bash
# A multi-process Ray cluster plus an MLflow server on this machine, every service on 127.0.0.1.
#   infra/local/ray-cluster.sh up [--workers N] [--cpus C]   head + N worker nodes (C CPUs each) + mlflow server
#   infra/local/ray-cluster.sh status                        nodes and services
#   infra/local/ray-cluster.sh down                          stop exactly what `up` started (never `ray stop`)
# Environment (all optional):
#   RAYDUND_RAY_CLUSTER_DIR  state: pids, logs, Ray temp dir    (default $RAYDUND_HOME/ray-cluster;
#                        the old RAYDUND_CLUSTER_DIR and $RAYDUND_HOME/cluster of a running one still work)
#   RAY_HOST             bind address                           (default 127.0.0.1)
#   RAY_GCS_PORT / RAY_DASHBOARD_PORT / MLFLOW_PORT             (default 6379 / 8265 / 5000)
#   RAY_AUTH_MODE        token | disabled; anything but loopback requires token
#   NO_MLFLOW=1          do not start the MLflow server
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
HOME_DIR=$(realpath -m "${RAYDUND_HOME:-$HOME/.raydund}")
DEFAULT_STATE=$HOME_DIR/ray-cluster
# a cluster started before the rename keeps its state in $RAYDUND_HOME/cluster: `down` must still find it
if [ ! -e "$DEFAULT_STATE" ] && [ -e "$HOME_DIR/cluster/head.pid" ]; then DEFAULT_STATE=$HOME_DIR/cluster; fi
STATE=$(realpath -m "${RAYDUND_RAY_CLUSTER_DIR:-${RAYDUND_CLUSTER_DIR:-$DEFAULT_STATE}}")
HOST=${RAY_HOST:-127.0.0.1}
GCS_PORT=${RAY_GCS_PORT:-6379}
DASH_PORT=${RAY_DASHBOARD_PORT:-8265}
PYTHON=${PYTHON:-python3}
RAY=${RAY_BIN:-ray}

free_ports() {  # N free TCP ports on 127.0.0.1
  "$PYTHON" - "$1" <<'PY'
import socket, sys
socks = [socket.socket() for _ in range(int(sys.argv[1]))]
for s in socks:
    s.bind(("127.0.0.1", 0))
print(" ".join(str(s.getsockname()[1]) for s in socks))
PY
}

node_ports() {  # every per-node port its own, so several nodes share one machine
  read -r a b c d e f <<<"$(free_ports 6)"
  echo "--dashboard-agent-listen-port $a --dashboard-agent-grpc-port $b --metrics-export-port $c" \
       "--runtime-env-agent-port $d --node-manager-port $e --object-manager-port $f"
}

check_exposure() {
  case "$HOST" in 127.*|localhost|::1) return 0;; esac
  if [ "${RAY_AUTH_MODE:-}" != "token" ]; then
    echo "refusing to bind Ray to $HOST without token auth: export RAY_AUTH_MODE=token (and RAY_AUTH_TOKEN)" >&2
    exit 2
  fi
}

start_node() {  # start_node NAME ray-start-args...: `ray start --block` in its own session, pid recorded
  local name=$1; shift
  setsid nohup "$RAY" start --block --disable-usage-stats "$@" > "$STATE/$name.log" 2>&1 < /dev/null &
  echo $! > "$STATE/$name.pid"
}

wait_nodes() {  # wait until the GCS reports N alive nodes
  "$PYTHON" - "$HOST:$GCS_PORT" "$1" <<'PY'
import sys, time
import ray
deadline = time.time() + 180
while time.time() < deadline:
    try:
        ray.init(address=sys.argv[1], log_to_driver=False, logging_level="ERROR")
        alive = [n for n in ray.nodes() if n["Alive"]]
        ray.shutdown()
        if len(alive) >= int(sys.argv[2]):
            print(f"{len(alive)} Ray nodes alive")
            sys.exit(0)
    except Exception:
        ray.shutdown()
    time.sleep(2)
sys.exit("Ray nodes did not come up in 180 s")
PY
}

case "${1:-}" in
  up)
    shift
    WORKERS=1; CPUS=1
    while [ $# -gt 0 ]; do
      case "$1" in
        --workers) WORKERS=$2; shift 2;;
        --cpus) CPUS=$2; shift 2;;
        *) echo "unknown option $1" >&2; exit 2;;
      esac
    done
    check_exposure
    mkdir -p "$STATE/ray"
    # shellcheck disable=SC2046
    start_node head --head --node-ip-address "$HOST" --port "$GCS_PORT" --dashboard-host "$HOST" \
      --dashboard-port "$DASH_PORT" --num-cpus "$CPUS" --temp-dir "$STATE/ray" \
      --ray-client-server-port "$(free_ports 1)" $(node_ports)
    wait_nodes 1
    for i in $(seq 1 "$WORKERS"); do
      # shellcheck disable=SC2046
      # its own temp dir: nodes sharing one would garbage-collect each other's job working dirs
      mkdir -p "$STATE/ray-worker-$i"
      start_node "worker-$i" --address "$HOST:$GCS_PORT" --node-ip-address "$HOST" --num-cpus "$CPUS" \
        --temp-dir "$STATE/ray-worker-$i" $(node_ports)
    done
    wait_nodes $((WORKERS + 1))
    if [ -z "${NO_MLFLOW:-}" ]; then "$HERE/mlflow-server.sh" start; fi
    echo "Ray job server: http://$HOST:$DASH_PORT   (export RAY_ADDRESS=http://$HOST:$DASH_PORT)"
    echo "submit: raydund submit extract --model minilm --corpus conll2000 --split dev"
    ;;
  status)
    for pidfile in "$STATE"/*.pid; do
      [ -e "$pidfile" ] || continue
      name=$(basename "$pidfile" .pid)
      if kill -0 "$(cat "$pidfile")" 2>/dev/null; then echo "$name: running"; else echo "$name: gone"; fi
    done
    ;;
  down)
    if [ -z "${NO_MLFLOW:-}" ]; then "$HERE/mlflow-server.sh" stop || true; fi
    for pidfile in $(ls "$STATE"/worker-*.pid 2>/dev/null) "$STATE/head.pid"; do
      [ -e "$pidfile" ] || continue
      pid=$(cat "$pidfile")
      kill -TERM -- "-$pid" 2>/dev/null || true   # the node's whole process group, nothing else
      for _ in $(seq 1 10); do kill -0 "$pid" 2>/dev/null || break; sleep 1; done
      kill -KILL -- "-$pid" 2>/dev/null || true
      rm -f "$pidfile"
    done
    echo "ray cluster stopped"
    ;;
  *)
    echo "usage: $0 up [--workers N] [--cpus C] | status | down" >&2; exit 2;;
esac
