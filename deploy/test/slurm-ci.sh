#!/usr/bin/env bash
# The Slurm recipe of docs/reproducing.md (deploy/slurm/), run on a real one-node Slurm started
# here, at small settings (synthetic data, 48 px, few epochs). Asserts that
#   - the installed binary's --version names the commit;
#   - every fold task of the array finishes, and history.csv is byte-identical to a sequential
#     `dexpression train` with the same options;
#   - a fold task cancelled (scancel) after its first epoch's checkpoint cancels the report, and
#     resubmitted with `submit.sh K` (sbatch --array=K) resumes after its last finished epoch and
#     ends with the same history;
#   - the report is written and names every fold;
#   - the Kubernetes Indexed Job (deploy/kubernetes/folds-job.yaml) is valid against the API
#     schema, and its pod command, run with JOB_COMPLETION_INDEX 0 to completions - 1, trains
#     folds 1 to completions with the same binary (a recording stand-in: the folds themselves are
#     the Slurm tasks' job).
# The cluster is shut down and its folder removed at the end, also on failure. If Slurm cannot
# be installed or started, the script says why and fails.
#
# Run by .ci/run as root (apt-get installs slurm-wlm and munge where missing). Settings:
# DEXPRESSION_CI_SUBJECTS, DEXPRESSION_CI_EPOCHS, DEXPRESSION_CI_CANCEL_FOLD, and
# DEXPRESSION_CI_TIMEOUT_S (the bound of every wait).
set -euo pipefail
cd "$(dirname "$0")/../.."
repo=$(pwd)
subjects=${DEXPRESSION_CI_SUBJECTS:-8}
epochs=${DEXPRESSION_CI_EPOCHS:-4}
cancel_fold=${DEXPRESSION_CI_CANCEL_FOLD:-3}
timeout_s=${DEXPRESSION_CI_TIMEOUT_S:-600}
target=${CARGO_TARGET_DIR:-$repo/target}

say() { echo "slurm-ci: $*"; }
fail() {
    echo "slurm-ci: FAILED: $*" >&2
    exit 1
}

# 1. Slurm and munge from Debian, where missing.
if ! command -v slurmctld >/dev/null || ! command -v slurmd >/dev/null ||
    ! command -v sbatch >/dev/null || ! command -v munged >/dev/null; then
    [[ $(id -u) == 0 ]] || fail "slurm-wlm and munge are missing and installing them needs root"
    say "installing slurm-wlm and munge (apt-get)"
    apt-get update -qq || fail "apt-get update failed"
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq slurm-wlm munge >/dev/null ||
        fail "apt-get install slurm-wlm munge failed"
fi
[[ $(id -u) == 0 ]] || fail "the one-node Slurm runs its daemons as root (SlurmUser=root): run as root"

