//! `syncer clone`, `sync`, `pin`, `unpin`, the remote part of `status`,
//! and the replication daemon of a mount.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use engine::config::format_size_human as human;
use engine::ids::NodeId;
use engine::{LiveTree, TreeRead};
use indicatif::{ProgressBar, ProgressStyle};
use syncer_replication::push::{self, Progress};
use syncer_replication::status::{Health, StatusFile};
use syncer_replication::{Daemon, DaemonOptions, Remote, RemoteSource, Rsync};

fn open(dir: &Path) -> Result<LiveTree> {
    match LiveTree::open(dir) {
        Err(engine::Error::Locked { .. }) => {
            bail!("{} is in use (mounted?); unmount it first", dir.display())
        }
        r => r.with_context(|| format!("open {}", dir.display())),
    }
}

fn remote_of(e: &LiveTree) -> Result<Remote> {
    let Some(r) = e.config().remote.as_deref() else {
        bail!("{} has no remote (set `remote` in {})", e.data_dir().display(), e.layout().config().display())
    };
    Ok(Remote::parse(r)?)
}

/// Starts background replication for a mounted engine, if it has a remote.
pub fn start_daemon(engine: &Arc<LiveTree>) -> Result<Option<Daemon>> {
    if engine.config().remote.is_none() {
        return Ok(None);
    }
    let remote = remote_of(engine)?;
    let opts = DaemonOptions::from_config(engine.config(), &remote);
    Ok(Some(Daemon::start(engine.clone(), remote, opts)))
}

fn bar(total: u64, what: &str) -> ProgressBar {
    let pb = ProgressBar::new(total);
    pb.set_style(
        ProgressStyle::with_template("{msg:10} [{bar:30}] {pos}/{len} {per_sec} {eta}")
            .unwrap_or_else(|_| ProgressStyle::default_bar())
            .progress_chars("=> "),
    );
    pb.set_message(what.to_string());
    pb
}

fn push_with_bar(e: &LiveTree, rsync: &Rsync) -> Result<push::PushReport> {
    let pb = bar(0, "push");
    let r = push::push(e, rsync, &mut |p| match p {
        Progress::Blocks { done, total, .. } => {
            pb.set_length(total);
            pb.set_position(done);
        }
        Progress::Log => pb.set_message("log"),
    });
    pb.finish_and_clear();
    Ok(r?)
}

/// Pushes the initial state of a data dir just made by `init --remote`.
pub fn initial_push(dir: &Path) -> Result<()> {
    let e = open(dir)?;
    let rsync = Rsync::new(remote_of(&e)?);
    let r = push_with_bar(&e, &rsync).with_context(|| format!("pushing to {}", rsync.remote()))?;
    println!("pushed to {} ({} blocks)", rsync.remote(), r.blocks);
    e.close()?;
    Ok(())
}

/// `syncer clone`.
pub fn clone(dir: &Path, remote: &str, cache_size: Option<&str>) -> Result<()> {
    let cache = cache_size
        .map(|c| engine::config::parse_size(c).map_err(|e| anyhow::anyhow!("--cache-size {c:?}: {e}")))
        .transpose()?;
    let rsync = Rsync::new(Remote::parse(remote)?);
    let e = syncer_replication::pull::clone_into(dir, remote, &rsync, cache)
        .with_context(|| format!("clone {remote} into {}", dir.display()))?;
    let s = e.stats()?;
    println!(
        "cloned {remote} into {} (machine {}): {} files, {} dirs, {} (content fetched on demand)",
        dir.display(),
        e.machine(),
        s.files,
        s.dirs,
        human(s.logical_bytes)
    );
    e.close()?;
    Ok(())
}

/// `syncer sync`: push, pull, import and evict once, in the foreground.
pub fn sync(dir: &Path) -> Result<()> {
    let e = open(dir)?;
    let rsync = Rsync::new(remote_of(&e)?);
    let r = push_with_bar(&e, &rsync).with_context(|| format!("pushing to {}", rsync.remote()))?;
    println!("pushed {} blocks ({}), {} log bytes", r.blocks, human(r.block_bytes), r.log_bytes);
    if r.repaired > 0 {
        println!("repaired {} of our segments on the remote that differed from our log", r.repaired);
    }
    let sp = ProgressBar::new_spinner();
    sp.set_message("pulling peers' logs");
    sp.enable_steady_tick(Duration::from_millis(100));
    let pulled = syncer_replication::pull::pull_log(&rsync, &e.layout().log(), Some(e.machine()));
    sp.finish_and_clear();
    pulled.with_context(|| format!("pulling from {}", rsync.remote()))?;
    let imp = e.import().context("importing peers' events")?;
    println!("imported {} events", imp.applied);
    for p in e.peer_problems() {
        println!("DAMAGE in a peer's log (its later events not imported): {p}");
    }
    let ev = engine::evict::evict(&e)?;
    println!("cache: {} of {} ({} blocks evicted)", human(ev.after), human(ev.limit), ev.evicted);
    e.close()?;
    Ok(())
}

