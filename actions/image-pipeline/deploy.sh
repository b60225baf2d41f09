#!/usr/bin/env sh
# Deploy the pipeline with the wsk CLI (after `wsk property set`, see README.md):
#   actions/image-pipeline/deploy.sh [onnx|torch]     (the classifier's engine, default onnx)
set -eu
here=$(dirname "$0")
wsk action update image-preprocess "$here/preprocess.py" --kind python:3 --memory 256
"$here/../image-classifier/deploy.sh" "$@"
wsk action update image-classify --sequence image-preprocess,image-classifier
