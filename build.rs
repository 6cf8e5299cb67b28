//! Compiles the agent contract (`proto/rollgate/v1/*.proto`) into Rust.
//!
//! protox parses the .proto files in pure Rust, so building rollgate needs no
//! system `protoc`; tonic-prost-build turns the descriptor set into messages,
//! the client and the server trait, written to OUT_DIR and included by `src/pb.rs`.

use std::path::PathBuf;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let dir = PathBuf::from("proto/rollgate/v1");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "proto"))
        .collect();
    files.sort();
    println!("cargo:rerun-if-changed=proto");
    for f in &files {
        println!("cargo:rerun-if-changed={}", f.display());
    }
    let fds = protox::compile(&files, ["proto"])?;
    tonic_prost_build::configure()
        .build_client(true)
        .build_server(true)
        // No serde on the wire types: nothing persisted is a generated type.
        // Journals and reports use rollgate's own types (`src/outcome.rs`,
        // `src/fingerprint.rs`), converted at the edge (`src/convert.rs`).
        // Artifact and backup slices as `Bytes`: one artifact read is shared
        // by every host's Stage stream instead of copied per host.
        .bytes(".rollgate.v1.StageRequest.chunk")
        .bytes(".rollgate.v1.FileChunk.data")
        // prost with 1 KiB first buffers instead of 8 KiB (`src/codec.rs`):
        // the coordinator keeps a health stream open to every host.
        .codec_path("crate::codec::SmallBufferCodec")
        .compile_fds(fds)?;
    Ok(())
}
