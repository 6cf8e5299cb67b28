//! The agent's step journal: `<state_dir>/journal`, one JSON entry per line,
//! durable (fsync) before the step acts on what the entry says.
//!
//! Each operation writes `begin` (with its `Intent`: the request and what it
//! found, e.g. the release that was current), a `phase` at every step
//! boundary, and `end` with the result. On start the agent replays the file:
//! ended operations answer repeated ids without acting; an operation with no
//! `end` was cut off by a crash and is finished or undone by `recover`.
//!
//! Entries are the agent's own types (`kind`, `rollgate::outcome`), each
//! line stamped with the format version `v`. One thread owns the file
//! (`rollgate::journal_writer`): appends never fsync on the runtime's thread.
//!
//! A crash can tear the last record only (each record is durable before
//! the next is written): an unreadable last line is cut off on open, so the
//! file is always whole lines. An unreadable record with records after it is
//! not a torn write but damage: cutting there would forget operations that
//! ended, and a repeated id would act again. The journal then refuses to
//! open (`JournalError::Corrupt`), leaving the file exactly as it is, and the
//! agent does not start until an operator has looked.

use std::collections::BTreeMap;
use std::fs::OpenOptions;
use std::io::{self, BufRead, BufReader};
use std::path::Path;

use rollgate::journal_writer::{AfterFailure, Writer};
use rollgate::outcome::StepResult;
use serde::{Deserialize, Serialize};
use tokio::sync::oneshot;

use crate::kind::{Intent, Phase, StepKind};

/// The format this build writes and reads.
pub const FORMAT: u32 = 1;

/// Ended operations kept when the journal is compacted on start.
const KEEP_ENDED: usize = 2048;

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Entry {
    /// The journal format (`FORMAT`).
    pub v: u32,
    pub op: String,
    pub kind: StepKind,
    pub at_ms: i64,
    #[serde(flatten)]
    pub event: Event,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum Event {
    /// The operation starts (again, after a crash: `attempt` > 1, and the
    /// intent is the first attempt's).
    Begin {
        attempt: u32,
        intent: Option<Intent>,
    },
    /// A step boundary was passed; `detail` is for people reading the file.
    Phase {
        phase: Phase,
        #[serde(default)]
        detail: serde_json::Value,
    },
    /// The operation ended with this result.
    End { result: StepResult },
}

/// Everything the journal says about one operation.
#[derive(Debug, Clone)]
pub struct OpState {
    pub op: String,
    pub kind: StepKind,
    pub started_ms: i64,
    pub finished_ms: i64,
    pub attempts: u32,
    pub intent: Option<Intent>,
    pub phases: Vec<(Phase, serde_json::Value)>,
    pub result: Option<StepResult>,
    /// Order of first appearance, for listing oldest first.
    pub seq: u64,
}

impl OpState {
    #[cfg(test)]
    pub fn passed(&self, phase: Phase) -> bool {
        self.phases.iter().any(|(p, _)| *p == phase)
    }

    /// The phases passed, in order.
    pub fn passed_phases(&self) -> Vec<Phase> {
        self.phases.iter().map(|(p, _)| *p).collect()
    }
}

/// Why the journal cannot be opened.
#[derive(Debug, thiserror::Error)]
pub enum JournalError {
    #[error(
        "{path}: line {line} (byte {offset}) cannot be read ({why}) and {after} more line(s) follow it, so it is not a torn last write. The journal is left as it is and the agent will not start: move the damaged line aside after reading it (every other line is a complete record), or move the whole journal aside to start with no memory of past operations"
    )]
    Corrupt {
        path: String,
        line: usize,
        offset: u64,
        why: String,
        after: usize,
    },
    #[error("{0}")]
    Io(#[from] io::Error),
}

#[derive(Debug)]
pub struct Journal {
    writer: Writer,
}

impl Journal {
    /// Opens (creating) the journal, cuts a torn last record, and replays
    /// it. Damage anywhere else is an error and nothing is changed.
    pub fn open(state_dir: &Path) -> Result<(Journal, BTreeMap<String, OpState>), JournalError> {
        let path = state_dir.join("journal");
        let file = OpenOptions::new()
            .read(true)
            .append(true)
            .create(true)
            .open(&path)?;
        let (mut ops, good_len) = replay(&path, &file)?;
        if file.metadata()?.len() != good_len {
            file.set_len(good_len)?;
            file.sync_all()?;
        }
        let compacted = compact(&path, &mut ops)?;
        let file = if compacted {
            OpenOptions::new().append(true).open(&path)?
        } else {
            file
        };
        let writer = Writer::start(file, "agent-journal", AfterFailure::Continue)?;
        Ok((Journal { writer }, ops))
    }

