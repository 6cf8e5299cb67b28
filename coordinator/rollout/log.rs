//! The rollout journal: `<state_dir>/rollouts/<id>.jsonl`, one JSON record per
//! line, fsynced before the coordinator acts on it. Replaying it tells which
//! steps ended (never run again), which began (re-attach by operation id) and
//! how the rollout ended.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fs::OpenOptions;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use serde::{Deserialize, Serialize};

use super::spec::RolloutSpec;
use super::writer::Writer;

pub fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// How a rollout ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    /// Every host is on the target.
    Succeeded,
    /// Done, but some hosts failed and were quarantined on their old release.
    Quarantined,
    /// Stopped on a failure; the report says where.
    Halted,
    /// Stopped by the operator (Ctrl-C); `rollgate resume` continues it.
    Interrupted,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "t", rename_all = "snake_case")]
pub enum Record {
    Created {
        spec: Box<RolloutSpec>,
    },
    Begin {
        op: String,
        host: String,
        step: String,
        at_ms: i64,
    },
    End {
        op: String,
        host: String,
        step: String,
        ok: bool,
        summary: String,
        at_ms: i64,
    },
    Note {
        key: String,
        value: serde_json::Value,
        at_ms: i64,
    },
    Ended {
        outcome: Outcome,
        reason: String,
        at_ms: i64,
    },
}

/// The end of one step.
#[derive(Debug, Clone)]
pub struct StepEnd {
    pub ok: bool,
    pub summary: String,
}

/// A rollout's journal, open for appending, and what it says so far.
#[derive(Debug)]
pub struct RolloutLog {
    pub path: PathBuf,
    /// The file's single writer (group commit); None when opened to read.
    writer: Option<Writer>,
    pub spec: RolloutSpec,
    pub records: Vec<Record>,
    ends: HashMap<String, StepEnd>,
    /// Operations begun (by id) and hosts with any step begun.
    begun: HashSet<String>,
    begun_hosts: HashSet<String>,
    pub notes: BTreeMap<String, serde_json::Value>,
    pub outcome: Option<(Outcome, String)>,
}

pub fn rollouts_dir(state_dir: &Path) -> PathBuf {
    state_dir.join("rollouts")
}

/// The journal of rollout `id`, read without changing it. The id is checked
/// first (it names a file: nothing outside the state directory is read).
pub fn read_by_id(state_dir: &Path, id: &str) -> Result<RolloutLog, String> {
    rollgate::ids::check_rollout_id(id)?;
    let p = rollouts_dir(state_dir).join(format!("{id}.jsonl"));
    RolloutLog::read(&p).map_err(|e| format!("no rollout {id}: {e}"))
}

impl RolloutLog {
    /// Creates the journal of a new rollout, its spec first.
    pub fn create(state_dir: &Path, spec: RolloutSpec) -> std::io::Result<RolloutLog> {
        let dir = rollouts_dir(state_dir);
        std::fs::create_dir_all(&dir)?;
        let path = dir.join(format!("{}.jsonl", spec.id));
        let file = OpenOptions::new()
            .create_new(true)
            .append(true)
            .open(&path)?;
        rollgate::fsx::sync_dir(&dir)?;
        let mut log = RolloutLog {
            path,
            writer: Some(Writer::start(file)),
            spec: spec.clone(),
            records: Vec::new(),
            ends: HashMap::new(),
            begun: HashSet::new(),
            begun_hosts: HashSet::new(),
            notes: BTreeMap::new(),
            outcome: None,
        };
        log.append(Record::Created {
            spec: Box::new(spec),
        })?;
        Ok(log)
    }

    /// Opens an existing journal to continue it (`resume`, under the fleet
    /// lock). A torn last line — a crash in the middle of a write — is cut
    /// off; a whole line this build cannot read is refused, not cut.
    pub fn open(path: &Path) -> Result<RolloutLog, String> {
        let err = |e: std::io::Error| format!("{}: {e}", path.display());
        let file = OpenOptions::new()
            .read(true)
            .append(true)
            .open(path)
            .map_err(err)?;
        let (records, good, torn) = read_records(path, &file)?;
        let mut log = RolloutLog::from_records(path, records)?;
        if torn {
            file.set_len(good).map_err(err)?;
        }
        log.writer = Some(Writer::start(file));
        Ok(log)
    }

    /// Reads a journal without changing it (history, show, choosing what to
    /// roll back). Appending to it is refused.
    pub fn read(path: &Path) -> Result<RolloutLog, String> {
        let file = std::fs::File::open(path).map_err(|e| format!("{}: {e}", path.display()))?;
        let (records, _, _) = read_records(path, &file)?;
        RolloutLog::from_records(path, records)
    }

