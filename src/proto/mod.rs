//! Generated protobuf messages and gRPC stubs for `mindoo.replica.v1`.
//! They stop at the edges: [`convert`] turns them into domain types and back,
//! validating every field, for the service handlers, the client and the
//! gRPC peer adapter.

pub mod codec;
pub mod convert;
pub mod reconcile;

#[allow(clippy::all, missing_docs)]
mod generated {
    tonic::include_proto!("mindoo.replica.v1");
}

pub use generated::*;

/// Metadata key of an error status that names its reason where the code
/// alone is not precise (several causes share `INVALID_ARGUMENT`).
pub const ERROR_REASON_KEY: &str = "mindoo-error-reason";
/// [`ERROR_REASON_KEY`]: the replica does not serve the namespace asked for.
pub const REASON_NAMESPACE_NOT_SERVED: &str = "namespace-not-served";
/// [`ERROR_REASON_KEY`]: the batch is stored, but fewer replicas than asked
/// for confirmed holding it in time (a deadline the call itself did not hit).
pub const REASON_NOT_CONFIRMED: &str = "not-confirmed";

/// Encoded `FileDescriptorSet` of the API, served by gRPC reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] =
    include_bytes!(concat!(env!("OUT_DIR"), "/mindoo_replica_descriptor.bin"));
