"""The router's exception hierarchy. Each class maps to one gRPC status (and one HTTP status)
at the ingress; messages say what was wrong and what to change."""
from __future__ import annotations


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


def _rebuild_model_call_error(detail, model, role, step, code) -> ModelCallError:
    return ModelCallError(detail, model=model, role=role, step=step, code=code)
