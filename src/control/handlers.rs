//! The commands that need the data dir's writer (or its live index), run
//! the same way in the mount (over the control socket) and in-process on
//! an unmounted data dir. Every call into the engine made for them is in
//! this file; the rest of `control` only moves bytes.
//!
//! Always true:
//! - a command gets the data dir's one live engine: the mount's own when
//!   mounted (so it sees and changes what the mount serves), else one it
//!   opens and closes (committing) itself;
//! - what a command prints goes through [`Output`], so the text is the
//!   same whichever way it runs; only `status` says which (`state:`);
//! - a change made in the mount behind the kernel's back (a restore, a
//!   resolve) is followed by a cache refresh of the mount, so open files
//!   and cached names show it at once.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{anyhow, bail, Context, Result};
use engine::config::format_size_human as human;
use engine::conflicts::{ContentConflict, Keep};
use engine::event::{BlockChange, NodeKind};
use engine::forensics;
use engine::ids::{NodeId, Timestamp};
use engine::merge::ConflictKind;
use engine::Queries;
use engine::{LiveTree, TreeRead};
use serde_json::json;
use syncer_replication::push::{self, Progress as PushProgress};
use syncer_replication::status::{Health, StatusFile};
use syncer_replication::{Daemon, Remote, RemoteSource, Rsync};

use super::{Output, Progress, Request};

/// What the mount shares with the commands it runs for clients.
pub struct MountCtx {
    /// The mount's live engine.
    pub engine: Arc<LiveTree>,
    /// The data dir (canonical).
    pub data_dir: PathBuf,
    /// Where it is mounted.
    pub mountpoint: PathBuf,
    /// The replication daemon, when the data dir has a remote.
    pub daemon: Option<Arc<Daemon>>,
    /// Drops the kernel's caches of the mount.
    pub refresh: syncer_fs::CacheRefresh,
}

/// One command's view of the data dir.
struct Live<'a> {
    engine: &'a LiveTree,
    data_dir: &'a Path,
    mount: Option<&'a MountCtx>,
}

/// Runs `req` in the mount, on its engine.
pub fn serve(m: &MountCtx, req: &Request, out: &mut dyn Output) -> Result<u8> {
    let live = Live { engine: &m.engine, data_dir: &m.data_dir, mount: Some(m) };
    match req {
        Request::Status { json } => status(&m.data_dir, Some(&live), *json, out),
        Request::Verify { json } => verify(&m.data_dir, *json, out),
        Request::Restore { path, at } => restore_in_place(&live, path, Timestamp(*at), out),
        _ => run_live(&live, req, out),
    }
}

/// Runs `req` in this process on the unmounted data dir `data_dir`.
pub fn local(data_dir: &Path, req: &Request, out: &mut dyn Output) -> Result<u8> {
    match req {
        Request::Status { json } => {
            let opened = match LiveTree::open(data_dir) {
                Ok(e) => Some(e),
                Err(engine::Error::Locked { .. }) => None,
                Err(e) => return Err(e).context("open index"),
            };
            let live = opened.as_ref().map(|e| Live { engine: e, data_dir, mount: None });
            status(data_dir, live.as_ref(), *json, out)
        }
        // Reads the files without the index or the writer lock.
        Request::Verify { json } => verify(data_dir, *json, out),
        Request::Restore { path, at } => {
            // The past version is found before the live tree is opened.
            let e = open_live(data_dir)?;
            let live = Live { engine: &e, data_dir, mount: None };
            let code = restore_in_place(&live, path, Timestamp(*at), out)?;
            e.close().context("committing")?;
            Ok(code)
        }
        _ => {
            let e = open_live(data_dir)?;
            let code = run_live(&Live { engine: &e, data_dir, mount: None }, req, out)?;
            e.close().context("committing")?;
            Ok(code)
        }
    }
}

