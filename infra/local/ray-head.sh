#!/usr/bin/env bash
# Start or stop a local Ray head bound to 127.0.0.1, for `ray job submit` / `raydund submit`.
#   infra/local/ray-head.sh start [--num-cpus N]   dashboard/job server on http://$RAY_HOST:${RAY_DASHBOARD_PORT:-8265}
#   infra/local/ray-head.sh worker                 add a worker node to that head
#   infra/local/ray-head.sh stop                   stop every Ray process of this user on this machine
# RAY_HOST (default 127.0.0.1) other than loopback requires RAY_AUTH_MODE=token (Ray's token auth;
# token in RAY_AUTH_TOKEN, RAY_AUTH_TOKEN_PATH or ~/.ray/auth_token, see `ray get-auth-token --generate`).
# For several nodes with their own ports and a clean stop of only what was started: infra/local/cluster.sh.
set -euo pipefail
HOST=${RAY_HOST:-127.0.0.1}
GCS_PORT=${RAY_GCS_PORT:-6379}
DASH_PORT=${RAY_DASHBOARD_PORT:-8265}
case "$HOST" in
  127.*|localhost|::1) ;;
  *) if [ "${RAY_AUTH_MODE:-}" != "token" ]; then
       echo "refusing to bind Ray to $HOST without token auth: export RAY_AUTH_MODE=token" >&2; exit 2
     fi;;
esac
case "${1:-}" in
  start)
    shift
    ray start --head --node-ip-address "$HOST" --port "$GCS_PORT" \
      --dashboard-host "$HOST" --dashboard-port "$DASH_PORT" --disable-usage-stats "$@"
    echo "submit jobs with: raydund submit --address http://$HOST:$DASH_PORT extract --model minilm --corpus conll2000 --split dev"
    ;;
  worker)
    shift
    ray start --address "$HOST:$GCS_PORT" --node-ip-address "$HOST" "$@"
    ;;
  stop)
    ray stop
    ;;
  *)
    echo "usage: $0 start|worker|stop [ray start options]" >&2; exit 2;;
esac
