#!/usr/bin/env bash
# A cohort over a SLURM job array: each task segments every N-th subject (--shard i/N) into one output
# folder; run.json is merged under a lock, so the tasks never overwrite each other's records. Any array
# range works (--array=1-8, --array=0-7, --array=0-7%4): task i of N is counted from the array's first index.
#
#   INPUT=/data/cohort OUTPUT=/data/lacunes sbatch --array=0-7 docs/slurm-array.sh
#   LACUNES="apptainer run --nv --bind /data lacunes.sif" INPUT=... OUTPUT=... sbatch --array=0-3 --gres=gpu:1 \
#       docs/slurm-array.sh --device cuda --preset full          # on GPUs: --nv, and the full recipe
#
# Then one report over all of them, from an installation with pictures (pip install 'lacunes[qc]'; the
# container carries the runtime only, without matplotlib):
#
#   sbatch --dependency=afterany:<array job id> --wrap "lacunes report /data/lacunes"
#
# LACUNES: how to call the command line (default: the Apptainer image of docker/lacunes.def); extra
# arguments of this script go to lacunes predict (e.g. --model, --device cuda --preset full).
#SBATCH --job-name=lacunes
#SBATCH --cpus-per-task=4
#SBATCH --mem=8G
#SBATCH --time=04:00:00
set -euo pipefail
: "${INPUT:?set INPUT to the cohort folder (VALDO or BIDS layout)}"
: "${OUTPUT:?set OUTPUT to the output folder}"
: "${SLURM_ARRAY_TASK_ID:?run as a job array: sbatch --array=0-N}"
FIRST="${SLURM_ARRAY_TASK_MIN:-1}"
N="${SLURM_ARRAY_TASK_COUNT:-$(( ${SLURM_ARRAY_TASK_MAX:?} - FIRST + 1 ))}"
SHARD=$(( SLURM_ARRAY_TASK_ID - FIRST + 1 ))
mkdir -p "${OUTPUT}"  # a bind mount needs the folder to exist
read -r -a LACUNES <<< "${LACUNES:-apptainer run --bind ${INPUT},${OUTPUT} lacunes.sif}"
exec "${LACUNES[@]}" predict -i "${INPUT}" -o "${OUTPUT}" --preset fast --threads "${SLURM_CPUS_PER_TASK:-1}" \
    --shard "${SHARD}/${N}" --table --no-progress "$@"
