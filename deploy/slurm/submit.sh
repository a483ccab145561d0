#!/usr/bin/env bash
# Submits a cross-validated run to Slurm: the dataset prepared once (prepare.sbatch), one fold per
# array task, all into one --out (train.sbatch), and the report once every fold has finished
# (report.sbatch). Run it from the folder the jobs should start in (relative paths are read from
# there); settings come from the environment, with the defaults below.
#
#   deploy/slurm/submit.sh        # prepare, folds 1-5, report
#   deploy/slurm/submit.sh 3      # again for fold 3 only (failed, cancelled, pre-empted): it
#                                 # resumes after its last finished epoch; a new report follows
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)

# The dataset, the shared cache of crops and the shared output folder; every task of the array
# must see the same cache and --out (a file system whose flock works across the nodes).
export DEXPRESSION_SOURCE=${DEXPRESSION_SOURCE:-data/ckplus}
export DEXPRESSION_CACHE=${DEXPRESSION_CACHE:-/shared/dexpression/cache}
export DEXPRESSION_OUT=${DEXPRESSION_OUT:-/shared/dexpression/run1}
export DEXPRESSION_FOLDS=${DEXPRESSION_FOLDS:-5}
export DEXPRESSION_EPOCHS=${DEXPRESSION_EPOCHS:-25}
export DEXPRESSION_IMAGE_SIZE=${DEXPRESSION_IMAGE_SIZE:-224}
# Options of both prepare and train that choose the frames (the cache is keyed by them), e.g.
# "--select all" or "--neutral"; and options of train only, e.g. "--split frame --augment".
export DEXPRESSION_DATA_ARGS=${DEXPRESSION_DATA_ARGS:-}
export DEXPRESSION_TRAIN_ARGS=${DEXPRESSION_TRAIN_ARGS:-}
# CPUs per task, which is also each task's thread count: the same on every task, so that the
# history equals a sequential run's with as many threads.
cpus=${DEXPRESSION_CPUS:-8}
# Further sbatch options for every job, e.g. "--partition=gpu --gres=gpu:1 --time=4:00:00".
read -r -a sbatch_args <<<"${DEXPRESSION_SBATCH_ARGS:-}"
# Where the jobs' logs go (%x: job name, %j: job, %A_%a: array job and task).
logs=${DEXPRESSION_LOGS:-slurm-logs}

mkdir -p "$logs"
common=(--parsable --cpus-per-task="$cpus" "${sbatch_args[@]}")
after_prepare=()
if [[ $# -eq 0 ]]; then
    array=1-$DEXPRESSION_FOLDS
    prepare=$(sbatch "${common[@]}" --output="$logs/%x-%j.out" "$here/prepare.sbatch")
    prepare=${prepare%%;*}
    after_prepare=(--dependency="afterok:$prepare")
    echo "prepare=$prepare"
else
    # A resubmission: the cache is there, and each task would build it if it were not.
    array=$1
fi
train=$(sbatch "${common[@]}" "${after_prepare[@]}" --array="$array" \
    --output="$logs/%x-%A_%a.out" "$here/train.sbatch")
train=${train%%;*}
echo "train=$train array=$array"
# A fold that fails or is cancelled cancels this report instead of leaving it pending forever;
# resubmitting the fold (`submit.sh K`) submits a new one.
report=$(sbatch "${common[@]}" --cpus-per-task=1 --dependency="afterok:$train" \
    --kill-on-invalid-dep=yes --output="$logs/%x-%j.out" "$here/report.sbatch")
report=${report%%;*}
echo "report=$report"
