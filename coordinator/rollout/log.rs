//! The rollout journal: `<state_dir>/rollouts/<id>.jsonl`, one JSON record per
//! line, fsynced before the coordinator acts on it (or the same records as
//! rows of the state database, committed before it acts: `journals.rs`).
//! Replaying it tells which steps ended (never run again), which began
//! (re-attach by operation id) and how the rollout ended.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::fs::OpenOptions;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};

use rollgate::fingerprint::Fingerprint;
use rollgate::journal_writer::{AfterFailure, FileSink, Sink, Writer};
use rollgate::outcome::StepResult;
use serde::{Deserialize, Serialize};

pub use rollgate::clock::now_ms;

use super::spec::RolloutSpec;

/// The journal format this build writes and reads (in the first record).
pub const FORMAT: u32 = 1;

/// A host's last step in a rollout's journal.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct LastStep {
    pub step: String,
    pub op: String,
    /// `succeeded`, `failed (CODE)`, or `in flight: undecided` when no
    /// result was journalled (the agent was lost, or the coordinator died).
    pub status: String,
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
    /// Stopped because an agent stopped answering (a partition, a frozen
    /// host): the steps it ran are undecided, not failed, and `rollgate
    /// resume` follows them by operation id once it answers again.
    Disconnected,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "t", rename_all = "snake_case")]
pub enum Record {
    /// The first record: the journal's format and the rollout's plan.
    Created { format: u32, spec: Box<RolloutSpec> },
    /// A step is about to be called (durable before the call).
    Begin {
        op: String,
        host: String,
        step: String,
        at_ms: i64,
    },
    /// A step's result, as the agent (or the coordinator) gave it.
    End {
        op: String,
        host: String,
        step: String,
        result: StepResult,
        at_ms: i64,
    },
    /// What the rollout decided about a host (quarantine, left drained).
    Host {
        host: String,
        mark: HostMark,
        at_ms: i64,
    },
    /// The copy of the rollout's backup kept in the state dir.
    BackupCopy {
        dir: PathBuf,
        files: usize,
        at_ms: i64,
    },
    /// The DB fingerprint after hop `hop`'s CPs: the next hop's guard baseline.
    Baseline {
        hop: usize,
        fingerprint: Fingerprint,
        at_ms: i64,
    },
    Ended {
        outcome: Outcome,
        reason: String,
        at_ms: i64,
    },
}

/// What the rollout decided about a host, beyond its steps.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "mark", rename_all = "snake_case")]
pub enum HostMark {
    /// Failed within the failure budget: left on its old release, and the
    /// rollout went on without it.
    Quarantined { step: String, reason: String },
    /// A step failed and the host could not be put back in rotation.
    LeftDrained { step: String, reason: String },
}

/// Where a rollout's journal is kept.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Origin {
    /// A file in the state directory.
    File(PathBuf),
    /// Rows of the state database (`db` as shown: no password).
    Postgres { db: String, rollout: String },
}

impl std::fmt::Display for Origin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Origin::File(p) => write!(f, "{}", p.display()),
            Origin::Postgres { db, rollout } => {
                write!(f, "rollout {rollout} in the state database {db}")
            }
        }
    }
}

/// A rollout's journal, open for appending, and what it says so far.
#[derive(Debug)]
pub struct RolloutLog {
    pub origin: Origin,
    /// The file's single writer (group commit); None when opened to read.
    writer: Option<Writer>,
    /// Records applied but not yet given to the writer (`hold`): the next
    /// record sent carries them to the disk first, in the same commit.
    held: Vec<Vec<u8>>,
    pub spec: RolloutSpec,
    pub records: Vec<Record>,
    ends: HashMap<String, StepResult>,
    /// Operations begun (by id) and hosts with any step begun.
    begun: HashSet<String>,
    begun_hosts: HashSet<String>,
    /// Hosts whose latest record quarantines them (what `state::fold`
    /// says), kept as records are applied: the driver asks before every
    /// batch, and folding a 10,000-host journal each time was a measurable
    /// share of the coordinator's CPU.
    quarantined: BTreeSet<String>,
    /// The backup copy, when made.
    pub backup_copy: Option<PathBuf>,
    /// Guard baselines by hop index.
    pub baselines: BTreeMap<usize, Fingerprint>,
    pub outcome: Option<(Outcome, String)>,
}

