"""Generated from proto/viewfinder/v1 by scripts/proto.sh. Do not edit.

Modules: messages in <name>_pb2, gRPC stubs and servicers in <name>_pb2_grpc, for
common, connection, dataset, embedding, events, export, labeling, search."""
