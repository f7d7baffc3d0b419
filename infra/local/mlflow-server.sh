#!/usr/bin/env bash
# Start or stop an MLflow tracking server on 127.0.0.1 over raydund's store.
#   infra/local/mlflow-server.sh start   http://127.0.0.1:${MLFLOW_PORT:-5000}
#   infra/local/mlflow-server.sh stop
# Backend: sqlite under RAYDUND_HOME (or MLFLOW_BACKEND_URI, e.g. postgresql://...);
# artifacts: RAYDUND_HOME/mlartifacts (or MLFLOW_ARTIFACTS_DESTINATION, e.g. s3://...).
set -euo pipefail
HOME_DIR=$(realpath -m "${RAYDUND_HOME:-$HOME/.raydund}")
PORT=${MLFLOW_PORT:-5000}
PIDFILE="$HOME_DIR/mlflow-server.pid"
case "${1:-}" in
  start)
    mkdir -p "$HOME_DIR/mlartifacts"
    MLFLOW_DISABLE_TELEMETRY=true nohup mlflow server \
      --backend-store-uri "${MLFLOW_BACKEND_URI:-sqlite:///$HOME_DIR/mlflow.db}" \
      --artifacts-destination "${MLFLOW_ARTIFACTS_DESTINATION:-$HOME_DIR/mlartifacts}" \
      --host 127.0.0.1 --port "$PORT" --workers 2 > "$HOME_DIR/mlflow-server.log" 2>&1 &
    echo $! > "$PIDFILE"
    echo "MLflow on http://127.0.0.1:$PORT (log: $HOME_DIR/mlflow-server.log)"
    echo "point raydund at it with: export MLFLOW_TRACKING_URI=http://127.0.0.1:$PORT"
    ;;
  stop)
    [ -f "$PIDFILE" ] && kill "$(cat "$PIDFILE")" && rm -f "$PIDFILE"
    ;;
  *)
    echo "usage: $0 start|stop" >&2; exit 2;;
esac