    /// A journal whose entries go to `sink` (tests: a disk that fails).
    #[cfg(test)]
    pub fn with_sink(sink: impl rollgate::journal_writer::Sink) -> io::Result<Journal> {
        Ok(Journal {
            writer: Writer::start_sink(sink, "agent-journal", AfterFailure::Continue)?,
        })
    }

    /// Queues an entry for the disk; the receiver says when it is durable.
    /// The caller waits for that before acting on it.
    pub fn submit(&self, e: &Entry) -> io::Result<oneshot::Receiver<io::Result<()>>> {
        Ok(self.writer.submit(line_of(e)?))
    }
}

fn line_of(e: &Entry) -> io::Result<Vec<u8>> {
    let mut line = serde_json::to_vec(e).map_err(io::Error::other)?;
    line.push(b'\n');
    Ok(line)
}

/// The operations of a journal file, and the length of its whole records.
fn replay(
    path: &Path,
    file: &std::fs::File,
) -> Result<(BTreeMap<String, OpState>, u64), JournalError> {
    let mut ops = BTreeMap::new();
    let mut seq = 0u64;
    let mut good_len = 0u64;
    // Bytes, not text: a torn or damaged record may not be UTF-8.
    let mut reader = BufReader::new(file);
    let mut lines: Vec<Vec<u8>> = Vec::new();
    loop {
        let mut line = Vec::new();
        if reader.read_until(b'\n', &mut line)? == 0 {
            break;
        }
        lines.push(line);
    }
    let count = lines.len();
    for (i, line) in lines.iter().enumerate() {
        let parsed = match line.strip_suffix(b"\n") {
            Some(body) => parse(body),
            None => Err("no end of line".to_string()),
        };
        match parsed {
            Ok(e) => {
                apply(&mut ops, e, &mut seq);
                good_len += line.len() as u64;
            }
            Err(why) if i + 1 == count => {
                tracing::warn!(journal = %path.display(), bytes = line.len(), %why, "cutting a torn last journal record");
            }
            Err(why) => {
                return Err(JournalError::Corrupt {
                    path: path.display().to_string(),
                    line: i + 1,
                    offset: good_len,
                    why,
                    after: count - i - 1,
                });
            }
        }
    }
    Ok((ops, good_len))
}

/// One whole line: an entry of the format this build reads.
fn parse(body: &[u8]) -> Result<Entry, String> {
    #[derive(Deserialize)]
    struct Stamp {
        v: u32,
    }
    let stamp: Stamp = serde_json::from_slice(body).map_err(|e| e.to_string())?;
    if stamp.v != FORMAT {
        return Err(format!(
            "journal format {} (this agent reads {FORMAT})",
            stamp.v
        ));
    }
    serde_json::from_slice(body).map_err(|e| e.to_string())
}

/// Rewrites the journal without the oldest ended operations once it holds
/// many; running ones are always kept. True when it rewrote the file.
fn compact(path: &Path, ops: &mut BTreeMap<String, OpState>) -> io::Result<bool> {
    let ended = ops.values().filter(|o| o.result.is_some()).count();
    if ended <= KEEP_ENDED * 2 {
        return Ok(false);
    }
    let mut by_age: Vec<(u64, String)> = ops
        .values()
        .filter(|o| o.result.is_some())
        .map(|o| (o.seq, o.op.clone()))
        .collect();
    by_age.sort();
    for (_, op) in by_age.iter().take(ended - KEEP_ENDED) {
        ops.remove(op);
    }
    let mut text = Vec::new();
    let mut ordered: Vec<&OpState> = ops.values().collect();
    ordered.sort_by_key(|o| o.seq);
    for o in ordered {
        for e in entries_of(o) {
            text.extend(line_of(&e)?);
        }
    }
    rollgate::fsx::write_atomic(path, &text)?;
    tracing::info!(kept = ops.len(), "journal compacted");
    Ok(true)
}

