"""Swapping the served policy artifact in a running router (`thinkroute policy reload`).

    admin RPC ReloadPolicy / POST /admin/policy/reload  (admin token, as SetDial)
      -> PolicyReloader.reload(artifact) on the replica that got the call:
           load + check the artifact (plans = candidates, feature spec servable, drafter identity against the
           workers' Info) -> swap `planner.policy` (one reference assignment) -> publish to PolicyState
      -> every other replica long-polls PolicyState (`follow`) and swaps to the same artifact.

No request fails or is answered twice during a swap: a request reads `planner.policy` once when it is
planned and keeps that object until it is answered; the old policy is never closed or mutated, so in-flight
requests finish on it, and the next request plans with the new one. A bad artifact is refused before the
swap (the old policy keeps serving) with a message that names what is wrong.

`PolicyState` mirrors the dial's owner (router/serve_app.py DialState): one Serve replica holding
{epoch, version, artifact}; a replica started later loads its artifact in its constructor.
"""
from __future__ import annotations

import asyncio
import logging
import uuid
from pathlib import Path
from typing import Any

from router.errors import InvalidRoute, RoutingError

log = logging.getLogger("thinkroute.policy")
REPO = Path(__file__).resolve().parents[2]
#: Longest artifact path accepted from an admin call.
MAX_PATH_CHARS = 4096
#: How long one long-poll of the policy state waits before it is renewed.
WATCH_S = 30.0


class NoPolicy(RoutingError):
    """The router has no `policy:` section: there is nothing to reload."""

    grpc_code = "FAILED_PRECONDITION"
    http_status = 409


def resolve_artifact(path: str) -> str:
    """An artifact path as the router reads it: absolute, or relative to the cwd, else to the repository root."""
    if not isinstance(path, str) or not path or len(path) > MAX_PATH_CHARS or "\x00" in path:
        raise InvalidRoute(f"artifact: give a directory path of 1 to {MAX_PATH_CHARS} characters")
    p = Path(path)
    if not p.is_absolute() and not p.exists() and (REPO / p).exists():
        p = REPO / p
    return str(p.resolve())


def describe(policy) -> dict[str, Any]:
    """What a PlanningPolicy serves: artifact, source (probe|priors), plans, model id, feature source."""
    if policy is None:
        return {"artifact": "", "source": "none", "plans": [], "model_id": "", "feature_source": ""}
    if getattr(policy, "policy", None) is None:
        return {"artifact": "", "source": "priors", "plans": list(policy.spec.candidates), "model_id": "",
                "feature_source": ""}
    return {"artifact": policy.spec.artifact or "", "source": "probe", "plans": list(policy.policy.plans),
            "model_id": policy.policy.probe.model_id, "feature_source": policy.policy.probe.feature_spec.get("source", "")}


class PolicyState:
    """The application's served artifact (a one-replica Serve deployment): versioned, long-polled."""

    def __init__(self, artifact: str | None) -> None:
        self.epoch = uuid.uuid4().hex
        self.version = 0
        self.artifact = artifact or ""
        self._changed = asyncio.Event()

    def snapshot(self) -> dict[str, Any]:
        return {"epoch": self.epoch, "version": self.version, "artifact": self.artifact}

    async def set(self, artifact: str) -> dict[str, Any]:
        self.version += 1
        self.artifact = artifact
        self._changed.set()
        self._changed = asyncio.Event()
        return self.snapshot()

    async def get(self) -> dict[str, Any]:
        return self.snapshot()

    async def watch(self, epoch: str, version: int, timeout_s: float = WATCH_S) -> dict[str, Any]:
        if epoch == self.epoch and version >= self.version:
            try:
                await asyncio.wait_for(self._changed.wait(), timeout_s)
            except asyncio.TimeoutError:
                pass
        return self.snapshot()


