#!/usr/bin/env bash
# Join a second (or further) local node to the head started by start_head.sh, for testing
# multi-node placement on one machine. Logical GPUs can be declared with --num-gpus.
#
#   cluster/local/start_worker.sh --address 127.0.0.1:6379 [--num-gpus 1] [--num-cpus 1]
set -euo pipefail
EXTRA=()
ADDRESS=127.0.0.1:6379 NUM_CPUS="" NUM_GPUS=""
while [ $# -gt 0 ]; do
  case "$1" in
    --address) ADDRESS=$2; shift 2 ;;
    --num-cpus) NUM_CPUS=$2; shift 2 ;;
    --num-gpus) NUM_GPUS=$2; shift 2 ;;
    *) EXTRA+=("$1"); shift ;;   # passed to `ray start` (e.g. --block, --temp-dir)
  esac
done
export RAY_AUTH_MODE=token
TOKEN_PATH=${RAY_AUTH_TOKEN_PATH:-$HOME/.ray/auth_token}
[ -n "${RAY_AUTH_TOKEN:-}" ] || export RAY_AUTH_TOKEN_PATH="$TOKEN_PATH"
export RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO=1
args=(--address "$ADDRESS" --node-ip-address 127.0.0.1 --disable-usage-stats)
[ -z "$NUM_CPUS" ] || args+=(--num-cpus "$NUM_CPUS")
[ -z "$NUM_GPUS" ] || args+=(--num-gpus "$NUM_GPUS")
ray start "${args[@]}" ${EXTRA[@]+"${EXTRA[@]}"}
