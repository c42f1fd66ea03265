"""`thinkroute policy reload`: swap the policy artifact of a running router (admin RPC ReloadPolicy)."""
from __future__ import annotations

import argparse
import json
import os
import sys


def register(sub) -> None:
    p = sub.add_parser("policy", help="the served routing policy: reload an artifact at runtime",
                       description=(
                           "reload: load a policy artifact (a `thinkroute train` directory on the router's host; default: "
                           "the configured policy.artifact, read again) into every replica of a running router, through "
                           "the admin RPC thinkroute.v1.Router/ReloadPolicy (or POST /admin/policy/reload with --http). "
                           "Needs the admin token (--token or $THINKROUTE_ADMIN_TOKEN), over TLS or from the router's own "
                           "host. The artifact is checked before the swap (its plans are the config's candidates, its "
                           "features are servable, its drafter is the model the workers serve); a refused artifact "
                           "leaves the old policy serving. Requests in flight finish on the policy they started with."))
    p.add_argument("action", choices=["reload"], help="reload")
    p.add_argument("--artifact", default="", metavar="DIR", help="artifact directory (default: the configured one)")
    p.add_argument("--router", default="127.0.0.1:9000", help="router gRPC address (default 127.0.0.1:9000)")
    p.add_argument("--http", metavar="URL", help="use the HTTP admin route at this base URL instead (e.g. http://127.0.0.1:8000)")
    p.add_argument("--app", default="thinkroute", help="Ray Serve application name")
    p.add_argument("--token", default=None, help="admin token (default $THINKROUTE_ADMIN_TOKEN)")
    p.add_argument("--timeout", type=float, default=120.0, help="seconds to wait (default 120)")
    p.set_defaults(func=run)


def reload_grpc(router: str, artifact: str, token: str, app: str = "thinkroute", timeout: float = 120.0) -> dict:
    """Call ReloadPolicy; returns the response as a dict, raises grpc.RpcError."""
    import grpc
    from google.protobuf.json_format import MessageToDict

    from thinkroute.v1 import router_pb2 as rpb
    from thinkroute.v1 import router_pb2_grpc as rpb_grpc

    with grpc.insecure_channel(router) as ch:
        resp = rpb_grpc.RouterStub(ch).ReloadPolicy(
            rpb.ReloadPolicyRequest(artifact=artifact),
            metadata=[("application", app), ("x-thinkroute-admin-token", token)], timeout=timeout)
    return MessageToDict(resp, preserving_proto_field_name=True, always_print_fields_with_no_presence=True)


def reload_http(base: str, artifact: str, token: str, timeout: float = 120.0) -> tuple[int, dict]:
    import httpx

    r = httpx.post(base.rstrip("/") + "/admin/policy/reload", json={"artifact": artifact} if artifact else None,
                   headers={"x-thinkroute-admin-token": token}, timeout=timeout)
    return r.status_code, r.json()


def run(args: argparse.Namespace) -> int:
    token = args.token or os.environ.get("THINKROUTE_ADMIN_TOKEN", "")
    artifact = os.path.abspath(args.artifact) if args.artifact and os.path.isdir(args.artifact) else args.artifact
    if args.http:
        status, body = reload_http(args.http, artifact, token, args.timeout)
        if status != 200:
            print(f"error: HTTP {status}: {body.get('error', {}).get('message', body)}", file=sys.stderr)
            return 2
        got = body
    else:
        import grpc

        try:
            got = reload_grpc(args.router, artifact, token, args.app, args.timeout)
        except grpc.RpcError as e:
            print(f"error: {e.code().name}: {e.details()}", file=sys.stderr)
            return 2
    print(json.dumps(got))
    return 0
