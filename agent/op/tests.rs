//! Phases journalled behind: on disk before the end, and a phase the disk
//! refused fails the step instead of being reported as done.

use std::sync::{Arc, Mutex};

use futures::StreamExt;
use rollgate::outcome::{Drained, Failure, FailureCode, StepOutput, StepResult};

use super::{OpEvent, Ops, Started};
use crate::journal::Journal;
use crate::kind::{Intent, Phase};

pub(crate) async fn result_of(started: Started) -> StepResult {
    let Started::Events(mut events) = started else {
        panic!("the operation was not started");
    };
    while let Some(e) = events.next().await {
        if let OpEvent::Done { result, .. } = e {
            return result;
        }
    }
    panic!("the operation's events ended without a result");
}

/// A drain whose two phases are journalled behind.
fn drain(ops: &Arc<Ops>, op: &str) -> Started {
    ops.start(op, Intent::Drain { timeout_ms: 0 }, |ctx| async move {
        let journalled = async {
            ctx.phase_behind(Phase::Marked, serde_json::Value::Null)
                .await?;
            ctx.phase_behind(Phase::Drained, serde_json::json!({ "remaining": 0 }))
                .await
        };
        journalled
            .await
            .map_err(|e| Failure::new(e.code, e.message))?;
        Ok(StepOutput::Drain(Drained {
            remaining_connections: 0,
            lb_acknowledged: false,
            waited_ms: 0,
        }))
    })
}

#[tokio::test]
async fn phases_journalled_behind_are_on_disk_before_the_end() {
    let dir = tempfile::tempdir().unwrap();
    let (journal, states) = Journal::open(dir.path()).unwrap();
    let ops = Ops::new(journal, states);
    let r = result_of(drain(&ops, "t/dp-1/drain")).await;
    assert!(r.is_ok(), "{r:?}");

    let text = std::fs::read_to_string(dir.path().join("journal")).unwrap();
    let line_of = |needle: &str| {
        text.lines()
            .position(|l| l.contains(needle))
            .unwrap_or_else(|| panic!("no {needle} in the journal:\n{text}"))
    };
    let (marked, drained, end) = (
        line_of("\"marked\""),
        line_of("\"drained\""),
        line_of("\"result\""),
    );
    assert!(marked < drained && drained < end, "{text}");
    // What a restarted agent reads back.
    let (_, states) = Journal::open(dir.path()).unwrap();
    let st = &states["t/dp-1/drain"];
    assert!(
        st.passed(Phase::Marked) && st.passed(Phase::Drained),
        "{st:?}"
    );
    assert!(st.result.as_ref().is_some_and(|r| r.is_ok()), "{st:?}");
}

/// A disk that refuses any batch holding a record with `refuse` in it.
pub(crate) struct Refusing {
    pub refuse: &'static str,
    pub kept: Arc<Mutex<Vec<String>>>,
}

impl rollgate::journal_writer::Sink for Refusing {
    fn write(&mut self, records: &[&[u8]]) -> std::io::Result<()> {
        let lines: Vec<String> = records
            .iter()
            .map(|r| String::from_utf8_lossy(r).into_owned())
            .collect();
        if lines.iter().any(|l| l.contains(self.refuse)) {
            return Err(std::io::Error::other("no space left on device"));
        }
        self.kept.lock().unwrap().extend(lines);
        Ok(())
    }
}

#[tokio::test]
async fn a_phase_the_disk_refused_fails_the_step() {
    let kept = Arc::new(Mutex::new(Vec::new()));
    let journal = Journal::with_sink(Refusing {
        refuse: "\"drained\"",
        kept: kept.clone(),
    })
    .unwrap();
    let ops = Ops::new(journal, Default::default());
    let r = result_of(drain(&ops, "t/dp-1/drain")).await;
    let f = r.expect_err("the step reported success with a phase missing from its journal");
    assert_eq!(f.code, FailureCode::Internal, "{f:?}");
    assert!(f.message.contains("no space left on device"), "{f:?}");
    // The end that follows records the failure, not a success.
    let kept = kept.lock().unwrap();
    let end = kept
        .iter()
        .find(|l| l.contains("\"result\""))
        .expect("the end is journalled");
    assert!(!end.contains("\"Ok\""), "{end}");
}
