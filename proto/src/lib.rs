//! Closer's gRPC API, package `closer.v1`. Generated into `OUT_DIR` at build time.

#[allow(clippy::all, missing_docs)]
pub mod v1 {
    tonic::include_proto!("closer.v1");
}

/// The encoded `FileDescriptorSet` of every `closer.v1` file, for server reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] =
    include_bytes!(concat!(env!("OUT_DIR"), "/closer_descriptor.bin"));