    fn from_records(path: &Path, records: Vec<Record>) -> Result<RolloutLog, String> {
        let Some(Record::Created { spec }) = records.first().cloned() else {
            return Err(format!("{} does not start with a rollout", path.display()));
        };
        let mut log = RolloutLog {
            path: path.to_path_buf(),
            writer: None,
            spec: *spec,
            records: Vec::new(),
            ends: HashMap::new(),
            begun: HashSet::new(),
            begun_hosts: HashSet::new(),
            notes: BTreeMap::new(),
            outcome: None,
        };
        for rec in records {
            log.apply(rec);
        }
        Ok(log)
    }

    fn apply(&mut self, rec: Record) {
        match &rec {
            Record::End {
                op, ok, summary, ..
            } => {
                self.ends.insert(
                    op.clone(),
                    StepEnd {
                        ok: *ok,
                        summary: summary.clone(),
                    },
                );
            }
            Record::Note { key, value, .. } => {
                self.notes.insert(key.clone(), value.clone());
            }
            Record::Begin { op, host, .. } => {
                self.begun.insert(op.clone());
                self.begun_hosts.insert(host.clone());
            }
            Record::Ended {
                outcome, reason, ..
            } => self.outcome = Some((*outcome, reason.clone())),
            Record::Created { .. } => {}
        }
        self.records.push(rec);
    }

    /// Appends (fsync) and applies a record, waiting for the disk: for the
    /// rare records written from synchronous code.
    pub fn append(&mut self, rec: Record) -> std::io::Result<()> {
        self.writer()?.write_blocking(line_of(&rec)?)?;
        self.apply(rec);
        Ok(())
    }

    /// Applies a record and queues it for the disk; the receiver says when it
    /// is durable. The caller must wait for that before acting on it.
    pub fn submit(
        &mut self,
        rec: Record,
    ) -> std::io::Result<tokio::sync::oneshot::Receiver<std::io::Result<()>>> {
        let rx = self.writer()?.submit(line_of(&rec)?);
        self.apply(rec);
        Ok(rx)
    }

    fn writer(&self) -> std::io::Result<&Writer> {
        self.writer
            .as_ref()
            .ok_or_else(|| std::io::Error::other("the rollout journal was opened to read only"))
    }

    /// True when the journal shows step `op` begun (it may have ended too).
    pub fn begun(&self, op: &str) -> bool {
        self.begun.contains(op)
    }

    /// True when any step of `host` has begun in this rollout.
    pub fn host_begun(&self, host: &str) -> bool {
        self.begun_hosts.contains(host)
    }

    pub fn ended(&self, op: &str) -> Option<&StepEnd> {
        self.ends.get(op)
    }

    pub fn note(&mut self, key: &str, value: serde_json::Value) -> std::io::Result<()> {
        self.append(Record::Note {
            key: key.into(),
            value,
            at_ms: now_ms(),
        })
    }
}

/// The whole records of a journal, where they end, and whether a torn last
/// line follows them. A whole line that does not parse is an error.
fn read_records(path: &Path, file: &std::fs::File) -> Result<(Vec<Record>, u64, bool), String> {
    let mut records = Vec::new();
    let mut good = 0u64;
    let mut line = String::new();
    let mut r = BufReader::new(file);
    loop {
        line.clear();
        let n = r
            .read_line(&mut line)
            .map_err(|e| format!("{}: {e}", path.display()))?;
        if n == 0 {
            return Ok((records, good, false));
        }
        if !line.ends_with('\n') {
            return Ok((records, good, true));
        }
        match serde_json::from_str::<Record>(line.trim_end()) {
            Ok(rec) => {
                records.push(rec);
                good += n as u64;
            }
            Err(e) => {
                return Err(format!(
                    "{}: record at byte {good} cannot be read ({e}); written by another rollgate version? The journal is left as it is",
                    path.display()
                ));
            }
        }
    }
}

fn line_of(rec: &Record) -> std::io::Result<Vec<u8>> {
    let mut line = serde_json::to_vec(rec).map_err(std::io::Error::other)?;
    line.push(b'\n');
    Ok(line)
}

/// Every rollout journal in the state dir, oldest first (by the creation
/// time in each one's first record; the rest is not read).
pub fn list(state_dir: &Path) -> Vec<PathBuf> {
    let Ok(rd) = std::fs::read_dir(rollouts_dir(state_dir)) else {
        return Vec::new();
    };
    let created = |p: &Path| -> i64 {
        let first = std::fs::File::open(p).ok().and_then(|f| {
            let mut line = String::new();
            BufReader::new(f).read_line(&mut line).ok()?;
            serde_json::from_str::<Record>(line.trim_end()).ok()
        });
        match first {
            Some(Record::Created { spec }) => spec.created_ms,
            _ => 0,
        }
    };
    let mut v: Vec<(i64, PathBuf)> = rd
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "jsonl"))
        .map(|p| (created(&p), p))
        .collect();
    v.sort();
    v.into_iter().map(|(_, p)| p).collect()
}
