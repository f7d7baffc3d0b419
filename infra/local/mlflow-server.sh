#!/usr/bin/env bash
# Start or stop an MLflow tracking server over raydund's store, bound to 127.0.0.1 unless MLFLOW_HOST says otherwise.
#   infra/local/mlflow-server.sh start   http://$MLFLOW_HOST:${MLFLOW_PORT:-5000}, waits for /health
#   infra/local/mlflow-server.sh stop    stops the server's process group (only what `start` started)
# Backend: sqlite under RAYDUND_HOME (or MLFLOW_BACKEND_URI, e.g. postgresql://raydund@host/mlflow with
# PGPASSWORD in the environment); artifacts: RAYDUND_HOME/mlartifacts (or MLFLOW_ARTIFACTS_DESTINATION,
# e.g. s3://raydund/mlflow with AWS credentials in the environment).
set -euo pipefail
HOME_DIR=$(realpath -m "${RAYDUND_HOME:-$HOME/.raydund}")
PORT=${MLFLOW_PORT:-5000}
HOST=${MLFLOW_HOST:-127.0.0.1}
PYTHON=${PYTHON:-python3}
PIDFILE="$HOME_DIR/mlflow-server.pid"
case "${1:-}" in
  start)
    mkdir -p "$HOME_DIR/mlartifacts"
    MLFLOW_DISABLE_TELEMETRY=true setsid nohup mlflow server \
      --backend-store-uri "${MLFLOW_BACKEND_URI:-sqlite:///$HOME_DIR/mlflow.db}" \
      --artifacts-destination "${MLFLOW_ARTIFACTS_DESTINATION:-$HOME_DIR/mlartifacts}" \
      --host "$HOST" --port "$PORT" --workers "${MLFLOW_WORKERS:-1}" \
      > "$HOME_DIR/mlflow-server.log" 2>&1 < /dev/null &
    echo $! > "$PIDFILE"
    "$PYTHON" - "http://$HOST:$PORT/health" <<'PY' || { echo "MLflow did not start; see $HOME_DIR/mlflow-server.log" >&2; exit 1; }
import sys, time, urllib.request
deadline = time.time() + 120
while time.time() < deadline:
    try:
        with urllib.request.urlopen(sys.argv[1], timeout=2) as r:
            if r.status == 200:
                sys.exit(0)
    except OSError:
        time.sleep(1)
sys.exit(1)
PY
    echo "MLflow on http://$HOST:$PORT (log: $HOME_DIR/mlflow-server.log)"
    echo "point raydund at it with: export MLFLOW_TRACKING_URI=http://$HOST:$PORT"
    ;;
  stop)
    if [ -f "$PIDFILE" ]; then
      kill -TERM -- "-$(cat "$PIDFILE")" 2>/dev/null || true
      rm -f "$PIDFILE"
    fi
    ;;
  *)
    echo "usage: $0 start|stop" >&2; exit 2;;
esac
