//! The process families every Prometheus client library exports
//! (`process_cpu_seconds_total`, `process_resident_memory_bytes`,
//! `process_virtual_memory_bytes`, `process_open_fds`, `process_max_fds`,
//! `process_start_time_seconds`), read from `/proc/self` at scrape time, so
//! that the dashboards and alerts written for them (file descriptors near
//! the limit, memory growth) work on mcpflip as on Caddy or a Go exporter.
//! Linux only: elsewhere a scrape has none of them.
//!
//! Counting the open descriptors lists `/proc/self/fd` on kernels before 6.2
//! (Debian 12's 6.1): 17 ms for 20,000 descriptors, measured from Python on
//! the development VM, most of it the kernel making the entries. The admin
//! listener reads all this on tokio's blocking pool ([`read`] in
//! `spawn_blocking`), never on worker 0, whose connections would wait for it;
//! from 6.2 on the directory's size is the count, one `stat`.

use super::exposition::{Kind, Writer};

/// What one scrape reads of the process.
#[derive(Debug, Clone, PartialEq)]
pub struct Process {
    pub cpu_seconds: f64,
    pub resident_bytes: u64,
    pub virtual_bytes: u64,
    pub start_time_seconds: f64,
    pub open_fds: Option<u64>,
    pub max_fds: Option<u64>,
}

/// The fields of `/proc/self/stat` this needs, in clock ticks, bytes and
/// pages as the kernel writes them (proc(5)).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Stat {
    utime: u64,
    stime: u64,
    starttime: u64,
    vsize: u64,
    rss_pages: u64,
}

/// Parses `/proc/self/stat`. The command name (field 2) is in parentheses
/// and may hold spaces and parentheses itself: the fields are counted from
/// the last `)`.
fn parse_stat(text: &str) -> Option<Stat> {
    let rest = &text[text.rfind(')')? + 1..];
    // Field 3 (state) is the first after the name.
    let f: Vec<&str> = rest.split_ascii_whitespace().collect();
    let n = |field: usize| f.get(field - 3)?.parse::<u64>().ok();
    Some(Stat {
        utime: n(14)?,
        stime: n(15)?,
        starttime: n(22)?,
        vsize: n(23)?,
        rss_pages: n(24)?,
    })
}

/// The boot time, Unix seconds (`btime` of `/proc/stat`).
fn parse_btime(text: &str) -> Option<u64> {
    text.lines()
        .find_map(|l| l.strip_prefix("btime "))
        .and_then(|v| v.trim().parse().ok())
}

/// The process as `/proc` shows it now; `None` off Linux (or without
/// `/proc`).
pub fn read() -> Option<Process> {
    let stat = parse_stat(&std::fs::read_to_string("/proc/self/stat").ok()?)?;
    let btime = parse_btime(&std::fs::read_to_string("/proc/stat").ok()?)?;
    // SAFETY: sysconf reads a constant of the system and has no other effect.
    let (ticks, page) = unsafe {
        (
            libc::sysconf(libc::_SC_CLK_TCK),
            libc::sysconf(libc::_SC_PAGESIZE),
        )
    };
    if ticks <= 0 || page <= 0 {
        return None;
    }
    let ticks = ticks as f64;
    let open_fds = open_fds();
    let max_fds = crate::config::open_file_limit();
    Some(Process {
        cpu_seconds: (stat.utime + stat.stime) as f64 / ticks,
        resident_bytes: stat.rss_pages * page as u64,
        virtual_bytes: stat.vsize,
        start_time_seconds: btime as f64 + stat.starttime as f64 / ticks,
        open_fds,
        max_fds,
    })
}

/// The open descriptors: the size of `/proc/self/fd` (Linux 6.2 and later),
/// else its entries counted.
fn open_fds() -> Option<u64> {
    match std::fs::metadata("/proc/self/fd") {
        Ok(m) if m.len() > 0 => Some(m.len()),
        _ => std::fs::read_dir("/proc/self/fd")
            .ok()
            .map(|d| d.count() as u64),
    }
}

/// Writes the process families of `p` (none when `/proc` could not be read).
pub fn write(w: &mut Writer, p: Option<&Process>) {
    let Some(p) = p else { return };
    w.family(
        "process_cpu_seconds",
        Kind::Counter,
        "Total user and system CPU time spent in seconds",
    )
    .counter_f64(&[], p.cpu_seconds);
    w.family(
        "process_resident_memory_bytes",
        Kind::Gauge,
        "Resident memory size in bytes",
    )
    .gauge(&[], p.resident_bytes as f64);
    w.family(
        "process_virtual_memory_bytes",
        Kind::Gauge,
        "Virtual memory size in bytes",
    )
    .gauge(&[], p.virtual_bytes as f64);
    w.family(
        "process_start_time_seconds",
        Kind::Gauge,
        "Start time of the process since unix epoch in seconds",
    )
    .gauge(&[], p.start_time_seconds);
    if let Some(n) = p.open_fds {
        w.family(
            "process_open_fds",
            Kind::Gauge,
            "Number of open file descriptors",
        )
        .gauge(&[], n as f64);
    }
    if let Some(n) = p.max_fds {
        w.family(
            "process_max_fds",
            Kind::Gauge,
            "Maximum number of open file descriptors",
        )
        .gauge(&[], n as f64);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_fields_are_counted_from_the_last_parenthesis() {
        // A command name with a space and a parenthesis in it.
        let line = "4242 (mcp flip) (x)) S 1 4242 4242 0 -1 4194560 1200 0 3 0 \
                    250 130 0 0 20 0 9 0 123456 812646400 3141 18446744073709551615 \
                    1 1 0 0 0 0 0 4096 17642 0 0 0 17 1 0 0 0 0 0\n";
        assert_eq!(
            parse_stat(line),
            Some(Stat {
                utime: 250,
                stime: 130,
                starttime: 123456,
                vsize: 812_646_400,
                rss_pages: 3141,
            })
        );
        assert_eq!(parse_stat("4242 (cut short) S 1 2"), None);
        assert_eq!(parse_stat("no name at all"), None);
    }

    #[test]
    fn boot_time_comes_from_btime() {
        let text = "cpu  1 2 3 4\nintr 5\nctxt 6\nbtime 1764460000\nprocesses 7\n";
        assert_eq!(parse_btime(text), Some(1_764_460_000));
        assert_eq!(parse_btime("cpu 1\n"), None);
    }

    #[test]
    fn this_process_reads_as_itself() {
        let p = read().expect("/proc is there on Linux");
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .expect("clock")
            .as_secs_f64();
        // Started within the last day, not in the future (the tick rounds).
        assert!(
            p.start_time_seconds <= now + 1.0 && p.start_time_seconds > now - 86_400.0,
            "{p:?}"
        );
        assert!(p.resident_bytes > 1 << 20, "{p:?}");
        assert!(p.virtual_bytes >= p.resident_bytes, "{p:?}");
        // At least stdin, stdout and stderr (other tests open and close
        // theirs meanwhile: tests/observability.rs counts a proxy's).
        let open = p.open_fds.expect("fds");
        assert!(open >= 3, "{p:?}");
        assert!(p.max_fds.is_none_or(|m| m >= open), "{p:?}");
    }
}
