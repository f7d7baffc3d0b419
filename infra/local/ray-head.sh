#!/usr/bin/env bash
# Start or stop a local Ray head bound to 127.0.0.1, for `ray job submit`.
#   infra/local/ray-head.sh start [--num-cpus N]   dashboard/job server on http://127.0.0.1:${RAY_DASHBOARD_PORT:-8265}
#   infra/local/ray-head.sh worker                 add a worker node to that head
#   infra/local/ray-head.sh stop                   stop every Ray process of this user on this machine
set -euo pipefail
GCS_PORT=${RAY_GCS_PORT:-6379}
DASH_PORT=${RAY_DASHBOARD_PORT:-8265}
case "${1:-}" in
  start)
    shift
    ray start --head --node-ip-address 127.0.0.1 --port "$GCS_PORT" \
      --dashboard-host 127.0.0.1 --dashboard-port "$DASH_PORT" --disable-usage-stats "$@"
    echo "submit jobs with: ray job submit --address http://127.0.0.1:$DASH_PORT --working-dir . -- python jobs/extract.py ..."
    ;;
  worker)
    shift
    ray start --address "127.0.0.1:$GCS_PORT" --node-ip-address 127.0.0.1 "$@"
    ;;
  stop)
    ray stop
    ;;
  *)
    echo "usage: $0 start|worker|stop [ray start options]" >&2; exit 2;;
esac
