//! `syncer conflicts`: every conflict the merge resolved, with both sides
//! and how to get the other side back. Nothing is destroyed by a conflict:
//! both nodes of a name collision stay in the tree, and every version of
//! every node stays in history (`syncer history`, `syncer restore --at`).

use std::path::Path;

use anyhow::{Context, Result};
use engine::merge::ConflictKind;

/// Prints the conflicts of the data dir at `dir`.
pub fn print(dir: &Path) -> Result<()> {
    let e = engine::Engine::open(dir).with_context(|| format!("open {}", dir.display()))?;
    let conflicts = e.index()?.conflicts()?;
    if conflicts.is_empty() {
        println!("no conflicts");
        return Ok(());
    }
    let (mut names, mut concurrent) = (0, 0);
    for c in &conflicts {
        let (y, m, d) = engine::merge::civil_date(c.time);
        let dir_path = String::from_utf8_lossy(&e.path_of(c.parent)?).into_owned();
        let join = |name: &[u8]| {
            let base = if dir_path == "/" { String::new() } else { dir_path.clone() };
            format!("{base}/{}", String::from_utf8_lossy(name))
        };
        match &c.kind {
            ConflictKind::Name => {
                names += 1;
                let winner_at = String::from_utf8_lossy(&e.path_of(c.winner)?).into_owned();
                println!("{y:04}-{m:02}-{d:02} name {}", join(&c.wanted));
                println!("  kept the name:  node {} (now at {winner_at})", c.winner);
                println!("  renamed:        node {} -> {} (event {}#{})", c.node, join(&c.given), c.event.0, c.event.1);
                println!("  to swap them, rename both through the mount; both versions stay in history");
            }
            ConflictKind::Concurrent { others } => {
                concurrent += 1;
                let now_at = String::from_utf8_lossy(&e.path_of(c.node)?).into_owned();
                let others: Vec<String> = others.iter().map(|m| m.to_string()).collect();
                println!("{y:04}-{m:02}-{d:02} concurrent change {now_at} (node {})", c.node);
                println!("  event {}#{} had not seen changes by {}", c.event.0, c.event.1, others.join(", "));
                println!("  merged field by field; where both changed one field, the later change won");
                println!(
                    "  the other version: `syncer history {} {now_at}`, then `syncer restore --at`",
                    dir.display()
                );
            }
        }
    }
    println!("{names} name conflicts, {concurrent} concurrent changes");
    Ok(())
}
