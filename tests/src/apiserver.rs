//! A Kubernetes API server for tests: just enough of the list/watch protocol, over plain HTTP on
//! 127.0.0.1, for kube-rs's real client and watcher to run against it unchanged.
//!
//! Implemented:
//! - `GET` collections of Pods (`/api/v1/pods`), Services (`/api/v1/services`), EndpointSlices
//!   (`/apis/discovery.k8s.io/v1/endpointslices`) and Jobs (`/apis/batch/v1/jobs`), across all
//!   namespaces or under `/namespaces/{ns}/`.
//! - Lists with `metadata.resourceVersion`; `limit` and `continue` paging where every page comes
//!   from the snapshot taken for the first page (as the real server's consistent continue
//!   tokens do); an unknown continue token is `410 Gone`. [`ApiServer::set_page_size`] caps pages
//!   below the client's `limit`, as a real server may.
//! - `?watch=true&resourceVersion=N`: chunked, newline-delimited `ADDED`/`MODIFIED`/`DELETED`
//!   events after N replayed from history, then live ones; `BOOKMARK`s every second when
//!   `allowWatchBookmarks=true`; the stream ends cleanly after `timeoutSeconds`. A version older
//!   than the retained history gets HTTP 200 and one `ERROR` event holding a `Status` with code
//!   410, reason `Expired`, as the real server sends it. `resourceVersion` 0 or absent starts
//!   with `ADDED` for every current object.
//! - One global resourceVersion counter; objects get a uid and their resourceVersion on write.
//! - [`stop`](ApiServer::stop) drops every connection mid-stream and the listener;
//!   [`restart`](ApiServer::restart) listens on the same port again with the same objects and
//!   history, like an API server restarting in front of the same etcd.
//!
//! Not implemented: authentication and authorisation, TLS, any write through HTTP (tests write
//! with [`apply`](ApiServer::apply) / [`delete`](ApiServer::delete)), label and field selectors
//! (answered with 400 so that a client relying on them notices), `resourceVersionMatch=Exact`,
//! streaming lists (`sendInitialEvents`), server-side apply, defaulting and validation, discovery,
//! protobuf, other resource kinds, `GET` of a single object.

use std::{
    collections::{BTreeMap, HashMap},
    convert::Infallible,
    net::SocketAddr,
    sync::{Arc, Mutex, MutexGuard, PoisonError},
    time::Duration,
};

use anyhow::{Context, bail};
use bytes::Bytes;
use futures::StreamExt;
use http_body_util::{BodyExt, Full, StreamBody, combinators::UnsyncBoxBody};
use hyper::{Request, Response, StatusCode, body::Frame, server::conn::http1, service::service_fn};
use hyper_util::rt::TokioIo;
use serde_json::{Value, json};
use tokio::{
    net::TcpListener,
    sync::{Notify, mpsc},
    task::{JoinHandle, JoinSet},
};

type Body = UnsyncBoxBody<Bytes, Infallible>;

/// How often an open watch with `allowWatchBookmarks` gets a BOOKMARK.
const BOOKMARK_EVERY: Duration = Duration::from_secs(1);

/// A resource kind the server serves.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Kind {
    Pod,
    Service,
    EndpointSlice,
    Job,
}

impl Kind {
    const ALL: [Kind; 4] = [Kind::Pod, Kind::Service, Kind::EndpointSlice, Kind::Job];

    fn api_version(self) -> &'static str {
        match self {
            Kind::Pod | Kind::Service => "v1",
            Kind::EndpointSlice => "discovery.k8s.io/v1",
            Kind::Job => "batch/v1",
        }
    }

    fn name(self) -> &'static str {
        match self {
            Kind::Pod => "Pod",
            Kind::Service => "Service",
            Kind::EndpointSlice => "EndpointSlice",
            Kind::Job => "Job",
        }
    }

    fn plural(self) -> &'static str {
        match self {
            Kind::Pod => "pods",
            Kind::Service => "services",
            Kind::EndpointSlice => "endpointslices",
            Kind::Job => "jobs",
        }
    }

    /// The path prefix of the kind's group and version (`/api/v1`, `/apis/batch/v1`).
    fn prefix(self) -> String {
        match self.api_version() {
            "v1" => "/api/v1".into(),
            gv => format!("/apis/{gv}"),
        }
    }

    pub fn from_name(name: &str) -> Option<Kind> {
        Kind::ALL.into_iter().find(|k| k.name() == name)
    }
}

