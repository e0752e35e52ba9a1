#!/bin/bash
# The probe on every quick-suite task at its quick budget, seed 100 (not a seed reported anywhere).
cd "$(dirname "$0")/../../../.."
for task in CartPole-v1:50000 MountainCarContinuous-v0:50000 Pendulum-v1:100000 DriftingPendulum-v1:100000 InvertedDoublePendulum-v5:100000 Hopper-v5:150000 HalfCheetah-v5:150000; do
  env=${task%%:*}; steps=${task##*:}
  python benchmarks/results/probes/ppo_ratio_variance/probe.py "$env" "$steps" 100 > "benchmarks/results/probes/ppo_ratio_variance/$env.jsonl" 2> /dev/null
done
