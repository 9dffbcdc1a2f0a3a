#!/usr/bin/env bash
# The GPU training session behind the shipped diffusion and distilled weights, and the
# recipe ablation in docs/training.md. One GPU, all runs side by side (each is launch-bound at
# these sizes, so they share the card well); every run is bounded by wall time, not steps, and
# records the steps it reached in its checkpoint.
#
#   scripts/train_gpu.sh OUT_DIR [MINUTES]
#
# MINUTES (default 7) is the whole budget: the ablation runs use all of it, the
# teacher 65% and its distillation the rest. DEVICE=cpu runs the same thing on the CPU (a smoke
# test with MINUTES=0.1). Writes to OUT_DIR: diffusion.safetensors and distilled.safetensors
# (weights alone: the committed form), ablation-small.safetensors and ablation-base.safetensors
# (each ablation run's EMA weights at the largest step count every run reached) and train.log.
set -euo pipefail
out=${1:?usage: scripts/train_gpu.sh OUT_DIR [MINUTES]}
minutes=${2:-7}
device=${DEVICE:-cuda}
py=${PYTHON:-python3}
mkdir -p "$out"
log="$out/train.log"
ck=checkpoints
export OMP_NUM_THREADS=2 PYTHONUNBUFFERED=1
teacher_min=$(awk "BEGIN{print $minutes*0.65}")
distill_min=$(awk "BEGIN{print $minutes*0.33}")
snaps=${SNAPSHOTS:-"1000 2000 4000 6000 8000 12000 16000 24000 32000 48000 64000 96000"}
common=(--device "$device" --batch-size 256 --steps 10000000 --snapshots $snaps)

run() {  # name, then genserve arguments; output goes to the log with the run's name in front
  local name=$1
  shift
  "$py" -m training.cli "$@" 2>&1 | tr '\r' '\n' | grep -v '^\s*$' | sed "s/^/[$name] /" >>"$log"
}

: >"$log"
run abl-eps-linear train diffusion --run abl-eps-linear --prediction epsilon --schedule linear --arch small \
  --minutes "$minutes" "${common[@]}" &
run abl-v-cosine train diffusion --run abl-v-cosine --prediction v_prediction --schedule cosine --arch small \
  --minutes "$minutes" "${common[@]}" &
run abl-v-cosine-minsnr train diffusion --run abl-v-cosine-minsnr --prediction v_prediction --schedule cosine \
  --min-snr 5 --arch small --minutes "$minutes" "${common[@]}" &
(
  run diffusion train diffusion --run diffusion --prediction v_prediction --schedule cosine --min-snr 5 \
    --arch base --minutes "$teacher_min" "${common[@]}" --weights-out "$out/diffusion.safetensors"
  run distilled distill --teacher "$out/diffusion.safetensors" --run distilled --device "$device" \
    --batch-size 256 --steps 10000000 --minutes "$distill_min" --pool-size "${POOL_SIZE:-65536}" \
    --weights-out "$out/distilled.safetensors"
) &
wait

# The ablation compares runs at equal steps: the largest snapshot every run (the teacher, which
# is the base-UNet row, included) reached.
"$py" - "$ck" "$out" <<'EOF' 2>&1 | tee -a "$log"
import sys
from pathlib import Path

from safetensors import safe_open
from safetensors.torch import save_file

ck, out = Path(sys.argv[1]), Path(sys.argv[2])
runs = {"small": ["abl-eps-linear", "abl-v-cosine", "abl-v-cosine-minsnr"], "base": ["diffusion"]}
every = [r for rs in runs.values() for r in rs]
steps = [int(p.stem.rsplit("-step", 1)[1]) for p in ck.glob("diffusion-step*.safetensors")]
common = max((s for s in steps if all((ck / f"{r}-step{s}.safetensors").exists() for r in every)), default=None)
print(f"ablation at {common} steps")
if common is not None:
    for kind, names in runs.items():
        tensors, meta = {}, {}
        for name in names:
            with safe_open(str(ck / f"{name}-step{common}.safetensors"), framework="pt") as f:
                meta[name] = f.metadata()["meta"]
                tensors.update({f"{name}/{k}": f.get_tensor(k) for k in f.keys()})
        save_file(tensors, str(out / f"ablation-{kind}.safetensors"), metadata=meta)
EOF
grep -E '\] [a-z-]+: [0-9]+ steps|resum|Error|error' "$log" || true
