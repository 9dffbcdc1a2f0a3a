#!/usr/bin/env bash
# Ray head for docker-compose: start Ray, deploy the Serve app from serve_config.yaml, stay up.
# The head holds no GPU (num-gpus 0): the model replicas, which ask for a GPU share, go to the GPU
# workers. RAY_HEAD_NUM_GPUS / RAY_HEAD_EXTRA_ARGS change that, e.g. logical GPUs on a CPU-only
# machine to run everything in one container (the replicas then run on ONNX Runtime's CPU provider).
set -euo pipefail
# shellcheck disable=SC2086  # RAY_HEAD_EXTRA_ARGS is a list of flags
ray start --head --port=6379 --dashboard-host=0.0.0.0 --metrics-export-port=8080 \
  --num-gpus="${RAY_HEAD_NUM_GPUS:-0}" ${RAY_HEAD_EXTRA_ARGS:-}
serve deploy deployments/serve_config.yaml
exec tail -f /dev/null
