//! The agent's step journal: `<state_dir>/journal`, one JSON entry per line,
//! fsynced before the step acts on what the entry says.
//!
//! Each operation writes `begin` (with the request and what it found, e.g.
//! the release that was current), a `phase` at every step boundary, and `end`
//! with the result. On start the agent replays the file: ended operations
//! answer repeated ids without acting; an operation with no `end` was cut off
//! by a crash and is finished or undone by `recover`.
//!
//! A crash can tear the last line; the torn tail is cut off on open, so the
//! file is always whole lines.

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

#[derive(Debug)]
pub struct Journal {
    path: PathBuf,
    file: File,
}

impl Journal {
    /// Opens (creating) the journal, cuts a torn tail, and replays it.
    pub fn open(state_dir: &Path) -> io::Result<(Journal, BTreeMap<String, OpState>)> {
        let path = state_dir.join("journal");
        let mut file = OpenOptions::new()
            .read(true)
            .append(true)
            .create(true)
            .open(&path)?;
        let mut ops = BTreeMap::new();
        let mut seq = 0u64;
        let mut good_len = 0u64;
        let mut reader = BufReader::new(&file);
        let mut line = String::new();
        loop {
            line.clear();
            let n = reader.read_line(&mut line)?;
            if n == 0 {
                break;
            }
            if !line.ends_with('\n') {
                tracing::warn!(journal = %path.display(), bytes = n, "cutting a torn last journal line");
                break;
            }
            match serde_json::from_str::<Entry>(line.trim_end()) {
                Ok(e) => {
                    apply(&mut ops, e, &mut seq);
                    good_len += n as u64;
                }
                Err(err) => {
                    // Only a crash mid-write produces a bad line, and only at
                    // the end; anything after it is not trusted.
                    tracing::warn!(journal = %path.display(), error = %err, "cutting an unreadable journal tail");
                    break;
                }
            }
        }
        drop(reader);
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
