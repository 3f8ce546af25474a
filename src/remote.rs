//! `syncer clone`, the first push of `init --remote`, and the replication
//! daemon of a mount. (`sync`, `pin` and `unpin` are in `control::handlers`.)

use std::path::Path;
use std::sync::Arc;

use anyhow::{bail, Context, Result};
use engine::config::format_size_human as human;
use engine::{LiveTree, TreeRead};
use indicatif::{ProgressBar, ProgressStyle};
use syncer_replication::push::{self, Progress};
use syncer_replication::{Daemon, DaemonOptions, Remote, Rsync};

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
