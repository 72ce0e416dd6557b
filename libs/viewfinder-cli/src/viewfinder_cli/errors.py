"""What the CLI says when something goes wrong, and the exit code it says it with.

Every failure ends as one line on stderr and a non-zero exit code, never a
traceback. Exit codes let scripts tell the kinds of failure apart:

====  ==========================================================
0     success
1     a watched job ended FAILED or CANCELLED; the command could not do its work
2     bad command line (options, files, values)
3     INVALID_ARGUMENT / OUT_OF_RANGE from a service
4     NOT_FOUND
5     ALREADY_EXISTS
6     FAILED_PRECONDITION / ABORTED
7     PERMISSION_DENIED / UNAUTHENTICATED
8     RESOURCE_EXHAUSTED
9     UNAVAILABLE / DEADLINE_EXCEEDED (service down, unreachable or too slow)
10    any other gRPC status (INTERNAL, UNKNOWN, UNIMPLEMENTED, ...)
130   interrupted (Ctrl-C)
====  ==========================================================
"""

from __future__ import annotations

import enum
import functools
from dataclasses import dataclass
from typing import Any

import grpc
from google.protobuf import any_pb2, descriptor_pb2, descriptor_pool, message, message_factory

from viewfinder.v1 import search_pb2


class ExitCode(enum.IntEnum):
    """Process exit codes of the CLI (see the module docstring)."""

    OK = 0
    FAILURE = 1
    USAGE = 2
    INVALID_ARGUMENT = 3
    NOT_FOUND = 4
    ALREADY_EXISTS = 5
    FAILED_PRECONDITION = 6
    PERMISSION_DENIED = 7
    RESOURCE_EXHAUSTED = 8
    UNAVAILABLE = 9
    OTHER_STATUS = 10
    INTERRUPTED = 130


_EXIT_CODES = {
    grpc.StatusCode.INVALID_ARGUMENT: ExitCode.INVALID_ARGUMENT,
    grpc.StatusCode.OUT_OF_RANGE: ExitCode.INVALID_ARGUMENT,
    grpc.StatusCode.NOT_FOUND: ExitCode.NOT_FOUND,
    grpc.StatusCode.ALREADY_EXISTS: ExitCode.ALREADY_EXISTS,
    grpc.StatusCode.FAILED_PRECONDITION: ExitCode.FAILED_PRECONDITION,
    grpc.StatusCode.ABORTED: ExitCode.FAILED_PRECONDITION,
    grpc.StatusCode.PERMISSION_DENIED: ExitCode.PERMISSION_DENIED,
    grpc.StatusCode.UNAUTHENTICATED: ExitCode.PERMISSION_DENIED,
    grpc.StatusCode.RESOURCE_EXHAUSTED: ExitCode.RESOURCE_EXHAUSTED,
    grpc.StatusCode.UNAVAILABLE: ExitCode.UNAVAILABLE,
    grpc.StatusCode.DEADLINE_EXCEEDED: ExitCode.UNAVAILABLE,
}

# Where gRPC carries a google.rpc.Status with typed error details.
STATUS_DETAILS_KEY = "grpc-status-details-bin"


class CliError(Exception):
    """A failure the user can act on, reported as ``error: <message>``."""

    def __init__(self, message: str, exit_code: ExitCode = ExitCode.USAGE) -> None:
        super().__init__(message)
        self.message = message
        self.exit_code = exit_code


@dataclass(frozen=True)
class QueryErrorDetail:
    """Where a DSL query is wrong, from the search service's QueryError status detail."""

    message: str
    line: int
    column: int
    expected: tuple[str, ...]


class ServiceCallError(Exception):
    """A gRPC call to one of the services failed."""

    def __init__(self, service: str, address: str, method: str, error: grpc.RpcError) -> None:
        super().__init__(f"{service}.{method} failed")
        self.service = service
        self.address = address
        self.method = method
        call = error if isinstance(error, grpc.Call) else None
        self.code: grpc.StatusCode = call.code() if call is not None else grpc.StatusCode.UNKNOWN
        self.details: str = (call.details() if call is not None else None) or ""
        metadata = call.trailing_metadata() if call is not None else None
        self.query_error = query_error_from_metadata(metadata)
        # The DSL text the failing request carried, so that the error can point at it.
        self.query_text: str | None = None

    @property
    def exit_code(self) -> ExitCode:
        """The exit code for this status (see the module docstring)."""
        return _EXIT_CODES.get(self.code, ExitCode.OTHER_STATUS)

    def one_line(self) -> str:
        """The error as one line: status code, details, and which service said it."""
        details = " ".join(self.details.split()) or "(no details)"
        line = f"{self.code.name}: {details} [{self.service} at {self.address}, {self.method}]"
        if self.query_error is not None and self.query_error.expected:
            line += f"; expected one of: {', '.join(self.query_error.expected)}"
        if self.code is grpc.StatusCode.UNAVAILABLE:
            variable = f"VIEWFINDER_CLI_{self.service.upper()}_ADDR"
            line += f" (is the {self.service} service running? set --{self.service}-addr or {variable})"
        return line

    def pointer(self) -> str | None:
        """The offending DSL line with a caret under the error's column, when known."""
        if self.query_error is None or self.query_text is None:
            return None
        lines = self.query_text.splitlines() or [""]
        index = min(max(self.query_error.line, 1), len(lines)) - 1
        column = max(self.query_error.column, 1)
        return f"  {lines[index]}\n  {' ' * (column - 1)}^"


@functools.cache
def _status_message_class() -> type[message.Message]:
    """google.rpc.Status, declared in a private descriptor pool.

    Declaring the three fields here spares a dependency on googleapis-common-protos;
    ``details`` is read as raw bytes (wire-compatible with ``repeated Any``), so
    the class never clashes with another copy of google/rpc/status.proto.
    """
    file = descriptor_pb2.FileDescriptorProto(
        name="viewfinder_cli/google_rpc_status.proto", package="google.rpc", syntax="proto3"
    )
    status = file.message_type.add(name="Status")
    field = descriptor_pb2.FieldDescriptorProto
    status.field.add(name="code", number=1, type=field.TYPE_INT32, label=field.LABEL_OPTIONAL)
    status.field.add(name="message", number=2, type=field.TYPE_STRING, label=field.LABEL_OPTIONAL)
    status.field.add(name="details", number=3, type=field.TYPE_BYTES, label=field.LABEL_REPEATED)
    pool = descriptor_pool.DescriptorPool()
    pool.Add(file)
    return message_factory.GetMessageClass(pool.FindMessageTypeByName("google.rpc.Status"))


def query_error_from_metadata(metadata: Any) -> QueryErrorDetail | None:
    """The QueryError detail of a failed call's trailing metadata, if it carries one."""
    for key, value in metadata or ():
        if key != STATUS_DETAILS_KEY or not isinstance(value, bytes):
            continue
        try:
            status: Any = _status_message_class().FromString(value)
            for raw in status.details:
                detail = any_pb2.Any.FromString(raw)
                if detail.Is(search_pb2.QueryError.DESCRIPTOR):
                    query_error = search_pb2.QueryError()
                    detail.Unpack(query_error)
                    return QueryErrorDetail(
                        message=query_error.message,
                        line=query_error.line,
                        column=query_error.column,
                        expected=tuple(query_error.expected),
                    )
        except message.DecodeError:
            # A malformed detail must not hide the status itself, which is still reported.
            return None
    return None
