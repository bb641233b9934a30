#!/usr/bin/env bash
# Restore a training run's resumable state into runs/RUN: the run folder from training/RUN and its
# last checkpoint from the commit that holds it (checkpoints are kept in git history, not in the
# working tree, so that the tree stays small enough to travel to a GPU machine).
# Runs kept as weights only (no optimizer state) are restored as a model folder runs/RUN-snapshot
# (config.json + model.safetensors) to fine-tune from with `kldm train --init-from`.
# Usage: training/restore.sh RUN        (from the repository root)
set -euo pipefail
declare -A SNAPSHOT_COMMIT=(
    [csp-mpts52]=091bd6b559ee5b9b11cfd4e8097419866669d628  # medium, x4 large cells, step 4,000 (step 1,000: 200a0d3; plain run step 5,000: 0512af7)
)
declare -A CHECKPOINT_COMMIT=(
    [csp-mp20]=b43eb261840fa649d55573ed708b7f8825e9d05a         # small, step 50,000
    [csp-mp20-medium]=5c4e726814a4b775db74306e53c9ff9e1aa09f88  # medium, step 180,000
    [csp-perov5]=b6fc9f84ee9548d43b2f600ee29f1f221d3d040b       # small, step 2,900
    [dng-mp20]=69b1d5148f4a9731ba19489b6de4f505901dfa14         # small, step 70,000
)
run=${1:?usage: training/restore.sh RUN (one of: ${!CHECKPOINT_COMMIT[*]} ${!SNAPSHOT_COMMIT[*]})}
if [[ -n ${SNAPSHOT_COMMIT[$run]:-} ]]; then
    snapshot=runs/$run-snapshot
    if [[ -e $snapshot/model.safetensors ]]; then
        echo "$snapshot/model.safetensors exists already: not overwritten" >&2
        exit 1
    fi
    mkdir -p "$snapshot"
    git show "${SNAPSHOT_COMMIT[$run]}:training/$run/config.json" > "$snapshot/config.json"
    git show "${SNAPSHOT_COMMIT[$run]}:training/$run/model.safetensors" > "$snapshot/model.safetensors"
    echo "$snapshot restored (weights of commit ${SNAPSHOT_COMMIT[$run]:0:7}); go on with --init-from $snapshot"
    exit 0
fi
commit=${CHECKPOINT_COMMIT[$run]:-}
if [[ -z $commit ]]; then
    echo "unknown run '$run'; known runs: ${!CHECKPOINT_COMMIT[*]} ${!SNAPSHOT_COMMIT[*]}" >&2
    exit 2
fi
if [[ -e runs/$run/checkpoint.safetensors ]]; then
    echo "runs/$run/checkpoint.safetensors exists already: not overwritten" >&2
    exit 1
fi
mkdir -p runs
cp -r "training/$run" "runs/$run"
git show "$commit:training/$run/checkpoint.safetensors" > "runs/$run/checkpoint.safetensors"
echo "runs/$run restored (checkpoint of commit ${commit:0:7})"
