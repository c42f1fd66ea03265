"""What planning with a probe costs per request, and what probe traffic costs the drafter's generation, in one run.

1. Planning overhead: the drafter's HiddenState RPC + probe prediction + the dial's choice, against the
   drafter's own time for a short answer (`--answer-tokens`, 16), interleaved on held-out questions. One
   arm per probe spec (`--specs`): `servable` = the servable GSM8K probe of
   router/configs/routing/gsm8k_gpt3.yaml (layers 2, 4, 8 x last/mean pooling, last 256 tokens: the worker
   runs 8 of SmolLM2's 30 decoder layers), `final` = the final layer's last token (every layer runs).
   Each probe is real: `Policy.fit` on the first `--train` rows of the GSM8K GPT-3 outcome log
   (../shared/data/routing/gsm8k_gpt3_outcomes.dev.jsonl, 4 systems) with features read over the same
   worker's HiddenState RPC - the path the live router's PlanningPolicy takes with `policy.artifact`.
2. Generation throughput under probe traffic: `--gen-clients` closed-loop clients each asking the drafter for
   `--gen-tokens`-token answers for `--load-s` seconds, alone, then again beside planning traffic (HiddenState
   calls of the first spec on other held-out questions, open loop at `--plan-rate` calls/s; default: one per
   generation request of the first arm, i.e. every request planned once). Reports generated tokens/s of both
   arms side by side, and the HiddenState latency under load.

    python ops/bench/planning_overhead.py --train 200 --n 40 --out runs/bench/planning_overhead.json
"""
from __future__ import annotations

import argparse
import asyncio
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

#: Probe specs (HiddenState arguments); `servable` is router/configs/routing/gsm8k_gpt3.yaml's feature spec.
SPECS = {
    "servable": {"layers": (2, 4, 8), "pooling": ("last", "mean"), "max_tokens": 256},
    "final": {"layers": (-1,), "pooling": ("last",), "max_tokens": None},
}
WIRE_POOL = {"last": pb.POOLING_LAST_TOKEN, "mean": pb.POOLING_MEAN}


def pct(xs, q) -> float:
    return float(np.percentile(np.asarray(xs), q)) if len(xs) else float("nan")


def hs_request(spec: dict, text: str) -> pb.HiddenStateRequest:
    return pb.HiddenStateRequest(prompts=[pb.Prompt(text=text)], layers=list(spec["layers"]),
                                 poolings=[WIRE_POOL[p] for p in spec["pooling"]], max_tokens=spec["max_tokens"] or 0)


def chat(text: str) -> pb.Prompt:
    return pb.Prompt(chat=pb.ChatPrompt(messages=[pb.ChatMessage(role="user", content=text)], add_generation_prompt=True))


def planning_arm(stub, policy, spec: dict, held: list[str], prompt_tokens, answer_tokens: int) -> dict[str, list[float]]:
    """Per held-out question: planning (HiddenState + predict + choose), then the drafter's short answer."""
    from tqdm.auto import tqdm

    hs, pred, choose, total, answer = [], [], [], [], []
    for i, text in enumerate(tqdm(held, desc="planning vs answer", unit="q", leave=False)):
        t = time.perf_counter()
        r = stub.HiddenState(hs_request(spec, text), timeout=60)
        feats = np.frombuffer(r.results[0].data, dtype="<f4").reshape(-1)
        t1 = time.perf_counter()
        predictions = policy.predict(feats, int(prompt_tokens[i]))
        t2 = time.perf_counter()
        policy.choose(predictions, dial=0.5, explore=False)
        t3 = time.perf_counter()
        hs.append((t1 - t) * 1e3)
        pred.append((t2 - t1) * 1e3)
        choose.append((t3 - t2) * 1e3)
        total.append((t3 - t) * 1e3)
        a = time.perf_counter()
        list(stub.Generate(pb.GenerateRequest(prompt=chat(text), sampling=pb.SamplingParams(max_tokens=answer_tokens)),
                           timeout=120))
        answer.append((time.perf_counter() - a) * 1e3)
    return {"hidden_state_rpc": hs, "probe_predict": pred, "dial_choose": choose, "planning_total": total,
            f"drafter_answer_{answer_tokens}_tokens": answer}


