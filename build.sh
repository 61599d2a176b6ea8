#!/usr/bin/env bash
# Build the container image. Environment: IMAGE (default lacunes), BASE_IMAGE and PIP_OFFLINE=1
# for an offline build from docker/wheelhouse/ (see README, "Offline build").
set -euo pipefail
SCRIPTPATH="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
IMAGE="${IMAGE:-lacunes}"
args=()
[ -n "${BASE_IMAGE:-}" ] && args+=(--build-arg "BASE_IMAGE=${BASE_IMAGE}")
[ -n "${PIP_OFFLINE:-}" ] && args+=(--build-arg "PIP_OFFLINE=${PIP_OFFLINE}")
docker build "${args[@]}" -t "${IMAGE}" "${SCRIPTPATH}"