/// Folds one entry into the operation map.
pub fn apply(ops: &mut BTreeMap<String, OpState>, e: Entry, seq: &mut u64) {
    let st = ops.entry(e.op.clone()).or_insert_with(|| {
        *seq += 1;
        OpState {
            op: e.op.clone(),
            kind: e.kind,
            started_ms: e.at_ms,
            finished_ms: 0,
            attempts: 0,
            intent: None,
            phases: Vec::new(),
            result: None,
            seq: *seq,
        }
    });
    match e.event {
        Event::Begin { attempt, intent } => {
            st.attempts = attempt;
            if st.intent.is_none() {
                st.intent = intent;
            }
        }
        Event::Phase { phase, detail } => st.phases.push((phase, detail)),
        Event::End { result } => {
            st.result = Some(result);
            st.finished_ms = e.at_ms;
        }
    }
}

/// The entries that reproduce an operation's state (for compaction).
fn entries_of(o: &OpState) -> Vec<Entry> {
    let mk = |event| Entry {
        v: FORMAT,
        op: o.op.clone(),
        kind: o.kind,
        at_ms: o.started_ms,
        event,
    };
    let mut v = vec![mk(Event::Begin {
        attempt: o.attempts.max(1),
        intent: o.intent.clone(),
    })];
    v.extend(o.phases.iter().map(|(p, d)| {
        mk(Event::Phase {
            phase: *p,
            detail: d.clone(),
        })
    }));
    if let Some(r) = &o.result {
        v.push(Entry {
            at_ms: o.finished_ms,
            ..mk(Event::End { result: r.clone() })
        });
    }
    v
}

#[cfg(test)]
mod tests {
    use super::*;
    use rollgate::outcome::StepOutput;

    fn entry(op: &str, event: Event) -> Entry {
        Entry {
            v: FORMAT,
            op: op.into(),
            kind: StepKind::Install,
            at_ms: 1,
            event,
        }
    }

    fn begin(attempt: u32) -> Event {
        Event::Begin {
            attempt,
            intent: Some(Intent::Undrain),
        }
    }

    fn end() -> Event {
        Event::End {
            result: Ok(StepOutput::Undrain),
        }
    }

    async fn write(j: &Journal, e: Entry) {
        j.submit(&e).unwrap().await.unwrap().unwrap();
    }

    #[tokio::test]
    async fn replays_and_cuts_a_torn_tail() {
        let dir = tempfile::tempdir().unwrap();
        {
            let (j, ops) = Journal::open(dir.path()).unwrap();
            assert!(ops.is_empty());
            write(&j, entry("a", begin(1))).await;
            write(
                &j,
                entry(
                    "a",
                    Event::Phase {
                        phase: Phase::Switched,
                        detail: serde_json::Value::Null,
                    },
                ),
            )
            .await;
            write(&j, entry("a", end())).await;
            write(&j, entry("b", begin(1))).await;
        }
        // A crash mid-write leaves half a line.
        let p = dir.path().join("journal");
        let mut text = std::fs::read(&p).unwrap();
        text.extend_from_slice(b"{\"v\":1,\"op\":\"b\",\"kind\":\"ins");
        std::fs::write(&p, &text).unwrap();

        let (j, ops) = Journal::open(dir.path()).unwrap();
        assert!(ops["a"].result.is_some());
        assert!(ops["a"].passed(Phase::Switched));
        assert_eq!(ops["a"].intent, Some(Intent::Undrain));
        assert!(
            ops["b"].result.is_none(),
            "b was cut off: it is still running"
        );
        assert!(std::fs::read_to_string(&p).unwrap().ends_with('\n'));
        write(&j, entry("b", end())).await;
        drop(j);
        let (_, ops) = Journal::open(dir.path()).unwrap();
        assert!(
            ops["b"].result.is_some(),
            "appends after the cut are whole lines"
        );
    }

