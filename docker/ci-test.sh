#!/usr/bin/env bash
# The container test as CI runs it: offline environment up, test.sh, daemon down.
set -euo pipefail
SCRIPTPATH="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
"${SCRIPTPATH}/offline-env.sh" up
trap '"${SCRIPTPATH}/offline-env.sh" down' EXIT
BASE_IMAGE="${BASE_IMAGE:-lacunes-base:bookworm}" PIP_OFFLINE=1 "${SCRIPTPATH}/../test.sh"
