#!/usr/bin/env bash
# Prepares what test.sh needs on a machine without a running Docker engine or registry access
# (this project's CI): `up` installs docker.io and debootstrap if missing, starts dockerd (vfs
# storage, no iptables, no bridge) unless one answers, builds a Debian bookworm base image with
# debootstrap (lacunes-base:bookworm) and fills docker/wheelhouse/ with `pip download`;
# `down` stops the daemon that `up` started (and only that one).
set -euo pipefail
SCRIPTPATH="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
BASE_IMAGE="${BASE_IMAGE:-lacunes-base:bookworm}"
STATE="${LACUNES_DOCKER_STATE:-/tmp/lacunes-dockerd}"
MIRROR="${DEBIAN_MIRROR:-http://deb.debian.org/debian}"
PYTHON="${PYTHON:-python3}"

up() {
    mkdir -p "${STATE}"
    if ! command -v dockerd >/dev/null 2>&1 || ! command -v debootstrap >/dev/null 2>&1; then
        apt-get update -qq
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq docker.io debootstrap >/dev/null
    fi
    if ! docker info >/dev/null 2>&1; then
        echo "starting dockerd (vfs, no iptables, no bridge)"
        nohup dockerd --storage-driver=vfs --iptables=false --bridge=none \
            --pidfile "${STATE}/dockerd.pid" >"${STATE}/dockerd.log" 2>&1 &
        echo started >"${STATE}/started-by-us"
        for _ in $(seq 60); do docker info >/dev/null 2>&1 && break; sleep 1; done
        docker info >/dev/null 2>&1 || { echo "dockerd did not start:"; tail -20 "${STATE}/dockerd.log"; exit 1; }
    fi
    if ! docker image inspect "${BASE_IMAGE}" >/dev/null 2>&1; then
        echo "building ${BASE_IMAGE} with debootstrap"
        rootfs="$(mktemp -d)"
        chmod 755 "${rootfs}"  # mktemp makes it 0700: the image root must be world-readable
        debootstrap --variant=minbase --include=python3,python3-venv,ca-certificates bookworm "${rootfs}" "${MIRROR}" \
            >"${STATE}/debootstrap.log" 2>&1 || { tail -20 "${STATE}/debootstrap.log"; exit 1; }
        rm -rf "${rootfs}"/var/cache/apt/archives/*.deb "${rootfs}"/var/lib/apt/lists/*
        tar -C "${rootfs}" -c . | docker import - "${BASE_IMAGE}" >/dev/null
        rm -rf "${rootfs}"
    fi
    echo "filling docker/wheelhouse from requirements.txt"
    "${PYTHON}" -m pip download -q --only-binary=:all: -d "${SCRIPTPATH}/wheelhouse" -r "${SCRIPTPATH}/../requirements.txt"
}

down() {
    if [ -f "${STATE}/started-by-us" ] && [ -f "${STATE}/dockerd.pid" ]; then
        echo "stopping the dockerd started by offline-env.sh"
        kill "$(cat "${STATE}/dockerd.pid")" 2>/dev/null || true
        for _ in $(seq 30); do docker info >/dev/null 2>&1 || break; sleep 1; done
        rm -f "${STATE}/started-by-us"
    fi
}

case "${1:-}" in
    up) up ;;
    down) down ;;
    *) echo "usage: $0 up|down" >&2; exit 2 ;;
esac
