#!/usr/bin/env bash
# Install everything (ops/setup.sh) and run the whole test suite: unit, then integration (real worker
# processes, real Ray Serve, real Redis, real models). GPU tests are skipped, with a reason, without CUDA.
# Exits non-zero when set-up fails, when any test fails, and when no test ran.
set -euo pipefail
cd "$(dirname "$0")/.."
bash ops/setup.sh
# shellcheck disable=SC1091
. .venv/bin/activate
export HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false RAY_DEDUP_LOGS=0
# With no arguments: the whole suite but the tests marked `slow` (README.md lists them; ~35 min together);
# `ops/test.sh tests` runs everything, `ops/test.sh -m slow tests` only those.
if [ "$#" -eq 0 ]; then set -- -m "not slow" tests; fi
echo "==> [test $(date +%H:%M:%S)] pytest $*" >&2
set +e
python -m pytest -ra --durations=25 -p no:cacheprovider "$@"
rc=$?
set -e
if [ "$rc" -eq 5 ]; then
  echo "test: pytest collected no tests: failing" >&2
  exit 1
fi
exit "$rc"
