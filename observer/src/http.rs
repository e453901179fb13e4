//! The agent's small HTTP server: `/healthz`, `/readyz` and `/metrics`. Nothing else listens.

use std::{
    convert::Infallible,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
};

use http_body_util::Full;
use hyper::{Request, Response, StatusCode, body::Bytes, server::conn::http1, service::service_fn};
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;

use crate::metrics::Metrics;

/// What the HTTP endpoints report; shared with the agent loop.
pub struct Health {
    pub metrics: Metrics,
    /// The kernel program is attached and the agent loop has completed a pass.
    pub capturing: AtomicBool,
    /// The Kubernetes watchers' state, when the agent watches the API.
    pub inventory: std::sync::Mutex<Option<Arc<crate::inventory::InventoryStatus>>>,
}

impl Health {
    pub fn new() -> Health {
        Health::with_metrics(Metrics::new())
    }

    pub fn with_metrics(metrics: Metrics) -> Health {
        Health {
            metrics,
            capturing: AtomicBool::new(false),
            inventory: std::sync::Mutex::new(None),
        }
    }
}

impl Default for Health {
    fn default() -> Self {
        Self::new()
    }
}

impl Health {
    fn inventory_status(&self) -> Option<Arc<crate::inventory::InventoryStatus>> {
        self.inventory.lock().ok().and_then(|s| s.clone())
    }

    /// Ready once the program is attached and recording and the index (if any) has synced once.
    /// A stale index after that stays ready, so Prometheus keeps scraping; the body says so.
    pub fn readiness(&self) -> (bool, String) {
        if !self.capturing.load(Ordering::Relaxed) {
            return (false, "not ready: kernel program not attached yet\n".into());
        }
        match self.inventory_status() {
            Some(s) if !s.ready() => (
                false,
                "not ready: waiting for the first sync of the Kubernetes index\n".into(),
            ),
            Some(s) if s.stale() => (
                true,
                "ready: capturing; index stale (lost the API server watch, retrying)\n".into(),
            ),
            _ => (true, "ready: capturing\n".into()),
        }
    }
}

fn respond(status: StatusCode, content_type: &str, body: String) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::from(body)));
    *r.status_mut() = status;
    if let Ok(v) = content_type.parse() {
        r.headers_mut().insert(hyper::header::CONTENT_TYPE, v);
    }
    r
}

fn route(path: &str, openmetrics: bool, health: &Health) -> Response<Full<Bytes>> {
    match path {
        "/healthz" => respond(StatusCode::OK, "text/plain", "ok\n".into()),
        "/readyz" => {
            let (ready, body) = health.readiness();
            let status = if ready {
                StatusCode::OK
            } else {
                StatusCode::SERVICE_UNAVAILABLE
            };
            respond(status, "text/plain", body)
        }
        "/metrics" => {
            // Values that are states, not events: mirrored at scrape time.
            health.metrics.ready.set(i64::from(health.readiness().0));
            if let Some(status) = health.inventory_status() {
                health.metrics.observe_inventory(&status);
            }
            if openmetrics {
                respond(
                    StatusCode::OK,
                    "application/openmetrics-text; version=1.0.0; charset=utf-8",
                    health.metrics.encode(),
                )
            } else {
                respond(
                    StatusCode::OK,
                    "text/plain; version=0.0.4; charset=utf-8",
                    health.metrics.encode_text(),
                )
            }
        }
        _ => respond(
            StatusCode::NOT_FOUND,
            "text/plain",
            "not found; try /metrics, /healthz or /readyz\n".into(),
        ),
    }
}

/// Serves until the task is dropped.
pub async fn serve(listener: TcpListener, health: Arc<Health>) {
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        let health = health.clone();
        tokio::spawn(async move {
            let svc = service_fn(move |req: Request<hyper::body::Incoming>| {
                // OpenMetrics when asked for (Prometheus asks), else the classic text format.
                let openmetrics = req
                    .headers()
                    .get_all(hyper::header::ACCEPT)
                    .iter()
                    .any(|v| {
                        v.to_str()
                            .is_ok_and(|v| v.contains("application/openmetrics-text"))
                    });
                let resp = route(req.uri().path(), openmetrics, &health);
                async move { Ok::<_, Infallible>(resp) }
            });
            let _ = http1::Builder::new()
                .serve_connection(TokioIo::new(stream), svc)
                .await;
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::inventory::InventoryStatus;
    use kube::runtime::watcher::Event;

    fn readyz(health: &Health) -> (u16, String) {
        get(health, "/readyz")
    }

    fn get(health: &Health, path: &str) -> (u16, String) {
        let r = route(path, false, health);
        let status = r.status().as_u16();
        let body = futures::executor::block_on(http_body_util::BodyExt::collect(r.into_body()))
            .map(|b| String::from_utf8_lossy(&b.to_bytes()).into_owned())
            .unwrap_or_default();
        (status, body)
    }

    #[test]
    fn readyz_waits_for_the_first_sync_and_stays_ready_when_stale() {
        let health = Health::new();
        assert_eq!(
            readyz(&health),
            (503, "not ready: kernel program not attached yet\n".into())
        );
        health.capturing.store(true, Ordering::Relaxed);
        assert_eq!(readyz(&health), (200, "ready: capturing\n".into()));
        let status = Arc::new(InventoryStatus::new());
        *health.inventory.lock().unwrap() = Some(status.clone());
        let (code, body) = readyz(&health);
        assert_eq!(code, 503);
        assert!(body.contains("waiting for the first sync"), "{body}");
        for w in status.watchers() {
            w.observe::<()>(&[Event::Init, Event::InitDone]);
        }
        assert_eq!(readyz(&health), (200, "ready: capturing\n".into()));
        status.pods.record_error();
        let (code, body) = readyz(&health);
        assert_eq!(code, 200);
        assert!(body.contains("index stale"), "{body}");
        let metrics = get(&health, "/metrics").1;
        for sample in [
            "observer_ready 1",
            "observer_index_stale 1",
            "observer_watcher_synced{resource=\"Pod\"} 1",
        ] {
            assert!(metrics.contains(sample), "{sample} in {metrics}");
        }
    }
}