/// Opens the live tree of an unmounted data dir.
fn open_live(dir: &Path) -> Result<LiveTree> {
    match LiveTree::open(dir) {
        Err(engine::Error::Locked { .. }) => bail!(
            "{} is in use by another syncer process that serves no control socket (a running `syncer sync` or \
             `pin`, or a mount by an older syncer); try again once it ends",
            dir.display()
        ),
        r => {
            let live = r.with_context(|| format!("open {}", dir.display()))?;
            // Writing onto a full disk evicts pushed blocks, as a mount does.
            live.set_room_maker(Some(Arc::new(|t: &LiveTree| engine::evict::make_room(t))));
            Ok(live)
        }
    }
}

fn run_live(live: &Live, req: &Request, out: &mut dyn Output) -> Result<u8> {
    match req {
        Request::Sync { json } => sync(live, *json, out),
        Request::Pin { path } => pin(live, path, out),
        Request::Unpin { path } => unpin(live, path, out),
        Request::Evict { size } => evict(live, *size, out),
        Request::Conflicts { json } => conflicts(live, *json, out),
        Request::Resolve { path, keep } => resolve(live, path, keep, out),
        Request::Status { .. } | Request::Verify { .. } | Request::Restore { .. } => {
            bail!("internal: {req:?} is not a live-tree command")
        }
    }
}

