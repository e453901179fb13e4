//! Helpers shared by the end-to-end tests.
#![forbid(unsafe_code)]

pub mod apiserver;
pub mod objects;

use std::time::{Duration, Instant};

/// Polls `cond` every 20 ms until it holds; panics naming `what` after `timeout`. Returns how
/// long it took.
pub async fn eventually(timeout: Duration, what: &str, mut cond: impl FnMut() -> bool) -> Duration {
    let start = Instant::now();
    loop {
        if cond() {
            return start.elapsed();
        }
        if start.elapsed() > timeout {
            panic!("timed out after {timeout:?} waiting for: {what}");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Logs to the test's output when `RUST_LOG` is set.
pub fn init_tracing() {
    let _ = tracing_subscriber::fmt()
        .with_test_writer()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .try_init();
}
