//! The index's layout on disk: its tables, its `meta` counters, its
//! version, the byte layout of the values that are not plain tuples, and
//! how a file is opened, replaced when damaged and emptied for a rebuild.
//!
//! Tables (keys sort as tuples; `time` is [`Timestamp`] nanoseconds):
//!
//! | table            | key                                   | value                                  |
//! |------------------|---------------------------------------|----------------------------------------|
//! | `nodes`          | node                                  | rkyv [`NodeRecord`] (current state)    |
//! | `dirents`        | (dir, name)                           | (child, kind code)                     |
//! | `blocks`         | (node, block index)                   | block ref (see `tree::encode_block_ref`) |
//! | `history`        | (node, time, machine, seq)            | (segment, offset): the event's record  |
//! | `dirent_history` | (dir, name, time, machine, seq)       | (child, kind code), or `None` when the name went away |
//! | `block_history`  | (node, index, time, machine, seq)     | block ref (empty = hole)               |
//! | `events`         | (machine, seq)                        | (segment, offset, time, node)          |
//! | `blobs`          | hash bytes                            | (uncompressed len, first use time)     |
//! | `applied`        | machine                               | (segment, offset, seq) of the last applied record |
//! | `meta`           | name                                  | u64 counters (see `META_*`)            |
//! | `conflicts`      | (time, machine, seq, node, kind)      | a resolved conflict (see `encode_conflict`) |
//! | `checkpoints`    | (node, time, machine, seq)            | rkyv [`NodeRecord`]: the merged state after that event |
//! | `versions`       | (machine, seq)                        | (node, time, size): where a content version was applied (see `merge`) |
//!
//! Kind codes (`dirents`, `dirent_history`): 0 file, 1 directory, 2
//! symlink, 3 fifo, 4 socket, 5 character device, 6 block device.
//!
//! `checkpoints` holds a node's merged record after every
//! [`CHECKPOINT_EVERY`]th event of its own history (counted from its last
//! checkpoint), and a conflict copy's record at the event that made it.
//!
//! Version history ([`INDEX_VERSION`], in `meta` under `index_version`): 3
//! added `checkpoints`; 5 added `versions` and the content head and
//! conflict mark of [`NodeRecord`]; 6 added a directory's count of
//! subdirectories and a file's stored bytes to [`NodeRecord`] (link counts
//! and `st_blocks`). An index of another version, newer ones included, is
//! emptied and rebuilt from the log on open: it is derived data, so no
//! version is refused.
//!
//! [`Timestamp`]: crate::ids::Timestamp

use std::path::Path;

use redb::{Database, TableDefinition, WriteTransaction};

use super::error::ix;
use crate::error::IndexError;
use crate::error::{Error, Result};
use crate::event::NodeKind;
use crate::ids::{EventId, MachineId, NodeId, Timestamp};
use crate::merge::{Conflict, ConflictKind};
use crate::storage::Storage;
use crate::tree::NodeRecord;

pub(super) type NodeKey = u128;
pub(super) const NODES: TableDefinition<NodeKey, &[u8]> = TableDefinition::new("nodes");
/// `(dir, name)`.
pub(super) type DirentKey = (NodeKey, &'static [u8]);
pub(super) const DIRENTS: TableDefinition<DirentKey, (NodeKey, u8)> = TableDefinition::new("dirents");
pub(super) const BLOCKS: TableDefinition<(NodeKey, u64), &[u8]> = TableDefinition::new("blocks");
/// `(node, time, machine, seq)`.
pub(super) type HistoryKey = (NodeKey, i64, u64, u64);
pub(super) const HISTORY: TableDefinition<HistoryKey, (u64, u64)> = TableDefinition::new("history");
/// `(dir, name, time, machine, seq)`.
pub(super) type DirentHistoryKey<'a> = (NodeKey, &'a [u8], i64, u64, u64);
pub(super) const DIRENT_HISTORY: TableDefinition<DirentHistoryKey, Option<(NodeKey, u8)>> =
    TableDefinition::new("dirent_history");