class PolicyReloader:
    """Loads artifacts into one RouterCore's planner; with a PolicyState handle, keeps replicas in step."""

    def __init__(self, core, state=None) -> None:
        self.core = core
        self.state = state
        self.epoch = ""
        self.version = 0
        self._lock = asyncio.Lock()
        self._task: asyncio.Task | None = None

    def _build(self, artifact: str):
        from router.policy.planning import build_planning_policy

        config = self.core.config
        spec = config.policy.model_copy(update={"artifact": artifact or None})
        return build_planning_policy(config.model_copy(update={"policy": spec}))

    async def _load(self, artifact: str):
        """A checked PlanningPolicy for `artifact` ("" = the configured one; priors when none is configured)."""
        if self.core.config.policy is None:
            raise NoPolicy("this router has no `policy:` section in its config: there is no policy to reload")
        if artifact:
            artifact = resolve_artifact(artifact)
        elif self.core.config.policy.artifact:
            artifact = resolve_artifact(self.core.config.policy.artifact)
        try:
            new = await asyncio.to_thread(self._build, artifact)
        except RoutingError:
            raise
        except (OSError, ValueError, KeyError) as e:
            raise InvalidRoute(f"policy artifact {artifact}: {e}") from None
        if getattr(new, "policy", None) is not None and hasattr(new, "check_served"):
            await new.check_served(self.core.pool)  # the drafter's workers serve the artifact's model
        return new, artifact

    def _swap(self, new) -> None:
        old = self.core.planner.policy
        self.core.planner.policy = new  # one assignment: requests planned before keep `old` to the end
        log.info("policy now %s (was %s)", describe(new), describe(old))

    async def reload(self, artifact: str = "") -> dict[str, Any]:
        """Load, check and swap in `artifact` here, then publish it to every replica. Raises RoutingError."""
        async with self._lock:
            new, path = await self._load(artifact)
            self._swap(new)
            if self.state is not None:
                snap = await self.state.set.remote(path)
                self.epoch, self.version = snap["epoch"], snap["version"]
            else:
                self.version += 1
            return {**describe(new), "version": self.version}

    async def start_following(self) -> None:
        """Load the application's current artifact (if it changed since the config) and follow changes."""
        if self.state is None or self.core.config.policy is None:
            return
        snap = await self.state.get.remote()
        await self._apply(snap)
        self._task = asyncio.get_running_loop().create_task(self._follow())

    async def _apply(self, snap: dict[str, Any]) -> None:
        async with self._lock:
            if snap["epoch"] == self.epoch and snap["version"] <= self.version:
                return
            if snap["version"] > 0:  # version 0 = the configured artifact, already loaded
                try:
                    new, _ = await self._load(snap["artifact"])
                    self._swap(new)
                except RoutingError as e:
                    log.error("policy version %s (%s) does not load here; keeping the current policy: %s",
                              snap["version"], snap["artifact"], e)
            self.epoch, self.version = snap["epoch"], snap["version"]

    async def _follow(self) -> None:
        while True:
            try:
                snap = await self.state.watch.remote(self.epoch, self.version)
                await self._apply(snap)
            except asyncio.CancelledError:
                raise
            except Exception:  # noqa: BLE001 - keep serving the current policy, try again
                log.warning("could not read the policy state; retrying in 1 s", exc_info=True)
                await asyncio.sleep(1.0)


#: Largest body of POST /admin/policy/reload.
MAX_BODY_BYTES = 8192


async def http_reload(frontend, request):
    """POST /admin/policy/reload {"artifact"?: DIR}: header `x-thinkroute-admin-token`; the same checks as
    the gRPC ReloadPolicy. 200 with what is now served; OpenAI-style error bodies otherwise."""
    import dataclasses
    import json

    from router.admission import ADMIN_METADATA, http_caller
    from router.errors import internal_error
    from router.http_api import ApiError

    try:
        caller = dataclasses.replace(http_caller(request), admin_token=request.headers.get(ADMIN_METADATA))
        frontend.core.admission.check_admin(caller)
        raw = await request.body()
        if len(raw) > MAX_BODY_BYTES:
            raise ApiError(413, f"the body has {len(raw)} bytes; at most {MAX_BODY_BYTES}", code="body_too_large")
        artifact = ""
        if raw.strip():
            try:
                body = json.loads(raw)
            except (json.JSONDecodeError, UnicodeDecodeError) as e:
                raise ApiError(400, f"the request body is not valid JSON: {e}", code="invalid_json") from None
            if not isinstance(body, dict) or set(body) - {"artifact"} or not isinstance(body.get("artifact", ""), str):
                raise ApiError(400, 'the body is {"artifact": "<directory>"} (or empty: the configured artifact)',
                               param="artifact", code="invalid_value")
            artifact = body.get("artifact", "")
        reloader = getattr(frontend.core, "policy_reloader", None)
        if reloader is None:
            raise NoPolicy("this router cannot reload its policy (no reloader on this replica)")
        got = await reloader.reload(artifact)
        from fastapi.responses import JSONResponse

        return JSONResponse(got)
    except ApiError as e:
        return e.response()
    except RoutingError as e:
        return ApiError.from_routing(e).response()
    except Exception as e:  # noqa: BLE001 - never a traceback to the client
        return ApiError.from_routing(internal_error(e, log, "policy reload")).response()
