#!/usr/bin/env sh
# Deploy the image classifier with the wsk CLI (after `wsk property set`, see README.md).
#   actions/image-classifier/deploy.sh [model.onnx]
set -eu
here=$(dirname "$0")
model=${1:-.cache/models/resnet50-seed0.onnx}
[ -f "$model" ] || python "$here/export_model.py" --out "$model"
wsk action update image-classifier "$here/action.py" --kind python:3-gpu \
  --param model_path "$(realpath "$model")" --memory 512 --timeout 120000
