//! Background replication while a data dir is mounted: push, poll (pull
//! and import peers' changes), evict and prefetch threads.
//!
//! # When changes travel
//!
//! - **Push**: the engine tells the push thread after every operation that
//!   appends to our log ([`LiveTree::watch_log`]). The thread pushes once no
//!   change has come for [`DaemonOptions::push_delay`], or once the first
//!   unpushed change is [`DaemonOptions::push_max_delay`] old under
//!   continuous writes: changes are batched, and one push runs at a time
//!   (changes made during a push start the next one). With no change, no
//!   push runs. The push makes the log durable before sending it.
//! - **Poll**: every [`DaemonOptions::poll_interval`] the poll thread lists
//!   the lengths of peers' segments on the remote and pulls (then imports)
//!   only if a segment there is longer than ours. Over a local-directory
//!   remote the listing is a directory read, so an idle mount starts no
//!   rsync at all; over ssh it is one `rsync --list-only` run over the
//!   shared connection, so an idle mount starts `60 / poll_interval` rsync
//!   runs a minute (30 at the default 2 s).
//! - At start, one round (push, pull, import) runs before anything else.
//!
//! Always true:
//! - no FUSE call waits on these threads: they share only the engine (whose
//!   locks are short) and their own channels; the engine's notification is
//!   a `try_send` on a channel of capacity one;
//! - at most one push and one pull run at a time;
//! - a failing remote makes the push and poll threads retry with
//!   exponential backoff (up to [`DaemonOptions::max_backoff`]); the failure
//!   is in `status.toml` until a success clears it;
//! - the engine fetches missing blocks through a [`RemoteSource`], so a read
//!   of a non-local block fails after the runner's deadline when the remote
//!   is unreachable; local reads never touch the remote.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{sync_channel, Receiver as StdReceiver, RecvTimeoutError, SyncSender};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crossbeam_channel::{after, bounded, select, Receiver, Sender};
use engine::config::Config;
use engine::evict::EvictReport;
use engine::{ImportReport, LiveTree, TreeRead};

use crate::fetch::RemoteSource;
use crate::push::{self, PushReport};
use crate::remote::{Remote, Rsync};
use crate::status::{now_secs, Health, StatusFile, STATUS_VERSION};
use crate::Result;

/// Timing of the background threads.
#[derive(Clone, Copy, Debug)]
pub struct DaemonOptions {
    /// A push starts this long after the last change...
    pub push_delay: Duration,
    /// ...or this long after the first unpushed change, whichever is first.
    pub push_max_delay: Duration,
    /// Pause between checks of the remote for peers' new log bytes.
    pub poll_interval: Duration,
    /// Pause between eviction passes (one also follows every push).
    pub evict_interval: Duration,
    /// Longest pause between retries of a failing push or poll.
    pub max_backoff: Duration,
    /// rsync's I/O timeout.
    pub io_timeout: Duration,
    /// Hard deadline of a fetch.
    pub fetch_deadline: Duration,
}

impl Default for DaemonOptions {
    /// The config defaults, for a local-directory remote.
    fn default() -> Self {
        DaemonOptions {
            push_delay: engine::config::DEFAULT_PUSH_DELAY,
            push_max_delay: engine::config::DEFAULT_PUSH_MAX_DELAY,
            poll_interval: engine::config::DEFAULT_POLL_INTERVAL,
            evict_interval: Duration::from_secs(30),
            max_backoff: Duration::from_secs(300),
            io_timeout: Duration::from_secs(30),
            fetch_deadline: Duration::from_secs(30),
        }
    }
}

impl DaemonOptions {
    /// The intervals set in `config` (`push_delay`, `push_max_delay`, and
    /// `poll_interval` or `poll_interval_ssh` by the kind of `remote`).
    pub fn from_config(config: &Config, remote: &Remote) -> DaemonOptions {
        DaemonOptions {
            push_delay: config.push_delay,
            push_max_delay: config.push_max_delay,
            poll_interval: if remote.is_ssh() { config.poll_interval_ssh } else { config.poll_interval },
            ..DaemonOptions::default()
        }
    }
}

struct Shared {
    engine: Arc<LiveTree>,
    rsync: Arc<Rsync>,
    source: RemoteSource,
    health: Arc<Health>,
    push_lock: Mutex<()>,
    pull_lock: Mutex<()>,
    /// The last push failed: a working poll must not clear its error.
    push_failing: AtomicBool,
    status: Mutex<StatusFile>,
}

/// The running background threads of one mounted data dir.
pub struct Daemon {
    shared: Arc<Shared>,
    stop: Sender<()>,
    stopping: Arc<AtomicBool>,
    /// Wakes the push thread (which also listens to the engine) at stop.
    wake_push: SyncSender<()>,
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
    /// A full round with the remote: push our new blocks and segments, then
    /// pull peers' segments and merge them into the live tree (the mount
    /// drops its kernel caches for what changed).
    fn round(&self) -> Result<PushReport> {
        let report = self.push()?;
        self.pull(true).map(|_| report)
    }