type Key = (String, String);

#[derive(Clone, Debug)]
struct HistoryEvent {
    rv: u64,
    kind: Kind,
    namespace: String,
    type_: &'static str,
    object: Value,
}

struct Watch {
    id: u64,
    kind: Kind,
    namespace: Option<String>,
    bookmarks: bool,
    tx: mpsc::UnboundedSender<Bytes>,
}

#[derive(Default)]
struct State {
    rv: u64,
    next_uid: u64,
    objects: BTreeMap<Kind, BTreeMap<Key, Value>>,
    history: Vec<HistoryEvent>,
    /// Watches may resume from versions at or after this one.
    history_floor: u64,
    watches: Vec<Watch>,
    next_watch: u64,
    /// Remaining pages of lists in progress, by continue token.
    pages: HashMap<String, (u64, Vec<Value>)>,
    next_token: u64,
    page_size: Option<usize>,
    /// Per kind: list requests are held, how many wait, how many may pass.
    hold_lists: HashMap<Kind, bool>,
    pending_lists: HashMap<Kind, usize>,
    list_permits: HashMap<Kind, usize>,
    requests: Vec<String>,
}

struct Inner {
    state: Mutex<State>,
    lists_released: Notify,
}

impl Inner {
    fn state(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// The test API server. Dropping it stops it.
pub struct ApiServer {
    inner: Arc<Inner>,
    addr: SocketAddr,
    running: Mutex<Option<JoinHandle<()>>>,
}

impl ApiServer {
    /// Starts on an ephemeral port of 127.0.0.1.
    pub async fn start() -> anyhow::Result<ApiServer> {
        let s = Self::reserve().await?;
        s.restart().await?;
        Ok(s)
    }

    /// Picks a port but does not listen yet: an API server that is not there (until
    /// [`restart`](Self::restart)).
    pub async fn reserve() -> anyhow::Result<ApiServer> {
        let l = TcpListener::bind("127.0.0.1:0")
            .await
            .context("bind 127.0.0.1:0")?;
        let addr = l.local_addr()?;
        drop(l);
        Ok(ApiServer {
            inner: Arc::new(Inner {
                state: Mutex::new(State {
                    rv: 1,
                    ..Default::default()
                }),
                lists_released: Notify::new(),
            }),
            addr,
            running: Mutex::new(None),
        })
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// A kube client for this server (no credentials, plain HTTP).
    pub fn client(&self) -> anyhow::Result<kube::Client> {
        let mut config = kube::Config::new(self.url().parse()?);
        // Short timeouts keep a test's failure fast; they are far above what a local call takes.
        config.connect_timeout = Some(Duration::from_secs(2));
        Ok(kube::Client::try_from(config)?)
    }

    /// Listens again on the same port, with the same objects and history.
    pub async fn restart(&self) -> anyhow::Result<()> {
        if self.is_running() {
            bail!("the API server is already running");
        }
        // The port may still be held by a closing socket for a moment.
        let mut tries = 0;
        let listener = loop {
            match TcpListener::bind(self.addr).await {
                Ok(l) => break l,
                Err(e) if tries < 50 => {
                    tries += 1;
                    tracing::debug!("rebinding {}: {e}", self.addr);
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                Err(e) => return Err(e).context(format!("rebind {}", self.addr)),
            }
        };
        let inner = self.inner.clone();
        let task = tokio::spawn(async move {
            // Connections live in this set, so aborting this task drops them all.
            let mut conns = JoinSet::new();
            loop {
                tokio::select! {
                    accepted = listener.accept() => {
                        let Ok((sock, _)) = accepted else { continue };
                        let inner = inner.clone();
                        conns.spawn(async move {
                            let svc = service_fn(move |req| {
                                let inner = inner.clone();
                                async move { Ok::<_, Infallible>(handle(inner, req).await) }
                            });
                            let _ = http1::Builder::new()
                                .serve_connection(TokioIo::new(sock), svc)
                                .await;
                        });
                    }
                    Some(_) = conns.join_next(), if !conns.is_empty() => {}
                }
            }
        });
        *self.running.lock().unwrap_or_else(PoisonError::into_inner) = Some(task);
        Ok(())
    }

    pub fn is_running(&self) -> bool {
        self.running
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .is_some()
    }

    /// Kills the server: every connection is dropped mid-stream and the port is closed.
    pub async fn stop(&self) {
        let task = self
            .running
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
        if let Some(task) = task {
            task.abort();
            let _ = task.await;
        }
        self.inner.state().watches.clear();
    }

    /// Creates or replaces an object (by kind, namespace and name) and tells the watches.
    pub fn apply(&self, mut obj: Value) -> anyhow::Result<()> {
        let kind_name = obj["kind"].as_str().unwrap_or_default().to_owned();
        let kind = Kind::from_name(&kind_name)
            .with_context(|| format!("the test API server does not serve kind {kind_name:?}"))?;
        obj["apiVersion"] = json!(kind.api_version());
        let name = obj["metadata"]["name"]
            .as_str()
            .context("object without metadata.name")?
            .to_owned();
        let ns = obj["metadata"]["namespace"]
            .as_str()
            .unwrap_or("default")
            .to_owned();
        obj["metadata"]["namespace"] = json!(ns);
        let mut st = self.inner.state();
        st.rv += 1;
        let rv = st.rv;
        let key = (ns.clone(), name);
        let existing_uid = st
            .objects
            .get(&kind)
            .and_then(|m| m.get(&key))
            .map(|o| o["metadata"]["uid"].clone());
        if obj["metadata"]["uid"].as_str().is_none() {
            obj["metadata"]["uid"] = match &existing_uid {
                Some(uid) => uid.clone(),
                None => {
                    st.next_uid += 1;
                    json!(format!("00000000-0000-4000-8000-{:012}", st.next_uid))
                }
            };
        }
        obj["metadata"]["resourceVersion"] = json!(rv.to_string());
        let type_ = if existing_uid.is_some() {
            "MODIFIED"
        } else {
            "ADDED"
        };
        st.objects.entry(kind).or_default().insert(key, obj.clone());
        st.publish(HistoryEvent {
            rv,
            kind,
            namespace: ns,
            type_,
            object: obj,
        });
        Ok(())
    }

    /// Applies every item of a `kind: List` (as kubectl prints it); items of kinds this server
    /// does not serve are skipped. Returns how many were applied.
    pub fn apply_list(&self, list: &Value) -> anyhow::Result<usize> {
        let mut n = 0;
        for item in list["items"].as_array().context("a List without items")? {
            if Kind::from_name(item["kind"].as_str().unwrap_or_default()).is_some() {
                self.apply(item.clone())?;
                n += 1;
            }
        }
        Ok(n)
    }

    /// Deletes an object; false when there was none.
    pub fn delete(&self, kind: Kind, namespace: &str, name: &str) -> bool {
        let mut st = self.inner.state();
        let key = (namespace.to_owned(), name.to_owned());
        let Some(mut obj) = st.objects.get_mut(&kind).and_then(|m| m.remove(&key)) else {
            return false;
        };
        st.rv += 1;
        let rv = st.rv;
        // The real server reports a deletion with the object's last state at the deletion's
        // version.
        obj["metadata"]["resourceVersion"] = json!(rv.to_string());
        st.publish(HistoryEvent {
            rv,
            kind,
            namespace: namespace.to_owned(),
            type_: "DELETED",
            object: obj,
        });
        true
    }

    /// Forgets all history, as a compaction does: open watches get `410 Expired` and end, and
    /// a watch resumed from any earlier version gets the same, so clients must list again.
    pub fn expire_history(&self) {
        let mut st = self.inner.state();
        st.history.clear();
        st.history_floor = st.rv;
        let gone = expired_event(st.rv);
        for w in st.watches.drain(..) {
            let _ = w.tx.send(gone.clone());
        }
    }

    /// Caps list pages at `n` items, below the client's `limit`.
    pub fn set_page_size(&self, n: usize) {
        self.inner.state().page_size = Some(n.max(1));
    }

    /// Makes list requests (every page) of `kind` wait until released.
    pub fn hold_lists(&self, kind: Kind) {
        self.inner.state().hold_lists.insert(kind, true);
    }

    /// Lets `n` held list requests of `kind` through (now or when they arrive).
    pub fn release_lists(&self, kind: Kind, n: usize) {
        *self.inner.state().list_permits.entry(kind).or_default() += n;
        self.inner.lists_released.notify_waiters();
    }

    /// Stops holding list requests of `kind` and lets all waiting ones through.
    pub fn unhold_lists(&self, kind: Kind) {
        self.inner.state().hold_lists.insert(kind, false);
        self.inner.lists_released.notify_waiters();
    }

    /// List requests of `kind` waiting because of [`hold_lists`](Self::hold_lists).
    pub fn pending_lists(&self, kind: Kind) -> usize {
        self.inner
            .state()
            .pending_lists
            .get(&kind)
            .copied()
            .unwrap_or(0)
    }

    /// Open watches of a kind.
    pub fn open_watches(&self, kind: Kind) -> usize {
        self.inner
            .state()
            .watches
            .iter()
            .filter(|w| w.kind == kind && !w.tx.is_closed())
            .count()
    }

    /// Every request so far, as `GET path?query`.
    pub fn requests(&self) -> Vec<String> {
        self.inner.state().requests.clone()
    }

    pub fn resource_version(&self) -> u64 {
        self.inner.state().rv
    }
}

impl Drop for ApiServer {
    fn drop(&mut self) {
        if let Some(task) = self
            .running
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take()
        {
            task.abort();
        }
    }
}

impl State {
    fn publish(&mut self, ev: HistoryEvent) {
        let line = event_line(ev.type_, &ev.object);
        self.watches.retain(|w| {
            if w.kind != ev.kind || w.namespace.as_ref().is_some_and(|n| *n != ev.namespace) {
                return !w.tx.is_closed();
            }
            w.tx.send(line.clone()).is_ok()
        });
        self.history.push(ev);
    }
}

fn event_line(type_: &str, object: &Value) -> Bytes {
    let mut s = json!({"type": type_, "object": object}).to_string();
    s.push('\n');
    Bytes::from(s)
}

fn status(code: u16, reason: &str, message: &str) -> Value {
    json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
        "message": message, "reason": reason, "code": code})
}

fn expired_event(rv: u64) -> Bytes {
    event_line(
        "ERROR",
        &status(
            410,
            "Expired",
            &format!("too old resource version (current {rv})"),
        ),
    )
}

fn respond(code: StatusCode, body: &Value) -> Response<Body> {
    let mut r = Response::new(Full::new(Bytes::from(body.to_string())).boxed_unsync());
    *r.status_mut() = code;
    r.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static("application/json"),
    );
    r
}

fn error(code: StatusCode, reason: &str, message: &str) -> Response<Body> {
    respond(code, &status(code.as_u16(), reason, message))
}

/// `/api/v1[/namespaces/{ns}]/{plural}` or `/apis/{group}/{version}[/namespaces/{ns}]/{plural}`.
fn route(path: &str) -> Option<(Kind, Option<String>)> {
    for kind in Kind::ALL {
        let Some(rest) = path.strip_prefix(&kind.prefix()) else {
            continue;
        };
        if rest == format!("/{}", kind.plural()) {
            return Some((kind, None));
        }
        if let Some(ns_rest) = rest.strip_prefix("/namespaces/")
            && let Some((ns, plural)) = ns_rest.split_once('/')
            && plural == kind.plural()
            && !ns.is_empty()
        {
            return Some((kind, Some(ns.to_owned())));
        }
    }
    None
}

fn percent_decode(s: &str) -> String {
    fn hex(b: u8) -> Option<u8> {
        (b as char).to_digit(16).map(|d| d as u8)
    }
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < bytes.len() => match (hex(bytes[i + 1]), hex(bytes[i + 2])) {
                (Some(h), Some(l)) => {
                    out.push(h * 16 + l);
                    i += 2;
                }
                _ => out.push(b'%'),
            },
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn query(q: Option<&str>) -> HashMap<String, String> {
    q.unwrap_or_default()
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|p| match p.split_once('=') {
            Some((k, v)) => (percent_decode(k), percent_decode(v)),
            None => (percent_decode(p), String::new()),
        })
        .collect()
}

async fn handle(inner: Arc<Inner>, req: Request<hyper::body::Incoming>) -> Response<Body> {
    let uri = req.uri().clone();
    inner.state().requests.push(format!(
        "{} {}{}",
        req.method(),
        uri.path(),
        uri.query().map(|q| format!("?{q}")).unwrap_or_default()
    ));
    if req.method() != hyper::Method::GET {
        return error(
            StatusCode::METHOD_NOT_ALLOWED,
            "MethodNotAllowed",
            "the test API server only serves GET",
        );
    }
    let Some((kind, namespace)) = route(uri.path()) else {
        return error(
            StatusCode::NOT_FOUND,
            "NotFound",
            &format!(
                "the server could not find the requested resource {}",
                uri.path()
            ),
        );
    };
    let q = query(uri.query());
    if q.contains_key("labelSelector") || q.contains_key("fieldSelector") {
        return error(
            StatusCode::BAD_REQUEST,
            "BadRequest",
            "the test API server does not implement selectors",
        );
    }
    if q.get("watch").is_some_and(|v| v == "true" || v == "1") {
        watch(&inner, kind, namespace, &q)
    } else {
        list(&inner, kind, namespace, &q).await
    }
}

async fn list(
    inner: &Inner,
    kind: Kind,
    namespace: Option<String>,
    q: &HashMap<String, String>,
) -> Response<Body> {
    // Held lists wait here, counted, until the test releases them.
    let mut counted = false;
    loop {
        let released = inner.lists_released.notified();
        {
            let mut st = inner.state();
            let held = st.hold_lists.get(&kind).copied().unwrap_or(false);
            let permits = st.list_permits.entry(kind).or_default();
            let pass = if !held {
                true
            } else if *permits > 0 {
                *permits -= 1;
                true
            } else {
                false
            };
            let pending = st.pending_lists.entry(kind).or_default();
            if pass {
                if counted {
                    *pending -= 1;
                }
                break;
            }
            if !counted {
                *pending += 1;
                counted = true;
            }
        }
        released.await;
    }
    let mut st = inner.state();
    let limit = q
        .get("limit")
        .and_then(|l| l.parse::<usize>().ok())
        .filter(|l| *l > 0);
    let limit = match (limit, st.page_size) {
        (Some(l), Some(p)) => Some(l.min(p)),
        (l, p) => l.or(p),
    };
    let (rv, mut items) = match q.get("continue").filter(|c| !c.is_empty()) {
        Some(token) => match st.pages.remove(token) {
            Some(page) => page,
            None => {
                return error(
                    StatusCode::GONE,
                    "Expired",
                    "The provided continue parameter is too old to display a consistent list result.",
                );
            }
        },
        None => {
            let items: Vec<Value> = st
                .objects
                .get(&kind)
                .into_iter()
                .flat_map(|m| m.iter())
                .filter(|((ns, _), _)| namespace.as_ref().is_none_or(|n| n == ns))
                .map(|(_, o)| {
                    // Items of a typed list carry no kind or apiVersion of their own.
                    let mut o = o.clone();
                    if let Some(m) = o.as_object_mut() {
                        m.remove("kind");
                        m.remove("apiVersion");
                    }
                    o
                })
                .collect();
            (st.rv, items)
        }
    };
    let mut meta = json!({"resourceVersion": rv.to_string()});
    if let Some(limit) = limit
        && items.len() > limit
    {
        let rest = items.split_off(limit);
        st.next_token += 1;
        let token = format!("page{}", st.next_token);
        meta["remainingItemCount"] = json!(rest.len());
        meta["continue"] = json!(token);
        st.pages.insert(token, (rv, rest));
    }
    respond(
        StatusCode::OK,
        &json!({"apiVersion": kind.api_version(), "kind": format!("{}List", kind.name()),
            "metadata": meta, "items": items}),
    )
}

fn watch(
    inner: &Arc<Inner>,
    kind: Kind,
    namespace: Option<String>,
    q: &HashMap<String, String>,
) -> Response<Body> {
    let (tx, rx) = mpsc::unbounded_channel::<Bytes>();
    let bookmarks = q.get("allowWatchBookmarks").is_some_and(|v| v == "true");
    let timeout = q
        .get("timeoutSeconds")
        .and_then(|t| t.parse::<u64>().ok())
        .map_or(Duration::from_secs(1800), Duration::from_secs);
    let from = q
        .get("resourceVersion")
        .filter(|v| !v.is_empty() && *v != "0");
    let mut st = inner.state();
    let in_scope = |ev_kind: Kind, ev_ns: &str| {
        ev_kind == kind && namespace.as_ref().is_none_or(|n| n == ev_ns)
    };
    match from.map(|v| v.parse::<u64>()) {
        Some(Err(_)) => {
            return error(
                StatusCode::BAD_REQUEST,
                "BadRequest",
                "resourceVersion is not a number",
            );
        }
        Some(Ok(v)) if v < st.history_floor => {
            let _ = tx.send(expired_event(st.rv));
            drop(tx);
            return stream_response(rx);
        }
        Some(Ok(v)) => {
            for ev in st.history.iter().filter(|e| e.rv > v) {
                if in_scope(ev.kind, &ev.namespace) {
                    let _ = tx.send(event_line(ev.type_, &ev.object));
                }
            }
        }
        None => {
            for ((ns, _), o) in st.objects.get(&kind).into_iter().flatten() {
                if in_scope(kind, ns) {
                    let _ = tx.send(event_line("ADDED", o));
                }
            }
        }
    }
    st.next_watch += 1;
    let id = st.next_watch;
    st.watches.push(Watch {
        id,
        kind,
        namespace,
        bookmarks,
        tx,
    });
    drop(st);
    // Bookmarks and the timeout: the watch ends cleanly when the timeout passes or when it is
    // no longer registered (stop, expiry, client gone).
    let inner = inner.clone();
    tokio::spawn(async move {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let tick = tokio::time::sleep(BOOKMARK_EVERY);
            tokio::select! {
                () = tokio::time::sleep_until(deadline) => {
                    inner.state().watches.retain(|w| w.id != id);
                    return;
                }
                () = tick => {
                    let mut st = inner.state();
                    let rv = st.rv;
                    let Some(w) = st.watches.iter().find(|w| w.id == id) else { return };
                    if w.tx.is_closed() {
                        st.watches.retain(|w| w.id != id);
                        return;
                    }
                    if w.bookmarks {
                        let bm = json!({"kind": w.kind.name(), "apiVersion": w.kind.api_version(),
                            "metadata": {"resourceVersion": rv.to_string()}});
                        let _ = w.tx.send(event_line("BOOKMARK", &bm));
                    }
                }
            }
        }
    });
    stream_response(rx)
}

