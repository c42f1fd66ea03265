"""`thinkroute ask`: a gRPC client of the router (thinkroute.v1.Router/Generate or GenerateStream)."""
from __future__ import annotations

import argparse
import json
import sys


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "ask",
        help="send one question to a running router and print the answer (and trace)",
        description=(
            "Send QUESTION to a running router over gRPC and print the answer, the extracted final answer and a "
            "summary of the trace (plan, model calls, tokens, latency). --json prints the whole response with its "
            "trace. Exit code 2 on a bad request, 1 when the router could not answer."
        ),
    )
    p.add_argument("question", help="the question (one user turn)")
    p.add_argument("--router", default="127.0.0.1:9000", help="router gRPC address (default 127.0.0.1:9000)")
    p.add_argument("--app", default="thinkroute", help="Ray Serve application name (default thinkroute)")
    p.add_argument("--strategy", default=None, help="fixed strategy (direct, specreason, specthink, cothink, hawkeye)")
    p.add_argument("--model", default=None, help="fixed model for `direct` (e.g. smollm2-135m, gemma3-270m)")
    p.add_argument("--option", action="append", default=[], metavar="KEY=VALUE",
                   help="strategy knob, repeatable (e.g. --option threshold=7); VALUE is parsed as JSON if it can be")
    p.add_argument("--dial", type=float, default=None, help="cost/quality dial in [0, 1] for this request")
    p.add_argument("--tenant", default="", help="tenant (selects its default dial)")
    p.add_argument("--max-tokens", type=int, default=0, help="max tokens of the answer (0 = router default)")
    p.add_argument("--temperature", type=float, default=0.0, help="0 = greedy (default)")
    p.add_argument("--seed", type=int, default=None, help="sampling seed")
    p.add_argument("--stream", action="store_true", help="print the answer as it is generated")
    p.add_argument("--timeout", type=float, default=600.0, help="seconds to wait (default 600)")
    p.add_argument("--json", action="store_true", help="print the full response, trace included, as JSON")
    p.set_defaults(func=run)


def _options(pairs: list[str]) -> dict:
    out = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep:
            raise SystemExit(f"--option expects KEY=VALUE, got {pair!r}")
        try:
            out[key] = json.loads(value)
        except json.JSONDecodeError:
            out[key] = value
    return out


def run(args: argparse.Namespace) -> int:
    import grpc

    from thinkroute.v1 import router_pb2 as rpb
    from thinkroute.v1 import router_pb2_grpc as rpb_grpc

    from router.router_wire import response_to_dict

    req = rpb.RouteRequest(query=args.question, strategy=args.strategy or "", model=args.model or "",
                           tenant=args.tenant, max_tokens=args.max_tokens, temperature=args.temperature)
    opts = _options(args.option)
    if opts:
        req.strategy_options.update(opts)
    if args.dial is not None:
        req.dial = args.dial
    if args.seed is not None:
        req.seed = args.seed
    metadata = [("application", args.app)]
    with grpc.insecure_channel(args.router) as channel:
        stub = rpb_grpc.RouterStub(channel)
        try:
            if args.stream:
                resp = None
                for msg in stub.GenerateStream(req, metadata=metadata, timeout=args.timeout):
                    if msg.text_delta and not args.json:
                        print(msg.text_delta, end="", flush=True)
                    if msg.HasField("final"):
                        resp = msg.final
                if not args.json:
                    print()
            else:
                resp = stub.Generate(req, metadata=metadata, timeout=args.timeout)
        except grpc.RpcError as e:
            print(f"error: {e.code().name}: {e.details()}", file=sys.stderr)
            return 2 if e.code() in (grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.NOT_FOUND) else 1
    if args.json:
        print(json.dumps(response_to_dict(resp), indent=2))
        return 0
    if not args.stream:
        print(resp.text)
    print_summary(resp)
    return 0


def print_summary(resp) -> None:
    t = resp.trace
    out = sys.stdout
    print("-" * 72, file=out)
    print(f"final answer: {resp.final_answer or '(none)'}   finish: {resp.finish_reason}", file=out)
    print(f"plan: {t.plan.strategy} {dict(t.plan.models)}  dial={t.plan.dial:.2f}  ({t.plan.reason})", file=out)
    for c in t.calls:
        step = f" step {c.step}" if c.step >= 0 else ""
        print(f"  {c.kind:<9} {c.model:<14} {c.role:<10}{step:<8} prompt {c.prompt_tokens:>5} "
              f"(cached {c.cached_prompt_tokens:>4})  generated {c.generated_tokens:>4}  {c.latency_ms:8.1f} ms  "
              f"@ {c.replica}", file=out)
    stages = "  ".join(f"{k} {v:.1f} ms" for k, v in t.stage_ms.items())
    print(f"stages: {stages}", file=out)
