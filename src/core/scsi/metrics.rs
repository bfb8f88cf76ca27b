//! Per-logical-unit counters for the management API and `/metrics`. The SCSI core only holds
//! them; the driver, which owns the clock, records each command's latency.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// Upper bounds of the latency histogram buckets, in microseconds (Prometheus `le`).
pub const LATENCY_BUCKETS_US: [u64; 16] = [
    50, 100, 250, 500, 1_000, 2_500, 5_000, 10_000, 25_000, 50_000, 100_000, 250_000, 500_000, 1_000_000, 2_500_000,
    10_000_000,
];

/// What a command was, for counting.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OpClass {
    Read,
    Write,
    Other,
}

impl OpClass {
    pub const ALL: [OpClass; 3] = [OpClass::Read, OpClass::Write, OpClass::Other];

    pub fn of(opcode: u8) -> OpClass {
        match opcode {
            0x08 | 0x28 | 0xa8 | 0x88 => OpClass::Read,
            // WRITE, WRITE AND VERIFY, WRITE SAME, ORWRITE, COMPARE AND WRITE, UNMAP.
            0x0a | 0x2a | 0xaa | 0x8a | 0x2e | 0xae | 0x8e | 0x41 | 0x93 | 0x8b | 0x89 | 0x42 | 0x9c => OpClass::Write,
            _ => OpClass::Other,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            OpClass::Read => "read",
            OpClass::Write => "write",
            OpClass::Other => "other",
        }
    }
}

#[derive(Debug, Default)]
struct ClassCounters {
    ops: AtomicU64,
    errors: AtomicU64,
    latency_sum_us: AtomicU64,
    /// One per bucket of [`LATENCY_BUCKETS_US`] plus +Inf (not cumulative).
    buckets: [AtomicU64; LATENCY_BUCKETS_US.len() + 1],
}

/// Counters of one logical unit.
#[derive(Debug, Default)]
pub struct LuMetrics {
    classes: [ClassCounters; 3],
    bytes_read: AtomicU64,
    bytes_written: AtomicU64,
    in_flight: AtomicU64,
}

/// A snapshot of one class for rendering.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ClassSnapshot {
    pub ops: u64,
    pub errors: u64,
    pub latency_sum_seconds: f64,
    /// Cumulative counts per bucket of [`LATENCY_BUCKETS_US`], then +Inf.
    pub buckets: Vec<u64>,
}

#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct MetricsSnapshot {
    pub read: ClassSnapshot,
    pub write: ClassSnapshot,
    pub other: ClassSnapshot,
    pub bytes_read: u64,
    pub bytes_written: u64,
    pub in_flight: u64,
}

/// Counts a command in flight until dropped.
pub struct InFlight<'a>(&'a LuMetrics);

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}

impl LuMetrics {
    pub fn start(&self) -> InFlight<'_> {
        self.in_flight.fetch_add(1, Ordering::Relaxed);
        InFlight(self)
    }

    /// Records a finished command.
    pub fn record(&self, opcode: u8, good: bool, data_in: u64, data_out: u64, latency: Duration) {
        let class = OpClass::of(opcode);
        let c = &self.classes[class as usize];
        c.ops.fetch_add(1, Ordering::Relaxed);
        if !good {
            c.errors.fetch_add(1, Ordering::Relaxed);
        }
        let us = latency.as_micros().min(u64::MAX as u128) as u64;
        c.latency_sum_us.fetch_add(us, Ordering::Relaxed);
        let bucket = LATENCY_BUCKETS_US.iter().position(|&b| us <= b).unwrap_or(LATENCY_BUCKETS_US.len());
        c.buckets[bucket].fetch_add(1, Ordering::Relaxed);
        if good {
            match class {
                OpClass::Read => self.bytes_read.fetch_add(data_in, Ordering::Relaxed),
                OpClass::Write => self.bytes_written.fetch_add(data_out, Ordering::Relaxed),
                OpClass::Other => 0,
            };
        }
    }

    pub fn snapshot(&self) -> MetricsSnapshot {
        let class = |k: OpClass| {
            let c = &self.classes[k as usize];
            let mut total = 0;
            let buckets = c
                .buckets
                .iter()
                .map(|b| {
                    total += b.load(Ordering::Relaxed);
                    total
                })
                .collect();
            ClassSnapshot {
                ops: c.ops.load(Ordering::Relaxed),
                errors: c.errors.load(Ordering::Relaxed),
                latency_sum_seconds: c.latency_sum_us.load(Ordering::Relaxed) as f64 / 1e6,
                buckets,
            }
        };
        MetricsSnapshot {
            read: class(OpClass::Read),
            write: class(OpClass::Write),
            other: class(OpClass::Other),
            bytes_read: self.bytes_read.load(Ordering::Relaxed),
            bytes_written: self.bytes_written.load(Ordering::Relaxed),
            in_flight: self.in_flight.load(Ordering::Relaxed),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commands_land_in_their_class_and_bucket() {
        let m = LuMetrics::default();
        {
            let _g = m.start();
            assert_eq!(m.snapshot().in_flight, 1);
            m.record(0x28, true, 4096, 0, Duration::from_micros(80));
        }
        m.record(0x2a, true, 0, 512, Duration::from_millis(3));
        m.record(0x2a, false, 0, 512, Duration::from_secs(60));
        m.record(0x00, true, 0, 0, Duration::ZERO);
        let s = m.snapshot();
        assert_eq!(s.in_flight, 0);
        assert_eq!((s.read.ops, s.write.ops, s.other.ops), (1, 2, 1));
        assert_eq!(s.write.errors, 1);
        assert_eq!((s.bytes_read, s.bytes_written), (4096, 512), "failed writes move no bytes");
        // 80 µs falls in the 100 µs bucket (index 1); cumulative from there on.
        assert_eq!(s.read.buckets[0], 0);
        assert_eq!(s.read.buckets[1], 1);
        assert_eq!(*s.write.buckets.last().expect("+Inf"), 2);
        assert_eq!(s.write.buckets[LATENCY_BUCKETS_US.len() - 1], 1, "60 s is beyond the last bound");
    }
}
