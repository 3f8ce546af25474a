//! Pulling peers' log segments from the remote.
//!
//! Segments come with `rsync --append` (which writes in place), so rsync
//! never leaves temp files in a local `log/<machine>/` folder, and only the
//! bytes past what we already have travel. Our own folder is never pulled:
//! our log is written here only. A pull ends with every pulled segment and
//! folder synced: an import may make the index durable right after, and a
//! durable index must never hold events whose log bytes a power cut takes.

use std::ffi::OsString;
use std::path::Path;

use engine::ids::MachineId;
use engine::storage::{FsStorage, Storage};

use crate::remote::Rsync;
use crate::{RemoteError, Result};

/// Pulls every machine's segments except `ours` into `log_root`.
pub fn pull_log(rsync: &Rsync, log_root: &Path, ours: Option<MachineId>) -> Result<()> {
    std::fs::create_dir_all(log_root).map_err(RemoteError::io("create", log_root))?;
    let mut args: Vec<OsString> = vec!["-r".into(), "--append".into()];
    if let Some(m) = ours {
        args.push(format!("--exclude=/{m}/").into());
    }
    // Only `<16 hex>/<16 hex>.seg`; anything else on the remote stays there.
    args.push("--include=/[0-9a-f]*/".into());
    args.push("--include=/[0-9a-f]*/[0-9a-f]*.seg".into());
    args.push("--exclude=*".into());
    args.push(rsync.remote().spec("log/"));
    let mut dest = log_root.as_os_str().to_owned();
    dest.push("/");
    args.push(dest);
    rsync.run_ok("pulling log segments", &args, None)?;
    sync_pulled(log_root, ours)
}

/// Syncs every peer segment under `log_root`, each peer's folder, and
/// `log_root` itself. A segment with nothing unsynced costs one cheap
/// fsync, so all are synced rather than tracking which rsync touched.
fn sync_pulled(log_root: &Path, ours: Option<MachineId>) -> Result<()> {
    let entries = std::fs::read_dir(log_root).map_err(RemoteError::io("list", log_root))?;
    for entry in entries {
        let folder = entry.map_err(RemoteError::io("list", log_root))?.path();
        let name = folder.file_name().and_then(|n| n.to_str()).unwrap_or_default();
        if !folder.is_dir() || ours.is_some_and(|m| m.to_string() == name) {
            continue;
        }
        for seg in std::fs::read_dir(&folder).map_err(RemoteError::io("list", &folder))? {
            let seg = seg.map_err(RemoteError::io("list", &folder))?.path();
            if seg.extension().is_some_and(|e| e == "seg") {
                FsStorage.sync_file(&seg).map_err(RemoteError::io("sync", &seg))?;
            }
        }
        FsStorage.sync_dir(&folder).map_err(RemoteError::io("sync", &folder))?;
    }
    FsStorage.sync_dir(log_root).map_err(RemoteError::io("sync", log_root))
}

/// Fetches the remote's `config.toml` (the first machine's settings) into
/// `dest`.
pub fn fetch_config(rsync: &Rsync, dest: &Path) -> Result<()> {
    let args = vec![rsync.remote().spec("config.toml"), dest.as_os_str().to_owned()];
    rsync.run_ok("fetching config.toml (is this a syncer remote?)", &args, Some(rsync.fetch_deadline))
}

/// Makes `dir` (missing or empty) a new machine of the collection at
/// `remote`: the first machine's block and hash settings, a new machine id,
/// every machine's log (so the index holds the whole tree) and no content;
/// blocks come on demand. `cache_size` overrides the remote's limit.
/// `rsync` is the runner for `remote`.
pub fn clone_into(dir: &Path, remote: &str, rsync: &Rsync, cache_size: Option<u64>) -> Result<engine::Engine> {
    // Unique per call: clones running at once in one process must not share it.
    static CLONES: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let n = CLONES.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let tmp = std::env::temp_dir().join(format!("syncer-clone-config-{}-{n}", std::process::id()));
    fetch_config(rsync, &tmp)?;
    let text = std::fs::read_to_string(&tmp).map_err(RemoteError::io("read", &tmp));
    let _ = std::fs::remove_file(&tmp);
    let from = engine::config::Config::from_toml(&text?)
        .map_err(|reason| RemoteError::BadState { path: Path::new(remote).join("config.toml"), reason })?;
    let mut config = from.clone();
    config.machine = MachineId::random();
    config.remote = Some(remote.to_string());
    if let Some(c) = cache_size {
        config.cache_size = c;
    }
    engine::Engine::init(dir, config.clone())?;
    pull_log(rsync, &dir.join("log"), Some(config.machine))?;
    Ok(engine::Engine::open(dir)?)
}
