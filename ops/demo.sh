#!/usr/bin/env bash
# The main job on the embedded default: install everything (ops/setup.sh), start Redis, both model
# workers (SmolLM2-135M drafter, Gemma 3 270M reasoner, on vLLM/CPU) and the Ray Serve router, send a
# GSM8K question through `thinkroute ask`, print the answer and its trace, and shut everything down.
#   ops/demo.sh                      # the first GSM8K test question
#   ops/demo.sh "your question" [extra `thinkroute ask` flags, e.g. --strategy specreason --json]
set -euo pipefail
cd "$(dirname "$0")/.."
bash ops/setup.sh
# shellcheck disable=SC1091
. .venv/bin/activate
export HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
DATA=${THINKROUTE_DATA:-../shared/data}
if [ $# -ge 1 ]; then QUESTION=$1; shift; else
  QUESTION=$(python -c "import json,sys; print(json.loads(open(sys.argv[1]).readline())['question'])" "$DATA/gsm8k/test.jsonl")
fi
RUN=runs/demo; mkdir -p "$RUN"; rm -f "$RUN/ready"
echo "==> [demo] starting thinkroute serve (embedded default); log: $RUN/serve.log" >&2
thinkroute serve --run-dir "$RUN" --ready-file "$RUN/ready" > "$RUN/serve.log" 2>&1 &
SERVE=$!
cleanup() {
  if kill -0 "$SERVE" 2>/dev/null; then
    echo "==> [demo] shutting down" >&2
    kill -TERM "$SERVE"; wait "$SERVE" || true
  fi
}
trap cleanup EXIT
tail -n +1 -f "$RUN/serve.log" --pid "$SERVE" | grep --line-buffered -E "^\[thinkroute|Converting|\[worker" >&2 &
while [ ! -f "$RUN/ready" ]; do
  kill -0 "$SERVE" 2>/dev/null || { echo "demo: thinkroute serve exited; see $RUN/serve.log" >&2; exit 1; }
  sleep 1
done
echo "==> [demo] question: $QUESTION" >&2
thinkroute ask "$QUESTION" --max-tokens 128 "$@"
