//! What a running rollout tells its operator: one JSON event per line
//! (`--output json`), plain lines when stdout is not a terminal, and
//! progress bars (indicatif) when it is.

use std::io::IsTerminal;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use indicatif::{MultiProgress, ProgressBar, ProgressStyle};
use serde::Serialize;

use crate::output::Output;

/// One event. Fields that do not apply are left out of the JSON.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Event {
    /// rollout | hop | batch | host | step | status | plan
    pub event: &'static str,
    pub rollout: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub hop: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub batch: Option<usize>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub host: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub step: Option<String>,
    /// started | succeeded | failed | skipped | halted | quarantined | ...
    pub status: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub elapsed_ms: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub detail: Option<serde_json::Value>,
    pub at_ms: i64,
}

impl Event {
    pub fn new(event: &'static str, rollout: &str, status: impl Into<String>) -> Self {
        Event {
            event,
            rollout: rollout.into(),
            status: status.into(),
            at_ms: crate::rollout::log::now_ms(),
            ..Event::default()
        }
    }
    pub fn hop(mut self, v: impl ToString) -> Self {
        self.hop = Some(v.to_string());
        self
    }
    pub fn batch(mut self, b: usize) -> Self {
        self.batch = Some(b);
        self
    }
    pub fn host(mut self, h: &str) -> Self {
        self.host = Some(h.into());
        self
    }
    pub fn step(mut self, s: &str) -> Self {
        self.step = Some(s.into());
        self
    }
    pub fn elapsed(mut self, d: Duration) -> Self {
        self.elapsed_ms = Some(d.as_millis() as u64);
        self
    }
    pub fn error(mut self, e: impl Into<String>) -> Self {
        self.error = Some(e.into());
        self
    }
    pub fn detail(mut self, d: serde_json::Value) -> Self {
        self.detail = Some(d);
        self
    }

    /// One line for people.
    pub fn line(&self) -> String {
        let mut s = String::new();
        if let Some(h) = &self.host {
            s.push_str(h);
            s.push(' ');
        }
        match (self.event, &self.step) {
            (_, Some(step)) => s.push_str(step),
            ("batch", _) => s.push_str(&format!("batch {}", self.batch.unwrap_or(0))),
            (e, _) => s.push_str(e),
        }
        if let Some(h) = &self.hop {
            s.push_str(&format!(" {h}"));
        }
        s.push_str(&format!(": {}", self.status));
        if let Some(ms) = self.elapsed_ms {
            s.push_str(&format!(" ({:.1}s)", ms as f64 / 1000.0));
        }
        if let Some(e) = &self.error {
            s.push_str(&format!(" — {e}"));
        } else if let Some(m) = self.detail.as_ref().and_then(|d| d["message"].as_str()) {
            s.push_str(&format!(" — {m}"));
        }
        // A failure's detail (last probe, the gateway's last log lines).
        if let Some(d) = self
            .detail
            .as_ref()
            .and_then(|d| d["detail"].as_str())
            .filter(|d| !d.is_empty())
        {
            for l in d.lines().take(14) {
                s.push_str(&format!("\n      {l}"));
            }
        }
        s
    }
}

enum Sink {
    /// Events go to the log only (a command printing one document at the end).
    Quiet,
    Json,
    Plain {
        start: Instant,
    },
    Bars {
        mp: MultiProgress,
        overall: ProgressBar,
        start: Instant,
    },
}

/// Where events go. Cheap to share: the driver and its host tasks report
/// through one `Reporter`.
pub struct Reporter {
    sink: Mutex<Sink>,
}

impl Reporter {
    pub fn new(output: Output) -> Self {
        let sink = match output {
            Output::Json => Sink::Json,
            Output::Text if std::io::stdout().is_terminal() => {
                let mp = MultiProgress::new();
                let overall = mp.add(ProgressBar::new(0));
                overall.set_style(
                    ProgressStyle::with_template(
                        "{spinner} [{elapsed_precise}] {bar:30} {pos}/{len} steps  {msg}",
                    )
                    .unwrap_or_else(|_| ProgressStyle::default_bar()),
                );
                overall.enable_steady_tick(Duration::from_millis(200));
                Sink::Bars {
                    mp,
                    overall,
                    start: Instant::now(),
                }
            }
            Output::Text => Sink::Plain {
                start: Instant::now(),
            },
        };
        Reporter {
            sink: Mutex::new(sink),
        }
    }

    /// A reporter that prints nothing (events are still logged).
    pub fn quiet() -> Self {
        Reporter {
            sink: Mutex::new(Sink::Quiet),
        }
    }

    /// The total number of steps, for the overall bar.
    pub fn set_total(&self, n: u64) {
        if let Sink::Bars { overall, .. } = &*self.lock() {
            overall.set_length(n);
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Sink> {
        self.sink.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn emit(&self, ev: Event) {
        tracing::info!(event = ev.event, host = ?ev.host, step = ?ev.step, status = %ev.status, error = ?ev.error, "rollout event");
        match &*self.lock() {
            Sink::Quiet => {}
            Sink::Json => {
                if let Ok(s) = serde_json::to_string(&ev) {
                    println!("{s}");
                }
            }
            Sink::Plain { start } => {
                println!("[{:>7.1}s] {}", start.elapsed().as_secs_f64(), ev.line())
            }
            Sink::Bars { mp, overall, start } => {
                if ev.event == "step" && ev.status != "started" {
                    overall.inc(1);
                    // The total is an estimate (guards, re-stages): never
                    // show more done than there is.
                    if overall.position() > overall.length().unwrap_or(0) {
                        overall.set_length(overall.position());
                    }
                }
                overall.set_message(ev.line());
                if ev.event != "step" || ev.status != "started" {
                    let _ = mp.println(format!(
                        "[{:>7.1}s] {}",
                        start.elapsed().as_secs_f64(),
                        ev.line()
                    ));
                }
            }
        }
    }

    pub fn finish(&self) {
        if let Sink::Bars { overall, .. } = &*self.lock() {
            overall.finish_and_clear();
        }
    }
}
