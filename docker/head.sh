#!/usr/bin/env bash
# Ray head for docker-compose: start Ray, deploy the Serve app from serve_config.yaml, stay up.
set -euo pipefail
ray start --head --port=6379 --dashboard-host=0.0.0.0 --metrics-export-port=8080 --num-gpus=0
serve deploy deployments/serve_config.yaml
exec tail -f /dev/null
