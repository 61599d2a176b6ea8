#!/usr/bin/env bash
# The container test as CI runs it: offline environment up, test.sh, daemon down.
# With the vfs storage driver every layer is a full copy of the image's files (about 1.8 GB here), so each
# build leaves about 9 GB behind once the next one takes its tag: earlier builds of this image (untagged,
# labelled org.opencontainers.image.title=lacunes) and the containers a failed build left are removed
# before building and again on exit, and the build stops early, naming the folder, when too little space is
# free for it. The base image, the dependency stage (pip's layer) and the current `lacunes` tag are kept.
set -euo pipefail
SCRIPTPATH="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
# Space a build and the test run need under Docker's root with vfs: 13.1 GB at the peak, measured 2026-12-07
# for a build that reuses the dependency stage (a change of requirements.txt rebuilds it too: not measured).
NEED_GB="${LACUNES_DOCKER_NEED_GB:-14}"
LABEL="label=org.opencontainers.image.title=lacunes"

tidy() {
    docker container prune -f --filter "${LABEL}" >/dev/null || true
    docker image prune -f --filter "${LABEL}" >/dev/null || true
}

"${SCRIPTPATH}/offline-env.sh" up
trap 'tidy; "${SCRIPTPATH}/offline-env.sh" down' EXIT
tidy
root="$(docker info --format '{{.DockerRootDir}}')"
free_gb=$(df -P -B1G "${root}" | awk 'NR == 2 {print $4}')
if [ "${free_gb}" -lt "${NEED_GB}" ]; then
    echo "only ${free_gb} GB free under ${root}; the container build and test need about ${NEED_GB} GB" \
         "(vfs storage: a full copy per layer). Free space there (docker image prune) or set LACUNES_DOCKER_NEED_GB." >&2
    exit 1
fi
echo "${free_gb} GB free under ${root} (about ${NEED_GB} GB needed)"
BASE_IMAGE="${BASE_IMAGE:-lacunes-base:bookworm}" PIP_OFFLINE=1 "${SCRIPTPATH}/../test.sh"
