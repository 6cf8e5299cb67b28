//! Group commit for an append-only journal (the coordinator's rollout
//! journal, the agent's step journal). Hosts of a batch run their steps at
//! once and each step journals twice; one fsync per record, taken in turn
//! under a lock, costs a disk's fsync latency per record (milliseconds on
//! real disks) and blocks a runtime thread meanwhile: on the agent's single
//! thread it would also stall the health watch and the HAProxy agent-check
//! answer. Here one thread owns the file: it writes every record queued
//! since its last fsync, fsyncs once, then tells each writer its record is
//! durable. A caller still waits for its own record to be on disk before it
//! acts.
//!
//! Where the records go is a [`Sink`]: a file here; the coordinator's
//! PostgreSQL state backend writes a batch as one transaction instead.

use std::fs::File;
use std::io::{self, Write};
use std::sync::mpsc;

use tokio::sync::oneshot;

/// How a writer is told its record is durable.
enum Ack {
    Blocking(mpsc::Sender<io::Result<()>>),
    Async(oneshot::Sender<io::Result<()>>),
}

impl Ack {
    fn send(self, r: io::Result<()>) {
        match self {
            Ack::Blocking(tx) => {
                let _ = tx.send(r);
            }
            Ack::Async(tx) => {
                let _ = tx.send(r);
            }
        }
    }
}

/// Lines written together, in order, and acknowledged as one: all are
/// durable or none counts.
struct Job {
    lines: Vec<Vec<u8>>,
    ack: Ack,
}

/// The journal file's single writer. Dropping it ends its thread once the
/// queued records are written.
#[derive(Debug)]
pub struct Writer {
    tx: mpsc::Sender<Job>,
}

/// Where a journal's records go. `write` gets every record queued since
/// the last call, in order, and returns once they are all durable, or none
/// of them counts.
pub trait Sink: Send + 'static {
    fn write(&mut self, records: &[&[u8]]) -> io::Result<()>;
}

/// An append-only file: the records written in turn, then one fsync.
pub struct FileSink(pub File);

impl Sink for FileSink {
    fn write(&mut self, records: &[&[u8]]) -> io::Result<()> {
        let file = &mut self.0;
        let len = file.metadata().map(|m| m.len());
        let mut result = records.iter().try_for_each(|r| file.write_all(r));
        if result.is_ok() {
            result = file.sync_data();
        }
        if result.is_err()
            && let Ok(len) = len
        {
            // Never leave half a record: later ones would be glued to it.
            let _ = file.set_len(len);
        }
        result
    }
}

/// What a writer does after a write failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AfterFailure {
    /// Goes on with the next records (the agent's journal: a disk that
    /// was full takes records again once space is freed).
    Continue,
    /// Refuses every record after it, those already queued included (the
    /// rollout journal, whose records may carry others written behind: a
    /// later record must never be durable without an earlier one).
    RefuseAll,
}

impl Writer {
    /// Starts the thread that owns `file` (opened for appending).
    pub fn start(file: File, name: &str, after: AfterFailure) -> io::Result<Writer> {
        Writer::start_sink(FileSink(file), name, after)
    }

    /// Starts the thread that owns `sink`.
    pub fn start_sink(sink: impl Sink, name: &str, after: AfterFailure) -> io::Result<Writer> {
        let (tx, rx) = mpsc::channel::<Job>();
        std::thread::Builder::new()
            .name(name.into())
            .spawn(move || run(sink, rx, after))?;
        Ok(Writer { tx })
    }

    /// Queues a line; the receiver says when it is durable.
    pub fn submit(&self, line: Vec<u8>) -> oneshot::Receiver<io::Result<()>> {
        self.submit_all(vec![line])
    }

    /// Queues lines to be written together, in order, in one commit; the
    /// receiver says when all of them are durable.
    pub fn submit_all(&self, lines: Vec<Vec<u8>>) -> oneshot::Receiver<io::Result<()>> {
        let (ack, rx) = oneshot::channel();
        if let Err(mpsc::SendError(job)) = self.tx.send(Job {
            lines,
            ack: Ack::Async(ack),
        }) {
            job.ack
                .send(Err(io::Error::other("the journal writer has stopped")));
        }
        rx
    }

    /// Writes lines in one commit and waits until they are durable (for
    /// rare records, from synchronous code).
    pub fn write_blocking(&self, lines: Vec<Vec<u8>>) -> io::Result<()> {
        let (ack, rx) = mpsc::channel();
        self.tx
            .send(Job {
                lines,
                ack: Ack::Blocking(ack),
            })
            .map_err(|_| io::Error::other("the journal writer has stopped"))?;
        rx.recv()
            .map_err(|_| io::Error::other("the journal writer has stopped"))?
    }
}

