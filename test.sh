#!/usr/bin/env bash
# Build the image, run it on test/ as the platform does, and check the output.
# Environment: IMAGE, BASE_IMAGE, PIP_OFFLINE (see build.sh); MEMORY (default 4g, the platform's reference test);
# LACUNES_INFERENCE: passed to the container; without a GPU it defaults to "fast" (the CPU setting),
# with a GPU the container runs the full recipe as the platform calls it.
set -euo pipefail
SCRIPTPATH="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
IMAGE="${IMAGE:-lacunes}"
MEMORY="${MEMORY:-4g}"

"${SCRIPTPATH}/build.sh"

OUTPUT="$(mktemp -d)"
chmod 777 "${OUTPUT}"
trap 'rm -rf "${OUTPUT}"' EXIT

run_flags=(--rm --network none --memory="${MEMORY}" --memory-swap="${MEMORY}" --cap-drop=ALL
           --security-opt=no-new-privileges --shm-size=128m --pids-limit=256)
if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then
    run_flags+=(--gpus all)
    inference="${LACUNES_INFERENCE:-}"
else
    inference="${LACUNES_INFERENCE:-fast}"
fi
[ -n "${inference}" ] && run_flags+=(-e "LACUNES_INFERENCE=${inference}")
echo "running ${IMAGE} on test/ (inference: ${inference:-full recipe}, memory ${MEMORY})"
start=$(date +%s)
docker run "${run_flags[@]}" -v "${SCRIPTPATH}/test:/input:ro" -v "${OUTPUT}:/output" "${IMAGE}"
echo "container run: $(( $(date +%s) - start )) s"

docker run --rm --network none --entrypoint python \
    -v "${SCRIPTPATH}/test:/input:ro" -v "${OUTPUT}:/output:ro" \
    -v "${SCRIPTPATH}/docker/check_output.py:/opt/check_output.py:ro" \
    "${IMAGE}" /opt/check_output.py /input /output /input/expected_output.json
echo "image size: $(docker image inspect "${IMAGE}" --format '{{.Size}}' | awk '{printf "%.2f GB", $1 / 1e9}')"
