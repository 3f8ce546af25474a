//! `syncer status`.

use engine::TreeRead;
use std::path::Path;

use anyhow::{Context, Result};
use engine::config::format_size_human as human;

/// Prints what `status` shows. The index is read only when no other process
/// holds the data dir (a live mount owns it); otherwise counts are omitted.
pub fn print(dir: &Path) -> Result<()> {
    let storage = engine::storage::FsStorage;
    let layout = engine::Layout { dir: dir.to_path_buf() };
    let version = engine::format::read(&storage, dir).with_context(|| format!("status {}", dir.display()))?;
    let config = engine::config::Config::load(&storage, &layout.config())?;
    println!("data dir:     {}", dir.display());
    println!("format:       {}", version.to_line().trim());
    println!("machine:      {}", config.machine);
    println!("remote:       {}", config.remote.as_deref().unwrap_or("(none)"));
    println!("block size:   {}", human(config.block_size));
    println!("hash size:    {} bytes", config.hash_size);
    println!("cache limit:  {}", human(config.cache_size));
    if let Some((free, total)) = engine::blob::disk_space(dir) {
        let reserve = engine::blob::reserve_on(config.reserve, total);
        let room = free.saturating_sub(reserve);
        let full = if room == 0 { " (full: new data is refused; see README, A full disk)" } else { "" };
        println!("disk room:    {} for new data, before the reserve of {}{full}", human(room), human(reserve));
    }
    match engine::LiveTree::open(dir) {
        Ok(e) => {
            let s = e.stats()?;
            println!("state:        not mounted");
            println!("nodes:        {} ({} files, {} dirs)", s.nodes, s.files, s.dirs);
            println!("logical size: {}", human(s.logical_bytes));
            println!("blocks:       {} referenced", human(s.local_blob_bytes));
            println!("events:       {}", s.events);
            for p in e.peer_problems() {
                println!("peer damage:  {p}");
            }
            crate::remote::print_status(dir, Some(&e))?;
        }
        Err(engine::Error::Locked { .. }) => {
            println!("state:        in use (mounted); counts not shown");
            crate::remote::print_status(dir, None)?;
        }
        Err(e) => return Err(e).context("open index"),
    }
    Ok(())
}