async def load_arm(address: str, texts: list[str], clients: int, gen_tokens: int, seconds: float,
                   plan_spec: dict | None, plan_rate: float, plan_texts: list[str]) -> dict:
    """Closed-loop generation clients for `seconds`; with `plan_spec`, open-loop HiddenState calls beside them."""
    channel = grpc.aio.insecure_channel(address)
    stub = pb_grpc.WorkerStub(channel)
    end = time.monotonic() + seconds
    tokens, requests, plan_ms, plan_errors = [0], [0], [], [0]

    async def gen_client(k: int) -> None:
        i = k
        while time.monotonic() < end:
            req = pb.GenerateRequest(prompt=chat(texts[i % len(texts)]),
                                     sampling=pb.SamplingParams(max_tokens=gen_tokens, temperature=0.0))
            async for msg in stub.Generate(req, timeout=120):
                if msg.HasField("final") and time.monotonic() <= end + 1.0:
                    tokens[0] += msg.final.usage.generated_tokens
                    requests[0] += 1
            i += clients

    async def one_plan(text: str) -> None:
        t = time.perf_counter()
        try:
            await stub.HiddenState(hs_request(plan_spec, text), timeout=60)
            plan_ms.append((time.perf_counter() - t) * 1e3)
        except grpc.aio.AioRpcError:
            plan_errors[0] += 1

    async def planner() -> None:
        pending, j = set(), 0
        nxt = time.monotonic()
        while time.monotonic() < end:
            task = asyncio.ensure_future(one_plan(plan_texts[j % len(plan_texts)]))
            pending.add(task)
            task.add_done_callback(pending.discard)
            j += 1
            nxt += 1.0 / plan_rate
            await asyncio.sleep(max(0.0, nxt - time.monotonic()))
        if pending:
            await asyncio.gather(*pending)

    t0 = time.monotonic()
    jobs = [gen_client(k) for k in range(clients)] + ([planner()] if plan_spec is not None else [])
    await asyncio.gather(*jobs)
    elapsed = max(seconds, 1e-9)
    await channel.close()
    out = {"generated_tokens": tokens[0], "requests": requests[0], "seconds": round(time.monotonic() - t0, 1),
           "tokens_per_s": tokens[0] / elapsed, "requests_per_s": requests[0] / elapsed}
    if plan_spec is not None:
        out.update(planning_calls=len(plan_ms), planning_errors=plan_errors[0], planning_rate=plan_rate,
                   hidden_state_p50_ms=pct(plan_ms, 50), hidden_state_p95_ms=pct(plan_ms, 95))
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--train", type=int, default=200, help="outcome rows used to fit each probe policy (default 200)")
    ap.add_argument("--n", type=int, default=40, help="timed held-out requests per planning arm (default 40)")
    ap.add_argument("--answer-tokens", type=int, default=16, help="drafter answer length for the reference (default 16)")
    ap.add_argument("--specs", default="servable,final", help=f"probe specs, comma-separated, of {sorted(SPECS)}; the "
                    "first also drives the planning traffic of the throughput arms (default servable,final)")
    ap.add_argument("--gen-clients", type=int, default=4, help="closed-loop generation clients (default 4)")
    ap.add_argument("--gen-tokens", type=int, default=64, help="tokens per generation request (default 64)")
    ap.add_argument("--load-s", type=float, default=30.0, help="seconds per throughput arm (default 30; 0 = skip)")
    ap.add_argument("--plan-rate", type=float, default=0.0,
                    help="planning calls/s beside generation (default 0 = the generation-only arm's requests/s)")
    ap.add_argument("--worker", default=None, help="a running smollm2-135m vllm worker (default: start one)")
    ap.add_argument("--out", default=None, help="write the figures as JSON here")
    args = ap.parse_args()
    specs = [s.strip() for s in args.specs.split(",") if s.strip()]
    bad = [s for s in specs if s not in SPECS]
    if bad or not specs:
        ap.error(f"--specs {args.specs!r}: choose among {sorted(SPECS)}")

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
    report: dict = {"command": " ".join(["python", *sys.argv]), "planning": {}, "throughput": {}}
    try:
        cfg = load_config(REPO / "router" / "configs" / "routing" / "gsm8k_gpt3.yaml")
        out = load_outcomes(cfg, str(DATA / "routing" / "gsm8k_gpt3_outcomes.dev.jsonl"))
        n_train = min(args.train, len(out.texts) - args.n)
        held = out.texts[n_train:n_train + args.n]
        stub = pb_grpc.WorkerStub(grpc.insecure_channel(address))
        for name in specs:
            spec = SPECS[name]
            source = WorkerHiddenStates(address, layers=spec["layers"], pooling=spec["pooling"],
                                        max_tokens=spec["max_tokens"])
            t0 = time.perf_counter()
            X = source.features(out.texts[:n_train])
            print(f"{name}: features for {n_train} questions via HiddenState: {time.perf_counter() - t0:.1f} s",
                  file=sys.stderr)
            policy = Policy.fit(X, out.correct[:n_train], out.out_tokens[:n_train], None, out.systems, cfg.prices(),
                                source.spec, source.model_id)
            rows = planning_arm(stub, policy, spec, held, out.prompt_tokens[n_train:n_train + args.n], args.answer_tokens)
            answer = rows[f"drafter_answer_{args.answer_tokens}_tokens"]
            report["planning"][name] = {
                "spec": {k: list(v) if isinstance(v, tuple) else v for k, v in spec.items()},
                "steps": {k: {"p50_ms": pct(v, 50), "p95_ms": pct(v, 95)} for k, v in rows.items()},
                "ratio_p50": pct(rows["planning_total"], 50) / pct(answer, 50)}
            print(f"{name}: {json.dumps(report['planning'][name])}", file=sys.stderr, flush=True)
            save(args.out, report)
        if args.load_s > 0:
            texts = out.texts[n_train + args.n:] or held
            spec = SPECS[specs[0]]
            alone = asyncio.run(load_arm(address, texts, args.gen_clients, args.gen_tokens, args.load_s, None, 0, []))
            rate = args.plan_rate or max(alone["requests_per_s"], 0.1)
            beside = asyncio.run(load_arm(address, texts, args.gen_clients, args.gen_tokens, args.load_s, spec, rate,
                                          list(reversed(texts))))
            report["throughput"] = {"generation_only": alone, "with_planning": beside, "probe_spec": specs[0],
                                    "ratio_tokens_per_s": beside["tokens_per_s"] / max(alone["tokens_per_s"], 1e-9)}
            save(args.out, report)
    finally:
        stop()

    print(f"\nplanning overhead per request (n={args.n}, probes trained on {n_train} GSM8K GPT-3 outcomes)\n")
    print(f"{'spec':<10} {'step':<28} {'p50 ms':>9} {'p95 ms':>9}")
    for name, r in report["planning"].items():
        for k, v in r["steps"].items():
            print(f"{name:<10} {k:<28} {v['p50_ms']:>9.1f} {v['p95_ms']:>9.1f}")
        print(f"{name:<10} {'planning / answer (p50)':<28} {r['ratio_p50']:>9.3f}\n")
    if report["throughput"]:
        t = report["throughput"]
        a, b = t["generation_only"], t["with_planning"]
        print(f"drafter generation, {args.gen_clients} clients x {args.gen_tokens}-token answers, {args.load_s:g} s per arm")
        print(f"{'arm':<20} {'tokens/s':>9} {'req/s':>7} {'HiddenState p50/p95 ms':>24}")
        print(f"{'generation only':<20} {a['tokens_per_s']:>9.1f} {a['requests_per_s']:>7.2f} {'-':>24}")
        print(f"{'+ planning traffic':<20} {b['tokens_per_s']:>9.1f} {b['requests_per_s']:>7.2f} "
              f"{b['hidden_state_p50_ms']:>11.1f} / {b['hidden_state_p95_ms']:<10.1f}"
              f"  ({b['planning_calls']} calls at {b['planning_rate']:.2f}/s, {b['planning_errors']} errors)")
        print(f"with / without planning traffic: {t['ratio_tokens_per_s']:.3f}")
    save(args.out, report)
    return 0


def save(path: str | None, report: dict) -> None:
    """Write the figures so far (each arm as it finishes: a run cut short keeps what it measured)."""
    if path:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        Path(path).write_text(json.dumps(report, indent=2))


if __name__ == "__main__":
    sys.exit(main())
