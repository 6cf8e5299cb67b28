//! The gRPC codec of the agent contract: prost messages, with small first
//! buffers.
//!
//! tonic's default codec starts every stream with an 8 KiB buffer for
//! encoding and another for decoding, and keeps them for the stream's life.
//! The coordinator holds a health-watch stream open to every host for a
//! whole rollout, and a health report is a few hundred bytes. Larger
//! messages (artifact and backup slices) grow the buffer as they come, as
//! tonic's buffers always do.

use std::marker::PhantomData;

use tonic::codec::{BufferSettings, Codec};
use tonic_prost::{ProstCodec, ProstDecoder, ProstEncoder};

/// First size of a stream's encode and decode buffer.
const FIRST_BUFFER: usize = 1024;

/// tonic's threshold for yielding a long encode to the runtime; unchanged.
const YIELD_THRESHOLD: usize = 32 * 1024;

fn settings() -> BufferSettings {
    BufferSettings::new(FIRST_BUFFER, YIELD_THRESHOLD)
}

/// What the generated client and server use (build.rs names it).
#[derive(Debug, Clone, Copy)]
pub struct SmallBufferCodec<T, U>(PhantomData<(T, U)>);

impl<T, U> Default for SmallBufferCodec<T, U> {
    fn default() -> Self {
        SmallBufferCodec(PhantomData)
    }
}

impl<T, U> Codec for SmallBufferCodec<T, U>
where
    T: prost::Message + Send + 'static,
    U: prost::Message + Default + Send + 'static,
{
    type Encode = T;
    type Decode = U;
    type Encoder = ProstEncoder<T>;
    type Decoder = ProstDecoder<U>;

    fn encoder(&mut self) -> Self::Encoder {
        ProstCodec::<T, U>::raw_encoder(settings())
    }

    fn decoder(&mut self) -> Self::Decoder {
        ProstCodec::<T, U>::raw_decoder(settings())
    }
}