# 2. The binary as users get it: `cargo install --path crates/cli` (into the work folder; the
# target directory is shared, so this only links what the workspace build compiled).
work=$(mktemp -d "${TMPDIR:-/tmp}/dexpression-slurm-ci.XXXXXX")
sequential_pid=
finish() {
    local rc=$?
    set +e
    if ((rc != 0)); then
        echo "slurm-ci: the cluster's and the jobs' logs:" >&2
        for log in "$work"/cluster/log/*.log "$work"/run/slurm-logs/*.out "$work"/sequential.log; do
            [[ -f $log ]] && { echo "--- $log" >&2; tail -n 30 "$log" >&2; }
        done
    fi
    [[ -n $sequential_pid ]] && kill "$sequential_pid" 2>/dev/null && wait "$sequential_pid" 2>/dev/null
    slurm_stop "$work/cluster"
    rm -rf "$work"
    exit "$rc"
}
trap finish EXIT
# shellcheck source=deploy/test/one-node-slurm.sh
. deploy/test/one-node-slurm.sh

started=$SECONDS
say "cargo install --path crates/cli"
CARGO_TARGET_DIR=$target cargo install --quiet --locked --path crates/cli --root "$work/install" ||
    fail "cargo install --path crates/cli failed"
export PATH=$work/install/bin:$PATH
version=$(dexpression --version)
commit=$(git rev-parse --short=10 HEAD)
[[ $version == *"$commit"* ]] || fail "\`dexpression --version\` says '$version', not the commit $commit"
say "$version"

# 3. The cluster.
say "starting munged, slurmctld and slurmd in $work/cluster"
slurm_start "$work/cluster" || fail "the one-node Slurm did not start (see above)"

# 4. The recipe at small settings, submitted as docs/reproducing.md says, from a folder of its own.
export DEXPRESSION_SOURCE=$work/data/synth
export DEXPRESSION_CACHE=$work/shared/cache
export DEXPRESSION_OUT=$work/shared/run1
export DEXPRESSION_FOLDS=5
export DEXPRESSION_EPOCHS=$epochs
export DEXPRESSION_IMAGE_SIZE=48
export DEXPRESSION_CPUS=1
dexpression synth --out "$DEXPRESSION_SOURCE" --subjects "$subjects" >/dev/null
mkdir -p "$work/run"
cd "$work/run"
submitted=$("$repo/deploy/slurm/submit.sh") || fail "deploy/slurm/submit.sh failed"
echo "$submitted"
value() { sed -n "s/^$1=\([0-9]*\).*/\1/p" <<<"$2"; }
prepare=$(value prepare "$submitted")
train=$(value train "$submitted")
report=$(value report "$submitted")
[[ -n $prepare && -n $train && -n $report ]] || fail "submit.sh did not name its three jobs"

# The reference: one sequential run with the same options and thread count, in the background
# while Slurm works (its own cache, so that it does not race the prepare job).
RAYON_NUM_THREADS=1 dexpression train --source "$DEXPRESSION_SOURCE" --cache "$work/sequential-cache" \
    --image-size 48 --folds 5 --epochs "$epochs" --out "$work/sequential" --quiet \
    >"$work/sequential.log" 2>&1 &
sequential_pid=$!

# `scontrol -o show job ID`: one line per job, or per array task; "TASK STATE" pairs.
states() {
    scontrol -o show job "$1" 2>/dev/null |
        sed -n 's/.*ArrayTaskId=\([^ ]*\).*JobState=\([A-Z_]*\).*/\1 \2/p; t; s/.*JobState=\([A-Z_]*\).*/- \1/p'
}
# Waits (bounded) until `states ID` has only terminal states.
wait_done() {
    local id=$1 deadline=$((SECONDS + timeout_s))
    while states "$id" | grep -qvE ' (COMPLETED|FAILED|CANCELLED|TIMEOUT|NODE_FAIL|OUT_OF_MEMORY|PREEMPTED|DEADLINE|BOOT_FAIL)$' ||
        [[ -z $(states "$id") ]]; do
        ((SECONDS < deadline)) || fail "job $id not finished after ${timeout_s} s: $(states "$id" | tr '\n' ' ')"
        sleep 0.5
    done
}

# 5. Cancel one fold's task after its first epoch's checkpoint, in the middle of its fold.
say "waiting for fold $cancel_fold's first checkpoint"
deadline=$((SECONDS + timeout_s))
until [[ -f $DEXPRESSION_OUT/fold$cancel_fold/last.json ]]; do
    ((SECONDS < deadline)) || fail "fold $cancel_fold wrote no checkpoint in ${timeout_s} s"
    sleep 0.1
done
scancel "${train}_$cancel_fold"
wait_done "${train}_$cancel_fold"
[[ $(states "${train}_$cancel_fold") == "$cancel_fold CANCELLED" ]] ||
    fail "fold $cancel_fold's task is '$(states "${train}_$cancel_fold")', not cancelled"
# The epoch its checkpoint names: the fold must have been cut short.
last_epoch=$(python3 -c 'import json, sys; print(json.load(open(sys.argv[1]))["epoch"])' \
    "$DEXPRESSION_OUT/fold$cancel_fold/last.json")
((last_epoch >= 1 && last_epoch < epochs)) ||
    fail "fold $cancel_fold was cancelled after epoch $last_epoch of $epochs, not in the middle" \
        "(raise DEXPRESSION_CI_SUBJECTS or DEXPRESSION_CI_EPOCHS)"
say "cancelled fold $cancel_fold after epoch $last_epoch of $epochs"
wait_done "$train"
wait_done "$report"
while read -r task state; do
    [[ $task == "$cancel_fold" || $state == COMPLETED ]] || fail "fold $task's task ended $state"
done < <(states "$train")
[[ $(states "$report") == "- CANCELLED" ]] ||
    fail "the report after a cancelled fold is '$(states "$report")', not cancelled"

# 6. Resubmit that fold as the docs say: it resumes, and a new report follows it.
resubmitted=$("$repo/deploy/slurm/submit.sh" "$cancel_fold") || fail "submit.sh $cancel_fold failed"
echo "$resubmitted"
train2=$(value train "$resubmitted")
report2=$(value report "$resubmitted")
wait_done "$train2"
wait_done "$report2"
[[ $(states "$train2") == "$cancel_fold COMPLETED" ]] || fail "the resubmitted fold ended '$(states "$train2")'"
[[ $(states "$report2") == "- COMPLETED" ]] || fail "the report ended '$(states "$report2")'"
grep -q "fold $cancel_fold/5: .*resumed after epoch $last_epoch\$" \
    "slurm-logs/dexpression-fold-${train2}_$cancel_fold.out" ||
    fail "the resubmitted fold did not say it resumed after epoch $last_epoch"
say "fold $cancel_fold resumed after epoch $last_epoch"

# 7. The history equals the sequential run's; the report names every fold.
deadline=$((SECONDS + timeout_s))
while kill -0 "$sequential_pid" 2>/dev/null; do
    ((SECONDS < deadline)) || fail "the sequential run did not finish in ${timeout_s} s"
    sleep 0.5
done
wait "$sequential_pid" || fail "the sequential run failed"
sequential_pid=
if ! cmp "$work/sequential/history.csv" "$DEXPRESSION_OUT/history.csv"; then
    diff <(cut -d, -f1-6 "$work/sequential/history.csv") <(cut -d, -f1-6 "$DEXPRESSION_OUT/history.csv") >&2 || true
    fail "history.csv of the Slurm run differs from the sequential run's"
fi
rows=$(($(wc -l <"$DEXPRESSION_OUT/history.csv") - 1))
((rows == 5 * epochs)) || fail "history.csv has $rows rows, not $((5 * epochs))"
[[ -f $DEXPRESSION_OUT/summary.md ]] || fail "the report wrote no summary.md"
for fold in 1 2 3 4 5; do
    grep -qE "^\| *$fold *\|" "$DEXPRESSION_OUT/summary.md" || fail "summary.md names no fold $fold"
done
say "history.csv identical to the sequential run ($rows rows); report names folds 1-5"
cd "$repo"

# 8. The Kubernetes Indexed Job: the API schema, then its pod command for every index.
venv=$target/ci-venv-k8s
if [[ ! -x $venv/bin/kubernetes-validate ]]; then
    { python3 -m venv "$venv" && "$venv/bin/pip" install --quiet kubernetes-validate; } ||
        fail "could not install kubernetes-validate from PyPI into $venv"
fi
manifest=deploy/kubernetes/folds-job.yaml
# 1.29: the first release with backoffLimitPerIndex on by default.
for version in 1.29.0 ""; do
    "$venv/bin/kubernetes-validate" --strict --quiet ${version:+-k "$version"} "$manifest" ||
        fail "$manifest is not a valid Kubernetes resource${version:+ for $version}"
done
"$venv/bin/python" deploy/test/pod_commands.py "$manifest" "$work/install/bin/dexpression" ||
    fail "the Indexed Job's pod command does not train folds 1 to 5 with dexpression"
say "done in $((SECONDS - started)) s"
