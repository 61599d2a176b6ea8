# The VALDO Task 3 lacune segmentation container (grand-challenge algorithm).
# Default: a public base image and the package index (torch==2.13.0 from PyPI is a CUDA build).
# Offline (air-gapped clusters, this project's CI): --build-arg BASE_IMAGE=<local image>
# --build-arg PIP_OFFLINE=1 with the wheels in docker/wheelhouse/ (see docker/offline-env.sh).
ARG BASE_IMAGE=python:3.11-slim-bookworm

# ---- dependencies, in a stage of their own so that the wheelhouse never reaches the final image
FROM ${BASE_IMAGE} AS deps
ARG PIP_OFFLINE=0
COPY docker/wheelhouse/ /tmp/wheelhouse/
COPY requirements.txt /tmp/requirements.txt
RUN python3 -m venv /opt/venv \
 && if [ "${PIP_OFFLINE}" = "1" ]; then \
        /opt/venv/bin/pip install --no-cache-dir --no-index --find-links /tmp/wheelhouse -r /tmp/requirements.txt; \
    else \
        /opt/venv/bin/pip install --no-cache-dir -r /tmp/requirements.txt; \
    fi \
 && find /opt/venv -name "__pycache__" -type d -prune -exec rm -rf {} +

# ---- the algorithm
FROM ${BASE_IMAGE}
LABEL org.opencontainers.image.title="lacunes" \
      org.opencontainers.image.description="Lacune probability and uncertainty maps from T1, T2 and FLAIR (VALDO 2021 Task 3)" \
      org.opencontainers.image.licenses="Apache-2.0" \
      nl.diagnijmegen.rse.algorithm.name="lacunes" \
      nl.diagnijmegen.rse.algorithm.hardware.cpu.count="2" \
      nl.diagnijmegen.rse.algorithm.hardware.cpu.capabilities="()" \
      nl.diagnijmegen.rse.algorithm.hardware.memory="16G" \
      nl.diagnijmegen.rse.algorithm.hardware.gpu.count="1" \
      nl.diagnijmegen.rse.algorithm.hardware.gpu.cuda_compute_capability="()" \
      nl.diagnijmegen.rse.algorithm.hardware.gpu.memory="12G"

ENV PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PATH=/opt/venv/bin:$PATH \
    MPLCONFIGDIR=/tmp \
    LACUNES_CACHE=/opt/app/cache

RUN groupadd -r -g 1001 algorithm \
 && useradd -m --no-log-init -r -u 1001 -g algorithm algorithm \
 && mkdir -p /opt/app /input /output \
 && chown algorithm:algorithm /opt/app /output

COPY --from=deps /opt/venv /opt/venv
WORKDIR /opt/app
COPY --chown=algorithm:algorithm model/lacunes.pt model/lacunes.pt.sha256 /opt/app/model/
COPY --chown=algorithm:algorithm lacunes/ /opt/app/lacunes/
COPY --chown=algorithm:algorithm process.py /opt/app/

USER 1001:1001
# The bundled network converted for the CPU backend (OpenVINO) once, here, instead of at every start
# (lacunes.backends: the cache is keyed by the weights' hash and the runtime's version).
RUN python -c "from lacunes.backends import OpenVINONetwork; from lacunes.checkpoint import load_network; \
OpenVINONetwork(load_network('/opt/app/model/lacunes.pt')[0])" \
 && ls /opt/app/cache/*.xml
ENTRYPOINT ["python", "/opt/app/process.py"]
