#!/usr/bin/env sh
# Deploy the image classifier with the wsk CLI (after `wsk property set`, see README.md).
#   actions/image-classifier/deploy.sh [onnx|torch]      (default onnx)
# ACTION_NAME sets the action's name (default image-classifier); PYTHON the interpreter
# that builds the zip and the model file (default python: the venv with the ml extra).
set -eu
here=$(dirname "$0")
engine=${1:-onnx}
eval "$("${PYTHON:-python}" "$here/build.py" "$engine" --format sh)"  # sets zip and model_path
wsk action update "${ACTION_NAME:-image-classifier}" "$zip" --kind python:3-gpu \
  --param model_path "$model_path" --memory 512 --timeout 120000
