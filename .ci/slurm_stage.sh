#!/usr/bin/env bash
# CI stage for issue "cluster execution": start a single-node SLURM on localhost, run a small
# twin end to end through workflow/profiles/slurm, prove the jobs ran as SLURM jobs, check the
# result tables equal a local run byte for byte, then stop the daemons.
# Expects the README's environment to be active (python, snakemake on PATH).
set -euo pipefail
cd "$(dirname "$0")/.."
repo=$(pwd)
work=$(mktemp -d /tmp/mrsflow-slurm-ci.XXXXXX)
trap '"$repo/.ci/slurm/stop.sh"' EXIT

"$repo/.ci/slurm/start.sh"
jobcomp=/var/log/slurm/jobcomp.log
done_before=$(grep -c "JobState=COMPLETED" "$jobcomp" 2>/dev/null || true)
small=(--configfile "$repo/config/config.yaml" "$repo/tests/configs/small.yaml")

echo "== SLURM run"
# the README's cluster command; CI-only tuning before --default-resources: more jobs in the
# queue than the node's 2 CPUs, one CPU per grouped job so two run side by side, and
# status checks every 5 s (MinJobAge=300 >= 3x that)
snakemake -s "$repo/Snakefile" -d "$work/slurm" "${small[@]}" --profile "$repo/workflow/profiles/slurm" \
  --jobs 16 --cores 1 --slurm-init-seconds-before-status-checks 5 --default-resources slurm_partition=ci > "$work/slurm.log" 2>&1 || { tail -n 60 "$work/slurm.log"; exit 1; }

echo "== local run"
snakemake -s "$repo/Snakefile" -d "$work/local" "${small[@]}" --cores 2 --quiet all \
  > "$work/local.log" 2>&1 || { tail -n 60 "$work/local.log"; exit 1; }

echo "== the jobs ran as SLURM jobs"
n_sbatch=$(grep -c "Job .* has been submitted with SLURM jobid" "$work/slurm.log" || true)
n_done=$(( $(grep -c "JobState=COMPLETED" "$jobcomp" || true) - ${done_before:-0} ))
echo "submitted: $n_sbatch, completed in the SLURM job-completion log: $n_done"
test "$n_sbatch" -ge 10
test "$n_done" -ge "$n_sbatch"
ls "$work/slurm/results/logs/slurm" | head -n 5

echo "== tables equal byte for byte"
n_cmp=0
for f in "$work"/local/results/tables/*.tsv "$work"/local/results/stats/*.tsv "$work"/local/results/verification.tsv; do
  rel=${f#"$work"/local/results/}
  cmp "$work/slurm/results/$rel" "$f"
  n_cmp=$((n_cmp + 1))
done
echo "identical: $n_cmp tables (tables/, stats/, verification.tsv)"
test "$n_cmp" -ge 15
