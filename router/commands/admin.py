"""`thinkroute dial` (runtime dial, admin RPC) and `thinkroute config-reference`."""
from __future__ import annotations

import argparse
import os
import sys


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "dial",
        help="read or change the router's default cost/quality dial at runtime",
        description=(
            "Read (get) or change (set) the default dial of a running router, globally or for one tenant, through "
            "the admin RPC thinkroute.v1.Router/SetDial. Setting needs the admin token: --token or "
            "$THINKROUTE_ADMIN_TOKEN (the router reads its token from the variable named by serve.admin_token_env); "
            "the router accepts it only over TLS or from its own host. When API keys are configured, reading needs "
            "a key (--key or $THINKROUTE_API_KEY). The change reaches every router replica of the application; no "
            "restart."
        ),
    )
    p.add_argument("action", choices=["get", "set", "calibrate"],
                   help="get or set the runtime dial; calibrate: print and plot, for dial 0..1, the expected accuracy, "
                        "cost per 1,000 requests and share of each plan on outcome data (router/commands/dial_calibrate.py)")
    p.add_argument("value", nargs="?", type=float, help="new dial in [0, 1] (set)")
    p.add_argument("--tenant", default="", help="tenant (default: the global default)")
    p.add_argument("--router", default="127.0.0.1:9000", help="router gRPC address (default 127.0.0.1:9000)")
    p.add_argument("--app", default="thinkroute", help="Ray Serve application name")
    p.add_argument("--token", default=None, help="admin token (default $THINKROUTE_ADMIN_TOKEN)")
    p.add_argument("--key", default=None, help="API key, when the router has keys (default $THINKROUTE_API_KEY)")
    from router.commands.dial_calibrate import add_arguments

    add_arguments(p)
    p.set_defaults(func=run_dial)

    c = sub.add_parser("config-reference", help="print the configuration reference (Markdown)",
                       description="Print every configuration field with its default and meaning, as Markdown; "
                                   "--write-readme replaces the reference in README.md.")
    c.add_argument("--write-readme", action="store_true", help="update README.md between its config-reference markers")
    c.set_defaults(func=run_config_reference)


def run_config_reference(args: argparse.Namespace) -> int:
    from pathlib import Path

    from router.config import config_reference

    text = config_reference()
    if not args.write_readme:
        print(text)
        return 0
    readme = Path(__file__).resolve().parents[2] / "README.md"
    src = readme.read_text()
    start, end = "<!-- config-reference:start", "<!-- config-reference:end -->"
    i, j = src.index(start), src.index(end)
    head = src[:i] + src[i:].split("\n", 1)[0] + "\n"
    readme.write_text(head + text + "\n" + src[j:])
    print(f"updated {readme}")
    return 0


def run_dial(args: argparse.Namespace) -> int:
    if args.action == "calibrate":
        from router.commands.dial_calibrate import run

        return run(args)
    import grpc

    from thinkroute.v1 import router_pb2 as rpb
    from thinkroute.v1 import router_pb2_grpc as rpb_grpc

    md = [("application", args.app)]
    key = args.key or os.environ.get("THINKROUTE_API_KEY", "")
    if key:
        md.append(("authorization", f"Bearer {key}"))
    with grpc.insecure_channel(args.router) as ch:
        stub = rpb_grpc.RouterStub(ch)
        try:
            if args.action == "get":
                resp = stub.GetDial(rpb.GetDialRequest(tenant=args.tenant), metadata=md, timeout=30)
            else:
                if args.value is None:
                    print("thinkroute dial set: give the new value, e.g. `thinkroute dial set 0.3`", file=sys.stderr)
                    return 2
                token = args.token or os.environ.get("THINKROUTE_ADMIN_TOKEN", "")
                resp = stub.SetDial(rpb.SetDialRequest(dial=args.value, tenant=args.tenant),
                                    metadata=md + [("x-thinkroute-admin-token", token)], timeout=30)
        except grpc.RpcError as e:
            print(f"error: {e.code().name}: {e.details()}", file=sys.stderr)
            return 2
    print(f"dial {resp.dial:.3f}" + (f" (tenant {resp.tenant})" if resp.tenant else " (global default)"))
    return 0
