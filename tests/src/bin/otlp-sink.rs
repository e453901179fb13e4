//! A local OTLP/HTTP trace receiver for the benchmark, which exports the agent's traces to it
//! so that the agent runs in full. It is the tests' receiver (`observer_tests::otlp`).
//!
//!   otlp-sink    prints {"endpoint":"http://127.0.0.1:PORT"}, receives until its standard
//!                input closes, then prints {"requests":N,"spans":M} and exits

use std::io::Write;

fn main() {
    let receiver = observer_tests::otlp::Receiver::start();
    let mut out = std::io::stdout();
    let _ = writeln!(
        out,
        "{}",
        serde_json::json!({"endpoint": receiver.endpoint()})
    );
    let _ = out.flush();
    let _ = std::io::copy(&mut std::io::stdin().lock(), &mut std::io::sink());
    let _ = writeln!(
        out,
        "{}",
        serde_json::json!({"requests": receiver.requests(), "spans": receiver.span_count()})
    );
}
