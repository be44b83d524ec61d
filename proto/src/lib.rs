//! Tollgate's wire contract, package `tollgate.v1`, generated from `proto/tollgate/v1/*.proto`.

#![allow(clippy::large_enum_variant, clippy::doc_lazy_continuation)]

/// Package `tollgate.v1`.
pub mod v1 {
    tonic::include_proto!("tollgate.v1");
}

/// Encoded `FileDescriptorSet` of every message and service, for gRPC server reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] = tonic::include_file_descriptor_set!("tollgate_descriptor");

pub use prost_types::Timestamp;
