//! Hot reload of the architecture file: on SIGHUP and whenever its directory changes.
//!
//! The directory, not the file, is watched because a Kubernetes ConfigMap volume updates by
//! writing a new timestamped directory and atomically renaming a `..data` symlink over the old
//! one: the file's own path (`dir/name -> ..data/name`) is never written, so a watch on it (or on
//! the inode it resolved to) would never fire. Any event in the directory triggers a re-read;
//! the content hash decides whether anything changed.

use std::{
    path::{Path, PathBuf},
    sync::{
        Arc, Mutex, PoisonError, RwLock,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::Duration,
};

use notify::Watcher as _;
use tokio::sync::mpsc;

use super::Architecture;

/// Filesystem events come in bursts (a ConfigMap update is several creates, a rename and a
/// delete); one re-read after the burst settles is enough.
const SETTLE: Duration = Duration::from_millis(100);
/// A re-read even without events, in case the watch is lost (the directory itself replaced,
/// inotify limits reached): cheap for a file this small.
const SAFETY_POLL: Duration = Duration::from_secs(60);

/// The model in force, shared by everything that judges flows. Cloning shares the same model.
#[derive(Clone, Debug)]
pub struct ModelHandle(Arc<RwLock<Arc<Architecture>>>, Arc<AtomicU64>);

impl ModelHandle {
    pub fn new(model: Architecture) -> ModelHandle {
        ModelHandle(
            Arc::new(RwLock::new(Arc::new(model))),
            Arc::new(AtomicU64::new(0)),
        )
    }

    /// Changes whenever another model is put in force, so a cache of verdicts keyed by it
    /// never serves what an older model said.
    pub fn generation(&self) -> u64 {
        self.1.load(Ordering::Acquire)
    }

    /// The model in force now; later reloads do not change the returned one, so a caller judging
    /// a batch of flows judges all of them against one model.
    pub fn current(&self) -> Arc<Architecture> {
        // A panic while replacing an `Arc` cannot leave it half-written: poisoning is harmless.
        self.0
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    fn replace(&self, model: Architecture) {
        let mut current = self.0.write().unwrap_or_else(PoisonError::into_inner);
        *current = Arc::new(model);
        // Under the lock: a reader that sees the new generation then reads the new model.
        self.1.fetch_add(1, Ordering::AcqRel);
    }
}

/// Reload outcomes, for metrics and health reporting.
#[derive(Debug, Default)]
pub struct ReloadStats {
    /// Reloads that put a new model in force.
    pub successes: AtomicU64,
    /// Changed files that were rejected (unreadable or invalid); the previous model stayed.
    pub failures: AtomicU64,
    /// Set once the directory watch is in place; reloads on change work from then on.
    pub watching: AtomicBool,
    /// Times the file was read and parsed (once per trigger, changed or not).
    pub reads: AtomicU64,
    last_failure_message: Mutex<Option<String>>,
}

impl ReloadStats {
    /// The errors of the latest rejected file, one per line.
    pub fn last_failure_message(&self) -> Option<String> {
        self.last_failure_message
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    fn record_failure(&self, message: String) {
        self.failures.fetch_add(1, Ordering::Relaxed);
        *self
            .last_failure_message
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = Some(message);
    }
}

/// Keeps `handle` in step with the file at `path` until the task is dropped. Expects `handle`
/// to hold the model loaded from `path` at start. Never returns an error: a lost watch is
/// logged and the file is still re-read on SIGHUP and every [`SAFETY_POLL`].
pub async fn watch(path: PathBuf, handle: ModelHandle, stats: Arc<ReloadStats>) {
    // The SIGHUP handler goes first so that `stats.watching` implies both triggers are armed.
    let mut hangup = hangup_signal();
    let (tx, mut rx) = mpsc::unbounded_channel::<()>();
    let _watcher = watch_directory(&path, tx, &stats);
    let mut reloader = Reloader {
        path,
        handle,
        stats,
        last_rejected: None,
    };
    // The file may have changed between the caller's load and the watch starting.
    reloader.check("start");
    let mut poll = tokio::time::interval(SAFETY_POLL);
    poll.tick().await; // the first tick is immediate; the model was just loaded
    loop {
        tokio::select! {
            Some(()) = rx.recv() => {
                tokio::time::sleep(SETTLE).await;
                while rx.try_recv().is_ok() {}
                reloader.check("the directory changed");
            }
            Some(()) = recv_hangup(&mut hangup) => reloader.check("SIGHUP"),
            _ = poll.tick() => reloader.check("periodic check"),
        }
    }
}

/// Starts an inotify watch on the file's directory; `None` (logged) when it cannot.
fn watch_directory(
    path: &Path,
    tx: mpsc::UnboundedSender<()>,
    stats: &ReloadStats,
) -> Option<notify::RecommendedWatcher> {
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let handler = move |event: notify::Result<notify::Event>| {
        match &event {
            Err(e) => {
                tracing::warn!(error = %e, "architecture directory watch reported an error; re-reading the file");
            }
            // Opening and closing a file unwritten changes nothing, and the check itself opens
            // the file: taken as changes, they re-read it every SETTLE for ever.
            Ok(e) if e.kind.is_access() => return,
            Ok(_) => {}
        }
        // A closed channel means the watch task has ended; there is nobody left to tell.
        let _ = tx.send(());
    };
    let result = notify::recommended_watcher(handler).and_then(|mut w| {
        w.watch(&dir, notify::RecursiveMode::NonRecursive)?;
        Ok(w)
    });
    match result {
        Ok(w) => {
            stats.watching.store(true, Ordering::Relaxed);
            tracing::info!(dir = %dir.display(), "watching the architecture file's directory for changes");
            Some(w)
        }
        Err(e) => {
            tracing::warn!(
                dir = %dir.display(),
                error = %e,
                "cannot watch the architecture file's directory; it is re-read on SIGHUP and every {}s",
                SAFETY_POLL.as_secs()
            );
            None
        }
    }
}

fn hangup_signal() -> Option<tokio::signal::unix::Signal> {
    match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()) {
        Ok(s) => Some(s),
        Err(e) => {
            tracing::warn!(error = %e, "cannot listen for SIGHUP; the architecture file reloads on change only");
            None
        }
    }
}

async fn recv_hangup(signal: &mut Option<tokio::signal::unix::Signal>) -> Option<()> {
    match signal {
        Some(s) => s.recv().await,
        None => std::future::pending().await,
    }
}

struct Reloader {
    path: PathBuf,
    handle: ModelHandle,
    stats: Arc<ReloadStats>,
    /// The content hash (or read error) last rejected, so that unrelated events in the
    /// directory do not count the same bad file again.
    last_rejected: Option<String>,
}

impl Reloader {
    fn check(&mut self, trigger: &str) {
        self.stats.reads.fetch_add(1, Ordering::Relaxed);
        let current = self.handle.current();
        match Architecture::load(&self.path) {
            Ok(model) if model.hash() == current.hash() => {
                // Unchanged content is not a reload; a fixed-then-reverted file is good again.
                self.last_rejected = None;
                tracing::debug!(trigger, hash = model.hash(), "architecture file unchanged");
            }
            Ok(model) => {
                tracing::info!(
                    trigger,
                    name = model.name(),
                    previous = current.hash(),
                    hash = model.hash(),
                    "architecture model reloaded"
                );
                self.handle.replace(model);
                self.last_rejected = None;
                self.stats.successes.fetch_add(1, Ordering::Relaxed);
            }
            Err(errors) => {
                let message = errors.to_string();
                let key = std::fs::read(&self.path)
                    .map_or_else(|_| message.clone(), |b| super::content_hash(&b));
                if self.last_rejected.as_ref() == Some(&key) {
                    return;
                }
                tracing::warn!(
                    trigger,
                    in_force = current.hash(),
                    errors = %message,
                    "architecture file rejected; the previous model stays in force"
                );
                self.last_rejected = Some(key);
                self.stats.record_failure(message);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::{fs, os::unix::fs::symlink, time::Instant};

    const GOOD: &str =
        "apiVersion: observer/v1alpha1\nkind: Architecture\nmetadata:\n  name: one\n";
    const GOOD_TWO: &str =
        "apiVersion: observer/v1alpha1\nkind: Architecture\nmetadata:\n  name: two\n";
    const BAD: &str = "apiVersion: observer/v1alpha1\nkind: Architecture\nmetadata:\n  nme: two\n";

    /// Polls `cond` for up to 5 s.
    async fn eventually(what: &str, cond: impl Fn() -> bool) {
        let start = Instant::now();
        while !cond() {
            assert!(
                start.elapsed() < Duration::from_secs(5),
                "timed out waiting for {what}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    async fn start(path: &Path) -> (ModelHandle, Arc<ReloadStats>, tokio::task::JoinHandle<()>) {
        let handle = ModelHandle::new(Architecture::load(path).expect("initial model"));
        let stats = Arc::new(ReloadStats::default());
        let task = tokio::spawn(watch(path.to_path_buf(), handle.clone(), stats.clone()));
        let s = stats.clone();
        eventually("the watch to start", move || {
            s.watching.load(Ordering::Relaxed)
        })
        .await;
        (handle, stats, task)
    }

    /// Replaces the file the way editors and `kubectl cp` do: write aside, rename over.
    fn replace_file(path: &Path, text: &str) {
        let tmp = path.with_extension("tmp");
        fs::write(&tmp, text).unwrap();
        fs::rename(&tmp, path).unwrap();
    }

    #[tokio::test]
    async fn a_good_file_replaces_the_model_and_a_bad_one_is_rejected() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("trackunit.yaml");
        fs::write(&path, GOOD).unwrap();
        let (handle, stats, task) = start(&path).await;
        assert_eq!(handle.current().name(), "one");

        replace_file(&path, GOOD_TWO);
        eventually("the good file to load", || handle.current().name() == "two").await;
        assert_eq!(stats.successes.load(Ordering::Relaxed), 1);

        replace_file(&path, BAD);
        eventually("the bad file to be rejected", || {
            stats.failures.load(Ordering::Relaxed) == 1
        })
        .await;
        assert_eq!(
            handle.current().name(),
            "two",
            "the previous model stays in force"
        );
        assert_eq!(
            stats.last_failure_message().as_deref(),
            Some(format!(
                "{}:4:3: metadata: unknown field \"nme\"; expected one of: name, description; did you mean \"name\"?\n\
                 {}:4:3: metadata: missing required field \"name\"; add \"name: <name of the system>\"",
                path.display(),
                path.display()
            ))
            .as_deref()
        );

        // Unrelated activity in the directory re-reads the same bad file: not another failure.
        fs::write(dir.path().join("unrelated"), "x").unwrap();
        tokio::time::sleep(SETTLE * 4).await;
        assert_eq!(stats.failures.load(Ordering::Relaxed), 1);

        // The same content as the model in force is not a reload.
        replace_file(&path, GOOD_TWO);
        tokio::time::sleep(SETTLE * 4).await;
        fs::write(dir.path().join("unrelated"), "y").unwrap();
        tokio::time::sleep(SETTLE * 4).await;
        assert_eq!(stats.successes.load(Ordering::Relaxed), 1);
        assert_eq!(handle.current().name(), "two");
        task.abort();
    }

    #[tokio::test]
    async fn reading_the_file_does_not_trigger_another_read() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("trackunit.yaml");
        fs::write(&path, GOOD).unwrap();
        let (_handle, stats, task) = start(&path).await;
        // The check at start opens the file; that open is an event in the watched directory.
        tokio::time::sleep(SETTLE * 10).await;
        assert_eq!(
            stats.reads.load(Ordering::Relaxed),
            1,
            "only the check at start"
        );
        // Someone else reading it changes nothing either.
        let _ = fs::read(&path).unwrap();
        tokio::time::sleep(SETTLE * 4).await;
        assert_eq!(stats.reads.load(Ordering::Relaxed), 1);
        task.abort();
    }

    #[tokio::test]
    async fn sighup_rereads_a_file_whose_change_the_directory_watch_cannot_see() {
        // The file is a link to a directory that is not watched: only SIGHUP notices edits.
        let watched = tempfile::tempdir().unwrap();
        let elsewhere = tempfile::tempdir().unwrap();
        let real = elsewhere.path().join("real.yaml");
        fs::write(&real, GOOD).unwrap();
        let path = watched.path().join("trackunit.yaml");
        symlink(&real, &path).unwrap();
        let (handle, stats, task) = start(&path).await;

        fs::write(&real, GOOD_TWO).unwrap();
        tokio::time::sleep(SETTLE * 4).await;
        assert_eq!(handle.current().name(), "one", "no event reached the watch");

        let status = std::process::Command::new("kill")
            .args(["-HUP", &std::process::id().to_string()])
            .status()
            .expect("run kill");
        assert!(status.success());
        eventually("SIGHUP to reload", || handle.current().name() == "two").await;
        assert_eq!(stats.successes.load(Ordering::Relaxed), 1);
        task.abort();
    }

    #[tokio::test]
    async fn a_configmap_symlink_swap_is_seen() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        // The layout kubelet writes for a ConfigMap volume.
        fs::create_dir(d.join("..2026_01_01")).unwrap();
        fs::write(d.join("..2026_01_01/trackunit.yaml"), GOOD).unwrap();
        symlink("..2026_01_01", d.join("..data")).unwrap();
        symlink("..data/trackunit.yaml", d.join("trackunit.yaml")).unwrap();
        let path = d.join("trackunit.yaml");
        let (handle, stats, task) = start(&path).await;
        assert_eq!(handle.current().name(), "one");

        // kubelet's update: a new timestamped directory, a new `..data_tmp` link renamed over
        // `..data` (atomic), then the old directory removed.
        fs::create_dir(d.join("..2026_01_02")).unwrap();
        fs::write(d.join("..2026_01_02/trackunit.yaml"), GOOD_TWO).unwrap();
        symlink("..2026_01_02", d.join("..data_tmp")).unwrap();
        fs::rename(d.join("..data_tmp"), d.join("..data")).unwrap();
        fs::remove_dir_all(d.join("..2026_01_01")).unwrap();

        eventually("the swapped file to load", || {
            handle.current().name() == "two"
        })
        .await;
        assert_eq!(stats.successes.load(Ordering::Relaxed), 1);
        assert_eq!(stats.failures.load(Ordering::Relaxed), 0);
        task.abort();
    }
}
