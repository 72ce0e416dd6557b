"""Errors of the exporter that the shared ``DomainError`` family does not have yet."""

from __future__ import annotations

import grpc

from viewfinder_common.errors import DomainError


class PermissionDenied(DomainError):
    """The caller may not write there (a bucket or storage connection that is not an allowed export target)."""

    status = grpc.StatusCode.PERMISSION_DENIED
