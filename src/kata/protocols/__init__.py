"""Generated protobuf code and its .proto sources (see protos/ and tools/genprotos.py)."""
