//! How busy the device's own user keeps it: the share of the CPU that processes other than
//! this agent use, from `/proc/stat` and `/proc/self/stat` (Linux), for terms that say
//! "only while the device is otherwise idle".

use std::time::Duration;

/// CPU time so far, in clock ticks: all of the machine's busy time, and this process's.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CpuSample {
    /// Busy ticks of every CPU together (everything but idle and iowait).
    pub busy: u64,
    /// Ticks of every CPU together.
    pub total: u64,
    /// Ticks this process used (user and system).
    pub own: u64,
}

/// Parse the first (`cpu`) line of `/proc/stat`: `(busy, total)`.
pub fn parse_proc_stat(text: &str) -> Option<(u64, u64)> {
    let line = text.lines().find(|l| l.starts_with("cpu "))?;
    let numbers: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .map(|n| n.parse().ok())
        .collect::<Option<_>>()?;
    // user nice system idle iowait irq softirq steal (guest is counted in user already).
    let total: u64 = numbers.iter().take(8).sum();
    let idle = numbers.get(3).copied().unwrap_or(0) + numbers.get(4).copied().unwrap_or(0);
    Some((total.saturating_sub(idle), total))
}

/// Parse `/proc/self/stat`: this process's user plus system ticks (fields 14 and 15, counted
/// after the parenthesised command name, which may hold spaces).
pub fn parse_self_stat(text: &str) -> Option<u64> {
    let after_name = &text[text.rfind(')')? + 1..];
    let fields: Vec<&str> = after_name.split_whitespace().collect();
    // After the name, field 3 (state) is index 0, so utime (14) is index 11, stime index 12.
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    Some(utime + stime)
}

/// Read a sample now (`None` where `/proc` is not there).
pub fn sample() -> Option<CpuSample> {
    let (busy, total) = parse_proc_stat(&std::fs::read_to_string("/proc/stat").ok()?)?;
    let own = parse_self_stat(&std::fs::read_to_string("/proc/self/stat").ok()?)?;
    Some(CpuSample { busy, total, own })
}

/// Percent of the CPU that other processes used between two samples.
pub fn others_busy_percent(before: &CpuSample, after: &CpuSample) -> Option<f64> {
    let total = after.total.checked_sub(before.total)?;
    if total == 0 {
        return None;
    }
    let busy = after.busy.saturating_sub(before.busy);
    let own = after.own.saturating_sub(before.own);
    Some(busy.saturating_sub(own) as f64 * 100.0 / total as f64)
}

/// How often the agent samples the CPU.
pub const SAMPLE_EVERY: Duration = Duration::from_secs(1);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn proc_files_parse() {
        let stat = "cpu  100 5 50 800 45 0 0 0 0 0\ncpu0 50 2 25 400 20 0 0 0 0 0\n";
        assert_eq!(parse_proc_stat(stat), Some((155, 1000)));
        let own = "4242 (mesh host (x)) S 1 4242 4242 0 -1 4194304 100 0 0 0 30 12 0 0 20 0 9";
        assert_eq!(parse_self_stat(own), Some(42));
        assert_eq!(parse_proc_stat("garbage"), None);
        assert_eq!(parse_self_stat("no parenthesis"), None);
    }

    #[test]
    fn others_are_the_busy_time_that_is_not_ours() {
        let before = CpuSample {
            busy: 1000,
            total: 10_000,
            own: 200,
        };
        let after = CpuSample {
            busy: 1900,
            total: 11_000,
            own: 500,
        };
        // 900 busy ticks of 1000, 300 of them ours: others 60%.
        assert_eq!(others_busy_percent(&before, &after), Some(60.0));
        assert_eq!(others_busy_percent(&after, &after), None);
        // A real sample reads where /proc exists.
        if std::path::Path::new("/proc/stat").exists() {
            assert!(sample().is_some());
        }
    }
}
