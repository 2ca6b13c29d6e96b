//! What the backlog bench reads of the agent's process from outside: resident memory, bytes
//! written (per process and per thread) and the store's size on disk, sampled while it runs.

use std::collections::HashMap;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// RSS sampling period.
const SAMPLE_EVERY: Duration = Duration::from_millis(100);

/// Memory figures of one process, KiB (from `/proc/<pid>/status`).
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct Mem {
    pub(crate) rss: u64,
    pub(crate) hwm: u64,
    pub(crate) anon: u64,
    pub(crate) file: u64,
}

pub(crate) fn mem_of(pid: u32) -> Option<Mem> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let mut m = Mem::default();
    for line in s.lines() {
        let mut it = line.split_whitespace();
        let (Some(k), Some(v)) = (it.next(), it.next()) else {
            continue;
        };
        let v: u64 = v.parse().unwrap_or(0);
        match k {
            "VmRSS:" => m.rss = v,
            "VmHWM:" => m.hwm = v,
            "RssAnon:" => m.anon = v,
            "RssFile:" => m.file = v,
            _ => {}
        }
    }
    (m.rss > 0).then_some(m)
}

/// `/proc/<pid>/io` fields (`wchar`, `write_bytes`, `syscw`, ...).
pub(crate) fn io_of(pid: u32) -> HashMap<String, u64> {
    std::fs::read_to_string(format!("/proc/{pid}/io"))
        .unwrap_or_default()
        .lines()
        .filter_map(|l| {
            let (k, v) = l.split_once(':')?;
            Some((k.trim().to_string(), v.trim().parse().ok()?))
        })
        .collect()
}

/// `write_bytes` of each live thread of `pid`, summed by thread name (threads that already
/// exited are only in the process total).
pub(crate) fn write_bytes_by_thread(pid: u32) -> Vec<(String, u64)> {
    let mut by: HashMap<String, u64> = HashMap::new();
    for e in std::fs::read_dir(format!("/proc/{pid}/task"))
        .into_iter()
        .flatten()
        .flatten()
    {
        let name = std::fs::read_to_string(e.path().join("comm"))
            .unwrap_or_default()
            .trim()
            .to_string();
        let io = std::fs::read_to_string(e.path().join("io")).unwrap_or_default();
        let wb = io
            .lines()
            .find_map(|l| l.strip_prefix("write_bytes:"))
            .and_then(|v| v.trim().parse::<u64>().ok())
            .unwrap_or(0);
        *by.entry(name).or_default() += wb;
    }
    let mut v: Vec<_> = by.into_iter().filter(|(_, b)| *b > 0).collect();
    v.sort_by_key(|e| std::cmp::Reverse(e.1));
    v
}

/// (sum of file lengths, allocated bytes) under `dir`.
pub(crate) fn dir_bytes(dir: &Path) -> (u64, u64) {
    use std::os::unix::fs::MetadataExt;
    let mut sum = (0, 0);
    let Ok(rd) = std::fs::read_dir(dir) else {
        return sum;
    };
    for e in rd.flatten() {
        let Ok(md) = e.metadata() else { continue };
        if md.is_dir() {
            let (a, b) = dir_bytes(&e.path());
            sum.0 += a;
            sum.1 += b;
        } else {
            sum.0 += md.len();
            sum.1 += md.blocks() * 512;
        }
    }
    sum
}

/// Samples `VmRSS` of a pid every [`SAMPLE_EVERY`] on a thread of its own.
pub(crate) struct Sampler {
    pub(crate) max_kb: Arc<AtomicU64>,
    pub(crate) last_kb: Arc<AtomicU64>,
    pub(crate) stop: Arc<AtomicBool>,
    pub(crate) thread: Option<std::thread::JoinHandle<()>>,
}

impl Sampler {
    pub(crate) fn start(pid: u32) -> Sampler {
        let max_kb = Arc::new(AtomicU64::new(0));
        let last_kb = Arc::new(AtomicU64::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let thread = std::thread::spawn({
            let (max_kb, last_kb, stop) = (max_kb.clone(), last_kb.clone(), stop.clone());
            move || {
                while !stop.load(Ordering::Relaxed) {
                    if let Some(m) = mem_of(pid) {
                        max_kb.fetch_max(m.rss, Ordering::Relaxed);
                        last_kb.store(m.rss, Ordering::Relaxed);
                    }
                    std::thread::sleep(SAMPLE_EVERY);
                }
            }
        });
        Sampler {
            max_kb,
            last_kb,
            stop,
            thread: Some(thread),
        }
    }

    pub(crate) fn max_kb(&self) -> u64 {
        self.max_kb.load(Ordering::Relaxed)
    }

    pub(crate) fn last_kb(&self) -> u64 {
        self.last_kb.load(Ordering::Relaxed)
    }
}

impl Drop for Sampler {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}
