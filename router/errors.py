"""The router's exception hierarchy. Each class maps to one gRPC status (and one HTTP status)
at the ingress; messages say what was wrong and what to change.

Anything else that escapes to an ingress is an internal error: `internal_error(exc, log)` logs it
with a fresh id and returns an `InternalError` whose message is only that id, so no exception text
reaches a client.
"""
from __future__ import annotations

import logging
import uuid


class RoutingError(Exception):
    grpc_code = "INTERNAL"
    http_status = 500


class InvalidRoute(RoutingError, ValueError):
    """Bad request: the message names the field and the valid values."""

    grpc_code = "INVALID_ARGUMENT"
    http_status = 400


class NotFound(RoutingError, LookupError):
    """Unknown model or strategy."""

    grpc_code = "NOT_FOUND"
    http_status = 404


class PlanError(InvalidRoute):
    """The requested plan cannot run with these models (e.g. mismatched tokenizers)."""


class NoReplica(RoutingError):
    """No healthy replica of a model can take the call."""

    grpc_code = "UNAVAILABLE"
    http_status = 503


class ModelCallError(RoutingError):
    """A call to a worker failed. Names the model, the role and the strategy step."""

    grpc_code = "UNAVAILABLE"
    http_status = 503

    def __init__(self, message: str, *, model: str, role: str, step: int | None, code: str = "UNAVAILABLE") -> None:
        where = f"model {model!r}" + (f" (role {role}{'' if step is None or step < 0 else f', step {step}'})" if role else "")
        super().__init__(f"{where}: {message}")
        self.detail = message
        self.model, self.role, self.step = model, role, step
        self.grpc_code = code
        self.http_status = {"INVALID_ARGUMENT": 400, "NOT_FOUND": 404, "DEADLINE_EXCEEDED": 504,
                            "RESOURCE_EXHAUSTED": 429}.get(code, 503)


    def __reduce__(self):
        # Keyword-only constructor: tell pickle (Ray ships exceptions between processes) how to rebuild it.
        return (_rebuild_model_call_error, (self.detail, self.model, self.role, self.step, self.grpc_code))

    def at(self, role: str, step: int | None) -> "ModelCallError":
        """The same error, naming the strategy role and step it happened in."""
        return ModelCallError(self.detail, model=self.model, role=role, step=step, code=self.grpc_code)


class DeadlineExceeded(RoutingError):
    grpc_code = "DEADLINE_EXCEEDED"
    http_status = 504


class PermissionDenied(RoutingError):
    grpc_code = "PERMISSION_DENIED"
    http_status = 403


class Unauthenticated(RoutingError):
    """No credential, or one that matches no tenant (gRPC UNAUTHENTICATED, HTTP 401)."""

    grpc_code = "UNAUTHENTICATED"
    http_status = 401


class RateLimited(RoutingError):
    """A tenant is over its request or token rate, or its quota of requests in flight.

    `retry_after_s` (whole seconds, >= 1) goes out as HTTP `Retry-After` and as gRPC trailing
    metadata `retry-after`."""

    grpc_code = "RESOURCE_EXHAUSTED"
    http_status = 429

    def __init__(self, message: str, retry_after_s: int = 1) -> None:
        super().__init__(message)
        self.retry_after_s = max(1, int(retry_after_s))

    def __reduce__(self):
        return (RateLimited, (str(self), self.retry_after_s))


class InternalError(RoutingError):
    """A bug or an unexpected failure. The message is only the error id; the details are in the log."""

    grpc_code = "INTERNAL"
    http_status = 500

    def __init__(self, error_id: str) -> None:
        super().__init__(f"internal error {error_id}: the router logged the details under this id")
        self.error_id = error_id

    def __reduce__(self):
        return (InternalError, (self.error_id,))


def internal_error(exc: BaseException, log: logging.Logger, where: str = "") -> InternalError:
    """Log `exc` (with its traceback) under a fresh id and return the InternalError that names only the id."""
    error_id = uuid.uuid4().hex[:16]
    log.error("internal error %s%s: %s: %s", error_id, f" in {where}" if where else "", type(exc).__name__, exc,
              exc_info=(type(exc), exc, exc.__traceback__))
    return InternalError(error_id)


def _rebuild_model_call_error(detail, model, role, step, code) -> ModelCallError:
    return ModelCallError(detail, model=model, role=role, step=step, code=code)
