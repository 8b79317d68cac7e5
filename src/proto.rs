//! Generated protobuf messages and gRPC stubs for `mindoo.replica.v1`.
//! Handlers convert these to domain types at the edge (see `service::convert`).

#![allow(clippy::all, missing_docs)]

tonic::include_proto!("mindoo.replica.v1");

/// Encoded `FileDescriptorSet` of the API, served by gRPC reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] =
    include_bytes!(concat!(env!("OUT_DIR"), "/mindoo_replica_descriptor.bin"));
