//! Host facts for Hello: memory, CPU and load (sysinfo), disk (statvfs).

use std::sync::Mutex;

use sysinfo::{CpuRefreshKind, MemoryRefreshKind, RefreshKind, System};

/// Memory, CPU and load of the host.
#[derive(Debug, Clone, Default)]
pub struct HostFacts {
    pub memory_total_bytes: u64,
    pub memory_available_bytes: u64,
    pub cpu_count: u32,
    pub cpu_brand: String,
    pub load_average_1m: f64,
}

/// Keeps one sysinfo handle; refreshing it is cheaper than building it.
#[derive(Debug)]
pub struct FactSource {
    sys: Mutex<Option<System>>,
}

impl FactSource {
    pub fn new() -> Self {
        FactSource {
            sys: Mutex::new(None),
        }
    }

    pub fn read(&self) -> HostFacts {
        let mut guard = self.sys.lock().unwrap_or_else(|e| e.into_inner());
        if guard.is_none() {
            let kind = RefreshKind::nothing()
                .with_memory(MemoryRefreshKind::nothing().with_ram())
                .with_cpu(CpuRefreshKind::nothing());
            match System::new_with_specifics(kind) {
                Ok(s) => *guard = Some(s),
                Err(e) => tracing::warn!(error = %e, "sysinfo is not available"),
            }
        }
        let mut facts = HostFacts {
            load_average_1m: System::load_average().map(|l| l.one).unwrap_or(0.0),
            ..HostFacts::default()
        };
        if let Some(sys) = guard.as_mut() {
            sys.refresh_memory_specifics(MemoryRefreshKind::nothing().with_ram());
            facts.memory_total_bytes = sys.total_memory();
            facts.memory_available_bytes = sys.available_memory();
            facts.cpu_count = sys.cpus().len() as u32;
            facts.cpu_brand = sys
                .cpus()
                .first()
                .map(|c| c.brand().to_string())
                .unwrap_or_default();
        }
        facts
    }
}