    /// Pushes our new blocks and segments (one push at a time).
    fn push(&self) -> Result<PushReport> {
        self.push_with(&mut |_| {})
    }

    /// [`Shared::push`], telling `progress` how it goes.
    fn push_with(&self, progress: &mut dyn FnMut(push::Progress)) -> Result<PushReport> {
        let _g = lock(&self.push_lock);
        let r = push::push(&self.engine, &self.rsync, progress);
        self.push_failing.store(r.is_err(), Ordering::Relaxed);
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
                    st.pending_blocks = Some(p.blocks);
                    st.pending_bytes = Some(p.bytes);
                }
            }
        }
        drop(st);
        self.save_status();
        r
    }

    /// Pulls peers' segments and imports them: always if `force`, else
    /// only when a listing of the remote shows log bytes we lack. Returns
    /// whether it pulled.
    fn pull(&self, force: bool) -> Result<bool> {
        self.pull_report(force).map(|r| r.is_some())
    }

    /// [`Shared::pull`], returning what the import did (`None`: nothing
    /// was pulled).
    fn pull_report(&self, force: bool) -> Result<Option<ImportReport>> {
        let _g = lock(&self.pull_lock);
        let log_root = self.engine.replication().log_dir();
        let ours = self.engine.machine();
        let r = (|| -> Result<Option<ImportReport>> {
            if !force && !crate::pull::has_new_bytes(&crate::pull::remote_peer_lens(&self.rsync, ours)?, &log_root) {
                return Ok(None);
            }
            crate::pull::pull_log(&self.rsync, &log_root, Some(ours))?;
            let imported = self.engine.import()?;
            if imported.applied > 0 {
                tracing::info!("imported {} events from peers", imported.applied);
            }
            Ok(Some(imported))
        })();
        match &r {
            Ok(_) if !self.push_failing.load(Ordering::Relaxed) => self.health.ok(),
            Ok(_) => {}
            Err(e) => self.health.failed(e.to_string()),
        }
        if !force && (r.is_err() || r.as_ref().is_ok_and(|pulled| pulled.is_some())) {
            self.save_status();
        }
        r
    }

    fn evict(&self) -> Result<EvictReport> {
        let r = engine::evict::evict(&*self.engine)?;
        let pins = engine::evict::pins(&*self.engine)?;
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
        st.rsync_runs = Some(self.rsync.invocations());
        if err.is_some() || reachable == Some(true) {
            st.last_error = err;
        }
        if let Err(e) = st.save(self.engine.data_dir()) {
            tracing::warn!("writing status: {e}");
        }
    }

    fn prefetch(&self, hashes: Vec<engine::ids::BlockHash>) {
        let rep = self.engine.replication();
        let missing: Vec<_> = hashes.into_iter().filter(|h| !rep.has_blob(h)).collect();
        if missing.is_empty() {
            return;
        }
        match self.source.fetch_many(&missing) {
            Ok(got) => {
                let mut on_remote = Vec::new();
                for (h, stored) in got {
                    match rep.store_fetched(&h, &stored) {
                        Ok(_) => on_remote.push(h),
                        Err(e) => tracing::error!("prefetch refused block {h}: {e}"),
                    }
                }
                // Fetched blocks are on the remote, so the evictor may take them.
                if let Err(e) = rep.mark_on_remote(&on_remote) {
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
    pub fn start(engine: Arc<LiveTree>, remote: Remote, opts: DaemonOptions) -> Daemon {
        Self::start_with(engine, Rsync::new(remote), opts)
    }

    /// [`Daemon::start`] with a given runner (its timeouts are set from
    /// `opts`).
    pub fn start_with(engine: Arc<LiveTree>, mut rsync: Rsync, opts: DaemonOptions) -> Daemon {
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
            pull_lock: Mutex::new(()),
            push_failing: AtomicBool::new(false),
            status: Mutex::new(StatusFile { cache_limit: Some(engine.config().cache_size), ..StatusFile::default() }),
        });
        let (stop, stop_rx) = bounded::<()>(0);
        let stopping = Arc::new(AtomicBool::new(false));
        let (wake_push, changes) = sync_channel::<()>(1);
        engine.watch_log(wake_push.clone());
        let mut threads = Vec::new();
        {
            let (s, stopping, evict_tx) = (shared.clone(), stopping.clone(), evict_tx.clone());
            threads.push(std::thread::spawn(move || push_loop(&s, &stopping, &changes, &evict_tx, opts)));
        }
        {
            let (s, stop_rx) = (shared.clone(), stop_rx.clone());
            threads.push(std::thread::spawn(move || poll_loop(&s, &stop_rx, opts)));
        }
        {
            let (s, stop_rx) = (shared.clone(), stop_rx.clone());
            threads.push(std::thread::spawn(move || evict_loop(&s, &stop_rx, &evict_rx, opts)));
        }
        {
            let (s, stopping) = (shared.clone(), stopping.clone());
            let rx = engine.store().prefetch_requests();
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
        Daemon { shared, stop, stopping, wake_push, evict_tx, threads }
    }

    /// Pushes, pulls and imports now, in the caller's thread (waits for a
    /// running push or pull).
    pub fn push_now(&self) -> Result<PushReport> {
        let r = self.shared.round();
        let _ = self.evict_tx.try_send(());
        r
    }

    /// `syncer sync` while mounted: pushes (telling `progress`), then pulls
    /// and imports, in the caller's thread, serialized with the background
    /// push and pull (it waits for a running one).
    pub fn sync_now(&self, progress: &mut dyn FnMut(push::Progress)) -> Result<(PushReport, ImportReport)> {
        let pushed = self.shared.push_with(progress)?;
        let imported = self.shared.pull_report(true)?.unwrap_or_default();
        Ok((pushed, imported))
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
        let _ = self.wake_push.try_send(());
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

/// Waits for changes and pushes them (see the module docs); the first
/// push is a whole round. `changes` is the engine's log watch, also woken
/// at stop.
fn push_loop(s: &Shared, stopping: &AtomicBool, changes: &StdReceiver<()>, evict: &Sender<()>, opts: DaemonOptions) {
    let mut first_round = true;
    let mut debounce = Debounce::default();
    let mut retry_at: Option<Instant> = None;
    let mut backoff = Duration::from_secs(1);
    loop {
        if stopping.load(Ordering::Relaxed) {
            return;
        }
        let due = if first_round { Some(Instant::now()) } else { retry_at.or(debounce.due(&opts)) };
        let woke = match due {
            None => changes.recv().map_err(|_| RecvTimeoutError::Disconnected),
            Some(at) => changes.recv_timeout(at.saturating_duration_since(Instant::now())),
        };
        match woke {
            Ok(()) => {
                debounce.change(Instant::now());
                continue;
            }
            Err(RecvTimeoutError::Timeout) => {}
            Err(RecvTimeoutError::Disconnected) => return,
        }
        if stopping.load(Ordering::Relaxed) {
            return;
        }
        let r = if first_round { s.round() } else { s.push() };
        match r {
            Ok(r) => {
                if r.blocks > 0 || r.log_bytes > 0 || r.repaired > 0 {
                    tracing::info!(
                        "pushed {} blocks, {} log bytes, repaired {} remote segments",
                        r.blocks,
                        r.log_bytes,
                        r.repaired
                    );
                }
                first_round = false;
                debounce = Debounce::default();
                retry_at = None;
                backoff = Duration::from_secs(1);
                let _ = evict.try_send(());
            }
            Err(e) => {
                tracing::warn!("push failed (retrying in {backoff:?}): {e}");
                retry_at = Some(Instant::now() + backoff);
                backoff = (backoff * 2).min(opts.max_backoff);
            }
        }
    }
}

/// Changes not yet pushed: when the first and the last came.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
struct Debounce {
    first: Option<Instant>,
    last: Option<Instant>,
}

impl Debounce {
    fn change(&mut self, now: Instant) {
        self.first.get_or_insert(now);
        self.last = Some(now);
    }

    /// When to push: `push_delay` after the last change, but no later than
    /// `push_max_delay` after the first; `None` with nothing to push.
    fn due(&self, opts: &DaemonOptions) -> Option<Instant> {
        let (first, last) = (self.first?, self.last?);
        Some((last + opts.push_delay).min(first + opts.push_max_delay))
    }
}

/// Checks the remote for peers' new log bytes every `poll_interval`, and
/// pulls and imports them; backs off while the remote fails.
fn poll_loop(s: &Shared, stop: &Receiver<()>, opts: DaemonOptions) {
    let mut wait = opts.poll_interval;
    let mut backoff = opts.poll_interval.max(Duration::from_secs(1));
    loop {
        select! {
            recv(stop) -> _ => return,
            recv(after(wait)) -> _ => {}
        }
        match s.pull(false) {
            Ok(_) => {
                wait = opts.poll_interval;
                backoff = opts.poll_interval.max(Duration::from_secs(1));
            }
            Err(e) => {
                tracing::warn!("checking the remote for peers' changes failed (retrying in {backoff:?}): {e}");
                wait = backoff;
                backoff = (backoff * 2).min(opts.max_backoff.max(opts.poll_interval));
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pushes_after_a_quiet_pause_or_the_longest_wait() {
        let opts = DaemonOptions {
            push_delay: Duration::from_millis(300),
            push_max_delay: Duration::from_secs(3),
            ..DaemonOptions::default()
        };
        let t0 = Instant::now();
        let ms = |n| t0 + Duration::from_millis(n);
        let mut d = Debounce::default();
        assert_eq!(d.due(&opts), None, "nothing to push: no deadline");
        d.change(ms(0));
        assert_eq!(d.due(&opts), Some(ms(300)));
        d.change(ms(200));
        assert_eq!(d.due(&opts), Some(ms(500)), "each change moves the push back");
        // Changes every 200 ms forever: the push still goes at 3 s.
        for t in (400..10_000).step_by(200) {
            d.change(ms(t));
        }
        assert_eq!(d.due(&opts), Some(ms(3000)));
    }
}
