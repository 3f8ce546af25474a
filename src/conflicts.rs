//! `syncer conflicts` and `syncer resolve`: every conflict the merge
//! resolved, with both sides and how to get the other side back, and the
//! way to end a content conflict. Nothing is destroyed by a conflict: both
//! versions of a file changed on two machines at once stay whole and visible
//! (one as a conflict copy), both nodes of a name collision stay in the
//! tree, and every version of every node stays in history (`syncer
//! history`, `syncer restore --at`).

use std::path::Path;

use anyhow::{anyhow, bail, Context, Result};
use engine::conflicts::{ContentConflict, Keep};
use engine::ids::NodeId;
use engine::merge::ConflictKind;

fn lossy(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// `s` as one shell word: single-quoted unless it holds only plain
/// characters.
fn shell_quote(s: &str) -> String {
    if !s.is_empty() && s.bytes().all(|b| b.is_ascii_alphanumeric() || b"/._-+=:,@".contains(&b)) {
        return s.to_string();
    }
    format!("'{}'", s.replace('\'', "'\\''"))
}

fn date_time(t: engine::ids::Timestamp) -> String {
    engine::history::format_time(t)
}

/// Prints the conflicts of the data dir at `dir`.
pub fn print(dir: &Path) -> Result<()> {
    let e = engine::Engine::open(dir).with_context(|| format!("open {}", dir.display()))?;
    let open = e.content_conflicts()?;
    let conflicts = e.index()?.conflicts()?;
    if conflicts.is_empty() {
        println!("no conflicts");
        return Ok(());
    }
    for c in &open {
        println!("content {}", lossy(&c.original_path));
        println!(
            "  kept the name:  {} by machine {} at {}",
            lossy(&c.original_path),
            c.kept_writer,
            date_time(c.kept_time)
        );
        println!(
            "  conflict copy:  {} by machine {} at {}",
            lossy(&c.copy_path),
            c.copy_writer,
            date_time(c.copy_time)
        );
        println!(
            "  to end it: syncer resolve {} {} --keep original  (or copy, both, mine, theirs)",
            shell_quote(&dir.display().to_string()),
            shell_quote(&lossy(&c.copy_path))
        );
    }
    let (mut names, mut concurrent, mut content) = (0, 0, 0);
    for c in &conflicts {
        let (y, m, d) = engine::calendar::civil_date(c.time);
        let dir_path = lossy(&e.path_of(c.parent)?);
        let join = |name: &[u8]| {
            let base = if dir_path == "/" { String::new() } else { dir_path.clone() };
            format!("{base}/{}", lossy(name))
        };
        match &c.kind {
            ConflictKind::Name => {
                names += 1;
                let winner_at = lossy(&e.path_of(c.winner)?);
                println!("{y:04}-{m:02}-{d:02} name {}", join(&c.wanted));
                println!("  kept the name:  node {} (now at {winner_at})", c.winner);
                println!("  renamed:        node {} -> {} (event {}#{})", c.node, join(&c.given), c.event.0, c.event.1);
                println!("  to swap them, rename both through the mount; both versions stay in history");
            }
            ConflictKind::Concurrent { others } => {
                concurrent += 1;
                let now_at = lossy(&e.path_of(c.node)?);
                let others: Vec<String> = others.iter().map(|m| m.to_string()).collect();
                println!("{y:04}-{m:02}-{d:02} concurrent change {now_at} (node {})", c.node);
                println!("  event {}#{} had not seen changes by {}", c.event.0, c.event.1, others.join(", "));
                println!("  merged field by field; where both changed one field, the later change won");
                println!(
                    "  the other version: `syncer history {} {now_at}`, then `syncer restore --at`",
                    dir.display()
                );
            }
            ConflictKind::Content { .. } => content += 1,
        }
    }
    println!(
        "{} open content conflicts ({content} in all), {names} name conflicts, {concurrent} concurrent changes",
        open.len()
    );
    Ok(())
}

/// What `--keep` names: a version by role, or by who wrote it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum KeepArg {
    /// The version that kept the name; the copy is removed.
    Original,
    /// The copy's version, under the name; the copy is removed.
    Copy,
    /// Both: the copy stays, as an ordinary file.
    Both,
    /// The version this machine wrote.
    Mine,
    /// The version the other machine wrote.
    Theirs,
}

fn lookup(e: &engine::Engine, path: &str) -> Result<NodeId> {
    let mut node = NodeId::ROOT;
    for part in path.split('/').filter(|p| !p.is_empty() && *p != ".") {
        node = e.lookup(node, part.as_bytes()).with_context(|| format!("{path}: no {part:?}"))?.id;
    }
    Ok(node)
}

/// The open conflict that `path` names: its copy, or its original when that
/// has exactly one open copy.
fn find(e: &engine::Engine, path: &str) -> Result<ContentConflict> {
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

/// `syncer resolve`.
pub fn resolve(dir: &Path, path: &str, keep: KeepArg) -> Result<()> {
    let e = engine::Engine::open(dir).with_context(|| format!("open {}", dir.display()))?;
    let c = find(&e, path)?;
    let me = e.machine();
    let keep = match keep {
        KeepArg::Original => Keep::Original,
        KeepArg::Copy => Keep::Copy,
        KeepArg::Both => Keep::Both,
        KeepArg::Mine | KeepArg::Theirs => {
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
            if copy_is_mine == (keep == KeepArg::Mine) {
                Keep::Copy
            } else {
                Keep::Original
            }
        }
    };
    e.resolve_conflict(c.copy, keep).with_context(|| format!("resolve {}", lossy(&c.copy_path)))?;
    e.close()?;
    let (orig, copy) = (lossy(&c.original_path), lossy(&c.copy_path));
    match keep {
        Keep::Original => println!("kept {orig} as it was; removed {copy} (its version stays in history)"),
        Keep::Copy => {
            println!("{orig} now holds the version of {copy}, which is removed; the replaced version stays in history")
        }
        Keep::Both => println!("kept both: {copy} is now an ordinary file"),
    }
    Ok(())
}