fn stream_response(rx: mpsc::UnboundedReceiver<Bytes>) -> Response<Body> {
    let stream = futures::stream::unfold(rx, |mut rx| async move {
        rx.recv()
            .await
            .map(|b| (Ok::<_, Infallible>(Frame::data(b)), rx))
    });
    let mut r = Response::new(BodyExt::boxed_unsync(StreamBody::new(stream.boxed())));
    r.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static("application/json"),
    );
    r
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes_cover_cluster_wide_and_namespaced_collections() {
        assert_eq!(route("/api/v1/pods"), Some((Kind::Pod, None)));
        assert_eq!(
            route("/api/v1/namespaces/kong/services"),
            Some((Kind::Service, Some("kong".into())))
        );
        assert_eq!(
            route("/apis/discovery.k8s.io/v1/endpointslices"),
            Some((Kind::EndpointSlice, None))
        );
        assert_eq!(route("/api/v1/namespaces//pods"), None);
        assert_eq!(route("/api/v1/configmaps"), None);
        assert_eq!(route("/api/v1/pods/x"), None);
    }

    #[test]
    fn query_strings_are_decoded() {
        let q = query(Some("watch=true&resourceVersion=12&continue=a%2Fb&x"));
        assert_eq!(q.get("watch").map(String::as_str), Some("true"));
        assert_eq!(q.get("continue").map(String::as_str), Some("a/b"));
        assert_eq!(q.get("x").map(String::as_str), Some(""));
        assert_eq!(percent_decode("%zz%4"), "%zz%4");
    }
}
