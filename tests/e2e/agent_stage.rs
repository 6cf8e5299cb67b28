//! Stage refuses bad artifacts and leaves nothing behind.

use std::path::Path;

use rollgate::pb;
use sha2::{Digest, Sha256};

use crate::support::client::{connect, failure, stage_messages, stage_stream, success};
use crate::support::gateway::{self, release};
use crate::support::{Host, Sandbox};

/// A .tar.gz whose entries have raw (possibly hostile) names.
fn hostile(entries: &[(&str, tar::EntryType, &[u8], &str)]) -> Vec<u8> {
    let gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    let mut b = tar::Builder::new(gz);
    for (name, kind, data, link) in entries {
        let mut h = tar::Header::new_gnu();
        h.as_old_mut().name[..name.len()].copy_from_slice(name.as_bytes());
        h.set_entry_type(*kind);
        h.set_mode(0o755);
        h.set_size(data.len() as u64);
        if !link.is_empty() {
            h.as_old_mut().linkname[..link.len()].copy_from_slice(link.as_bytes());
        }
        h.set_cksum();
        b.append(&h, *data).unwrap();
    }
    b.into_inner().unwrap().finish().unwrap()
}

fn sha(b: &[u8]) -> String {
    hex::encode(Sha256::digest(b))
}

/// A stage request whose artifact the agent reads itself from `location`.
fn located(op: &str, version: &str, sha256: &str, size: u64, location: &str) -> pb::StageRequest {
    pb::StageRequest {
        msg: Some(pb::stage_request::Msg::Header(pb::StageHeader {
            operation_id: op.into(),
            version: version.into(),
            sha256: sha256.into(),
            size,
            source: Some(pb::stage_header::Source::Location(location.into())),
            unpacked_size: 0,
            image_id: String::new(),
        })),
    }
}