pub(super) const BLOCK_HISTORY: TableDefinition<(NodeKey, u64, i64, u64, u64), &[u8]> =
    TableDefinition::new("block_history");
pub(super) const EVENTS: TableDefinition<(u64, u64), (u64, u64, i64, NodeKey)> = TableDefinition::new("events");
pub(super) const BLOBS: TableDefinition<&[u8], (u32, i64)> = TableDefinition::new("blobs");
pub(super) const APPLIED: TableDefinition<u64, (u64, u64, u64)> = TableDefinition::new("applied");
pub(super) const META: TableDefinition<&str, u64> = TableDefinition::new("meta");
pub(super) const CONFLICTS: TableDefinition<(i64, u64, u64, NodeKey, u8), &[u8]> = TableDefinition::new("conflicts");
pub(super) const CHECKPOINTS: TableDefinition<(NodeKey, i64, u64, u64), &[u8]> = TableDefinition::new("checkpoints");
/// `(machine, seq) -> (node, time, size)`.
pub(super) const VERSIONS: TableDefinition<(u64, u64), (NodeKey, i64, u64)> = TableDefinition::new("versions");

/// Every table of the layout, by name.
const TABLES: [&str; 13] = [
    "nodes",
    "dirents",
    "blocks",
    "history",
    "dirent_history",
    "block_history",
    "events",
    "blobs",
    "applied",
    "meta",
    "conflicts",
    "checkpoints",
    "versions",
];

/// Most events of one node folded on top of a checkpoint.
pub(super) const CHECKPOINT_EVERY: usize = 32;

/// Version of the index layout above. An index of another version is
/// deleted and rebuilt from the log on open (it is derived data).
pub(crate) const INDEX_VERSION: u64 = 6;

pub(super) const META_VERSION: &str = "index_version";
pub(super) const META_NODES: &str = "nodes";
pub(super) const META_FILES: &str = "files";
pub(super) const META_DIRS: &str = "dirs";
pub(super) const META_BYTES: &str = "logical_bytes";
pub(super) const META_BLOCK_BYTES: &str = "block_bytes";
pub(super) const META_BLOCKS: &str = "block_count";
pub(super) const META_EVENTS: &str = "events";
pub(super) const META_IGNORED: &str = "ignored_events";
/// Latest event time seen from any machine (as `u64` bits of the `i64`).
pub(super) const META_MAX_TIME: &str = "max_event_time";
/// The merge-order key of the last applied event: (time, machine, seq).
pub(super) const META_FRONTIER_TIME: &str = "frontier_time";
pub(super) const META_FRONTIER_MACHINE: &str = "frontier_machine";
pub(super) const META_FRONTIER_SEQ: &str = "frontier_seq";

/// The `meta` key of the highest node counter machine `m` has used.
pub(super) fn counter_key(m: MachineId) -> String {
    format!("max_counter/{m}")
}

pub(super) fn kind_code(k: NodeKind) -> u8 {
    match k {
        NodeKind::File => 0,
        NodeKind::Dir => 1,
        NodeKind::Symlink => 2,
        NodeKind::Fifo => 3,
        NodeKind::Socket => 4,
        NodeKind::CharDev => 5,
        NodeKind::BlockDev => 6,
    }
}

pub(super) fn kind_from_code(c: u8) -> Option<NodeKind> {
    Some(match c {
        0 => NodeKind::File,
        1 => NodeKind::Dir,
        2 => NodeKind::Symlink,
        3 => NodeKind::Fifo,
        4 => NodeKind::Socket,
        5 => NodeKind::CharDev,
        6 => NodeKind::BlockDev,
        _ => return None,
    })
}

