#!/usr/bin/env bash
# One GPU time slot of the campaign: the throughput table first, then as many Fashion-MNIST board cells as fit.
#
#   bash benchmarks/gpu_campaign.sh [MINUTES]          # default 9: fits a 10-minute slot
#   bash benchmarks/gpu_campaign.sh --rehearse         # on a CPU, before a GPU is lent: every Fashion-MNIST cell's
#                                                      # command with smoke=true in a scratch folder (nothing kept)
#
# Run from the repository root on a machine with a CUDA GPU. Wheels in .whl/ (if any) are installed first, for
# machines that have torch but lack the suite's other dependencies and cannot reach a package index; Fashion-MNIST
# is read from $DDBENCH_FMNIST (a folder of the four IDX .gz files) when set, else from the usual places.
# Records go to leaderboard/records; rerun the same command in the next slot to go on (finished cells are skipped).
set -euo pipefail
if [ "${1:-}" = "--rehearse" ]; then
  exec ddbench-board fashion_mnist --rehearse --jobs "${DDBENCH_JOBS:-2}"
fi
minutes="${1:-9}"
if compgen -G ".whl/*.whl" >/dev/null; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
  export PYTHONPATH="/tmp/site:$PWD${PYTHONPATH:+:$PYTHONPATH}"
fi
if [ -n "${DDBENCH_FMNIST:-}" ]; then
  mkdir -p data/FashionMNIST/raw && cp -n "$DDBENCH_FMNIST"/*.gz data/FashionMNIST/raw/
fi
python3 -m pip install -q --no-deps --no-build-isolation -e . 2>/dev/null || true
start=$(date +%s)
if [ ! -f benchmarks/results-gpu.md ]; then
  python3 benchmarks/run_all.py --device cuda --timeout 240 --markdown benchmarks/results-gpu.md
fi
used=$(( ($(date +%s) - start) / 60 ))
left=$(( minutes - used ))
if [ "$left" -ge 2 ]; then
  ddbench-board fashion_mnist --set device=cuda --set dataset.root=data --max-minutes "$left"
fi