/// Everything under the install root and the staging dir, for "nothing left
/// behind" checks.
fn leftovers(host: &Host) -> Vec<String> {
    let mut out = Vec::new();
    for dir in [
        host.dir.join("root/releases"),
        host.dir.join("state/staging"),
    ] {
        if let Ok(rd) = std::fs::read_dir(&dir) {
            out.extend(rd.flatten().map(|e| e.path().display().to_string()));
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_artifacts_are_refused_and_nothing_is_left_behind() {
    let sb = Sandbox::new();
    sb.certs(&[("dp-1", 2)]);
    let dp = Host::create(&sb, "dp-1", "dp", 2, &[], None, "");
    let _agent = dp.start_agent();
    let mut c = connect(&sb, &dp).await;
    let good = release("3.4.0");
    let bytes = std::fs::read(gateway::artifact_path(&good)).unwrap();

    let evil = sb.path().join("evil");
    // (name, artifact bytes, sha256 to announce if not the bytes', code, message)
    type Case<'a> = (&'a str, Vec<u8>, Option<String>, pb::FailureCode, &'a str);
    let cases: Vec<Case> = vec![
        (
            "checksum",
            bytes.clone(),
            Some("0".repeat(64)),
            pb::FailureCode::ChecksumMismatch,
            "sha256",
        ),
        (
            "traversal",
            hostile(&[("../../evil", tar::EntryType::Regular, b"x", "")]),
            None,
            pb::FailureCode::BadArchive,
            "'..'",
        ),
        (
            "absolute",
            hostile(&[("/tmp/evil", tar::EntryType::Regular, b"x", "")]),
            None,
            pb::FailureCode::BadArchive,
            "absolute",
        ),
        (
            "symlink",
            hostile(&[("bin/x", tar::EntryType::Symlink, b"", "../../../../evil")]),
            None,
            pb::FailureCode::BadArchive,
            "outside",
        ),
        (
            "device",
            hostile(&[("dev", tar::EntryType::Block, b"", "")]),
            None,
            pb::FailureCode::BadArchive,
            "device",
        ),
        (
            "truncated",
            bytes[..bytes.len() / 2].to_vec(),
            None,
            pb::FailureCode::BadArchive,
            "truncated",
        ),
        (
            "no-binary",
            hostile(&[("conf/x", tar::EntryType::Regular, b"x", "")]),
            None,
            pb::FailureCode::BadArchive,
            "bin/demo-gateway",
        ),
    ];
    for (name, data, sha_override, code, want) in cases {
        let digest = sha_override.unwrap_or_else(|| sha(&data));
        let r = stage_stream(&mut c, &format!("t/dp-1/{name}"), "3.4.0", &digest, data)
            .await
            .unwrap();
        let f = failure(&r);
        assert_eq!(f.code(), code, "{name}: {f:?}");
        assert!(
            f.message.contains(want),
            "{name}: expected {want:?} in {:?}",
            f.message
        );
        assert!(
            leftovers(&dp).is_empty(),
            "{name}: left behind {:?}",
            leftovers(&dp)
        );
        assert!(
            !evil.exists() && !Path::new("/tmp/evil").exists(),
            "{name}: wrote outside"
        );
    }

    // A stream that ends before the announced size.
    let mut msgs = vec![pb::StageRequest {
        msg: Some(pb::stage_request::Msg::Header(pb::StageHeader {
            operation_id: "t/dp-1/short".into(),
            version: "3.4.0".into(),
            sha256: good.sha256.clone(),
            size: good.size,
            source: Some(pb::stage_header::Source::Coordinator(
                pb::CoordinatorSource {},
            )),
            unpacked_size: 0,
            image_id: String::new(),
        })),
    }];
    msgs.push(pb::StageRequest {
        msg: Some(pb::stage_request::Msg::Chunk(
            bytes::Bytes::copy_from_slice(&bytes[..1000]),
        )),
    });
    let r = stage_messages(&mut c, msgs).await.unwrap();
    let f = failure(&r);
    assert_eq!(f.code(), pb::FailureCode::FetchFailed, "{f:?}");
    assert!(f.message.contains("truncated"), "{f:?}");
    assert!(leftovers(&dp).is_empty(), "{:?}", leftovers(&dp));

    // Bad input that never starts a step: a malformed version.
    let r = stage_stream(&mut c, "t/dp-1/badversion", "3.four", &good.sha256, vec![1])
        .await
        .unwrap();
    assert_eq!(failure(&r).code(), pb::FailureCode::InvalidArgument);

    // The real artifact then stages fine, and again is a no-op.
    success(
        &stage_stream(&mut c, "t/dp-1/good", "3.4.0", &good.sha256, bytes.clone())
            .await
            .unwrap(),
    );
    let again = stage_stream(&mut c, "t/dp-1/good-again", "3.4.0", &good.sha256, bytes)
        .await
        .unwrap();
    match success(&again) {
        pb::success::Detail::Stage(s) => assert!(s.already_present),
        other => panic!("{other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn staging_refuses_when_the_disk_floor_would_be_crossed() {
    let sb = Sandbox::new();
    sb.certs(&[("dp-1", 2)]);
    let dp = Host::create(&sb, "dp-1", "dp", 2, &[], None, "");
    // Keep more free than any disk has.
    let cfg = std::fs::read_to_string(dp.config_path()).unwrap();
    std::fs::write(
        dp.config_path(),
        cfg.replace(
            "root = \"root\"",
            "root = \"root\"\nmin_free_bytes = 1000000000000000",
        ),
    )
    .unwrap();
    let _agent = dp.start_agent();
    let mut c = connect(&sb, &dp).await;
    let good = release("3.4.0");
    let r = crate::support::client::stage_file(&mut c, "t/dp-1/full", &good)
        .await
        .unwrap();
    let f = failure(&r);
    assert_eq!(f.code(), pb::FailureCode::DiskFull, "{f:?}");
    assert!(f.message.contains("bytes free"), "{f:?}");
    assert!(leftovers(&dp).is_empty(), "{:?}", leftovers(&dp));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_agent_fetches_an_artifact_from_an_http_url() {
    let sb = Sandbox::new();
    sb.certs(&[("dp-1", 2)]);
    let dp = Host::create(&sb, "dp-1", "dp", 2, &[], None, "");
    let _agent = dp.start_agent();
    let mut c = connect(&sb, &dp).await;
    let good = release("3.4.1");
    let path = gateway::artifact_path(&good);
    let bytes = std::fs::read(&path).unwrap();
    let at = crate::support::files::serve_dir(
        sb.ip(50),
        path.parent().unwrap().to_path_buf(),
        std::time::Duration::ZERO,
    );
    let url = format!("http://{at}/demo-gateway-3.4.1.tar.gz");
    let stage = |op: &str, sha: &str| located(op, "3.4.1", sha, good.size, &url);
    let bad = stage_messages(&mut c, vec![stage("t/dp-1/url-bad", &"1".repeat(64))])
        .await
        .unwrap();
    assert_eq!(failure(&bad).code(), pb::FailureCode::ChecksumMismatch);
    assert!(leftovers(&dp).is_empty(), "{:?}", leftovers(&dp));
    let ok = stage_messages(&mut c, vec![stage("t/dp-1/url", &good.sha256)])
        .await
        .unwrap();
    match success(&ok) {
        pb::success::Detail::Stage(s) => assert_eq!(s.bytes, bytes.len() as u64),
        other => panic!("{other:?}"),
    }
    assert!(
        dp.dir
            .join("root/releases/3.4.1/bin/demo-gateway")
            .is_file()
    );
}

/// An https location is fetched trusting the host's roots — here a root
/// named by `SSL_CERT_FILE`, as on a host whose trust store lists the
/// artifact server's CA — and refused by an agent that does not trust it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_agent_fetches_over_https_only_from_a_server_its_host_trusts() {
    let sb = Sandbox::new();
    sb.certs(&[("dp-1", 2), ("dp-2", 3), ("artifacts", 50)]);
    let ca = sb.certs_dir().join("ca.pem");
    let trusting = Host::create(&sb, "dp-1", "dp", 2, &[], None, "");
    let _a1 = trusting.start_agent_env(&[("SSL_CERT_FILE", ca.to_str().unwrap())]);
    // Its roots are an empty directory's: nothing is trusted.
    let empty = sb.path().join("no-roots");
    std::fs::create_dir_all(&empty).unwrap();
    let wary = Host::create(&sb, "dp-2", "dp", 3, &[], None, "");
    let _a2 = wary.start_agent_env(&[("SSL_CERT_DIR", empty.to_str().unwrap())]);
    let good = release("3.4.1");
    let path = gateway::artifact_path(&good);
    let at = crate::support::files::serve_dir_tls(
        sb.ip(50),
        path.parent().unwrap().to_path_buf(),
        &sb.certs_dir().join("artifacts.pem"),
        &sb.certs_dir().join("artifacts.key"),
    );
    let url = format!("https://{at}/demo-gateway-3.4.1.tar.gz");
    let stage = located("t/https", "3.4.1", &good.sha256, good.size, &url);
    let mut c = connect(&sb, &wary).await;
    let refused = stage_messages(&mut c, vec![stage.clone()]).await.unwrap();
    let f = failure(&refused);
    assert_eq!(f.code(), pb::FailureCode::FetchFailed, "{f:?}");
    assert!(f.message.contains("certificate"), "{f:?}");
    assert!(leftovers(&wary).is_empty(), "{:?}", leftovers(&wary));
    let mut c = connect(&sb, &trusting).await;
    let ok = stage_messages(&mut c, vec![stage]).await.unwrap();
    match success(&ok) {
        pb::success::Detail::Stage(s) => assert_eq!(s.bytes, good.size),
        other => panic!("{other:?}"),
    }
    assert!(
        trusting
            .dir
            .join("root/releases/3.4.1/bin/demo-gateway")
            .is_file()
    );
}

/// A gzip bomb: `content` bytes of zeros in one file, a few hundred KB packed.
fn bomb(content: u64) -> Vec<u8> {
    use std::io::Read;
    let gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
    let mut b = tar::Builder::new(gz);
    let mut h = tar::Header::new_gnu();
    h.set_path("bin/demo-gateway").unwrap();
    h.set_entry_type(tar::EntryType::Regular);
    h.set_mode(0o755);
    h.set_size(content);
    h.set_cksum();
    b.append(&h, std::io::repeat(0).take(content)).unwrap();
    b.into_inner().unwrap().finish().unwrap()
}

/// Bytes under a directory, to show what a refused stage wrote.
fn du(dir: &Path) -> u64 {
    let Ok(rd) = std::fs::read_dir(dir) else {
        return 0;
    };
    rd.flatten()
        .map(|e| match e.file_type() {
            Ok(t) if t.is_dir() => du(&e.path()),
            _ => e.metadata().map_or(0, |m| m.len()),
        })
        .sum()
}

/// Defect: a 510 KB archive unpacked to 542 MB on every host. Unpacking now
/// stops at the bound (the catalog's unpacked size, or 20x the archive).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gzip_bomb_is_stopped_at_the_unpack_bound_and_removed() {
    let sb = Sandbox::new();
    sb.certs(&[("dp-1", 2)]);
    let dp = Host::create(&sb, "dp-1", "dp", 2, &[], None, "");
    let _agent = dp.start_agent();
    let mut c = connect(&sb, &dp).await;
    let archive = bomb(512 << 20);
    assert!(archive.len() < 1 << 20, "{} bytes packed", archive.len());
    let r = stage_stream(
        &mut c,
        "t/dp-1/bomb",
        "3.9.0",
        &sha(&archive),
        archive.clone(),
    )
    .await
    .unwrap();
    let f = failure(&r);
    assert_eq!(f.code(), pb::FailureCode::BadArchive, "{f:?}");
    assert!(f.message.contains("decompression bomb"), "{f:?}");
    assert!(leftovers(&dp).is_empty(), "{:?}", leftovers(&dp));
    assert!(
        du(&dp.dir) < 64 << 20,
        "the host's directory holds {} bytes after the refusal",
        du(&dp.dir)
    );
}

/// Defect: `Stage` with a local location and size 0 read /dev/zero without
/// limit and filled the staging filesystem.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stage_needs_a_size_and_reads_only_regular_files() {
    let sb = Sandbox::new();
    sb.certs(&[("dp-1", 2)]);
    let dp = Host::create(&sb, "dp-1", "dp", 2, &[], None, "");
    let _agent = dp.start_agent();
    let mut c = connect(&sb, &dp).await;
    let fifo = sb.path().join("fifo");
    nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::from_bits_truncate(0o600)).unwrap();
    let dir = sb.path().to_path_buf();
    let cases = [
        ("t/dp-1/zero-unsized", "/dev/zero".to_string(), 0u64, "size"),
        (
            "t/dp-1/zero",
            "/dev/zero".to_string(),
            1 << 20,
            "not a regular file",
        ),
        (
            "t/dp-1/fifo",
            fifo.display().to_string(),
            1 << 20,
            "not a regular file",
        ),
        (
            "t/dp-1/dir",
            dir.display().to_string(),
            1 << 20,
            "a directory",
        ),
    ];
    for (op, location, size, want) in cases {
        let req = located(op, "3.4.0", &"0".repeat(64), size, &location);
        let r = tokio::time::timeout(
            std::time::Duration::from_secs(20),
            stage_messages(&mut c, vec![req]),
        )
        .await
        .unwrap_or_else(|_| panic!("{location}: the agent hung"))
        .unwrap();
        let f = failure(&r);
        assert_eq!(
            f.code(),
            pb::FailureCode::InvalidArgument,
            "{location}: {f:?}"
        );
        assert!(f.message.contains(want), "{location}: {f:?}");
        assert!(leftovers(&dp).is_empty(), "{:?}", leftovers(&dp));
    }
    // The agent still works.
    success(
        &crate::support::client::stage_file(&mut c, "t/dp-1/good", &release("3.4.0"))
            .await
            .unwrap(),
    );
}
