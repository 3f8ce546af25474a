//! `syncer history` and `syncer restore`, and the WHEN handling shared with
//! `mount --at` and `log inspect`.
//!
//! Every read goes through a point-in-time view (`PastView::open`), which
//! never takes the writer lock, so these commands run beside a live mount.
//! `restore` without `--to` writes into the live tree, which needs the
//! writer: it runs in `control::handlers`, in the mount when the data dir
//! is mounted.

use std::io::Write;
use std::path::Path;

use anyhow::{bail, Context, Result};
use engine::event::NodeKind;
use engine::forensics::{self, When};
use engine::ids::Timestamp;
use engine::{PastView, TreeRead};

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

/// Resolves a WHEN argument (see `engine::forensics::parse_when`) to a time.
pub fn resolve(data_dir: &Path, when: &str) -> Result<Timestamp> {
    let parsed = forensics::parse_when(when, Timestamp::now()).map_err(|e| anyhow::anyhow!("WHEN {e}"))?;
    if let When::Time(t) = parsed {
        return Ok(t);
    }
    let view = open_view(data_dir, None)?;
    forensics::resolve_when(&view, parsed).with_context(|| format!("WHEN {when:?}"))
}

fn path_bytes(path: &str) -> Vec<u8> {
    path.as_bytes().to_vec()
}

/// `syncer history DATA PATH`: every version of the node at PATH (as of `at`).
pub fn print_history(data_dir: &Path, path: &str, at: Option<Timestamp>, json: bool) -> Result<()> {
    let view = open_view(data_dir, at)?;
    let node = forensics::node_at_path(&view, &path_bytes(path)).with_context(|| format!("{path}: not found"))?;
    let versions = forensics::versions(&view, node)?;
    let mut out = std::io::stdout().lock();
    if json {
        let list: Vec<serde_json::Value> = versions
            .iter()
            .map(|v| {
                serde_json::json!({
                    "time": forensics::format_time(v.event.time),
                    "time_ns": v.event.time.0,
                    "event": forensics::event_name(&v.event),
                    "position": v.pos.to_string(),
                    "kind": v.event.change.kind_name(),
                    "size": (!v.removed).then_some(v.size),
                    "removed": v.removed,
                    "change": forensics::describe(&v.event.change),
                })
            })
            .collect();
        let doc = serde_json::json!({ "path": path, "node": node.to_string(), "versions": list });
        writeln!(out, "{doc}")?;
        return Ok(());
    }
    writeln!(out, "{path} (node {node}): {} versions", versions.len())?;
    let rows: Vec<[String; 6]> = versions
        .iter()
        .map(|v| {
            [
                forensics::format_time(v.event.time),
                forensics::event_name(&v.event),
                v.pos.to_string(),
                v.event.change.kind_name().to_string(),
                if v.removed { "removed".to_string() } else { v.size.to_string() },
                forensics::describe(&v.event.change),
            ]
        })
        .collect();
    let header = ["TIME", "EVENT", "POSITION", "KIND", "SIZE", "CHANGE"].map(String::from);
    crate::table::print_table(&mut out, &header, &rows)?;
    Ok(())
}

/// `syncer restore DATA PATH --at WHEN --to DEST` (in place: `control::handlers`).
pub fn restore_to(data_dir: &Path, path: &str, at: Timestamp, dest: &Path) -> Result<()> {
    let view = open_view(data_dir, Some(at))?;
    let p = path_bytes(path);
    let node = forensics::node_at_path(&view, &p)
        .with_context(|| format!("{path} did not exist at {}", forensics::format_time(at)))?;
    let old = view.node(node)?;
    if old.kind != NodeKind::File {
        bail!("{path} was a {:?} at {}; restore handles regular files", old.kind, forensics::format_time(at));
    }
    let data = view.read_file(node)?;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(dest)
        .with_context(|| format!("create {} (restore never overwrites)", dest.display()))?;
    f.write_all(&data).and_then(|()| f.sync_all()).with_context(|| format!("write {}", dest.display()))?;
    println!("restored {path} as of {} to {} ({} bytes)", forensics::format_time(at), dest.display(), data.len());
    Ok(())
}