/// Encodes a node record for the `nodes` and `checkpoints` tables.
pub(super) fn encode_node(n: &NodeRecord) -> Vec<u8> {
    // Serializing plain owned data into a Vec cannot fail; an error here
    // would be a bug in rkyv, surfaced as an empty value that decode refuses.
    rkyv::to_bytes::<rkyv::rancor::Error>(n).map(|v| v.to_vec()).unwrap_or_default()
}

/// Decodes node `id`'s record, stored in `table`.
pub(super) fn decode_node(table: &'static str, id: NodeId, bytes: &[u8]) -> Result<NodeRecord, IndexError> {
    let mut aligned = rkyv::util::AlignedVec::<16>::with_capacity(bytes.len());
    aligned.extend_from_slice(bytes);
    rkyv::from_bytes::<NodeRecord, rkyv::rancor::Error>(&aligned)
        .map_err(|e| IndexError::Corrupt { table, what: format!("node {id}: bad record: {e}") })
}

/// `conflicts` values: parent u128 LE, winner u128 LE, wanted length u16
/// LE and bytes, given length u16 LE and bytes, then for a concurrent
/// change the other machines, u64 LE each, to the end; for a content
/// conflict the kept version's machine u64 LE, seq u64 LE and time i64 LE.
/// The kind is the last element of the key (see [`conflict_kind_code`]).
pub(super) fn encode_conflict(c: &Conflict) -> Vec<u8> {
    let mut v = Vec::with_capacity(40 + c.wanted.len() + c.given.len());
    v.extend_from_slice(&c.parent.0.to_le_bytes());
    v.extend_from_slice(&c.winner.0.to_le_bytes());
    for name in [&c.wanted, &c.given] {
        let n = name.len().min(usize::from(u16::MAX));
        v.extend_from_slice(&(n as u16).to_le_bytes());
        v.extend_from_slice(&name[..n]);
    }
    match &c.kind {
        ConflictKind::Concurrent { others } => {
            for m in others {
                v.extend_from_slice(&m.0.to_le_bytes());
            }
        }
        ConflictKind::Content { kept, kept_time } => {
            v.extend_from_slice(&kept.machine.0.to_le_bytes());
            v.extend_from_slice(&kept.seq.to_le_bytes());
            v.extend_from_slice(&kept_time.0.to_le_bytes());
        }
        ConflictKind::Name => {}
    }
    v
}

/// The last element of a `conflicts` key: 0 name, 1 concurrent change, 2 content.
pub(super) fn conflict_kind_code(k: &ConflictKind) -> u8 {
    match k {
        ConflictKind::Name => 0,
        ConflictKind::Concurrent { .. } => 1,
        ConflictKind::Content { .. } => 2,
    }
}

/// Decodes a `conflicts` value of kind code `kind` (see [`encode_conflict`]).
pub(super) fn decode_conflict(
    v: &[u8],
    kind: u8,
    time: Timestamp,
    event: (MachineId, u64),
    node: NodeId,
) -> Result<Conflict, String> {
    let short = "conflict record too short";
    let u128_at = |i: usize| -> Result<u128, String> {
        let b: [u8; 16] = v.get(i..i + 16).and_then(|b| b.try_into().ok()).ok_or(short)?;
        Ok(u128::from_le_bytes(b))
    };
    let (parent, winner) = (u128_at(0)?, u128_at(16)?);
    let mut at = 32;
    let mut name = || -> Result<Vec<u8>, String> {
        let len: [u8; 2] = v.get(at..at + 2).and_then(|b| b.try_into().ok()).ok_or(short)?;
        let end = at + 2 + usize::from(u16::from_le_bytes(len));
        let out = v.get(at + 2..end).ok_or("conflict record: name runs past the end")?.to_vec();
        at = end;
        Ok(out)
    };
    let (wanted, given) = (name()?, name()?);
    let kind = match kind {
        0 => ConflictKind::Name,
        1 => {
            let rest = &v[at..];
            if !rest.len().is_multiple_of(8) {
                return Err("conflict record: machine list is not whole u64s".into());
            }
            let others =
                rest.chunks_exact(8).map(|c| MachineId(u64::from_le_bytes(c.try_into().unwrap_or([0; 8])))).collect();
            ConflictKind::Concurrent { others }
        }
        2 => {
            let word = |i: usize| -> Result<[u8; 8], String> {
                v.get(at + 8 * i..at + 8 * (i + 1))
                    .and_then(|b| b.try_into().ok())
                    .ok_or_else(|| "content conflict record too short".to_string())
            };
            let kept = EventId { machine: MachineId(u64::from_le_bytes(word(0)?)), seq: u64::from_le_bytes(word(1)?) };
            ConflictKind::Content { kept, kept_time: Timestamp(i64::from_le_bytes(word(2)?)) }
        }
        k => return Err(format!("conflict record of unknown kind {k}")),
    };
    Ok(Conflict { kind, node, parent: NodeId(parent), wanted, given, winner: NodeId(winner), event, time })
}

