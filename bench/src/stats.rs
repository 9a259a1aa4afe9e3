//! Latency samples and the generator's clock. Send and receive happen in
//! this one process, so a monotonic clock since start is shared by both.

use std::sync::OnceLock;
use std::time::Instant;

use serde_json::{json, Value};

static START: OnceLock<Instant> = OnceLock::new();

pub fn init_clock() {
    START.get_or_init(Instant::now);
}

/// Nanoseconds since the generator started.
pub fn now_ns() -> u64 {
    START.get_or_init(Instant::now).elapsed().as_nanos() as u64
}

/// Latencies in microseconds.
#[derive(Default)]
pub struct Samples(Vec<u32>);

impl Samples {
    pub fn with_capacity(n: usize) -> Self {
        Samples(Vec::with_capacity(n))
    }

    pub fn record_since(&mut self, sent_ns: u64, now_ns: u64) {
        let micros = now_ns.saturating_sub(sent_ns) / 1000;
        self.0.push(micros.min(u32::MAX as u64) as u32);
    }

    /// p50, p99, max in milliseconds (sorts in place).
    pub fn summary(&mut self) -> Summary {
        if self.0.is_empty() {
            return Summary::default();
        }
        self.0.sort_unstable();
        let at = |q: f64| {
            let index = ((self.0.len() as f64 * q).ceil() as usize).clamp(1, self.0.len()) - 1;
            self.0[index] as f64 / 1000.0
        };
        Summary {
            p50: at(0.50),
            p99: at(0.99),
            max: *self.0.last().unwrap_or(&0) as f64 / 1000.0,
        }
    }
}

#[derive(Default, Clone, Copy, Debug)]
pub struct Summary {
    pub p50: f64,
    pub p99: f64,
    pub max: f64,
}

impl Summary {
    pub fn json(&self) -> Value {
        json!({"p50": round(self.p50, 3), "p99": round(self.p99, 3), "max": round(self.max, 3)})
    }
}

pub fn round(value: f64, digits: i32) -> f64 {
    let scale = 10f64.powi(digits);
    (value * scale).round() / scale
}

/// Reads the decimal number at the start of `bytes`.
pub fn leading_number(bytes: &[u8]) -> Option<(u64, usize)> {
    let mut value: u64 = 0;
    let mut used = 0;
    for &b in bytes {
        if !b.is_ascii_digit() {
            break;
        }
        value = value.wrapping_mul(10).wrapping_add((b - b'0') as u64);
        used += 1;
    }
    (used > 0).then_some((value, used))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantiles() {
        let mut s = Samples::default();
        for i in 1..=100u64 {
            s.record_since(0, i * 1000);
        }
        let q = s.summary();
        assert_eq!(q.p50, 0.05);
        assert_eq!(q.p99, 0.099);
        assert_eq!(q.max, 0.1);
        assert_eq!(leading_number(b"123 x"), Some((123, 3)));
        assert_eq!(leading_number(b"x"), None);
    }
}
