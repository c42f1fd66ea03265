"""`thinkroute feedback`: send an outcome for an answer, or export the joined outcomes as a training file.

    thinkroute feedback send REQUEST_ID --correct|--wrong|--score S [--task T] [--router HOST:PORT] [--key K]
    thinkroute feedback export --config C --out FILE

`send` calls thinkroute.v1.Router/Feedback (the same as POST /v1/feedback). `export` reads the decision log's
outcomes from the deployment's store (`policy.feedback`: Redis, password from `redis.password_env`; or the
`policy.feedback.dir` file) and writes one JSON line per judged request (router/feedback.py
`decision_log_to_outcomes`: the text, the task and only the plan that answered, `is_correct`), the input of
`thinkroute train --from-log`.
"""
from __future__ import annotations

import argparse
import asyncio
import os
import sys


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("feedback", help="send feedback for an answer, or export the feedback log as a training file",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("action", choices=["send", "export"])
    p.add_argument("request_id", nargs="?", help="send: the answer's request id (x-request-id / RouteResponse.request_id)")
    v = p.add_mutually_exclusive_group()
    v.add_argument("--correct", action="store_true", help="send: the answer was right")
    v.add_argument("--wrong", action="store_true", help="send: the answer was wrong")
    v.add_argument("--score", type=float, help="send: a score in [0, 1]")
    p.add_argument("--task", default="", help="send: the request's task (default: the one it was routed with)")
    p.add_argument("--router", default="127.0.0.1:9000", help="send: router gRPC address (default 127.0.0.1:9000)")
    p.add_argument("--app", default="thinkroute", help="send: Ray Serve application name")
    p.add_argument("--key", default=None, help="send: API key (default $THINKROUTE_API_KEY)")
    p.add_argument("--config", metavar="YAML", help="export: the deployment's router config (default: embedded)")
    p.add_argument("--out", metavar="FILE", help="export: JSON-lines file to write")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    if args.action == "export":
        from router.config import load_config
        from router.feedback import export_outcomes

        if not args.out:
            print("thinkroute feedback export: --out FILE is required", file=sys.stderr)
            return 2
        config = load_config(args.config)
        if config.policy is None:
            print("thinkroute feedback export: the config has no policy (nothing was logged)", file=sys.stderr)
            return 2
        n = asyncio.run(export_outcomes(config, args.out))
        print(f"wrote {n} judged requests to {args.out}")
        return 0
    import grpc

    from thinkroute.v1 import router_pb2 as rpb
    from thinkroute.v1 import router_pb2_grpc as rpb_grpc

    if not args.request_id or not (args.correct or args.wrong or args.score is not None):
        print("thinkroute feedback send: give REQUEST_ID and one of --correct, --wrong, --score S", file=sys.stderr)
        return 2
    req = rpb.FeedbackRequest(request_id=args.request_id, task=args.task)
    if args.score is not None:
        req.score = args.score
    else:
        req.correct = bool(args.correct)
    md = [("application", args.app)]
    key = args.key or os.environ.get("THINKROUTE_API_KEY")
    if key:
        md.append(("authorization", f"Bearer {key}"))
    with grpc.insecure_channel(args.router) as ch:
        try:
            r = rpb_grpc.RouterStub(ch).Feedback(req, metadata=md, timeout=30)
        except grpc.RpcError as e:
            print(f"thinkroute feedback: {e.code().name}: {e.details()}", file=sys.stderr)
            return 1
    print(f"recorded: plan {r.plan} for task {r.task!r}: P(correct) {r.p_correct_before:.3f} -> {r.p_correct_after:.3f} "
          f"({r.outcomes} outcomes)")
    return 0