fn resolve(e: &LiveTree, path: &str) -> Result<NodeId> {
    let mut node = NodeId::ROOT;
    for part in path.split('/').filter(|p| !p.is_empty() && *p != ".") {
        node = e.lookup(node, part.as_bytes()).with_context(|| format!("{path}: no {part:?}"))?.id;
    }
    Ok(node)
}

/// `syncer pin` / `unpin`. Pinning fetches the content now.
pub fn pin(dir: &Path, path: &str, pinned: bool) -> Result<()> {
    let e = open(dir)?;
    let node = resolve(&e, path)?;
    let shown = String::from_utf8_lossy(&e.path_of(node)?).into_owned();
    if pinned {
        e.set_pinned(node, true)?;
        e.sync()?;
        if let Some(r) = e.config().remote.as_deref() {
            let rsync = Arc::new(Rsync::new(Remote::parse(r)?));
            let staging = push::staging_dir(&e);
            e.set_block_source(Some(Arc::new(RemoteSource::new(rsync, staging, Arc::new(Health::default())))));
        }
        let prefix = shown.as_bytes();
        let files: Vec<_> = engine::evict::pinned_files(&e)?
            .into_iter()
            .filter(|(p, _, _)| {
                p.starts_with(prefix) && (p.len() == prefix.len() || prefix == b"/" || p[prefix.len()] == b'/')
            })
            .collect();
        let total: u64 = files.iter().map(|(_, _, b)| b.len() as u64).sum();
        let pb = bar(total, "fetch");
        for (p, _, blocks) in &files {
            for (_, b) in blocks {
                e.read_block(b).with_context(|| format!("fetching {}", String::from_utf8_lossy(p)))?;
                pb.inc(1);
            }
        }
        pb.finish_and_clear();
        let nfiles = files.iter().filter(|(_, n, _)| n.kind == engine::event::NodeKind::File).count();
        println!("pinned {shown} ({nfiles} files, {total} blocks local)");
    } else {
        // The pin may sit on the node or on anything below it.
        let prefix = shown.clone().into_bytes();
        let mut n = 0;
        for (p, st, _) in e.dump_tree()? {
            let under = p == prefix || prefix == b"/" || (p.starts_with(&prefix) && p.get(prefix.len()) == Some(&b'/'));
            if under && st.pinned {
                e.set_pinned(st.id, false)?;
                n += 1;
            }
        }
        println!("unpinned {shown} ({n} pins removed)");
    }
    e.close()?;
    Ok(())
}

/// The remote lines of `syncer status`. `engine` is the data dir opened
/// when not mounted; when mounted, the daemon's `status.toml` is shown.
pub fn print_status(dir: &Path, engine: Option<&LiveTree>) -> Result<()> {
    match engine {
        Some(e) => {
            let ev = engine::evict::entries(e)?;
            let local: u64 = ev.iter().map(|c| c.stored_len).sum();
            println!("local blocks: {} of {} limit", human(local), human(e.config().cache_size));
            if e.config().remote.is_some() {
                let plan = push::plan(e)?;
                println!("pending:      {} blocks ({}) not yet pushed", plan.blocks.len(), human(plan.bytes));
                let plan = engine::evict::plan_eviction(&ev, e.config().cache_size, e.config().small_block);
                if plan.after > e.config().cache_size {
                    println!("over limit:   unpushed, pinned and small blocks alone exceed the cache limit");
                }
            }
            let pins = engine::evict::pins(e)?;
            println!("pins:         {}", if pins.is_empty() { "(none)".to_string() } else { join(&pins) });
        }
        None => match StatusFile::load(dir)? {
            None => println!("replication:  no status reported yet"),
            Some(s) => {
                let opt = |v: Option<u64>| v.map_or("?".to_string(), human);
                println!("local blocks: {} of {} limit", opt(s.local_bytes), opt(s.cache_limit));
                println!(
                    "pending:      {} blocks ({})",
                    s.pending_blocks.map_or("?".into(), |n| n.to_string()),
                    opt(s.pending_bytes)
                );
                if s.over_limit == Some(true) {
                    println!("over limit:   unpushed, pinned and small blocks alone exceed the cache limit");
                }
                let reach = match s.reachable {
                    Some(true) => "reachable",
                    Some(false) => "UNREACHABLE",
                    None => "not contacted yet",
                };
                println!(
                    "remote state: {reach} (reported {} s ago)",
                    syncer_replication::status::now_secs().saturating_sub(s.updated)
                );
                if let Some(err) = &s.last_error {
                    println!("last error:   {err}");
                }
                let pins: Vec<Vec<u8>> = s.pins.iter().map(|p| p.clone().into_bytes()).collect();
                println!("pins:         {}", if pins.is_empty() { "(none)".to_string() } else { join(&pins) });
            }
        },
    }
    Ok(())
}

fn join(paths: &[Vec<u8>]) -> String {
    paths.iter().map(|p| String::from_utf8_lossy(p).into_owned()).collect::<Vec<_>>().join(", ")
}
