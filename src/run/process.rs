//! The process's own resources, read from `/proc/self` at scrape time: resident memory, CPU
//! time, open file descriptors and their limit.

use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;

use crate::metrics::{FnCollector, Metrics};

/// Resident pages from `/proc/self/statm` (its second field).
pub(super) fn resident_pages(statm: &str) -> Option<u64> {
    statm.split_whitespace().nth(1)?.parse().ok()
}

/// User plus system CPU time in clock ticks from `/proc/self/stat` (fields 14 and 15, counted
/// after the command name, which may itself hold spaces and parentheses).
pub(super) fn cpu_ticks(stat: &str) -> Option<u64> {
    let rest = &stat[stat.rfind(')')? + 1..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // `rest` starts at field 3 (state): utime is field 14, stime field 15.
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    Some(utime + stime)
}

fn sysconf(name: nix::unistd::SysconfVar, default: u64) -> u64 {
    match nix::unistd::sysconf(name) {
        Ok(Some(v)) if v > 0 => v as u64,
        _ => default,
    }
}

pub(super) fn register(metrics: &Metrics) {
    let page = sysconf(nix::unistd::SysconfVar::PAGE_SIZE, 4096);
    let ticks = sysconf(nix::unistd::SysconfVar::CLK_TCK, 100) as f64;
    metrics.register_collector(Box::new(FnCollector(move |enc: &mut DescriptorEncoder| {
        if let Some(pages) = std::fs::read_to_string("/proc/self/statm")
            .ok()
            .as_deref()
            .and_then(resident_pages)
        {
            let g = ConstGauge::new((pages * page) as i64);
            g.encode(enc.encode_descriptor(
                "process_resident_memory_bytes",
                "Resident memory of this process",
                None,
                g.metric_type(),
            )?)?;
        }
        if let Some(t) = std::fs::read_to_string("/proc/self/stat")
            .ok()
            .as_deref()
            .and_then(cpu_ticks)
        {
            let c = ConstCounter::new(t as f64 / ticks);
            c.encode(enc.encode_descriptor(
                "process_cpu_seconds",
                "CPU time this process used (user and system), in seconds",
                None,
                c.metric_type(),
            )?)?;
        }
        if let Ok(dir) = std::fs::read_dir("/proc/self/fd") {
            let g = ConstGauge::new(dir.count() as i64);
            g.encode(enc.encode_descriptor(
                "process_open_fds",
                "File descriptors this process has open",
                None,
                g.metric_type(),
            )?)?;
        }
        if let Ok((soft, _)) =
            nix::sys::resource::getrlimit(nix::sys::resource::Resource::RLIMIT_NOFILE)
        {
            let g = ConstGauge::new(soft.min(i64::MAX as u64) as i64);
            g.encode(enc.encode_descriptor(
                "process_max_fds",
                "The limit of open file descriptors (soft RLIMIT_NOFILE)",
                None,
                g.metric_type(),
            )?)?;
        }
        Ok(())
    })));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn proc_files_are_read_as_the_kernel_writes_them() {
        assert_eq!(resident_pages("2460 512 300 10 0 700 0\n"), Some(512));
        // A command name with spaces and a parenthesis cannot shift the fields.
        let stat =
            "4242 (bender (x) y) S 1 4242 4242 0 -1 4194560 1000 0 0 0 150 25 0 0 20 0 8 0 100 0 0";
        assert_eq!(cpu_ticks(stat), Some(175));
        assert_eq!(cpu_ticks("garbage"), None);
        let own = std::fs::read_to_string("/proc/self/stat").unwrap();
        assert!(cpu_ticks(&own).is_some(), "{own}");
        let own = std::fs::read_to_string("/proc/self/statm").unwrap();
        assert!(resident_pages(&own).unwrap() > 0);
    }
}
