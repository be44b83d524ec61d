//! Tollgate's wire contract, package `tollgate.v1`, generated from `proto/tollgate/v1/*.proto`.

#![allow(clippy::large_enum_variant, clippy::doc_lazy_continuation)]

/// Package `tollgate.v1`.
pub mod v1 {
    tonic::include_proto!("tollgate.v1");
}

/// Encoded `FileDescriptorSet` of every message and service, for gRPC server reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] = tonic::include_file_descriptor_set!("tollgate_descriptor");

pub use prost_types::Timestamp;

/// The codec of every generated service and client: prost's, with smaller first buffers.
///
/// tonic gives each call an 8 KiB buffer to decode into and another to encode from, held for
/// as long as the call: for the controller that is two per connected agent's `Connect` stream
/// and one per fleet telemetry stream, about 24 KiB an agent for messages of a few dozen bytes
/// (a heartbeat, a command). These start at 1 KiB and grow to the message being read or
/// written, as tonic's do past 8 KiB; the limits on a message's size are unchanged.
#[derive(Debug, Clone)]
pub struct LeanCodec<T, U>(std::marker::PhantomData<(T, U)>);

impl<T, U> LeanCodec<T, U> {
    /// The first size of a call's decode and encode buffers.
    pub const BUFFER_BYTES: usize = 1024;
    /// tonic's default: how much a server stream encodes before it yields to send.
    const YIELD_THRESHOLD: usize = 32 * 1024;

    fn buffers() -> tonic::codec::BufferSettings {
        tonic::codec::BufferSettings::new(Self::BUFFER_BYTES, Self::YIELD_THRESHOLD)
    }
}

impl<T, U> Default for LeanCodec<T, U> {
    fn default() -> Self {
        Self(std::marker::PhantomData)
    }
}

impl<T, U> tonic::codec::Codec for LeanCodec<T, U>
where
    T: prost::Message + Send + 'static,
    U: prost::Message + Default + Send + 'static,
{
    type Encode = T;
    type Decode = U;
    type Encoder = tonic_prost::ProstEncoder<T>;
    type Decoder = tonic_prost::ProstDecoder<U>;

    fn encoder(&mut self) -> Self::Encoder {
        tonic_prost::ProstEncoder::new(Self::buffers())
    }

    fn decoder(&mut self) -> Self::Decoder {
        tonic_prost::ProstDecoder::new(Self::buffers())
    }
}
