//! The agent's step journal: `<state_dir>/journal`, one JSON entry per line,
//! fsynced before the step acts on what the entry says.
//!
//! Each operation writes `begin` (with the request and what it found, e.g.
//! the release that was current), a `phase` at every step boundary, and `end`
//! with the result. On start the agent replays the file: ended operations
//! answer repeated ids without acting; an operation with no `end` was cut off
//! by a crash and is finished or undone by `recover`.
//!
//! A crash can tear the last record only (each record is fsynced before
//! the next is written): an unreadable last line is cut off on open, so the
//! file is always whole lines. An unreadable record with records after it is
//! not a torn write but damage: cutting there would forget operations that
//! ended, and a repeated id would act again. The journal then refuses to
//! open (`JournalError::Corrupt`), leaving the file exactly as it is, and the
//! agent does not start until an operator has looked.

use std::collections::BTreeMap;
use std::fs::{File, OpenOptions};
use std::io::{self, BufRead, BufReader, Seek, Write};
use std::path::{Path, PathBuf};

use rollgate::pb;
use serde::{Deserialize, Serialize};

/// Ended operations kept when the journal is compacted on start.
const KEEP_ENDED: usize = 2048;

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Entry {
    pub op: String,
    pub kind: String,
    pub at_ms: i64,
    #[serde(flatten)]
    pub event: Event,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum Event {
    /// The operation starts (again, after a crash: `attempt` > 1).
    Begin {
        attempt: u32,
        detail: serde_json::Value,
    },
    /// A step boundary was passed.
    Phase {
        phase: String,
        #[serde(default)]
        detail: serde_json::Value,
    },
    /// The operation ended with this result.
    End { result: pb::OperationResult },
}

/// Everything the journal says about one operation.
#[derive(Debug, Clone)]
pub struct OpState {
    pub op: String,
    pub kind: String,
    pub started_ms: i64,
    pub finished_ms: i64,
    pub attempts: u32,
    pub begin: serde_json::Value,
    pub phases: Vec<(String, serde_json::Value)>,
    pub result: Option<pb::OperationResult>,
    /// Order of first appearance, for listing oldest first.
    pub seq: u64,
}

impl OpState {
    pub fn passed(&self, phase: &str) -> bool {
        self.phases.iter().any(|(p, _)| p == phase)
    }

    pub fn record(&self) -> pb::OperationRecord {
        let status = match &self.result {
            None => pb::OperationStatus::Running,
            Some(r) => match r.outcome {
                Some(pb::operation_result::Outcome::Success(_)) => pb::OperationStatus::Succeeded,
                _ => pb::OperationStatus::Failed,
            },
        };
        pb::OperationRecord {
            operation_id: self.op.clone(),
            kind: self.kind.clone(),
            status: status as i32,
            result: self.result.clone(),
            started_at_unix_ms: self.started_ms,
            finished_at_unix_ms: self.finished_ms,
            attempts: self.attempts,
        }
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
    path: PathBuf,
    file: File,
}

impl Journal {
    /// Opens (creating) the journal, cuts a torn last record, and replays
    /// it. Damage anywhere else is an error and nothing is changed.
    pub fn open(state_dir: &Path) -> Result<(Journal, BTreeMap<String, OpState>), JournalError> {
        let path = state_dir.join("journal");
        let mut file = OpenOptions::new()
            .read(true)
            .append(true)
            .create(true)
            .open(&path)?;
        let mut ops = BTreeMap::new();
        let mut seq = 0u64;
        let mut good_len = 0u64;
        // Bytes, not text: a torn or damaged record may not be UTF-8.
        let mut reader = BufReader::new(&file);
        let mut lines: Vec<Vec<u8>> = Vec::new();
        loop {
            let mut line = Vec::new();
            if reader.read_until(b'\n', &mut line)? == 0 {
                break;
            }
            lines.push(line);
        }
        drop(reader);
        let count = lines.len();
        for (i, line) in lines.iter().enumerate() {
            let last = i + 1 == count;
            let parsed = if line.ends_with(b"\n") {
                serde_json::from_slice::<Entry>(&line[..line.len() - 1]).map_err(|e| e.to_string())
            } else {
                Err("no end of line".to_string())
            };
            match parsed {
                Ok(e) => {
                    apply(&mut ops, e, &mut seq);
                    good_len += line.len() as u64;
                }
                Err(why) if last => {
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
        if file.metadata()?.len() != good_len {
            file.set_len(good_len)?;
            file.sync_all()?;
        }
        file.seek(io::SeekFrom::End(0))?;
        let mut j = Journal { path, file };
        j.compact(&mut ops)?;
        Ok((j, ops))
    }

    /// Appends an entry and fsyncs it.
    pub fn append(&mut self, e: &Entry) -> io::Result<()> {
        let mut line = serde_json::to_vec(e).map_err(io::Error::other)?;
        line.push(b'\n');
        let len = self.file.metadata()?.len();
        let r = self
            .file
            .write_all(&line)
            .and_then(|()| self.file.sync_data());
        if r.is_err() {
            // Never leave half a line: the next entry would be glued to it
            // and replay would cut everything after.
            let _ = self.file.set_len(len);
        }
        r
    }

    /// Rewrites the journal without the oldest ended operations once it holds
    /// many; running ones are always kept.
    fn compact(&mut self, ops: &mut BTreeMap<String, OpState>) -> io::Result<()> {
        let ended = ops.values().filter(|o| o.result.is_some()).count();
        if ended <= KEEP_ENDED * 2 {
            return Ok(());
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
                text.extend(serde_json::to_vec(&e).map_err(io::Error::other)?);
                text.push(b'\n');
            }
        }
        rollgate::fsx::write_atomic(&self.path, &text)?;
        self.file = OpenOptions::new().append(true).open(&self.path)?;
        tracing::info!(kept = ops.len(), "journal compacted");
        Ok(())
    }
}

/// Folds one entry into the operation map.
pub fn apply(ops: &mut BTreeMap<String, OpState>, e: Entry, seq: &mut u64) {
    let st = ops.entry(e.op.clone()).or_insert_with(|| {
        *seq += 1;
        OpState {
            op: e.op.clone(),
            kind: e.kind.clone(),
            started_ms: e.at_ms,
            finished_ms: 0,
            attempts: 0,
            begin: serde_json::Value::Null,
            phases: Vec::new(),
            result: None,
            seq: *seq,
        }
    });
    match e.event {
        Event::Begin { attempt, detail } => {
            st.attempts = attempt;
            if attempt <= 1 {
                st.begin = detail;
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
        op: o.op.clone(),
        kind: o.kind.clone(),
        at_ms: o.started_ms,
        event,
    };
    let mut v = vec![mk(Event::Begin {
        attempt: 1,
        detail: o.begin.clone(),
    })];
    if o.attempts > 1 {
        v.push(mk(Event::Begin {
            attempt: o.attempts,
            detail: serde_json::Value::Null,
        }));
    }
    v.extend(o.phases.iter().map(|(p, d)| {
        mk(Event::Phase {
            phase: p.clone(),
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

    fn entry(op: &str, event: Event) -> Entry {
        Entry {
            op: op.into(),
            kind: "install".into(),
            at_ms: 1,
            event,
        }
    }

    #[test]
    fn replays_and_cuts_a_torn_tail() {
        let dir = tempfile::tempdir().unwrap();
        {
            let (mut j, ops) = Journal::open(dir.path()).unwrap();
            assert!(ops.is_empty());
            j.append(&entry(
                "a",
                Event::Begin {
                    attempt: 1,
                    detail: serde_json::json!({"to": "3.4.0"}),
                },
            ))
            .unwrap();
            j.append(&entry(
                "a",
                Event::Phase {
                    phase: "switched".into(),
                    detail: serde_json::Value::Null,
                },
            ))
            .unwrap();
            j.append(&entry(
                "a",
                Event::End {
                    result: pb::OperationResult::default(),
                },
            ))
            .unwrap();
            j.append(&entry(
                "b",
                Event::Begin {
                    attempt: 1,
                    detail: serde_json::Value::Null,
                },
            ))
            .unwrap();
        }
        // A crash mid-write leaves half a line.
        let p = dir.path().join("journal");
        let mut f = OpenOptions::new().append(true).open(&p).unwrap();
        f.write_all(b"{\"op\":\"b\",\"kind\":\"ins").unwrap();
        drop(f);

        let (mut j, ops) = Journal::open(dir.path()).unwrap();
        assert!(ops["a"].result.is_some());
        assert!(ops["a"].passed("switched"));
        assert_eq!(ops["a"].begin["to"], "3.4.0");
        assert!(
            ops["b"].result.is_none(),
            "b was cut off: it is still running"
        );
        assert!(std::fs::read_to_string(&p).unwrap().ends_with('\n'));
        j.append(&entry(
            "b",
            Event::End {
                result: pb::OperationResult::default(),
            },
        ))
        .unwrap();
        let (_, ops) = Journal::open(dir.path()).unwrap();
        assert!(
            ops["b"].result.is_some(),
            "appends after the cut are whole lines"
        );
    }

    #[test]
    fn a_damaged_record_before_the_last_stops_the_open_and_changes_nothing() {
        let dir = tempfile::tempdir().unwrap();
        {
            let (mut j, _) = Journal::open(dir.path()).unwrap();
            for op in ["a", "b"] {
                j.append(&entry(
                    op,
                    Event::Begin {
                        attempt: 1,
                        detail: serde_json::Value::Null,
                    },
                ))
                .unwrap();
                j.append(&entry(
                    op,
                    Event::End {
                        result: pb::OperationResult::default(),
                    },
                ))
                .unwrap();
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
        // The same bad line last: a torn write, cut, the rest kept.
        std::fs::write(&p, format!("{text}garbage\n")).unwrap();
        let (_, ops) = Journal::open(dir.path()).unwrap();
        assert_eq!(ops.len(), 2);
        assert_eq!(std::fs::read_to_string(&p).unwrap(), text);
    }

    #[test]
    fn compaction_keeps_running_and_recent_operations() {
        let dir = tempfile::tempdir().unwrap();
        {
            let (mut j, _) = Journal::open(dir.path()).unwrap();
            j.append(&entry(
                "running",
                Event::Begin {
                    attempt: 1,
                    detail: serde_json::Value::Null,
                },
            ))
            .unwrap();
            for i in 0..(KEEP_ENDED * 2 + 10) {
                let op = format!("op-{i}");
                j.append(&entry(
                    &op,
                    Event::Begin {
                        attempt: 1,
                        detail: serde_json::Value::Null,
                    },
                ))
                .unwrap();
                j.append(&entry(
                    &op,
                    Event::End {
                        result: pb::OperationResult::default(),
                    },
                ))
                .unwrap();
            }
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
}
