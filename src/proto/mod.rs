//! Generated protobuf messages and gRPC stubs for `mindoo.replica.v1`.
//! They stop at the edges: [`convert`] turns them into domain types and back,
//! validating every field, for the service handlers, the client and the
//! gRPC peer adapter.

pub mod codec;
pub mod convert;

#[allow(clippy::all, missing_docs)]
mod generated {
    tonic::include_proto!("mindoo.replica.v1");
}

pub use generated::*;

/// Encoded `FileDescriptorSet` of the API, served by gRPC reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] =
    include_bytes!(concat!(env!("OUT_DIR"), "/mindoo_replica_descriptor.bin"));
