//! What the harness measures about its own process and the store directory (Linux `/proc`).

use std::fs;
use std::io;
use std::path::Path;
use std::time::{Duration, Instant};

/// Resident set size now and its peak (`VmRSS`, `VmHWM` of `/proc/self/status`), in bytes.
pub(crate) fn rss() -> (u64, u64) {
    let status = fs::read_to_string("/proc/self/status").expect("/proc/self/status is readable");
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|rest| {
                rest.trim()
                    .trim_end_matches("kB")
                    .trim()
                    .parse::<u64>()
                    .ok()
            })
            .map_or(0, |kb| kb * 1024)
    };
    (field("VmRSS:"), field("VmHWM:"))
}

/// Resets the process's peak RSS (`VmHWM`) to the current RSS (`/proc/self/clear_refs` = 5).
pub(crate) fn reset_peak_rss() {
    if let Err(e) = fs::write("/proc/self/clear_refs", "5") {
        eprintln!("warning: could not reset VmHWM: {e}");
    }
}

/// Bytes this process caused to be written to storage: `write_bytes - cancelled_write_bytes` of
/// `/proc/self/io` (all threads, so engines' background threads count), plus `read_bytes`.
///
/// `write_bytes` is charged when a page cache page becomes dirty (or at submission for direct
/// I/O): a page rewritten before writeback counts once, a page rewritten after an fsync counts
/// again, which is what the device sees. The file system's own journal is not included.
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct Io {
    pub(crate) written: u64,
    pub(crate) read: u64,
}

pub(crate) fn io() -> Io {
    let text = fs::read_to_string("/proc/self/io").expect("/proc/self/io is readable");
    let field = |name: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|rest| rest.trim().parse::<u64>().ok())
            .unwrap_or(0)
    };
    Io {
        written: field("write_bytes:").saturating_sub(field("cancelled_write_bytes:")),
        read: field("read_bytes:"),
    }
}

/// Size of everything under `dir`: (sum of file lengths, allocated bytes as `du` counts them).
pub(crate) fn dir_size(dir: &Path) -> io::Result<(u64, u64)> {
    use std::os::unix::fs::MetadataExt;
    let mut apparent = 0;
    let mut allocated = 0;
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for entry in fs::read_dir(&d)? {
            let entry = entry?;
            let meta = match entry.metadata() {
                Ok(m) => m,
                // An engine's background thread deleted it meanwhile.
                Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                Err(e) => return Err(e),
            };
            if meta.is_dir() {
                stack.push(entry.path());
            } else {
                apparent += meta.len();
                allocated += meta.blocks() * 512;
            }
        }
    }
    Ok((apparent, allocated))
}

/// Makes the next open of the store cold: fsyncs every file under `dir` and drops its pages
/// from the page cache (`posix_fadvise(DONTNEED)`), touching no other file's cache.
pub(crate) fn evict_from_page_cache(dir: &Path) -> io::Result<()> {
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for entry in fs::read_dir(&d)? {
            let entry = entry?;
            let meta = entry.metadata()?;
            if meta.is_dir() {
                stack.push(entry.path());
            } else if meta.is_file() {
                let file = fs::File::open(entry.path())?;
                file.sync_all()?;
                rustix::fs::fadvise(&file, 0, None, rustix::fs::Advice::DontNeed)?;
            }
        }
    }
    Ok(())
}

/// Waits until the process has written nothing for one second (background flushes and
/// compactions done), at most `max`. Returns how long it waited.
pub(crate) fn settle(max: Duration) -> Duration {
    let start = Instant::now();
    let mut last = io().written;
    let mut quiet_since = Instant::now();
    while start.elapsed() < max {
        std::thread::sleep(Duration::from_millis(250));
        let now = io().written;
        if now != last {
            last = now;
            quiet_since = Instant::now();
        } else if quiet_since.elapsed() >= Duration::from_secs(1) {
            break;
        }
    }
    start.elapsed()
}

/// The 1-minute load average (`/proc/loadavg`).
pub(crate) fn loadavg() -> String {
    fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|s| s.split_whitespace().next().map(str::to_owned))
        .unwrap_or_else(|| "?".to_owned())
}