    #[tokio::test]
    async fn a_damaged_record_before_the_last_stops_the_open_and_changes_nothing() {
        let dir = tempfile::tempdir().unwrap();
        {
            let (j, _) = Journal::open(dir.path()).unwrap();
            for op in ["a", "b"] {
                write(&j, entry(op, begin(1))).await;
                write(&j, entry(op, end())).await;
            }
        }
        let p = dir.path().join("journal");
        let text = std::fs::read_to_string(&p).unwrap();
        let mut lines: Vec<&str> = text.lines().collect();
        lines.insert(2, "garbage \u{1} not json");
        let damaged = lines.join("\n") + "\n";
        std::fs::write(&p, &damaged).unwrap();
        let e = Journal::open(dir.path()).unwrap_err().to_string();
        assert!(e.contains("line 3") && e.contains("2 more line(s)"), "{e}");
        assert_eq!(
            std::fs::read_to_string(&p).unwrap(),
            damaged,
            "nothing rewritten"
        );
        // Invalid UTF-8 in the middle is damage too, not a reason to panic.
        let mut bytes = text.clone().into_bytes();
        bytes.splice(0..0, b"\xff\xfe\n".iter().copied());
        std::fs::write(&p, &bytes).unwrap();
        assert!(matches!(
            Journal::open(dir.path()),
            Err(JournalError::Corrupt { line: 1, .. })
        ));
        // A record of another format in the middle is refused, not guessed at.
        let other = text.replacen("\"v\":1", "\"v\":9", 1);
        std::fs::write(&p, &other).unwrap();
        let e = Journal::open(dir.path()).unwrap_err().to_string();
        assert!(e.contains("format 9"), "{e}");
        // The same bad line last: a torn write, cut, the rest kept.
        std::fs::write(&p, format!("{text}garbage\n")).unwrap();
        let (_, ops) = Journal::open(dir.path()).unwrap();
        assert_eq!(ops.len(), 2);
        assert_eq!(std::fs::read_to_string(&p).unwrap(), text);
    }

    #[tokio::test]
    async fn compaction_keeps_running_and_recent_operations() {
        let dir = tempfile::tempdir().unwrap();
        {
            let (j, _) = Journal::open(dir.path()).unwrap();
            write(&j, entry("running", begin(1))).await;
            let mut last = None;
            for i in 0..(KEEP_ENDED * 2 + 10) {
                let op = format!("op-{i}");
                drop(j.submit(&entry(&op, begin(1))).unwrap());
                last = Some(j.submit(&entry(&op, end())).unwrap());
            }
            last.unwrap().await.unwrap().unwrap();
        }
        let (_, ops) = Journal::open(dir.path()).unwrap();
        assert_eq!(ops.len(), KEEP_ENDED + 1);
        assert!(ops.contains_key("running"));
        assert!(ops.contains_key(&format!("op-{}", KEEP_ENDED * 2 + 9)));
        assert!(!ops.contains_key("op-0"));
        let (_, again) = Journal::open(dir.path()).unwrap();
        assert_eq!(
            again.len(),
            ops.len(),
            "the compacted file replays the same"
        );
    }

    /// A journal of this format, committed: a later change to the entry
    /// types must still read it, or recovery after an upgrade of the agent
    /// would misread the steps it must finish.
    #[test]
    fn the_committed_format_1_fixture_replays() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::copy(
            concat!(
                env!("CARGO_MANIFEST_DIR"),
                "/tests/fixtures/agent-journal-v1.jsonl"
            ),
            dir.path().join("journal"),
        )
        .unwrap();
        let (_, ops) = Journal::open(dir.path()).unwrap();
        let install = &ops["r-20261130T105553Z-1a2b/dp-1/install-3.4.0"];
        assert_eq!(install.kind, StepKind::Install);
        assert!(install.passed(Phase::Switched) && !install.passed(Phase::Gated));
        assert!(install.result.is_none(), "cut off: recovery finishes it");
        match &install.intent {
            Some(Intent::Install(p)) => {
                assert_eq!(p.target.to_string(), "3.4.0");
                assert_eq!(
                    p.previous.as_ref().map(ToString::to_string).as_deref(),
                    Some("3.3.0")
                );
            }
            other => panic!("{other:?}"),
        }
        let drain = &ops["r-20261130T105553Z-1a2b/dp-1/drain-3.4.0"];
        assert!(matches!(
            &drain.result,
            Some(Ok(StepOutput::Drain(d))) if d.lb_acknowledged
        ));
        let stage = &ops["r-20261130T105553Z-1a2b/dp-1/stage-3.4.0"];
        assert!(
            matches!(&stage.result, Some(Err(f)) if f.code == rollgate::outcome::FailureCode::ChecksumMismatch)
        );
        let stage2 = &ops["r-20261130T105553Z-1a2b/dp-1/stage-3.4.0.2"];
        assert!(matches!(&stage2.result, Some(Ok(StepOutput::Stage(_)))));
    }
}
