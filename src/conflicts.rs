//! `syncer conflicts`: every name collision the merge resolved, with both
//! sides and how to undo the choice. Nothing is destroyed by a conflict:
//! both nodes stay in the tree, and every version stays in history.

use std::path::Path;

use anyhow::{Context, Result};

/// Prints the conflicts of the data dir at `dir`.
pub fn print(dir: &Path) -> Result<()> {
    let e = engine::Engine::open(dir).with_context(|| format!("open {}", dir.display()))?;
    let conflicts = e.index()?.conflicts()?;
    if conflicts.is_empty() {
        println!("no conflicts");
        return Ok(());
    }
    for c in &conflicts {
        let (y, m, d) = engine::merge::civil_date(c.time);
        let dir_path = String::from_utf8_lossy(&e.path_of(c.parent)?).into_owned();
        let join = |name: &[u8]| {
            let base = if dir_path == "/" { String::new() } else { dir_path.clone() };
            format!("{base}/{}", String::from_utf8_lossy(name))
        };
        let winner_at = String::from_utf8_lossy(&e.path_of(c.winner)?).into_owned();
        println!("{y:04}-{m:02}-{d:02} {}", join(&c.wanted));
        println!("  kept the name:  node {} (now at {winner_at})", c.winner);
        println!("  renamed:        node {} -> {} (event {}#{})", c.node, join(&c.given), c.event.0, c.event.1);
        println!("  to swap them, rename both through the mount; both versions stay in history");
    }
    println!("{} conflicts", conflicts.len());
    Ok(())
}
