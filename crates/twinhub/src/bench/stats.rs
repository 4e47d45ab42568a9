//! Counting what the bench did: round-trip latencies (every sample kept, in microseconds) and a progress
//! line on stderr while it runs.

use serde::Serialize;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

#[derive(Default)]
pub struct Latencies {
    micros: Vec<u32>,
}

impl Latencies {
    pub fn record(&mut self, elapsed: Duration) {
        self.micros.push(u32::try_from(elapsed.as_micros()).unwrap_or(u32::MAX));
    }

    pub fn merge(&mut self, other: Latencies) {
        self.micros.extend(other.micros);
    }

    pub fn len(&self) -> usize {
        self.micros.len()
    }

    pub fn summary(mut self) -> LatencySummary {
        self.micros.sort_unstable();
        let at = |fraction: f64| -> f64 {
            if self.micros.is_empty() {
                return 0.0;
            }
            let index = ((self.micros.len() as f64) * fraction) as usize;
            f64::from(self.micros[index.min(self.micros.len() - 1)]) / 1000.0
        };
        LatencySummary {
            samples: self.micros.len(),
            p50_ms: at(0.50),
            p99_ms: at(0.99),
            p999_ms: at(0.999),
            max_ms: at(1.0),
        }
    }
}

#[derive(Clone, Copy, Debug, Default, Serialize)]
pub struct LatencySummary {
    pub samples: usize,
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub p999_ms: f64,
    pub max_ms: f64,
}

/// Operations done so far, shown once a second as `label: 12.0 s, 48,213/s (total)`.
#[derive(Clone)]
pub struct Progress {
    done: Arc<AtomicU64>,
}

impl Progress {
    pub fn start(label: String) -> (Progress, tokio::task::JoinHandle<()>) {
        let done = Arc::new(AtomicU64::new(0));
        let counter = Arc::clone(&done);
        let printer = tokio::spawn(async move {
            let started = Instant::now();
            let mut last = 0;
            let mut ticker = tokio::time::interval(Duration::from_secs(1));
            ticker.tick().await;
            loop {
                ticker.tick().await;
                let now = counter.load(Ordering::Relaxed);
                eprint!(
                    "\r{label}: {:>5.1} s, {:>9}/s, {:>10} in all   ",
                    started.elapsed().as_secs_f64(),
                    thousands(now - last),
                    thousands(now)
                );
                last = now;
            }
        });
        (Progress { done }, printer)
    }

    /// Counts `n` done in all (a figure read from elsewhere, not counted here).
    pub fn set(&self, n: u64) {
        self.done.store(n, Ordering::Relaxed);
    }

    pub fn add(&self, n: u64) {
        self.done.fetch_add(n, Ordering::Relaxed);
    }
}

pub fn thousands(n: u64) -> String {
    let digits = n.to_string();
    let mut out = String::new();
    for (index, digit) in digits.chars().enumerate() {
        if index > 0 && (digits.len() - index).is_multiple_of(3) {
            out.push(',');
        }
        out.push(digit);
    }
    out
}

/// Resident memory of a process, from /proc (Linux).
pub fn resident_bytes(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let kilobytes: u64 = status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))?
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .ok()?;
    Some(kilobytes * 1024)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_of_known_samples() {
        let mut latencies = Latencies::default();
        for micros in 1..=1000 {
            latencies.record(Duration::from_micros(micros));
        }
        let summary = latencies.summary();
        assert_eq!(summary.samples, 1000);
        assert_eq!(summary.p50_ms, 0.501);
        assert_eq!(summary.p99_ms, 0.991);
        assert_eq!(summary.max_ms, 1.0);
        assert_eq!(thousands(1234567), "1,234,567");
    }
}
