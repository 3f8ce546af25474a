//! Pulling peers' log segments from the remote.
//!
//! Segments come with `rsync --append` (which writes in place), so rsync
//! never leaves temp files in a local `log/<machine>/` folder, and only the
//! bytes past what we already have travel. Our own folder is never pulled:
//! our log is written here only. A pull ends with every pulled segment and
//! folder synced: an import may make the index durable right after, and a
//! durable index must never hold events whose log bytes a power cut takes.

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::path::Path;

use engine::ids::MachineId;
use engine::replication::{parse_segment_name, segment_path};
use engine::storage::{FsStorage, Storage};

use crate::remote::{parse_segment_listing, Remote, Rsync};
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

/// Lengths of peers' segments on the remote (every machine's but `ours`),
/// by machine and segment number. A local-directory remote is listed
/// directly (no rsync run); an ssh remote with one `rsync --list-only` run.
/// Only `<16 hex>/<16 hex>.seg` regular files count, as in [`pull_log`].
pub fn remote_peer_lens(rsync: &Rsync, ours: MachineId) -> Result<BTreeMap<(MachineId, u64), u64>> {
    match rsync.remote() {
        Remote::Local(root) => local_peer_lens(&root.join("log"), ours),
        Remote::Ssh { .. } => {
            let what = "listing peers' log segments";
            let mut root = rsync.remote().spec("");
            root.push("/");
            let args: Vec<OsString> = vec![
                "-r".into(),
                "--list-only".into(),
                "--no-human-readable".into(),
                "--include=/log/".into(),
                "--include=/log/[0-9a-f]*/".into(),
                "--include=/log/[0-9a-f]*/[0-9a-f]*.seg".into(),
                "--exclude=*".into(),
                root,
            ];
            let text = rsync.run_stdout(what, &args, None)?;
            parse_peer_listing(&text, ours).map_err(|(line, reason)| RemoteError::BadOutput {
                remote: rsync.remote().to_string(),
                what: what.to_string(),
                line,
                reason,
            })
        }
    }
}

/// [`remote_peer_lens`] of a local `log/` folder (missing: none).
fn local_peer_lens(log_root: &Path, ours: MachineId) -> Result<BTreeMap<(MachineId, u64), u64>> {
    let mut lens = BTreeMap::new();
    let entries = match std::fs::read_dir(log_root) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(lens),
        Err(e) => return Err(RemoteError::io("list", log_root)(e)),
    };
    for entry in entries {
        let entry = entry.map_err(RemoteError::io("list", log_root))?;
        let Some(machine) = entry.file_name().to_str().and_then(|n| n.parse::<MachineId>().ok()) else { continue };
        if machine == ours || !entry.file_type().is_ok_and(|t| t.is_dir()) {
            continue;
        }
        let folder = entry.path();
        for seg in std::fs::read_dir(&folder).map_err(RemoteError::io("list", &folder))? {
            let seg = seg.map_err(RemoteError::io("list", &folder))?;
            let Ok(number) = parse_segment_name(&seg.file_name()) else { continue };
            // A segment that vanished since the listing is simply not counted.
            match seg.metadata() {
                Ok(m) if m.is_file() => {
                    lens.insert((machine, number), m.len());
                }
                Ok(_) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(RemoteError::io("stat", seg.path())(e)),
            }
        }
    }
    Ok(lens)
}

/// The lengths of peers' segments (not `ours`, regular files only) in an
/// `rsync --list-only` listing of the remote's root (see
/// [`parse_segment_listing`]).
fn parse_peer_listing(
    text: &str,
    ours: MachineId,
) -> std::result::Result<BTreeMap<(MachineId, u64), u64>, (String, String)> {
    Ok(parse_segment_listing(text)?
        .into_iter()
        .filter(|s| s.machine != ours && s.regular)
        .map(|s| ((s.machine, s.number), s.len))
        .collect())
}

/// Whether the remote (its peers' segment lengths, from
/// [`remote_peer_lens`]) holds log bytes that `log_root` lacks: a segment
/// longer there than here, or missing here. A pull brings exactly those.
pub fn has_new_bytes(remote: &BTreeMap<(MachineId, u64), u64>, log_root: &Path) -> bool {
    remote.iter().any(|(&(machine, number), &len)| {
        let here = std::fs::metadata(segment_path(log_root, machine, number)).map_or(0, |m| m.len());
        len > here
    })
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
pub fn clone_into(dir: &Path, remote: &str, rsync: &Rsync, cache_size: Option<u64>) -> Result<engine::LiveTree> {
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
    engine::Store::init(dir, config.clone())?;
    pull_log(rsync, &dir.join("log"), Some(config.machine))?;
    Ok(engine::LiveTree::open(dir)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    const OURS: MachineId = MachineId(0xab);

    #[test]
    fn peer_listing_gives_peers_segment_lengths() {
        let text = "drwxr-xr-x        4096 2026/11/25 12:09:38 .\n\
                    drwxr-xr-x        4096 2026/11/25 12:09:38 log\n\
                    -rw-r--r--         100 2026/11/25 12:09:38 log/00000000000000ab/0000000000000000.seg\n\
                    -rw-r--r--     1234567 2026/11/25 12:09:38 log/00000000000000cd/0000000000000000.seg\n\
                    -rw-r--r--   1,234,568 2026/11/25 12:09:38 log/00000000000000cd/0000000000000001.seg\n\
                    -rw-r--r--          99 2026/11/25 12:09:38 log/00000000000000cd/notes.seg\n\
                    drwxr-xr-x        4096 2026/11/25 12:09:38 log/00000000000000ef/0000000000000000.seg\n";
        let lens = parse_peer_listing(text, OURS).expect("parses");
        let cd = MachineId(0xcd);
        assert_eq!(lens, BTreeMap::from([((cd, 0), 1_234_567), ((cd, 1), 1_234_568)]));
        let bad = "-rw-r--r-- 1.2M 2026/11/25 12:09:38 log/00000000000000cd/0000000000000000.seg";
        let (line, reason) = parse_peer_listing(bad, OURS).expect_err("not a byte count");
        assert_eq!(line, bad);
        assert!(reason.contains("not a number"), "{reason}");
    }

    #[test]
    fn local_listing_and_new_bytes() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let (remote, here) = (tmp.path().join("remote"), tmp.path().join("here"));
        assert!(local_peer_lens(&remote, OURS).expect("missing log/ lists empty").is_empty());
        let cd = MachineId(0xcd);
        for (m, len) in [(OURS, 10), (cd, 30)] {
            let p = segment_path(&remote, m, 0);
            std::fs::create_dir_all(p.parent().expect("folder")).expect("mkdir");
            std::fs::write(p, vec![0u8; len]).expect("write");
        }
        std::fs::write(remote.join("junk"), b"x").expect("junk");
        let lens = local_peer_lens(&remote, OURS).expect("lists");
        assert_eq!(lens, BTreeMap::from([((cd, 0), 30)]), "ours and junk are not counted");
        assert!(has_new_bytes(&lens, &here), "missing here");
        let p = segment_path(&here, cd, 0);
        std::fs::create_dir_all(p.parent().expect("folder")).expect("mkdir");
        std::fs::write(&p, vec![0u8; 20]).expect("write");
        assert!(has_new_bytes(&lens, &here), "shorter here");
        std::fs::write(&p, vec![0u8; 30]).expect("write");
        assert!(!has_new_bytes(&lens, &here), "all here");
    }
}
