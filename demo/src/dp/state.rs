//! What the DP's tasks share: the routing table in force, readiness and the count
//! of proxied requests in flight.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, RwLock};

use serde_json::json;

use super::routes::RouteTable;
use crate::manifest::Faults;

pub struct DpState {
    pub version: String,
    pub instance_id: String,
    pub faults: Faults,
    table: RwLock<Option<Arc<RouteTable>>>,
    ready: AtomicBool,
    in_flight: AtomicUsize,
}

/// Lifecycle of the DP as `/status/ready` reports it:
/// starting (no config yet, 503) → ready (config loaded, 200; stays so while the CP
/// is unreachable, like APISIX, which keeps serving its last config).
/// A release with `dp_never_ready` stays in starting.
impl DpState {
    pub fn new(version: String, instance_id: String, faults: Faults) -> DpState {
        DpState {
            version,
            instance_id,
            faults,
            table: RwLock::new(None),
            ready: AtomicBool::new(false),
            in_flight: AtomicUsize::new(0),
        }
    }

    pub fn table(&self) -> Option<Arc<RouteTable>> {
        self.table.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    pub fn revision(&self) -> Option<i64> {
        self.table().map(|table| table.revision)
    }

    /// Puts a new table in force; returns true the first time the DP becomes
    /// ready.
    pub fn install(&self, table: RouteTable) -> bool {
        *self.table.write().unwrap_or_else(|e| e.into_inner()) = Some(Arc::new(table));
        if self.faults.dp_never_ready {
            return false;
        }
        !self.ready.swap(true, Ordering::SeqCst)
    }

    pub fn ready(&self) -> bool {
        self.ready.load(Ordering::SeqCst)
    }

    pub fn in_flight(&self) -> usize {
        self.in_flight.load(Ordering::SeqCst)
    }

    /// Counts a proxied request until the guard drops.
    pub fn begin_request(self: &Arc<Self>) -> InFlight {
        self.in_flight.fetch_add(1, Ordering::SeqCst);
        InFlight(self.clone())
    }

    pub fn status_json(&self) -> serde_json::Value {
        json!({
            "status": "ok",
            "version": self.version,
            "config_revision": self.revision(),
            "ready": self.ready(),
            "role": "dp",
            "instance_id": self.instance_id,
            "in_flight": self.in_flight(),
        })
    }
}

pub struct InFlight(Arc<DpState>);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::SeqCst);
    }
}