fn run(mut sink: impl Sink, rx: mpsc::Receiver<Job>, after: AfterFailure) {
    // Set once a write failed, for a fail-stop writer: why it refuses.
    let mut refusing: Option<(io::ErrorKind, String)> = None;
    while let Ok(first) = rx.recv() {
        let mut batch = vec![first];
        batch.extend(rx.try_iter());
        let result = match &refusing {
            Some((kind, why)) => Err(io::Error::new(
                *kind,
                format!("an earlier write failed ({why}); nothing after it is written"),
            )),
            None => {
                let records: Vec<&[u8]> = batch
                    .iter()
                    .flat_map(|j| j.lines.iter().map(Vec::as_slice))
                    .collect();
                let result = sink.write(&records);
                if let Err(e) = &result {
                    tracing::error!(error = %e, records = records.len(), "cannot write the journal");
                    if after == AfterFailure::RefuseAll {
                        refusing = Some((e.kind(), e.to_string()));
                    }
                }
                result
            }
        };
        for job in batch {
            job.ack.send(match &result {
                Ok(()) => Ok(()),
                Err(e) => Err(io::Error::new(e.kind(), e.to_string())),
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn concurrent_records_all_land_whole_and_in_order_per_writer() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("j");
        let w = std::sync::Arc::new(
            Writer::start(File::create(&path).unwrap(), "test", AfterFailure::Continue).unwrap(),
        );
        let mut tasks = Vec::new();
        for t in 0..8 {
            let w = w.clone();
            tasks.push(tokio::spawn(async move {
                for i in 0..50 {
                    w.submit(format!("{t} {i}\n").into_bytes())
                        .await
                        .unwrap()
                        .unwrap();
                }
            }));
        }
        for t in tasks {
            t.await.unwrap();
        }
        w.write_blocking(vec![b"end\n".to_vec()]).unwrap();
        let text = std::fs::read_to_string(&path).unwrap();
        assert_eq!(text.lines().count(), 401);
        for t in 0..8 {
            let mine: Vec<usize> = text
                .lines()
                .filter_map(|l| {
                    l.split_once(' ')
                        .filter(|(a, _)| *a == t.to_string())
                        .map(|(_, i)| i.parse().unwrap())
                })
                .collect();
            assert_eq!(mine, (0..50).collect::<Vec<_>>());
        }
    }

    /// Fails its first write, then takes everything.
    struct FailsOnce(std::sync::Arc<std::sync::Mutex<Vec<String>>>, bool);

    impl Sink for FailsOnce {
        fn write(&mut self, records: &[&[u8]]) -> io::Result<()> {
            if !self.1 {
                self.1 = true;
                return Err(io::Error::other("disk on fire"));
            }
            let mut kept = self.0.lock().unwrap();
            kept.extend(
                records
                    .iter()
                    .map(|r| String::from_utf8_lossy(r).into_owned()),
            );
            Ok(())
        }
    }

    /// After a failed write a fail-stop writer writes nothing more, so no
    /// record is ever durable without those submitted before it; the
    /// ordinary writer goes on.
    #[tokio::test]
    async fn a_fail_stop_writer_writes_nothing_after_a_failure() {
        let kept = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let w = Writer::start_sink(
            FailsOnce(kept.clone(), false),
            "test",
            AfterFailure::RefuseAll,
        )
        .unwrap();
        let first = w.submit_all(vec![b"end a\n".to_vec(), b"begin b\n".to_vec()]);
        assert!(first.await.unwrap().is_err());
        let later = w.submit(b"begin a\n".to_vec()).await.unwrap();
        let e = later.unwrap_err();
        assert!(e.to_string().contains("disk on fire"), "{e}");
        assert!(w.write_blocking(vec![b"ended\n".to_vec()]).is_err());
        assert!(
            kept.lock().unwrap().is_empty(),
            "{:?}",
            kept.lock().unwrap()
        );

        let kept = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let w = Writer::start_sink(
            FailsOnce(kept.clone(), false),
            "test",
            AfterFailure::Continue,
        )
        .unwrap();
        assert!(w.submit(b"lost\n".to_vec()).await.unwrap().is_err());
        w.submit(b"kept\n".to_vec()).await.unwrap().unwrap();
        assert_eq!(*kept.lock().unwrap(), vec!["kept\n".to_string()]);
    }
}
