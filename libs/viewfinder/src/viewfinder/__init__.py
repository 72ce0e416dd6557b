"""viewfinder client package: the gRPC and event contracts and, later, the Python SDK.

The generated contracts are in :mod:`viewfinder.v1` (e.g. ``from viewfinder.v1 import dataset_pb2``).
"""