fn lossy(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

fn remote_of(e: &LiveTree) -> Result<Remote> {
    let Some(r) = e.config().remote.as_deref() else {
        bail!("{} has no remote (set `remote` in {})", e.data_dir().display(), e.layout().config().display())
    };
    Ok(Remote::parse(r)?)
}

fn lookup(e: &LiveTree, path: &str) -> Result<NodeId> {
    let mut node = NodeId::ROOT;
    for part in path.split('/').filter(|p| !p.is_empty() && *p != ".") {
        node = e.lookup(node, part.as_bytes()).with_context(|| format!("{path}: no {part:?}"))?.id;
    }
    Ok(node)
}

/// Refreshes the mount's kernel caches after a change made here.
fn refresh(live: &Live) {
    if let Some(m) = live.mount {
        if let Err(e) = m.refresh.refresh() {
            crate::daemon_log::line(&format!("syncer: control: dropping the kernel's caches: {e}"));
        }
    }
}

// ---------------------------------------------------------------- status

fn status(dir: &Path, live: Option<&Live>, json: bool, out: &mut dyn Output) -> Result<u8> {
    let storage = engine::storage::FsStorage;
    let layout = engine::Layout { dir: dir.to_path_buf() };
    let version = engine::format::read(&storage, dir).with_context(|| format!("status {}", dir.display()))?;
    let config = engine::config::Config::load(&storage, &layout.config())?;
    let mut lines = Vec::new();
    let mut j = json!({
        "data_dir": dir.display().to_string(),
        "format": version.to_line().trim(),
        "machine": config.machine.to_string(),
        "remote": config.remote,
        "block_size": config.block_size,
        "hash_size": config.hash_size,
        "cache_limit": config.cache_size,
    });
    lines.push(format!("data dir:     {}", dir.display()));
    lines.push(format!("format:       {}", version.to_line().trim()));
    lines.push(format!("machine:      {}", config.machine));
    lines.push(format!("remote:       {}", config.remote.as_deref().unwrap_or("(none)")));
    lines.push(format!("block size:   {}", human(config.block_size)));
    lines.push(format!("hash size:    {} bytes", config.hash_size));
    lines.push(format!("cache limit:  {}", human(config.cache_size)));
    if let Some((free, total)) = engine::blob::disk_space(dir) {
        let reserve = engine::blob::reserve_on(config.reserve, total);
        let room = free.saturating_sub(reserve);
        let full = if room == 0 { " (full: new data is refused; see README, A full disk)" } else { "" };
        lines.push(format!(
            "disk room:    {} for new data, before the reserve of {}{full}",
            human(room),
            human(reserve)
        ));
        j["disk_room"] = json!(room);
        j["disk_reserve"] = json!(reserve);
    }
    match live {
        Some(l) => {
            let e = l.engine;
            let s = e.stats()?;
            match l.mount {
                Some(m) => {
                    lines.push(format!("state:        mounted on {}", m.mountpoint.display()));
                    j["state"] = json!("mounted");
                    j["mountpoint"] = json!(m.mountpoint.display().to_string());
                }
                None => {
                    lines.push("state:        not mounted".to_string());
                    j["state"] = json!("not mounted");
                }
            }
            lines.push(format!("nodes:        {} ({} files, {} dirs)", s.nodes, s.files, s.dirs));
            lines.push(format!("logical size: {}", human(s.logical_bytes)));
            lines.push(format!("blocks:       {} referenced", human(s.local_blob_bytes)));
            lines.push(format!("events:       {}", s.events));
            j["nodes"] = json!(s.nodes);
            j["files"] = json!(s.files);
            j["dirs"] = json!(s.dirs);
            j["logical_bytes"] = json!(s.logical_bytes);
            j["referenced_block_bytes"] = json!(s.local_blob_bytes);
            j["events"] = json!(s.events);
            let problems = e.peer_problems();
            for p in &problems {
                lines.push(format!("peer damage:  {p}"));
            }
            j["peer_damage"] = json!(problems);
            // Counters and a dry run of the eviction walk: never a listing
            // of the store or a walk of the tree.
            e.cache().flush(false)?;
            let local = e.cache().counts().store_bytes;
            lines.push(format!("local blocks: {} of {} limit", human(local), human(e.config().cache_size)));
            j["local_bytes"] = json!(local);
            if e.config().remote.is_some() {
                let plan = push::plan(e)?;
                lines.push(format!("pending:      {} blocks ({}) not yet pushed", plan.blocks, human(plan.bytes)));
                j["pending_blocks"] = json!(plan.blocks);
                j["pending_bytes"] = json!(plan.bytes);
                let plan = engine::evict::plan(e, e.config().cache_size)?;
                let over = plan.after > e.config().cache_size;
                if over {
                    lines.push("over limit:   unpushed, pinned and small blocks alone exceed the cache limit".into());
                }
                j["over_limit"] = json!(over);
            }
            let pins: Vec<String> = engine::evict::pins(e)?.iter().map(|p| lossy(p)).collect();
            lines.push(format!(
                "pins:         {}",
                if pins.is_empty() { "(none)".to_string() } else { pins.join(", ") }
            ));
            j["pins"] = json!(pins);
            if l.mount.is_some() {
                if let Some(s) = StatusFile::load(dir)? {
                    lines.push(remote_state_line(&s));
                    j["remote_reachable"] = json!(s.reachable);
                    j["remote_last_error"] = json!(s.last_error);
                }
            }
        }
        None => {
            lines.push("state:        in use by another syncer process; counts not shown".to_string());
            j["state"] = json!("in use");
            match StatusFile::load(dir)? {
                None => lines.push("replication:  no status reported yet".into()),
                Some(s) => {
                    let opt = |v: Option<u64>| v.map_or("?".to_string(), human);
                    lines.push(format!("local blocks: {} of {} limit", opt(s.local_bytes), opt(s.cache_limit)));
                    lines.push(format!(
                        "pending:      {} blocks ({})",
                        s.pending_blocks.map_or("?".into(), |n| n.to_string()),
                        opt(s.pending_bytes)
                    ));
                    if s.over_limit == Some(true) {
                        lines.push(
                            "over limit:   unpushed, pinned and small blocks alone exceed the cache limit".into(),
                        );
                    }
                    lines.push(remote_state_line(&s));
                    lines.push(format!(
                        "pins:         {}",
                        if s.pins.is_empty() { "(none)".to_string() } else { s.pins.join(", ") }
                    ));
                    j["local_bytes"] = json!(s.local_bytes);
                    j["pending_blocks"] = json!(s.pending_blocks);
                    j["pending_bytes"] = json!(s.pending_bytes);
                    j["over_limit"] = json!(s.over_limit);
                    j["pins"] = json!(s.pins);
                    j["remote_reachable"] = json!(s.reachable);
                    j["remote_last_error"] = json!(s.last_error);
                }
            }
        }
    }
    if json {
        out.out(&j.to_string());
    } else {
        for l in &lines {
            out.out(l);
        }
    }
    Ok(0)
}

fn remote_state_line(s: &StatusFile) -> String {
    let reach = match s.reachable {
        Some(true) => "reachable",
        Some(false) => "UNREACHABLE",
        None => "not contacted yet",
    };
    let mut line = format!(
        "remote state: {reach} (reported {} s ago)",
        syncer_replication::status::now_secs().saturating_sub(s.updated)
    );
    if let Some(err) = &s.last_error {
        line.push_str(&format!("\nlast error:   {err}"));
    }
    line
}

// ------------------------------------------------------------------ sync

fn sync(live: &Live, json: bool, out: &mut dyn Output) -> Result<u8> {
    let e = live.engine;
    let remote = remote_of(e)?;
    let show = |p: PushProgress, out: &mut dyn Output| match p {
        PushProgress::Blocks { done, total, .. } => out.progress(&Progress { what: "push".into(), done, total }),
        PushProgress::Log => out.progress(&Progress { what: "log".into(), done: 0, total: 0 }),
    };
    let daemon = live.mount.and_then(|m| m.daemon.as_ref());
    let (r, imp, ev) = match daemon {
        Some(d) => {
            let (r, imp) =
                d.sync_now(&mut |p| show(p, &mut *out)).with_context(|| format!("syncing with {}", remote))?;
            (r, imp, d.evict_now()?)
        }
        None => {
            let rsync = Rsync::new(remote);
            let r = push::push(e, &rsync, &mut |p| show(p, &mut *out))
                .with_context(|| format!("pushing to {}", rsync.remote()))?;
            out.progress(&Progress { what: "pull".into(), done: 0, total: 0 });
            syncer_replication::pull::pull_log(&rsync, &e.replication().log_dir(), Some(e.machine()))
                .with_context(|| format!("pulling from {}", rsync.remote()))?;
            let imp = e.import().context("importing peers' events")?;
            (r, imp, engine::evict::evict(e)?)
        }
    };
    let problems = e.peer_problems();
    if json {
        out.out(
            &json!({
                "pushed_blocks": r.blocks,
                "pushed_block_bytes": r.block_bytes,
                "pushed_log_bytes": r.log_bytes,
                "repaired_segments": r.repaired,
                "imported_events": imp.applied,
                "peer_damage": problems,
                "cache_bytes": ev.after,
                "cache_limit": ev.limit,
                "evicted_blocks": ev.evicted,
            })
            .to_string(),
        );
        return Ok(0);
    }
    out.out(&format!("pushed {} blocks ({}), {} log bytes", r.blocks, human(r.block_bytes), r.log_bytes));
    if r.repaired > 0 {
        out.out(&format!("repaired {} of our segments on the remote that differed from our log", r.repaired));
    }
    out.out(&format!("imported {} events", imp.applied));
    for p in problems {
        out.out(&format!("DAMAGE in a peer's log (its later events not imported): {p}"));
    }
    out.out(&format!("cache: {} of {} ({} blocks evicted)", human(ev.after), human(ev.limit), ev.evicted));
    Ok(0)
}

// ------------------------------------------------------------ pin, unpin

fn under(p: &[u8], prefix: &[u8]) -> bool {
    p == prefix || prefix == b"/" || (p.starts_with(prefix) && p.get(prefix.len()) == Some(&b'/'))
}

fn pin(live: &Live, path: &str, out: &mut dyn Output) -> Result<u8> {
    let e = live.engine;
    let node = lookup(e, path)?;
    let shown = lossy(&e.path_of(node)?);
    e.set_pinned(node, true)?;
    e.sync()?;
    // A mount's engine already fetches through its daemon.
    if live.mount.is_none() {
        if let Some(r) = e.config().remote.as_deref() {
            let rsync = Arc::new(Rsync::new(Remote::parse(r)?));
            let staging = push::staging_dir(e);
            e.set_block_source(Some(Arc::new(RemoteSource::new(rsync, staging, Arc::new(Health::default())))));
        }
    }
    let files = engine::evict::files_under(e, node)?;
    let total: u64 = files.iter().map(|(_, _, b)| b.len() as u64).sum();
    let mut done = 0;
    out.progress(&Progress { what: "fetch".into(), done, total });
    for (p, _, blocks) in &files {
        for (_, b) in blocks {
            e.read_block(b).with_context(|| format!("fetching {}", lossy(p)))?;
            done += 1;
            out.progress(&Progress { what: "fetch".into(), done, total });
        }
    }
    let nfiles = files.iter().filter(|(_, n, _)| n.kind == NodeKind::File).count();
    out.out(&format!("pinned {shown} ({nfiles} files, {total} blocks local)"));
    Ok(0)
}

fn unpin(live: &Live, path: &str, out: &mut dyn Output) -> Result<u8> {
    let e = live.engine;
    let node = lookup(e, path)?;
    let shown = lossy(&e.path_of(node)?);
    // The pin may sit on the node or on anything below it.
    let mut n = 0;
    for (id, p) in engine::evict::pinned_nodes(e)? {
        if under(&p, shown.as_bytes()) {
            e.set_pinned(id, false)?;
            n += 1;
        }
    }
    e.sync()?;
    out.out(&format!("unpinned {shown} ({n} pins removed)"));
    Ok(0)
}

// ----------------------------------------------------------------- evict

fn evict(live: &Live, size: Option<u64>, out: &mut dyn Output) -> Result<u8> {
    let e = live.engine;
    let cfg = e.config();
    let limit = size.unwrap_or(cfg.cache_size);
    let (report, plan) = engine::evict::evict_to(e, limit)?;
    let evicted = report.evicted;
    out.out(&format!(
        "evicted {evicted} blocks: local store {} -> {} (target {})",
        human(plan.before),
        human(plan.after),
        human(limit)
    ));
    if plan.after > limit {
        out.out(&format!(
            "still over the target: {} not yet pushed (`syncer sync` pushes it), and pinned and small blocks, \
             always stay local",
            human(plan.unpushed)
        ));
    }
    Ok(0)
}

// ------------------------------------------------------- conflicts, resolve

fn conflicts(live: &Live, json: bool, out: &mut dyn Output) -> Result<u8> {
    let (e, dir) = (live.engine, live.data_dir);
    let open = e.content_conflicts()?;
    let all = e.index()?.conflicts()?;
    let mut j_open = Vec::new();
    let mut j_all = Vec::new();
    let mut lines = Vec::new();
    for c in &open {
        j_open.push(json!({
            "original": lossy(&c.original_path),
            "copy": lossy(&c.copy_path),
            "kept_writer": c.kept_writer.to_string(),
            "kept_time": forensics::format_time(c.kept_time),
            "copy_writer": c.copy_writer.to_string(),
            "copy_time": forensics::format_time(c.copy_time),
        }));
        lines.push(format!("content {}", lossy(&c.original_path)));
        lines.push(format!(
            "  kept the name:  {} by machine {} at {}",
            lossy(&c.original_path),
            c.kept_writer,
            forensics::format_time(c.kept_time)
        ));
        lines.push(format!(
            "  conflict copy:  {} by machine {} at {}",
            lossy(&c.copy_path),
            c.copy_writer,
            forensics::format_time(c.copy_time)
        ));
        lines.push(format!(
            "  to end it: syncer resolve {} {} --keep original  (or copy, both, mine, theirs)",
            crate::conflicts::shell_quote(&dir.display().to_string()),
            crate::conflicts::shell_quote(&lossy(&c.copy_path))
        ));
    }
    let (mut names, mut concurrent, mut content) = (0, 0, 0);
    for c in &all {
        let (y, m, d) = engine::civil_date(c.time);
        let date = format!("{y:04}-{m:02}-{d:02}");
        let dir_path = lossy(&e.path_of(c.parent)?);
        let join = |name: &[u8]| {
            let base = if dir_path == "/" { String::new() } else { dir_path.clone() };
            format!("{base}/{}", lossy(name))
        };
        let event = format!("{}#{}", c.event.0, c.event.1);
        match &c.kind {
            ConflictKind::Name => {
                names += 1;
                let winner_at = lossy(&e.path_of(c.winner)?);
                j_all.push(json!({
                    "kind": "name", "date": date, "path": join(&c.wanted), "winner": c.winner.to_string(),
                    "winner_path": winner_at, "node": c.node.to_string(), "renamed_to": join(&c.given), "event": event,
                }));
                lines.push(format!("{date} name {}", join(&c.wanted)));
                lines.push(format!("  kept the name:  node {} (now at {winner_at})", c.winner));
                lines.push(format!("  renamed:        node {} -> {} (event {event})", c.node, join(&c.given)));
                lines.push("  to swap them, rename both through the mount; both versions stay in history".into());
            }
            ConflictKind::Concurrent { others } => {
                concurrent += 1;
                let now_at = lossy(&e.path_of(c.node)?);
                let others: Vec<String> = others.iter().map(|m| m.to_string()).collect();
                j_all.push(json!({
                    "kind": "concurrent", "date": date, "path": now_at, "node": c.node.to_string(),
                    "event": event, "not_seen": others,
                }));
                lines.push(format!("{date} concurrent change {now_at} (node {})", c.node));
                lines.push(format!("  event {event} had not seen changes by {}", others.join(", ")));
                lines.push("  merged field by field; where both changed one field, the later change won".into());
                lines.push(format!(
                    "  the other version: `syncer history {} {now_at}`, then `syncer restore --at`",
                    dir.display()
                ));
            }
            ConflictKind::Content { .. } => {
                content += 1;
                j_all.push(json!({
                    "kind": "content", "date": date, "path": join(&c.wanted), "copy": join(&c.given),
                    "node": c.node.to_string(), "event": event,
                }));
            }
        }
    }
    if json {
        out.out(
            &json!({
                "open": j_open,
                "resolved": j_all,
                "open_content": open.len(),
                "content": content,
                "name": names,
                "concurrent": concurrent,
            })
            .to_string(),
        );
        return Ok(0);
    }
    if all.is_empty() {
        out.out("no conflicts");
        return Ok(0);
    }
    for l in &lines {
        out.out(l);
    }
    out.out(&format!(
        "{} open content conflicts ({content} in all), {names} name conflicts, {concurrent} concurrent changes",
        open.len()
    ));
    Ok(0)
}

/// The open conflict that `path` names: its copy, or its original when that
/// has exactly one open copy.
fn find_conflict(e: &LiveTree, path: &str) -> Result<ContentConflict> {
    let node = lookup(e, path)?;
    let open = e.content_conflicts()?;
    if let Some(c) = open.iter().find(|c| c.copy == node) {
        return Ok(c.clone());
    }
    let of: Vec<&ContentConflict> = open.iter().filter(|c| c.original == node).collect();
    match of.as_slice() {
        [one] => Ok((*one).clone()),
        [] => bail!("{path}: no open content conflict (see `syncer conflicts`)"),
        many => {
            let copies: Vec<String> = many.iter().map(|c| lossy(&c.copy_path)).collect();
            bail!("{path} has {} conflict copies; name the one to resolve: {}", many.len(), copies.join(", "))
        }
    }
}

fn resolve(live: &Live, path: &str, keep: &str, out: &mut dyn Output) -> Result<u8> {
    let e = live.engine;
    let c = find_conflict(e, path)?;
    let me = e.machine();
    let keep = match keep {
        "original" => Keep::Original,
        "copy" => Keep::Copy,
        "both" => Keep::Both,
        "mine" | "theirs" => {
            let copy_is_mine = match (c.copy_writer == me, c.kept_writer == me) {
                (true, false) => true,
                (false, true) => false,
                _ => {
                    return Err(anyhow!(
                        "{path}: --keep mine/theirs needs one version written here (machine {me}); \
                         the original is by {} and the copy by {}: use --keep original or --keep copy",
                        c.kept_writer,
                        c.copy_writer
                    ))
                }
            };
            if copy_is_mine == (keep == "mine") {
                Keep::Copy
            } else {
                Keep::Original
            }
        }
        other => bail!("--keep {other:?}: one of original, copy, both, mine, theirs"),
    };
    e.resolve_conflict(c.copy, keep).with_context(|| format!("resolve {}", lossy(&c.copy_path)))?;
    e.sync()?;
    refresh(live);
    let (orig, copy) = (lossy(&c.original_path), lossy(&c.copy_path));
    out.out(&match keep {
        Keep::Original => format!("kept {orig} as it was; removed {copy} (its version stays in history)"),
        Keep::Copy => {
            format!("{orig} now holds the version of {copy}, which is removed; the replaced version stays in history")
        }
        Keep::Both => format!("kept both: {copy} is now an ordinary file"),
    });
    Ok(0)
}

// ---------------------------------------------------------------- verify

fn verify(dir: &Path, json: bool, out: &mut dyn Output) -> Result<u8> {
    let r = engine::forensics::verify(dir).with_context(|| format!("verify {}", dir.display()))?;
    if json {
        out.out(
            &json!({
                "machines": r.machines,
                "segments": r.segments,
                "records": r.records,
                "blocks": r.blocks,
                "blocks_ok": r.blocks_ok,
                "blocks_remote": r.blocks_remote,
                "torn_tails": r.torn_tails,
                "problems": r.problems,
                "clean": r.is_clean(),
            })
            .to_string(),
        );
    } else {
        out.out(&format!(
            "{} machines, {} segments, {} records, {} blocks ({} ok, {} on the remote only)",
            r.machines, r.segments, r.records, r.blocks, r.blocks_ok, r.blocks_remote
        ));
        for t in &r.torn_tails {
            out.out(&format!("note: {t} (cut off on next open)"));
        }
        for p in &r.problems {
            out.out(&format!("DAMAGE: {p}"));
        }
    }
    Ok(if r.is_clean() { 0 } else { 3 })
}

// --------------------------------------------------------------- restore

/// Writes the version of `path` at `at` into the live tree as new events.
fn restore_in_place(live: &Live, path: &str, at: Timestamp, out: &mut dyn Output) -> Result<u8> {
    let p = path.as_bytes();
    let (old, blocks) = {
        let view = crate::history_cmd::open_view(live.data_dir, Some(at))?;
        let node = forensics::node_at_path(&view, p)
            .with_context(|| format!("{path} did not exist at {}", forensics::format_time(at)))?;
        let old = view.node(node)?;
        if old.kind != NodeKind::File {
            bail!("{path} was a {:?} at {}; restore handles regular files", old.kind, forensics::format_time(at));
        }
        let count = engine::tree::block_count(old.size, view.block_size());
        let stored: std::collections::BTreeMap<u64, _> = view.file_blocks(node, 0, count)?.into_iter().collect();
        let blocks: Vec<BlockChange> =
            (0..count).map(|index| BlockChange { index, block: stored.get(&index).copied() }).collect();
        (old, blocks)
    };
    let e = live.engine;
    let (dir, name) = match p.iter().rposition(|&b| b == b'/') {
        Some(i) => (&p[..i], &p[i + 1..]),
        None => (&[][..], p),
    };
    let parent = forensics::node_at_path(e, dir).with_context(|| format!("{path}: parent directory missing now"))?;
    let target = match e.lookup(parent, name) {
        Ok(n) if n.kind == NodeKind::File => n.id,
        Ok(n) => bail!("{path} is now a {:?}; move it away first", n.kind),
        Err(engine::Error::Fs { err: engine::FsError::NotFound, .. }) => {
            e.create(parent, name, NodeKind::File, old.attrs, b"")?.id
        }
        Err(err) => return Err(err.into()),
    };
    e.write_blocks(target, old.size, blocks)?;
    if e.node(target)?.size > old.size {
        e.truncate(target, old.size)?;
    }
    e.sync()?;
    refresh(live);
    out.out(&format!(
        "restored {path} as of {} into the live tree ({} bytes; recorded as new events)",
        forensics::format_time(at),
        old.size
    ));
    Ok(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn under_is_a_path_prefix() {
        assert!(under(b"/a/b", b"/a"));
        assert!(under(b"/a", b"/a"));
        assert!(!under(b"/ab", b"/a"));
        assert!(under(b"/x", b"/"));
    }
}
