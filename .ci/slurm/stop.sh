#!/usr/bin/env bash
# Stop the daemons .ci/slurm/start.sh started.
set -u
for d in slurmd slurmctld munged; do
  pkill -x "$d" 2>/dev/null || true
done
for _ in $(seq 1 10); do
  pgrep -x slurmctld >/dev/null || pgrep -x slurmd >/dev/null || exit 0
  sleep 1
done
pkill -9 -x slurmd slurmctld 2>/dev/null || true
