#!/usr/bin/env bash
# Issue 37: the shard-merge tests, 20 runs at 1, 2 and 4 simulated devices, and again with
# XLA:CPU restricted to AVX2 (standing in for an AVX2-only machine). Appends one line per run to
# experiments/results/scale/shard_stability.tsv: devices, isa, run, pass/fail, seconds.
#   bash experiments/scale/shard_stability.sh [RUNS] [ISAS] [DEVICES] [TESTS]
# e.g. bash experiments/scale/shard_stability.sh 2 AVX2 "1 2 4" attack_three
set -u
cd "$(dirname "$0")/../.."
runs=${1:-20}
isas=${2:-"default AVX2"}
devices=${3:-"1 2 4"}
tests=${4:-three_shards}
out=experiments/results/scale/shard_stability.tsv
mkdir -p "$(dirname "$out")"
[ -f "$out" ] || printf "devices\tisa\trun\tresult\tseconds\n" > "$out"
for isa in $isas; do
  for d in $devices; do
    for i in $(seq 1 "$runs"); do
      extra="--xla_backend_optimization_level=0"
      [ "$isa" = AVX2 ] && extra="$extra --xla_cpu_max_isa=AVX2"
      t0=$(date +%s)
      if XLA_FLAGS="--xla_force_host_platform_device_count=$d $extra" CFJAX_TEST_XLA_EXTRA="$extra" \
         .venv/bin/python -m pytest -q -p no:cacheprovider tests/test_shards.py -k "$tests" >/dev/null 2>&1; then r=pass; else r=fail; fi
      printf "%s\t%s\t%s\t%s\t%s\n" "$d" "$isa" "$i" "$r" "$(( $(date +%s) - t0 ))" >> "$out"
    done
  done
done
