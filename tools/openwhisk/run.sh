#!/usr/bin/env bash
# Start OpenWhisk's controller (classic or FPC), its scheduler (FPC), the broker, pouchdb-server
# (initialised as OpenWhisk's Ansible initialises CouchDB), etcd (FPC) and this project's invokers
# on this machine; print where each listens; stop everything it started on Ctrl-C.
#
#   OPENWHISK_CHECKOUT=/path/to/openwhisk tools/openwhisk/build.sh
#   OPENWHISK_CHECKOUT=/path/to/openwhisk tools/openwhisk/run.sh [--mode classic|fpc]
#       [--with-controller-patch] [--invoker cpu|gpu ...] [--no-invokers] [--up-for SECONDS]
#
# Python: $PYTHON, else the project's .venv (./dev setup makes it), else python3.
set -euo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO="$(cd "$HERE/../.." && pwd)"
PY="${PYTHON:-}"
if [ -z "$PY" ]; then
  if [ -x "$REPO/.venv/bin/python" ]; then PY="$REPO/.venv/bin/python"; else PY=python3; fi
fi
exec "$PY" "$HERE/run.py" "$@"
