"""The worker's exception hierarchy. The gRPC server maps each class to one status code."""
from __future__ import annotations


class WorkerError(Exception):
    """Base class; `grpc_code` names the grpc.StatusCode the server answers with."""

    grpc_code = "INTERNAL"


class InvalidRequest(WorkerError, ValueError):
    """Bad input from the caller: the message says which field and what is allowed."""

    grpc_code = "INVALID_ARGUMENT"


class UnknownModel(WorkerError, LookupError):
    """A model name that is neither in the registry nor an existing path."""

    grpc_code = "NOT_FOUND"


class QueueFull(WorkerError):
    """The bounded request queue is full."""

    grpc_code = "RESOURCE_EXHAUSTED"


class EngineDead(WorkerError):
    """The engine can no longer serve (its process died). The worker reports NOT_SERVING."""

    grpc_code = "UNAVAILABLE"


class Draining(WorkerError):
    """The worker is shutting down and accepts no new requests."""

    grpc_code = "UNAVAILABLE"
