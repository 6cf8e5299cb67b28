//! Steady HTTP load through the load balancer, counting every failure: the
//! measure of "zero downtime".

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use tokio::sync::Mutex;

/// What the load saw.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct LoadReport {
    pub sent: u64,
    pub ok: u64,
    pub failed: u64,
    /// The first failures: (milliseconds after the start, what happened).
    pub failures: Vec<(u64, String)>,
    pub seconds: f64,
}

/// A load running in the background until `stop`.
pub struct Load {
    stop: Arc<AtomicBool>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
    sent: Arc<AtomicU64>,
    ok: Arc<AtomicU64>,
    failures: Arc<Mutex<Vec<(u64, String)>>>,
    failed: Arc<AtomicU64>,
    start: Instant,
}

const KEPT_FAILURES: usize = 50;

impl Load {
    /// `rate` requests a second spread over `workers` keep-alive clients,
    /// each a GET of `url` that must answer 200.
    pub fn start(url: String, rate: u32, workers: u32) -> Load {
        crate::install_crypto_provider();
        let stop = Arc::new(AtomicBool::new(false));
        let (sent, ok, failed) = (
            Arc::new(AtomicU64::new(0)),
            Arc::new(AtomicU64::new(0)),
            Arc::new(AtomicU64::new(0)),
        );
        let failures = Arc::new(Mutex::new(Vec::new()));
        let start = Instant::now();
        let every = Duration::from_secs_f64(f64::from(workers.max(1)) / f64::from(rate.max(1)));
        let mut tasks = Vec::new();
        for _ in 0..workers.max(1) {
            let (stop, sent, ok, failed, failures, url) = (
                stop.clone(),
                sent.clone(),
                ok.clone(),
                failed.clone(),
                failures.clone(),
                url.clone(),
            );
            tasks.push(tokio::spawn(async move {
                let client = reqwest::Client::builder()
                    .no_proxy()
                    .timeout(Duration::from_secs(10))
                    .build()
                    .expect("http client");
                let mut tick = tokio::time::interval(every);
                tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                while !stop.load(Ordering::Relaxed) {
                    tick.tick().await;
                    sent.fetch_add(1, Ordering::Relaxed);
                    let why = match client.get(&url).send().await {
                        Ok(r) if r.status() == 200 => match r.bytes().await {
                            Ok(_) => None,
                            Err(e) => Some(format!("body: {e}")),
                        },
                        Ok(r) => Some(format!("HTTP {}", r.status())),
                        Err(e) => Some(format!("{e}")),
                    };
                    match why {
                        None => {
                            ok.fetch_add(1, Ordering::Relaxed);
                        }
                        Some(w) => {
                            failed.fetch_add(1, Ordering::Relaxed);
                            let mut f = failures.lock().await;
                            if f.len() < KEPT_FAILURES {
                                f.push((start.elapsed().as_millis() as u64, w));
                            }
                        }
                    }
                }
            }));
        }
        Load {
            stop,
            tasks,
            sent,
            ok,
            failures,
            failed,
            start,
        }
    }

    /// Requests that got an answer so far (for progress lines).
    pub fn so_far(&self) -> (u64, u64) {
        (
            self.sent.load(Ordering::Relaxed),
            self.failed.load(Ordering::Relaxed),
        )
    }

    /// Stops the workers (each finishes its request in flight) and reports.
    pub async fn stop(self) -> LoadReport {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.tasks {
            let _ = t.await;
        }
        LoadReport {
            sent: self.sent.load(Ordering::Relaxed),
            ok: self.ok.load(Ordering::Relaxed),
            failed: self.failed.load(Ordering::Relaxed),
            failures: self.failures.lock().await.clone(),
            seconds: self.start.elapsed().as_secs_f64(),
        }
    }
}
