//! Background replication while a data dir is mounted: push (then pull and
//! import peers' changes), evict and prefetch threads.
//!
//! Always true:
//! - no FUSE call waits on these threads: they share only the engine (whose
//!   locks are short) and their own channels;
//! - a failing remote makes the push thread retry with exponential backoff
//!   (up to [`DaemonOptions::max_backoff`]); the failure is in
//!   `status.toml` until a success clears it;
//! - the engine fetches missing blocks through a [`RemoteSource`], so a read
//!   of a non-local block fails after the runner's deadline when the remote
//!   is unreachable; local reads never touch the remote.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use crossbeam_channel::{after, bounded, select, Receiver, Sender};
use engine::cache::EvictReport;
use engine::Engine;

use crate::fetch::RemoteSource;
use crate::push::{self, PushReport};
use crate::remote::{Remote, Rsync};
use crate::status::{now_secs, Health, StatusFile, STATUS_VERSION};
use crate::Result;

/// Timing of the background threads.
#[derive(Clone, Copy, Debug)]
pub struct DaemonOptions {
    /// Pause between pushes while all is well.
    pub push_interval: Duration,
    /// Pause between eviction passes (one also follows every push).
    pub evict_interval: Duration,
    /// Longest pause between retries of a failing push.
    pub max_backoff: Duration,
    /// rsync's I/O timeout.
    pub io_timeout: Duration,
    /// Hard deadline of a fetch.
    pub fetch_deadline: Duration,
}

impl Default for DaemonOptions {
    fn default() -> Self {
        DaemonOptions {
            push_interval: Duration::from_secs(10),
            evict_interval: Duration::from_secs(30),
            max_backoff: Duration::from_secs(300),
            io_timeout: Duration::from_secs(30),
            fetch_deadline: Duration::from_secs(30),
        }
    }
}

struct Shared {
    engine: Arc<Engine>,
    rsync: Arc<Rsync>,
    source: RemoteSource,
    health: Arc<Health>,
    push_lock: Mutex<()>,
    status: Mutex<StatusFile>,
}

/// The running background threads of one mounted data dir.
pub struct Daemon {
    shared: Arc<Shared>,
    stop: Sender<()>,
    stopping: Arc<AtomicBool>,
    evict_tx: Sender<()>,
    threads: Vec<JoinHandle<()>>,
}

impl std::fmt::Debug for Daemon {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Daemon").field("remote", self.shared.rsync.remote()).finish_non_exhaustive()
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Shared {
    /// One round with the remote: push our new blocks and segments, then
    /// pull peers' segments and merge them into the live tree (the mount
    /// drops its kernel caches for what changed).
    fn push(&self) -> Result<PushReport> {
        let _g = lock(&self.push_lock);
        let r = push::push(&self.engine, &self.rsync, &mut |_| {}).and_then(|report| {
            let log_root = self.engine.layout().log();
            crate::pull::pull_log(&self.rsync, &log_root, Some(self.engine.machine()))?;
            let imported = self.engine.import()?;
            if imported.applied > 0 {
                tracing::info!("imported {} events from peers", imported.applied);
            }
            Ok(report)
        });
        let mut st = lock(&self.status);
        match &r {
            Ok(_) => {
                self.health.ok();
                st.last_push = Some(now_secs());
                st.pending_blocks = Some(0);
                st.pending_bytes = Some(0);
            }
            Err(e) => {
                self.health.failed(e.to_string());
                if let Ok(p) = push::plan(&self.engine) {
                    st.pending_blocks = Some(p.blocks.len() as u64);
                    st.pending_bytes = Some(p.bytes);
                }
            }
        }
        drop(st);
        self.save_status();
        r
    }

    fn evict(&self) -> Result<EvictReport> {
        let r = engine::cache::evict(&self.engine)?;
        let pins = engine::cache::pins(&self.engine)?;
        {
            let mut st = lock(&self.status);
            st.local_bytes = Some(r.after);
            st.cache_limit = Some(r.limit);
            st.over_limit = Some(r.over_limit);
            st.pins = pins.iter().map(|p| String::from_utf8_lossy(p).into_owned()).collect();
        }
        self.save_status();
        Ok(r)
    }

    fn save_status(&self) {
        let mut st = lock(&self.status);
        let (reachable, err) = self.health.get();
        st.version = STATUS_VERSION;
        st.updated = now_secs();
        st.remote = Some(self.rsync.remote().to_string());
        st.reachable = reachable;
        if err.is_some() || reachable == Some(true) {
            st.last_error = err;
        }
        if let Err(e) = st.save(self.engine.data_dir()) {
            tracing::warn!("writing status: {e}");
        }
    }

    fn prefetch(&self, hashes: Vec<engine::ids::BlockHash>) {
        let missing: Vec<_> = hashes.into_iter().filter(|h| !self.engine.blobs().contains(h)).collect();
        if missing.is_empty() {
            return;
        }
        match self.source.fetch_many(&missing) {
            Ok(got) => {
                let mut on_remote = Vec::new();
                for (h, stored) in got {
                    match self.engine.blobs().put_raw_verified(&h, &stored) {
                        Ok(_) => on_remote.push(h),
                        Err(e) => tracing::error!("prefetch refused block {h}: {e}"),
                    }
                }
                // Fetched blocks are on the remote, so the evictor may take them.
                if let Err(e) = self.engine.cache().mark_pushed(&on_remote) {
                    tracing::warn!("recording {} prefetched blocks as on the remote: {e}", on_remote.len());
                }
            }
            Err(e) => tracing::warn!("prefetch of {} blocks: {e}", missing.len()),
        }
    }
}

impl Daemon {
    /// Starts the threads for `engine` and `remote`, and makes the engine
    /// fetch missing blocks from it.
    pub fn start(engine: Arc<Engine>, remote: Remote, opts: DaemonOptions) -> Daemon {
        Self::start_with(engine, Rsync::new(remote), opts)
    }

