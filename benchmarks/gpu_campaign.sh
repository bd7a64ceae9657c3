#!/usr/bin/env bash
# One GPU time slot of the campaign: the throughput table first, then board cells, in the order given, until the
# slot's minutes are spent.
#
#   bash benchmarks/gpu_campaign.sh [MINUTES] [PLAN ...]   # default: 9 minutes, plan fashion_mnist
#   bash benchmarks/gpu_campaign.sh --rehearse             # on a CPU, before a GPU is lent: every Fashion-MNIST cell's
#                                                          # command with smoke=true in a scratch folder (nothing kept)
#
# A PLAN is a board name followed by ddbench-board --only filters, separated by '/', e.g.
#   bash benchmarks/gpu_campaign.sh 9 digits/kind=cross/model=resnet18_ap digits/protocol=kd digits fashion_mnist
# runs the digits ResNet-18-AP cross-architecture cells, then the digits kd cells, then whatever digits cells are
# left, then Fashion-MNIST cells, each step with the minutes the earlier ones left (a step with under 1.5 minutes
# left is skipped). Every board step stops starting cells a minute before its budget ends, so a cell stopped at the
# end has time to save its checkpoint, and is itself cut at the budget's end.
#
# Run from the repository root on a machine with a CUDA GPU. Wheels in .whl/ (if any) are installed first, for
# machines that have torch but lack the suite's other dependencies and cannot reach a package index; Fashion-MNIST
# is read from $DDBENCH_FMNIST (a folder of the four IDX .gz files) when set, else from the usual places.
# Settings: DDBENCH_JOBS (cells at once, default 4), DDBENCH_DEVICE (default cuda), DDBENCH_BENCH_TIMEOUT (seconds
# per throughput stage, default 240), DDBENCH_EXTRA (more --set overrides for every cell, space-separated).
# Records go to leaderboard/records; rerun the same command in the next slot to go on (finished cells are skipped,
# and the throughput table is not measured again once benchmarks/results-gpu.md exists).
set -euo pipefail
if [ "${1:-}" = "--rehearse" ]; then
  exec ddbench-board fashion_mnist --rehearse --jobs "${DDBENCH_JOBS:-2}"
fi
minutes="${1:-9}"
shift || true
plans=("$@")
[ "${#plans[@]}" -gt 0 ] || plans=(fashion_mnist)
device="${DDBENCH_DEVICE:-cuda}"
jobs="${DDBENCH_JOBS:-4}"
deadline=$(( $(date +%s) + minutes * 60 ))

if compgen -G ".whl/*.whl" >/dev/null; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
  export PYTHONPATH="/tmp/site${PYTHONPATH:+:$PYTHONPATH}"
fi
if [ -n "${DDBENCH_FMNIST:-}" ]; then
  mkdir -p data/FashionMNIST/raw && cp -n "$DDBENCH_FMNIST"/*.gz data/FashionMNIST/raw/
fi
if ! python3 -c "import ddbench.methods, ddbench.conf" 2>/dev/null; then
  python3 -m pip install -q --no-deps --no-build-isolation -e . || echo "warning: pip install -e . failed"
fi

seconds_left() { echo $(( deadline - $(date +%s) )); }

if [ ! -f benchmarks/results-gpu.md ]; then
  echo "== throughput table ($(date -u +%T))"
  timeout -k 10 "$(seconds_left)" python3 benchmarks/run_all.py --device "$device" \
    --timeout "${DDBENCH_BENCH_TIMEOUT:-240}" --markdown benchmarks/results-gpu.md || echo "warning: run_all.py ended with $?"
fi

extra=(--set "device=$device")
if [ -d data/FashionMNIST/raw ]; then extra+=(--set dataset.root=data); fi
for override in ${DDBENCH_EXTRA:-}; do extra+=(--set "$override"); done
for plan in "${plans[@]}"; do
  left=$(seconds_left)
  if [ "$left" -lt 90 ]; then
    echo "== skipped $plan: $(( left ))s left"
    continue
  fi
  IFS=/ read -r -a parts <<<"$plan"
  only=()
  for filter in "${parts[@]:1}"; do only+=(--only "$filter"); done
  budget=$(python3 -c "print(round(max(0.5, ($left - 60) / 60), 2))")
  echo "== ${parts[0]} ${only[*]} ($(date -u +%T), ${left}s left, cells start within ${budget} min)"
  timeout -k 10 "$left" python3 -m ddbench.cli.board "${parts[0]}" "${extra[@]}" "${only[@]}" --jobs "$jobs" \
    --max-minutes "$budget" --no-render || echo "warning: board step $plan ended with $?"
done
echo "== done ($(date -u +%T), $(seconds_left)s left)"
