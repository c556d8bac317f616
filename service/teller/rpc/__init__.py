"""gRPC edge: protobuf conversion, error mapping and the servicers."""
