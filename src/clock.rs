//! The clock seam. The protocol core takes `now` as an argument; the driver gets it here.

use std::time::{Duration, SystemTime};

use crate::storage::BoxFuture;

pub trait Clock: Send + Sync + 'static {
    /// Monotonic time since the clock started.
    fn now(&self) -> Duration;
    /// Sleeps until `now() >= deadline`.
    fn sleep_until(&self, deadline: Duration) -> BoxFuture<'static, ()>;
    /// Wall-clock time, for timestamps that leave the process.
    fn wall(&self) -> SystemTime;
}

/// Tokio's clock. Under turmoil (and `tokio::time::pause`) it is simulated time.
#[derive(Debug, Clone)]
pub struct TokioClock {
    start: tokio::time::Instant,
}

impl TokioClock {
    pub fn new() -> TokioClock {
        TokioClock { start: tokio::time::Instant::now() }
    }
}

impl Default for TokioClock {
    fn default() -> Self {
        TokioClock::new()
    }
}

impl Clock for TokioClock {
    fn now(&self) -> Duration {
        self.start.elapsed()
    }

    fn sleep_until(&self, deadline: Duration) -> BoxFuture<'static, ()> {
        Box::pin(tokio::time::sleep_until(self.start + deadline))
    }

    // The production clock is the seam: under turmoil the simulation supplies its own wall time.
    #[allow(clippy::disallowed_methods)]
    fn wall(&self) -> SystemTime {
        SystemTime::now()
    }
}
