#!/usr/bin/env bash
# Stop every Ray node started from this machine.
set -euo pipefail
ray stop --force