fn read_only() -> std::io::Error {
    std::io::Error::other("the rollout journal was opened to read only")
}

/// The writer of a rollout journal, wherever it writes: fail-stop, so that
/// no record is durable without the records held before it (`hold`) when
/// the commit that carried them failed.
pub fn writer(sink: impl Sink) -> std::io::Result<Writer> {
    Writer::start_sink(sink, "rollout-journal", AfterFailure::RefuseAll)
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
        RolloutLog::start(Origin::File(path), writer(FileSink(file))?, spec)
    }

    /// A new rollout's journal written through `writer`, its spec first.
    pub fn start(origin: Origin, writer: Writer, spec: RolloutSpec) -> std::io::Result<RolloutLog> {
        let mut log = RolloutLog::empty(origin, spec.clone());
        log.writer = Some(writer);
        log.append(Record::Created {
            format: FORMAT,
            spec: Box::new(spec),
        })?;
        Ok(log)
    }

    /// A journal read elsewhere, continued through `writer` (`resume`).
    pub fn continued(mut self, writer: Writer) -> RolloutLog {
        self.writer = Some(writer);
        self
    }

    fn empty(origin: Origin, spec: RolloutSpec) -> RolloutLog {
        RolloutLog {
            origin,
            writer: None,
            held: Vec::new(),
            spec,
            records: Vec::new(),
            ends: HashMap::new(),
            begun: HashSet::new(),
            begun_hosts: HashSet::new(),
            quarantined: BTreeSet::new(),
            backup_copy: None,
            baselines: BTreeMap::new(),
            outcome: None,
        }
    }

    /// The path of a file journal (None for one in the state database).
    #[cfg(test)]
    pub fn file(&self) -> Option<&Path> {
        match &self.origin {
            Origin::File(p) => Some(p),
            Origin::Postgres { .. } => None,
        }
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
        let mut log = RolloutLog::from_records(Origin::File(path.to_path_buf()), records)?;
        if torn {
            file.set_len(good).map_err(err)?;
        }
        log.writer = Some(writer(FileSink(file)).map_err(err)?);
        Ok(log)
    }

    /// Reads a journal without changing it (history, show, choosing what to
    /// roll back). Appending to it is refused.
    pub fn read(path: &Path) -> Result<RolloutLog, String> {
        let file = std::fs::File::open(path).map_err(|e| format!("{}: {e}", path.display()))?;
        let (records, _, _) = read_records(path, &file)?;
        RolloutLog::from_records(Origin::File(path.to_path_buf()), records)
    }

    /// A journal from its records, in order (read only).
    pub fn from_records(origin: Origin, records: Vec<Record>) -> Result<RolloutLog, String> {
        let Some(Record::Created { format, spec }) = records.first().cloned() else {
            return Err(format!("{origin} does not start with a rollout"));
        };
        if format != FORMAT {
            return Err(format!(
                "{origin} is in journal format {format}; this rollgate reads format {FORMAT}"
            ));
        }
        let mut log = RolloutLog::empty(origin, *spec);
        for rec in records {
            log.apply(rec);
        }
        Ok(log)
    }

    fn apply(&mut self, rec: Record) {
        match &rec {
            Record::End {
                op, result, host, ..
            } => {
                self.ends.insert(op.clone(), result.clone());
                self.quarantined.remove(host);
            }
            Record::BackupCopy { dir, .. } => self.backup_copy = Some(dir.clone()),
            Record::Baseline {
                hop, fingerprint, ..
            } => {
                self.baselines.insert(*hop, fingerprint.clone());
            }
            Record::Host { host, mark, .. } => match mark {
                HostMark::Quarantined { .. } => {
                    self.quarantined.insert(host.clone());
                }
                HostMark::LeftDrained { .. } => {
                    self.quarantined.remove(host);
                }
            },
            Record::Begin { op, host, .. } => {
                self.begun.insert(op.clone());
                self.begun_hosts.insert(host.clone());
                self.quarantined.remove(host);
            }
            Record::Ended {
                outcome, reason, ..
            } => self.outcome = Some((*outcome, reason.clone())),
            // As the fold: the spec's hosts start over, others keep theirs.
            Record::Created { spec, .. } => {
                for h in &spec.hosts {
                    self.quarantined.remove(&h.name);
                }
            }
        }
        self.records.push(rec);
    }

    /// Appends (fsync) and applies a record, waiting for the disk: for the
    /// rare records written from synchronous code. Records held before it
    /// go first, in the same commit.
    pub fn append(&mut self, rec: Record) -> std::io::Result<()> {
        let (writer, lines) = self.with_held(&rec)?;
        writer.write_blocking(lines)?;
        self.apply(rec);
        Ok(())
    }

    /// Applies a record and queues it for the disk, records held before it
    /// first, in the same commit; the receiver says when all are durable.
    /// The caller must wait for that before acting on it.
    pub fn submit(
        &mut self,
        rec: Record,
    ) -> std::io::Result<tokio::sync::oneshot::Receiver<std::io::Result<()>>> {
        let (writer, lines) = self.with_held(&rec)?;
        let rx = writer.submit_all(lines);
        self.apply(rec);
        Ok(rx)
    }

    /// Applies a record now and writes it with the next record submitted or
    /// appended, before it and in the same commit: one disk commit where
    /// there would be two in a row. Only for a record nothing is acted on
    /// before the next record is durable (a step's End: what follows it on
    /// a host is a Begin, which waits for the disk). A crash in between
    /// loses the held record, never one written after it; the rollout then
    /// reads as it did before the record, and a resume asks the agent again
    /// (an operation's result is in the agent's own journal).
    pub fn hold(&mut self, rec: Record) -> std::io::Result<()> {
        self.writer()?;
        self.held.push(line_of(&rec)?);
        self.apply(rec);
        Ok(())
    }

    /// The writer, and the held lines followed by `rec`'s; the held ones
    /// are taken only when `rec` can be written (a record that cannot be
    /// encoded, or a journal opened to read, keeps them).
    fn with_held(&mut self, rec: &Record) -> std::io::Result<(&Writer, Vec<Vec<u8>>)> {
        let line = line_of(rec)?;
        let writer = self.writer.as_ref().ok_or_else(read_only)?;
        let mut lines = std::mem::take(&mut self.held);
        lines.push(line);
        Ok((writer, lines))
    }

    fn writer(&self) -> std::io::Result<&Writer> {
        self.writer.as_ref().ok_or_else(read_only)
    }

    /// The hosts quarantined so far, sorted.
    pub fn quarantined(&self) -> Vec<String> {
        self.quarantined.iter().cloned().collect()
    }

    /// Each host's last step begun, and how it stands: what a halt that
    /// lost its agents can still say about every host.
    pub fn last_steps(&self) -> BTreeMap<String, LastStep> {
        let mut out: BTreeMap<String, LastStep> = BTreeMap::new();
        for rec in &self.records {
            if let Record::Begin { op, host, step, .. } = rec {
                let status = match self.ends.get(op) {
                    None => "in flight: undecided".to_string(),
                    Some(Ok(_)) => "succeeded".to_string(),
                    Some(Err(f)) => format!("failed ({})", f.code),
                };
                out.insert(
                    host.clone(),
                    LastStep {
                        step: step.clone(),
                        op: op.clone(),
                        status,
                    },
                );
            }
        }
        out
    }

    pub fn begun(&self, op: &str) -> bool {
        self.begun.contains(op)
    }

    /// True when any step of `host` has begun in this rollout.
    pub fn host_begun(&self, host: &str) -> bool {
        self.begun_hosts.contains(host)
    }

    pub fn ended(&self, op: &str) -> Option<&StepResult> {
        self.ends.get(op)
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
        records.push(parse_record(line.trim_end(), || {
            format!("{}: record at byte {good}", path.display())
        })?);
        good += n as u64;
    }
}