/// Deletes every table of the layout by name, whatever types it was
/// stored with, and creates them empty (`nodes`, `dirents`, `history` and
/// `meta` are created by the writer, which holds them open).
pub(super) fn reset_tables(txn: &WriteTransaction) -> std::result::Result<(), redb::TableError> {
    for name in TABLES {
        let def: TableDefinition<&[u8], &[u8]> = TableDefinition::new(name);
        txn.delete_table(def)?;
    }
    txn.open_table(BLOCKS)?;
    txn.open_table(DIRENT_HISTORY)?;
    txn.open_table(BLOCK_HISTORY)?;
    txn.open_table(EVENTS)?;
    txn.open_table(BLOBS)?;
    txn.open_table(APPLIED)?;
    txn.open_table(CONFLICTS)?;
    txn.open_table(CHECKPOINTS)?;
    txn.open_table(VERSIONS)?;
    Ok(())
}

/// Bytes of index pages redb may keep in memory (read cache and write
/// buffer together) per open index. redb's default is 1 GiB, which a
/// collection of a few hundred thousand files fills: the mount's memory
/// would then grow with the collection.
pub(crate) const INDEX_CACHE_BYTES: usize = 48 << 20;

/// redb's builder with the index's memory budget.
pub(crate) fn builder() -> redb::Builder {
    let mut b = redb::Builder::new();
    b.set_cache_size(INDEX_CACHE_BYTES);
    b
}

/// Opens (creating if missing) the redb file at `path`, through `storage`
/// if it opens indexes itself.
pub(super) fn create_db(
    path: &Path,
    storage: Option<&dyn Storage>,
) -> std::result::Result<Database, redb::DatabaseError> {
    match storage.and_then(|s| s.index_database(path)) {
        Some(opened) => opened,
        None => builder().create(path),
    }
}

/// Opens (creating if missing) the redb file at `path` for writing, and
/// whether it is new. A file that redb cannot open is replaced by an empty
/// one (the index is derived: the caller replays the log into it); one
/// held by another process is not damage, and is refused.
pub(super) fn open_file(path: &Path, storage: Option<&dyn Storage>) -> Result<(Database, bool)> {
    let fresh = !path.exists();
    let create = || create_db(path, storage);
    let db = match create() {
        Ok(db) => db,
        Err(e) if !fresh && !matches!(e, redb::DatabaseError::DatabaseAlreadyOpen) => {
            tracing::warn!("index {} unreadable ({e}); rebuilding it from the log", path.display());
            std::fs::remove_file(path).map_err(|e| Error::io("remove", path, e))?;
            create().map_err(|e| ix(path, "create", e))?
        }
        Err(e) => return Err(ix(path, "open", e)),
    };
    Ok((db, fresh))
}

/// Whether an index whose `meta` says `version` (0 when unset) must be
/// emptied and rebuilt from the log.
pub(super) fn needs_rebuild(fresh: bool, version: u64) -> bool {
    fresh || version != INDEX_VERSION
}
