"""Domain errors and the gRPC status each maps to.

Handlers raise these; the gRPC server's interceptor turns them into precise
status codes (DESIGN §2), so no servicer repeats the mapping.
"""

from __future__ import annotations

import grpc


class DomainError(Exception):
    """An error with a reason the caller can act on."""

    status: grpc.StatusCode = grpc.StatusCode.UNKNOWN


class InvalidArgument(DomainError):
    """The request is malformed (bad field, bad DSL with its position, …)."""

    status = grpc.StatusCode.INVALID_ARGUMENT


class NotFound(DomainError):
    """The named dataset, version, file, job … does not exist."""

    status = grpc.StatusCode.NOT_FOUND


class AlreadyExists(DomainError):
    """A resource with that name exists already."""

    status = grpc.StatusCode.ALREADY_EXISTS


class FailedPrecondition(DomainError):
    """The system is not in a state that allows the call (limit reached, job finished, …)."""

    status = grpc.StatusCode.FAILED_PRECONDITION


class ResourceExhausted(DomainError):
    """A quota or rate limit was hit; retry later."""

    status = grpc.StatusCode.RESOURCE_EXHAUSTED


class Unavailable(DomainError):
    """A dependency (model service, vector store) cannot be reached now."""

    status = grpc.StatusCode.UNAVAILABLE
