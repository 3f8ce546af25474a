//! `syncer history` and `syncer restore`, and the WHEN handling shared with
//! `mount --at` and `log inspect`.
//!
//! Every read goes through a point-in-time view (`PastView::open`), which
//! never takes the writer lock, so these commands run beside a live mount.
//! `restore` without `--to` writes into the live tree, which needs the
//! writer lock: with a live mount of the data dir it fails and says to
//! unmount first or use `--to`.

use std::io::Write;
use std::path::Path;

use anyhow::{bail, Context, Result};
use engine::event::{BlockChange, NodeKind};
use engine::history::{self, When};
use engine::ids::Timestamp;
use engine::{LiveTree, PastView, TreeRead};

/// The latest time a view can show (every event).
pub const LATEST: Timestamp = Timestamp(i64::MAX);

/// A point-in-time view of `data_dir` (every event when `at` is `None`).
pub fn open_view(data_dir: &Path, at: Option<Timestamp>) -> Result<PastView> {
    let e = PastView::open(data_dir, at.unwrap_or(LATEST))
        .with_context(|| format!("open {} (read-only view)", data_dir.display()))?;
    if let Some(note) = &e.open_report().stale_history {
        eprintln!("syncer: note: {note}");
    }
    Ok(e)
}

/// Resolves a WHEN argument (see `engine::history::parse_when`) to a time.
pub fn resolve(data_dir: &Path, when: &str) -> Result<Timestamp> {
    let parsed = history::parse_when(when, Timestamp::now()).map_err(|e| anyhow::anyhow!("WHEN {e}"))?;
    if let When::Time(t) = parsed {
        return Ok(t);
    }
    let view = open_view(data_dir, None)?;
    let ix = view.index()?;
    history::resolve_when(view.storage().as_ref(), &view.layout().log(), &ix, view.machine(), parsed)
        .with_context(|| format!("WHEN {when:?}"))
}

fn path_bytes(path: &str) -> Vec<u8> {
    path.as_bytes().to_vec()
}

/// `syncer history DATA PATH`: every version of the node at PATH (as of `at`).
pub fn print_history(data_dir: &Path, path: &str, at: Option<Timestamp>) -> Result<()> {
    let view = open_view(data_dir, at)?;
    let node = history::node_at_path(&view, &path_bytes(path)).with_context(|| format!("{path}: not found"))?;
    let versions = history::versions(&view, node)?;
    let mut out = std::io::stdout().lock();
    writeln!(out, "{path} (node {node}): {} versions", versions.len())?;
    let rows: Vec<[String; 6]> = versions
        .iter()
        .map(|v| {
            [
                history::format_time(v.event.time),
                history::event_name(&v.event),
                v.pos.to_string(),
                v.event.change.kind_name().to_string(),
                if v.removed { "removed".to_string() } else { v.size.to_string() },
                history::describe(&v.event.change),
            ]
        })
        .collect();
    let header = ["TIME", "EVENT", "POSITION", "KIND", "SIZE", "CHANGE"].map(String::from);
    crate::log_cmd::print_table(&mut out, &header, &rows)?;
    Ok(())
}

/// `syncer restore DATA PATH --at WHEN [--to DEST]`.
pub fn restore(data_dir: &Path, path: &str, at: Timestamp, to: Option<&Path>) -> Result<()> {
    let view = open_view(data_dir, Some(at))?;
    let p = path_bytes(path);
    let node = history::node_at_path(&view, &p)
        .with_context(|| format!("{path} did not exist at {}", history::format_time(at)))?;
    let old = view.node(node)?;
    if old.kind != NodeKind::File {
        bail!("{path} was a {:?} at {}; restore handles regular files", old.kind, history::format_time(at));
    }
    if let Some(dest) = to {
        let data = view.read_file(node)?;
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(dest)
            .with_context(|| format!("create {} (restore never overwrites)", dest.display()))?;
        f.write_all(&data).and_then(|()| f.sync_all()).with_context(|| format!("write {}", dest.display()))?;
        println!("restored {path} as of {} to {} ({} bytes)", history::format_time(at), dest.display(), data.len());
        return Ok(());
    }
    let blocks: Vec<BlockChange> = {
        let count = engine::tree::block_count(old.size, view.block_size());
        let stored: std::collections::BTreeMap<u64, _> = view.file_blocks(node, 0, count)?.into_iter().collect();
        (0..count).map(|index| BlockChange { index, block: stored.get(&index).copied() }).collect()
    };
    drop(view);
    let live = LiveTree::open(data_dir).map_err(|e| match e {
        engine::Error::Locked { .. } => anyhow::anyhow!(
            "{}: {e}. Restoring into the live tree needs the data dir to itself: unmount it first, \
             or restore a copy with --to DEST (then copy it into the mount)",
            data_dir.display()
        ),
        e => anyhow::anyhow!("open {}: {e}", data_dir.display()),
    })?;
    // A restore onto a full disk evicts pushed blocks, as a mount does.
    live.set_room_maker(Some(std::sync::Arc::new(|t: &LiveTree| engine::evict::make_room(t))));
    let (dir, name) = match p.iter().rposition(|&b| b == b'/') {
        Some(i) => (&p[..i], &p[i + 1..]),
        None => (&[][..], &p[..]),
    };
    let parent = history::node_at_path(&live, dir).with_context(|| format!("{path}: parent directory missing now"))?;
    let target = match live.lookup(parent, name) {
        Ok(n) if n.kind == NodeKind::File => n.id,
        Ok(n) => bail!("{path} is now a {:?}; move it away first", n.kind),
        Err(engine::Error::Fs { err: engine::FsError::NotFound, .. }) => {
            live.create(parent, name, NodeKind::File, old.attrs, b"")?.id
        }
        Err(e) => return Err(e.into()),
    };
    live.write_blocks(target, old.size, blocks)?;
    if live.node(target)?.size > old.size {
        live.truncate(target, old.size)?;
    }
    live.close()?;
    println!(
        "restored {path} as of {} into the live tree ({} bytes; recorded as new events)",
        history::format_time(at),
        old.size
    );
    Ok(())
}