    /// [`Daemon::start`] with a given runner (its timeouts are set from
    /// `opts`).
    pub fn start_with(engine: Arc<Engine>, mut rsync: Rsync, opts: DaemonOptions) -> Daemon {
        rsync.io_timeout = opts.io_timeout;
        rsync.fetch_deadline = opts.fetch_deadline;
        let rsync = Arc::new(rsync);
        let health = Arc::new(Health::default());
        let (evict_tx, evict_rx) = bounded::<()>(1);
        let source = RemoteSource::new(rsync.clone(), push::staging_dir(&engine), health.clone())
            .notify_after_fetch(evict_tx.clone());
        engine.set_block_source(Some(Arc::new(source.clone())));
        let shared = Arc::new(Shared {
            engine: engine.clone(),
            rsync,
            source,
            health,
            push_lock: Mutex::new(()),
            status: Mutex::new(StatusFile { cache_limit: Some(engine.config().cache_size), ..StatusFile::default() }),
        });
        let (stop, stop_rx) = bounded::<()>(0);
        let stopping = Arc::new(AtomicBool::new(false));
        let mut threads = Vec::new();
        {
            let (s, stop_rx, evict_tx) = (shared.clone(), stop_rx.clone(), evict_tx.clone());
            threads.push(std::thread::spawn(move || push_loop(&s, &stop_rx, &evict_tx, opts)));
        }
        {
            let (s, stop_rx) = (shared.clone(), stop_rx.clone());
            threads.push(std::thread::spawn(move || evict_loop(&s, &stop_rx, &evict_rx, opts)));
        }
        {
            let (s, stopping) = (shared.clone(), stopping.clone());
            let rx = engine.prefetch_requests();
            threads.push(std::thread::spawn(move || {
                while !stopping.load(Ordering::Relaxed) {
                    match rx.recv_timeout(Duration::from_millis(200)) {
                        Ok(hashes) => s.prefetch(hashes),
                        Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {}
                        Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => break,
                    }
                }
            }));
        }
        Daemon { shared, stop, stopping, evict_tx, threads }
    }

    /// Pushes now, in the caller's thread (waits for a running push).
    pub fn push_now(&self) -> Result<PushReport> {
        let r = self.shared.push();
        let _ = self.evict_tx.try_send(());
        r
    }

    /// Runs an eviction pass now, in the caller's thread.
    pub fn evict_now(&self) -> Result<EvictReport> {
        self.shared.evict()
    }

    /// The runner (for its counters).
    pub fn rsync(&self) -> &Arc<Rsync> {
        &self.shared.rsync
    }

    /// Stops the threads (a running push or fetch finishes first) and
    /// detaches the engine from the remote.
    pub fn stop(mut self) {
        self.shutdown();
    }

    fn shutdown(&mut self) {
        self.stopping.store(true, Ordering::Relaxed);
        self.shared.rsync.cancel();
        // Closing the channel wakes every `select!`.
        let (dead, _) = bounded(0);
        drop(std::mem::replace(&mut self.stop, dead));
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
        self.shared.engine.set_block_source(None);
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        self.shutdown();
    }
}

fn push_loop(s: &Shared, stop: &Receiver<()>, evict: &Sender<()>, opts: DaemonOptions) {
    let mut wait = Duration::ZERO;
    let mut backoff = Duration::from_secs(1);
    loop {
        select! {
            recv(stop) -> _ => return,
            recv(after(wait)) -> _ => {}
        }
        match s.push() {
            Ok(r) => {
                if r.blocks > 0 || r.log_bytes > 0 || r.repaired > 0 {
                    tracing::info!(
                        "pushed {} blocks, {} log bytes, repaired {} remote segments",
                        r.blocks,
                        r.log_bytes,
                        r.repaired
                    );
                }
                backoff = Duration::from_secs(1);
                wait = opts.push_interval;
                let _ = evict.try_send(());
            }
            Err(e) => {
                tracing::warn!("push failed (retrying in {backoff:?}): {e}");
                wait = backoff;
                backoff = (backoff * 2).min(opts.max_backoff);
            }
        }
    }
}

fn evict_loop(s: &Shared, stop: &Receiver<()>, kick: &Receiver<()>, opts: DaemonOptions) {
    loop {
        select! {
            recv(stop) -> _ => return,
            recv(kick) -> _ => {}
            recv(after(opts.evict_interval)) -> _ => {}
        }
        if let Err(e) = s.evict() {
            tracing::warn!("eviction pass: {e}");
        }
    }
}
