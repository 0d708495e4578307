//! Prometheus metrics: request counters kept in memory, domain gauges read from the database
//! at scrape time (so every control-plane process reports the shared truth).

use crate::store::{Db, now_ms};
use std::collections::BTreeMap;
use std::fmt::Write;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

/// Counters of this process.
#[derive(Debug, Default)]
pub struct Metrics {
    requests: Mutex<BTreeMap<(String, String, u16), u64>>,
    /// Heartbeats accepted.
    pub heartbeats: AtomicU64,
    /// Jobs assigned to a device.
    pub assignments: AtomicU64,
    /// Leases that expired and were reassigned or failed.
    pub expired_leases: AtomicU64,
}

impl Metrics {
    /// Count one HTTP request.
    pub fn record_request(&self, method: &str, route: &str, status: u16) {
        *self
            .requests
            .lock()
            .expect("metrics lock")
            .entry((method.to_string(), route.to_string(), status))
            .or_default() += 1;
    }

    /// Render the Prometheus text exposition format.
    pub async fn render(&self, db: &Db) -> Result<String, crate::store::StoreError> {
        let mut out = String::new();
        out.push_str(
            "# HELP mesh_http_requests_total HTTP requests by method, route and status.\n",
        );
        out.push_str("# TYPE mesh_http_requests_total counter\n");
        for ((method, route, status), count) in self.requests.lock().expect("metrics lock").iter() {
            let _ = writeln!(
                out,
                "mesh_http_requests_total{{method=\"{method}\",route=\"{route}\",status=\"{status}\"}} {count}"
            );
        }
        for (name, help, value) in [
            (
                "mesh_heartbeats_total",
                "Heartbeats accepted by this process.",
                &self.heartbeats,
            ),
            (
                "mesh_job_assignments_total",
                "Jobs assigned by this process.",
                &self.assignments,
            ),
            (
                "mesh_expired_leases_total",
                "Job leases that expired, seen by this process.",
                &self.expired_leases,
            ),
        ] {
            let _ = writeln!(
                out,
                "# HELP {name} {help}\n# TYPE {name} counter\n{name} {}",
                value.load(Ordering::Relaxed)
            );
        }
        let online = crate::store::devices::count_online(&db.pool).await?;
        let _ = writeln!(
            out,
            "# HELP mesh_devices_online Approved devices currently online.\n# TYPE mesh_devices_online gauge\nmesh_devices_online {online}"
        );
        out.push_str("# HELP mesh_jobs Jobs by state.\n# TYPE mesh_jobs gauge\n");
        for (job_state, count) in crate::store::jobs::count_by_state(&db.pool).await? {
            let job_state = job_state.as_str();
            let _ = writeln!(out, "mesh_jobs{{state=\"{job_state}\"}} {count}");
        }
        let _ = writeln!(
            out,
            "# HELP mesh_scrape_timestamp_ms Time of this scrape.\n# TYPE mesh_scrape_timestamp_ms gauge\nmesh_scrape_timestamp_ms {}",
            now_ms()
        );
        Ok(out)
    }
}
