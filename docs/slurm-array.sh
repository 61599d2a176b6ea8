#!/usr/bin/env bash
# A cohort over a SLURM job array: each task segments every N-th subject (--shard i/N) into one output
# folder; run.json is merged under a lock, so the tasks never overwrite each other's records. Then one
# report over all of them:
#
#   INPUT=/data/cohort OUTPUT=/data/lacunes sbatch --array=1-8 docs/slurm-array.sh
#   sbatch --dependency=afterany:<array job id> --wrap "apptainer run --bind /data lacunes.sif report /data/lacunes"
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
: "${SLURM_ARRAY_TASK_ID:?run as a job array: sbatch --array=1-N}"
N="${SLURM_ARRAY_TASK_COUNT:-${SLURM_ARRAY_TASK_MAX:?}}"
read -r -a LACUNES <<< "${LACUNES:-apptainer run --bind ${INPUT},${OUTPUT} lacunes.sif}"
exec "${LACUNES[@]}" predict -i "${INPUT}" -o "${OUTPUT}" --preset fast --threads "${SLURM_CPUS_PER_TASK:-1}" \
    --shard "${SLURM_ARRAY_TASK_ID}/${N}" --table --no-progress "$@"
