"""Generated protobuf code of the VM cache service (protos/kata/factory/pb)."""
