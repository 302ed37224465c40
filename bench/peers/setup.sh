#!/usr/bin/env bash
# Builds one virtual environment per peer implementation under bench/peers/.venvs/.
#
# The peers are what users would pick instead of tfreparam; they are benchmark
# subjects only and never become project dependencies. Each gets its own venv
# because their dependencies conflict with ours (Keras 3 vs tf_keras, TF 2.20
# pins, PyTorch):
#
#   keras_hub     KerasHub BertBackbone on Keras 3 with the TensorFlow backend
#   model_garden  TF Model Garden BertEncoderV2 (tf-models-official, which pins
#                 TF 2.20: installed with --no-deps next to our TF 2.21 stack,
#                 plus the few packages its BERT modules import)
#   torch         Hugging Face transformers BertModel on the PyTorch CPU wheel,
#                 plus onnx/onnxruntime for the export benchmark's peer
#
# Usage: bash bench/peers/setup.sh [keras_hub|model_garden|torch ...]   (default: all)
# Re-running is cheap: a venv whose stamp matches this script's pins is kept.
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
VENVS="$HERE/.venvs"
PYTHON="${PYTHON:-python3.11}"
TORCH_CPU_INDEX="https://download.pytorch.org/whl/cpu"

# Pins (checked to install and run together on Python 3.11, x86-64 Linux).
TF_STACK=(tensorflow==2.21.0 numpy==2.4.6 protobuf==7.36.2 absl-py==1.4.0)
KERAS_HUB_PINS=(keras-hub==0.32.0 keras==3.15.1)
MODEL_GARDEN_PINS=(tf-keras==2.21.0 tensorflow-text==2.21.1 gin-config==0.5.0 pyyaml==6.0.3 scipy==1.17.1)
MODEL_GARDEN_NODEPS=(tf-models-official==2.20.0)
TORCH_PINS=(torch==2.13.0+cpu)
TORCH_EXTRA=(transformers==5.23.0 onnx==1.23.2 onnxscript==0.7.2 onnxruntime==1.32.0 numpy==2.4.6)

pins_of() {
  case "$1" in
    keras_hub) echo "${TF_STACK[*]} ${KERAS_HUB_PINS[*]}" ;;
    model_garden) echo "${TF_STACK[*]} ${MODEL_GARDEN_PINS[*]} nodeps: ${MODEL_GARDEN_NODEPS[*]}" ;;
    torch) echo "${TORCH_PINS[*]} ${TORCH_EXTRA[*]}" ;;
    *) echo "unknown peer '$1' (expected keras_hub, model_garden or torch)" >&2; exit 2 ;;
  esac
}

install_peer() {
  local name="$1" venv="$VENVS/$1"
  local stamp="$venv/.installed" pins
  pins="$(pins_of "$name")"
  if [[ -f "$stamp" && "$(cat "$stamp")" == "$pins" ]]; then
    echo "[$name] up to date ($venv)"
    return
  fi
  echo "[$name] building $venv"
  rm -rf "$venv"
  "$PYTHON" -m venv "$venv"
  local pip=("$venv/bin/python" -m pip install --quiet)
  "${pip[@]}" --upgrade pip
  case "$name" in
    keras_hub)
      "${pip[@]}" "${TF_STACK[@]}" "${KERAS_HUB_PINS[@]}" ;;
    model_garden)
      "${pip[@]}" "${TF_STACK[@]}" "${MODEL_GARDEN_PINS[@]}"
      "${pip[@]}" --no-deps "${MODEL_GARDEN_NODEPS[@]}" ;;
    torch)
      # The default index serves CUDA builds of torch on Linux; the CPU-only wheel
      # comes from a local wheel directory configured for pip if there is one,
      # else from the PyTorch CPU index.
      "${pip[@]}" "${TORCH_PINS[@]}" 2>/dev/null \
        || "${pip[@]}" "${TORCH_PINS[@]}" --extra-index-url "$TORCH_CPU_INDEX"
      "${pip[@]}" "${TORCH_EXTRA[@]}" ;;
  esac
  "$venv/bin/python" "$HERE/check_peer.py" "$name"
  echo "$pins" > "$stamp"
  echo "[$name] ready"
}

mkdir -p "$VENVS"
if [[ $# -eq 1 ]]; then
  install_peer "$1"
  exit 0
fi
# Several peers: each in its own process, so one that cannot be built (no
# registry access, say) does not stop the others; the benchmarks skip it.
peers=("$@")
[[ ${#peers[@]} -gt 0 ]] || peers=(keras_hub model_garden torch)
failed=()
for peer in "${peers[@]}"; do
  bash "${BASH_SOURCE[0]}" "$peer" || failed+=("$peer")
done
if [[ ${#failed[@]} -gt 0 ]]; then
  echo "Could not build: ${failed[*]} (the benchmarks skip peers without a venv)" >&2
  exit 1
fi
