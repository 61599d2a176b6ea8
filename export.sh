#!/usr/bin/env bash
# Build, then save the image as <IMAGE>.tar.gz for upload to grand-challenge.
set -euo pipefail
SCRIPTPATH="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
IMAGE="${IMAGE:-lacunes}"
"${SCRIPTPATH}/build.sh"
docker save "${IMAGE}" | gzip -c > "${SCRIPTPATH}/${IMAGE}.tar.gz"
ls -lh "${SCRIPTPATH}/${IMAGE}.tar.gz"
