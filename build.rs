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
    pack_agent_relocations();
    Ok(())
}

/// Links the agent with packed relative relocations (DT_RELR) where the
/// target and linker support them: a position-independent binary carries
/// one 24-byte relocation per pointer in its read-only data (≈ 13,000 here,
/// 320 KiB read at every start and resident in every agent); packed, they
/// are a few KiB. The agent runs on every host and idles (benches/agent_idle),
/// so its resident size is a product figure. The binary then needs glibc
/// 2.36 (`GLIBC_ABI_DT_RELR`); `deploy/package.sh` writes that into the
/// package's dependency. `ROLLGATE_NO_PACKED_RELOCS=1` links without, for
/// hosts with an older glibc than the build machine checks.
fn pack_agent_relocations() {
    println!("cargo:rerun-if-env-changed=ROLLGATE_NO_PACKED_RELOCS");
    let target = std::env::var("TARGET").unwrap_or_default();
    let host = std::env::var("HOST").unwrap_or_default();
    if std::env::var_os("ROLLGATE_NO_PACKED_RELOCS").is_some()
        || !target.ends_with("-linux-gnu")
        || !linker_packs_relocations()
        // A binary built for this machine must start on it: its glibc must
        // read packed relocations (a cross build is the packager's call).
        || (target == host && !glibc_reads_packed_relocations())
    {
        return;
    }
    println!("cargo:rustc-link-arg-bin=rollgate-agent=-Wl,-z,pack-relative-relocs");
}

/// rust-lld (rustc's default linker here) has the option; GNU ld learnt it in
/// binutils 2.38, and a toolchain set to link with an older one would fail,
/// so the system linker is asked first.
fn linker_packs_relocations() -> bool {
    std::process::Command::new("ld")
        .arg("--help")
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).contains("pack-relative-relocs"))
}

/// This machine's glibc is 2.36 or newer (`getconf GNU_LIBC_VERSION`
/// prints `glibc 2.36`).
fn glibc_reads_packed_relocations() -> bool {
    let Ok(out) = std::process::Command::new("getconf")
        .arg("GNU_LIBC_VERSION")
        .output()
    else {
        return false;
    };
    let text = String::from_utf8_lossy(&out.stdout);
    let mut v = text
        .trim()
        .trim_start_matches("glibc ")
        .split('.')
        .map(|p| p.parse::<u32>().unwrap_or(0));
    let (major, minor) = (v.next().unwrap_or(0), v.next().unwrap_or(0));
    (major, minor) >= (2, 36)
}
