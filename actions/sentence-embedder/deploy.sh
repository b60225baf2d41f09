#!/usr/bin/env sh
# Deploy the sentence embedder with the wsk CLI (after `wsk property set`, see README.md).
set -eu
here=$(dirname "$0")
wsk action update sentence-embedder "$here/action.py" --kind python:3-gpu --memory 512 --timeout 120000
