"""What planning with a probe costs per request: the drafter's HiddenState RPC + probe prediction +
the dial's choice, against the drafter's own time for a short answer, in one run.

The probe policy is real: trained (Policy.fit) on the GSM8K GPT-3 outcome log
(../shared/data/routing/gsm8k_gpt3_outcomes.dev.jsonl, 4 systems) with features read from a live
`vllm` worker's HiddenState RPC (final layer, last token, SmolLM2-135M), the same path the live
router's PlanningPolicy takes with `policy.artifact` set. Training uses the first --train questions;
timing uses held-out questions, interleaving the planning steps with a 16-token drafter answer.

    python ops/bench/planning_overhead.py --train 400 --n 60 --out runs/bench/planning_overhead.json
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import grpc
import numpy as np

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))
DATA = Path(os.environ.get("THINKROUTE_DATA", REPO.parent / "shared" / "data"))

from thinkroute.v1 import worker_pb2 as pb  # noqa: E402
from thinkroute.v1 import worker_pb2_grpc as pb_grpc  # noqa: E402


def pct(xs, q) -> float:
    return float(np.percentile(np.asarray(xs), q))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--train", type=int, default=400, help="outcome rows used to fit the probe policy")
    ap.add_argument("--n", type=int, default=60, help="timed held-out requests")
    ap.add_argument("--answer-tokens", type=int, default=16, help="drafter answer length for the reference")
    ap.add_argument("--worker", default=None, help="a running smollm2-135m worker (default: start one)")
    ap.add_argument("--out", default=None)
    args = ap.parse_args()

    from probes.features import WorkerHiddenStates
    from router.policy import Policy
    from router.policy.evaluate import load_config, load_outcomes

    stop = lambda: None  # noqa: E731
    address = args.worker
    if address is None:
        sys.path.insert(0, str(REPO / "tests"))
        from conftest import start_worker

        print("starting a vllm worker for smollm2-135m ...", file=sys.stderr)
        w = start_worker("smollm2-135m", "vllm", REPO / "runs" / "bench" / "planning_overhead").wait_ready()
        address, stop = w.address, w.stop
    try:
        cfg = load_config(REPO / "router" / "configs" / "routing" / "gsm8k_gpt3.yaml")
        out = load_outcomes(cfg, str(DATA / "routing" / "gsm8k_gpt3_outcomes.dev.jsonl"))
        n_train = min(args.train, len(out.texts) - args.n)
        source = WorkerHiddenStates(address, layers=(-1,), pooling=("last",))
        t0 = time.perf_counter()
        X = source.features(out.texts[:n_train])
        print(f"features for {n_train} questions via HiddenState: {time.perf_counter() - t0:.1f} s", file=sys.stderr)
        policy = Policy.fit(X, out.correct[:n_train], out.out_tokens[:n_train], None, out.systems, cfg.prices(),
                            source.spec, source.model_id)
        stub = pb_grpc.WorkerStub(grpc.insecure_channel(address))
        hs, pred, choose, answer, total = [], [], [], [], []
        held = out.texts[n_train:n_train + args.n]
        for i, text in enumerate(held):
            t = time.perf_counter()
            r = stub.HiddenState(pb.HiddenStateRequest(prompts=[pb.Prompt(text=text)], layers=[-1]), timeout=60)
            feats = np.frombuffer(r.results[0].data, dtype="<f4").reshape(-1)
            t1 = time.perf_counter()
            predictions = policy.predict(feats, int(out.prompt_tokens[n_train + i]))
            t2 = time.perf_counter()
            policy.choose(predictions, dial=0.5, explore=False)
            t3 = time.perf_counter()
            hs.append((t1 - t) * 1e3)
            pred.append((t2 - t1) * 1e3)
            choose.append((t3 - t2) * 1e3)
            total.append((t3 - t) * 1e3)
            a = time.perf_counter()
            list(stub.Generate(pb.GenerateRequest(
                prompt=pb.Prompt(chat=pb.ChatPrompt(messages=[pb.ChatMessage(role="user", content=text)],
                                                    add_generation_prompt=True)),
                sampling=pb.SamplingParams(max_tokens=args.answer_tokens)), timeout=120))
            answer.append((time.perf_counter() - a) * 1e3)
            print(f"\r {i + 1}/{len(held)}", end="", file=sys.stderr, flush=True)
        print(file=sys.stderr)
    finally:
        stop()
    rows = {"hidden_state_rpc": hs, "probe_predict": pred, "dial_choose": choose, "planning_total": total,
            f"drafter_answer_{args.answer_tokens}_tokens": answer}
    print(f"\nplanning overhead per request (n={len(total)}, probe trained on {n_train} GSM8K GPT-3 outcomes)\n")
    print(f"{'step':<28} {'p50 ms':>9} {'p95 ms':>9}")
    for k, v in rows.items():
        print(f"{k:<28} {pct(v, 50):>9.1f} {pct(v, 95):>9.1f}")
    print(f"\nplanning / drafter answer (p50): {pct(total, 50) / pct(answer, 50):.3f}")
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps({k: {"p50_ms": pct(v, 50), "p95_ms": pct(v, 95)} for k, v in rows.items()}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
