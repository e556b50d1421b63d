#!/usr/bin/env bash
# Start a local Ray head with token authentication, dashboard + job server on 127.0.0.1.
# Run it from the environment shiftlab is installed in: jobs use the python on this PATH.
#
#   cluster/local/start_head.sh [--num-gpus N] [--num-cpus N] [--port 6379] [--dashboard-port 8265]
#   export RAY_AUTH_MODE=token RAY_AUTH_TOKEN_PATH=$HOME/.ray/auth_token   # for ray status / job submit
#   ray job submit --address http://127.0.0.1:8265 -- shiftlab sweep experiments/demo.yaml --space search_spaces/demo.yaml
set -euo pipefail
EXTRA=()
PORT=6379 DASH_PORT=8265 NUM_CPUS="" NUM_GPUS="" HOST=${SHIFTLAB_DASHBOARD_HOST:-127.0.0.1}
while [ $# -gt 0 ]; do
  case "$1" in
    --port) PORT=$2; shift 2 ;;
    --dashboard-port) DASH_PORT=$2; shift 2 ;;
    --num-cpus) NUM_CPUS=$2; shift 2 ;;
    --num-gpus) NUM_GPUS=$2; shift 2 ;;   # logical GPUs may be declared for testing
    --dashboard-host) HOST=$2; shift 2 ;; # only widen this behind a firewall/TLS proxy
    *) EXTRA+=("$1"); shift ;;   # passed to `ray start` (e.g. --block, --temp-dir)
  esac
done
export RAY_AUTH_MODE=token
TOKEN_PATH=${RAY_AUTH_TOKEN_PATH:-$HOME/.ray/auth_token}
if [ -z "${RAY_AUTH_TOKEN:-}" ] && [ ! -s "$TOKEN_PATH" ]; then
  mkdir -p "$(dirname "$TOKEN_PATH")"
  ( umask 077; python -c 'import secrets; print(secrets.token_hex(32))' > "$TOKEN_PATH" )
fi
[ -n "${RAY_AUTH_TOKEN:-}" ] || export RAY_AUTH_TOKEN_PATH="$TOKEN_PATH"
export RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO=1
args=(--head --port "$PORT" --node-ip-address 127.0.0.1 --include-dashboard=true
      --dashboard-host "$HOST" --dashboard-port "$DASH_PORT" --disable-usage-stats)
[ -z "$NUM_CPUS" ] || args+=(--num-cpus "$NUM_CPUS")
[ -z "$NUM_GPUS" ] || args+=(--num-gpus "$NUM_GPUS")
ray start "${args[@]}" ${EXTRA[@]+"${EXTRA[@]}"}
echo "RAY_ADDRESS=127.0.0.1:$PORT  dashboard/jobs: http://$HOST:$DASH_PORT  token: ${RAY_AUTH_TOKEN_PATH:-\$RAY_AUTH_TOKEN}"
