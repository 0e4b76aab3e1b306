#!/usr/bin/env bash
# Here, before a session's GPU run: what the device image lacks, in folders git ignores and the
# device tool's `run` carries (carry: [".whl", ".data"]). The image has torch, numpy, scipy,
# scikit-learn, matplotlib, PyYAML, tqdm and packaging, but not pydantic (our schemas) or optuna
# (the baselines of recommend_fmnist); ../shared does not travel, so Fashion-MNIST goes in .data.
# Then run benchmarks/gpu/run.sh there (see its header).
set -euo pipefail
cd "$(dirname "$0")/../.."
mkdir -p .git/info && touch .git/info/exclude
for dir in /.whl/ /.data/; do
  grep -qxF "$dir" .git/info/exclude || echo "$dir" >>.git/info/exclude
done
rm -rf .whl && mkdir -p .whl .data
# The versions this checkout's .venv runs, for the device's Python 3.12 on x86-64.
versions=$(.venv/bin/pip list --format=freeze 2>/dev/null)
pin() { grep -i "^$1==" <<<"$versions" || { echo "$1 is not installed in .venv" >&2; exit 1; }; }
python3 -m pip download --quiet --no-deps --only-binary=:all: --python-version 3.12 \
  --implementation cp --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 \
  --platform manylinux2014_x86_64 -d .whl \
  "$(pin pydantic)" "$(pin pydantic_core)" "$(pin annotated-types)" "$(pin typing-inspection)" \
  "$(pin typing_extensions)" "$(pin optuna)" "$(pin alembic)" "$(pin sqlalchemy)" \
  "$(pin colorlog)" "$(pin mako)"
cp -r "${EDGETUNE_DATA_ROOT:-../shared/datasets}/fashion-mnist" .data/
du -sh .whl .data