/// One record; `at` names where it was, for the error.
pub fn parse_record(text: &str, at: impl FnOnce() -> String) -> Result<Record, String> {
    serde_json::from_str::<Record>(text).map_err(|e| {
        format!(
            "{} cannot be read ({e}); written by another rollgate version? The journal is left as it is",
            at()
        )
    })
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
            Some(Record::Created { spec, .. }) => spec.created_ms,
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rollout::state::{HostState, fold};
    use rollgate::outcome::{FailureCode, StepOutput};

    /// A journal of this format, committed: a later change to the records
    /// must still read it, or `resume` after an upgrade of rollgate would
    /// misread where the rollout stands.
    #[test]
    fn the_committed_format_1_fixture_replays() {
        let path = Path::new(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/fixtures/rollout-v1.jsonl"
        ));
        let log = RolloutLog::read(path).unwrap();
        assert_eq!(log.spec.id, "r-20261130T105553Z-1a2b");
        assert_eq!(log.spec.hops.len(), 2);
        assert!(log.spec.hosts[2].drained);
        assert_eq!(log.spec.hosts[1].group.as_deref(), Some("g1"));
        assert!(matches!(
            log.ended("r-20261130T105553Z-1a2b/cp-1/backup"),
            Some(Ok(StepOutput::Backup(b))) if b.fingerprint.tables["public.routes"] == 12
        ));
        assert!(matches!(
            log.ended("r-20261130T105553Z-1a2b/dp-1/install-3.4.1"),
            Some(Err(f)) if f.code == FailureCode::HealthGateFailed && f.reverted
        ));
        assert!(log.begun("r-20261130T105553Z-1a2b/dp-2/drain-3.4.1"));
        assert!(log.backup_copy.is_some());
        assert_eq!(log.baselines[&1].tables.len(), 3);
        assert!(log.outcome.is_none(), "cut off: resume continues it");
        let states = fold(&log.records);
        assert!(states["dp-1"].is_quarantined());
        assert!(matches!(states["dp-2"], HostState::InStep { .. }));
        assert!(matches!(states["cp-1"], HostState::Done { .. }));
    }

    /// A sink that keeps each commit's records apart, to see which records
    /// shared a commit.
    struct Commits(std::sync::Arc<std::sync::Mutex<Vec<Vec<String>>>>);

    impl Sink for Commits {
        fn write(&mut self, records: &[&[u8]]) -> std::io::Result<()> {
            let lines = records
                .iter()
                .map(|r| String::from_utf8_lossy(r).into_owned())
                .collect();
            self.0.lock().unwrap().push(lines);
            Ok(())
        }
    }

    fn end(op: &str) -> Record {
        Record::End {
            op: op.into(),
            host: "dp-1".into(),
            step: "drain".into(),
            result: Ok(StepOutput::Undrain),
            at_ms: 1,
        }
    }

    /// A held End is applied at once, is not on the disk by itself, and
    /// reaches it in the next record's commit, before that record: a step's
    /// boundary costs one commit, and no later record is ever durable
    /// without it.
    #[tokio::test]
    async fn a_held_record_goes_to_disk_first_in_the_next_commit() {
        let commits = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let writer = writer(Commits(commits.clone())).unwrap();
        let spec = crate::rollout::state::tests::spec();
        let mut log = RolloutLog::start(Origin::File("/j".into()), writer, spec).unwrap();
        assert_eq!(commits.lock().unwrap().len(), 1, "the spec, committed");

        log.hold(end("r/dp-1/drain")).unwrap();
        assert!(log.ended("r/dp-1/drain").is_some(), "applied at once");
        let begin = Record::Begin {
            op: "r/dp-1/install".into(),
            host: "dp-1".into(),
            step: "install".into(),
            at_ms: 2,
        };
        log.submit(begin).unwrap().await.unwrap().unwrap();
        let seen = commits.lock().unwrap().clone();
        assert_eq!(seen.len(), 2, "the End waited for the Begin: {seen:?}");
        assert_eq!(seen[1].len(), 2, "{seen:?}");
        assert!(seen[1][0].contains(r#""t":"end""#) && seen[1][0].contains("r/dp-1/drain"));
        assert!(seen[1][1].contains(r#""t":"begin""#) && seen[1][1].contains("r/dp-1/install"));

        // A blocking append carries held records too.
        log.hold(end("r/dp-1/install")).unwrap();
        log.append(Record::Ended {
            outcome: Outcome::Succeeded,
            reason: "done".into(),
            at_ms: 3,
        })
        .unwrap();
        let seen = commits.lock().unwrap().clone();
        assert_eq!(seen.len(), 3, "{seen:?}");
        assert!(seen[2][0].contains("r/dp-1/install") && seen[2][1].contains(r#""t":"ended""#));
    }

    /// A journal opened to read holds nothing: the refusal comes at once.
    #[test]
    fn a_read_only_journal_refuses_a_held_record() {
        let path = Path::new(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/fixtures/rollout-v1.jsonl"
        ));
        let mut log = RolloutLog::read(path).unwrap();
        let before = log.records.len();
        assert!(log.hold(end("r/dp-1/drain")).is_err());
        assert_eq!(log.records.len(), before, "nothing applied");
    }
}
