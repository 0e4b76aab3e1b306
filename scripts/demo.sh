#!/usr/bin/env bash
# `make demo`: start the embedded service (API + one worker, SQLite in the data dir), submit
# examples/fashion_mnist_paper.yaml over HTTP, follow its progress, print the recommendation,
# and stop the service again (also on Ctrl-C or an error).
set -euo pipefail
cd "$(dirname "$0")/.."

EDGETUNE="${EDGETUNE:-.venv/bin/edgetune}"
PYTHON="${PYTHON:-.venv/bin/python}"
SPEC="${1:-examples/fashion_mnist_paper.yaml}"
export EDGETUNE_HOST="${EDGETUNE_HOST:-127.0.0.1}"
export EDGETUNE_PORT="${EDGETUNE_PORT:-8000}"
URL="http://${EDGETUNE_HOST}:${EDGETUNE_PORT}"
# The data dir: EDGETUNE_DATA_DIR, else the per-user default (~/.local/share/edgetune; see
# app/config.py), asked of the settings so this script and the server agree.
DATA_DIR="$("$PYTHON" -c 'from app.config import Settings; print(Settings().data_dir.resolve())')"
LOG="$DATA_DIR/serve.log"
mkdir -p "$DATA_DIR"

# 0 when $1 answers 200 (no curl needed: the venv has httpx).
answers() {
  "$PYTHON" -c 'import sys, httpx
try:
    sys.exit(httpx.get(sys.argv[1], timeout=2).status_code != 200)
except httpx.HTTPError:
    sys.exit(1)' "$1"
}

if answers "$URL/livez"; then
  echo "something already answers on $URL; stop it or set EDGETUNE_PORT" >&2
  exit 1
fi

# The spec's MNIST / Fashion-MNIST files: used from a data root that has them (EDGETUNE_DATA_ROOT,
# default ../shared/datasets, then <data dir>/datasets), else downloaded once, verified, by
# `edgetune data fetch` into a data root the server reads too (with none configured and no
# ../shared, that is <data dir>/datasets).
# Prints the dataset to fetch: an MNIST-style spec without dataset.path whose files are missing
# (the worker reads <root>/<name> of the first data root that has that folder).
missing_dataset() {
  "$PYTHON" -c 'import sys, yaml
from app.config import Settings
from app.datasets import IDX_DATASETS, IDX_FILES
dataset = (yaml.safe_load(open(sys.argv[1])) or {}).get("dataset") or {}
name = dataset.get("name")
if name in IDX_DATASETS and not dataset.get("path"):
    found = [r / name for r in Settings().data_roots if (r / name).is_dir()]
    if not found or not all((found[0] / f).is_file() for f in IDX_FILES):
        print(name)' "$1"
}
MISSING="$(missing_dataset "$SPEC")"
if [ -n "$MISSING" ]; then
  echo "$MISSING is in no data root: fetching it (once)"
  "$EDGETUNE" data fetch "$MISSING"
fi

echo "starting edgetune serve on $URL (log: $LOG)"
"$EDGETUNE" serve >"$LOG" 2>&1 &
SERVER=$!
stop_server() {
  if kill -0 "$SERVER" 2>/dev/null; then
    kill -TERM "$SERVER" 2>/dev/null || true
    wait "$SERVER" 2>/dev/null || true
  fi
}
trap stop_server EXIT

for _ in $(seq 1 120); do
  if answers "$URL/readyz"; then break; fi
  if ! kill -0 "$SERVER" 2>/dev/null; then
    echo "edgetune serve exited; last lines of $LOG:" >&2
    tail -n 20 "$LOG" >&2
    exit 1
  fi
  sleep 0.5
done
answers "$URL/readyz" || { echo "server not ready after 60 s; see $LOG" >&2; exit 1; }

"$EDGETUNE" recommend "$SPEC" --url "$URL" --wait
