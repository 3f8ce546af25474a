//! The entry points replication uses: our events since a position, the
//! segment files and blob files rsync ships, and the record of which blocks
//! are on the remote. The replication crate reads and writes a data dir
//! through these alone (and through [`LiveTree::import`] for peers' events
//! it pulled into [`Replication::log_dir`]).
//!
//! Always true:
//! - [`Replication::events_since`] hands out our own events in log order,
//!   each with the position of its record, and only whole, checked records
//!   (the log's one segment reader in strict mode, a torn tail at the very
//!   end being where the log ends);
//! - [`Replication::segment_files`] describes each of our segments by its
//!   path and the length that may go out, never more than the position
//!   asked for: bytes past it may hold events whose blocks are not on the
//!   remote yet;
//! - a block is recorded as on the remote ([`Replication::mark_on_remote`])
//!   only by the caller that put it there or fetched it from there; the
//!   evictor takes only such blocks.
//!
//! The naming of segment files (`log/<machine>/<number>.seg`) is part of the
//! log's on-disk format (see the `log` module) and is re-exported here for
//! code that works on a log folder before any data dir is open (a clone).
//!
//! See `docs/DESIGN.md` at the repository root for the rules behind these.

use std::ops::ControlFlow;
use std::path::{Path, PathBuf};

use crate::error::{Error, Result};
use crate::event::Event;
use crate::ids::{BlockHash, LogPos, MachineId};
use crate::live::LiveTree;
use crate::log;
use crate::read::TreeRead;
use crate::store::Store;

pub use crate::log::{log_start, parse_segment_name, segment_file_name, segment_path, SEGMENT_EXT};

/// One of our segment files, as far as a push may send it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SegmentFile {
    /// Its number in our log.
    pub number: u64,
    /// The file.
    pub path: PathBuf,
    /// How many of its bytes may go out: its whole length for a segment
    /// before the position asked for, the position's offset for the
    /// segment it is in.
    pub len: u64,
}

/// The replication entry points of a live tree (see the module docs).
#[derive(Clone, Copy)]
pub struct Replication<'a> {
    store: &'a Store,
}

impl LiveTree {
    /// The entry points replication uses (see [`Replication`]).
    pub fn replication(&self) -> Replication<'_> {
        Replication { store: self.store() }
    }
}

impl std::fmt::Debug for Replication<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Replication").field("dir", &self.store.data_dir()).finish()
    }
}

impl Replication<'_> {
    /// This machine (whose log we push).
    pub fn machine(&self) -> MachineId {
        self.store.machine()
    }

    /// `log/`: one folder per machine; peers' segments are pulled into it,
    /// then imported with [`LiveTree::import`].
    pub fn log_dir(&self) -> PathBuf {
        self.store.layout().log()
    }

    /// `config.toml`, which the first machine's push leaves on the remote
    /// for clones.
    pub fn config_file(&self) -> PathBuf {
        self.store.layout().config()
    }

    /// Calls `f(position, event)` for every event of our log from `from` (a
    /// record boundary: a position handed out before, or [`log_start`]) up
    /// to, not including, `until`, in log order, one segment in memory at a
    /// time. Stops at the first error of `f` and returns it; a damaged
    /// record is an error naming its segment and offset.
    pub fn events_since<E: From<Error>>(
        &self,
        from: LogPos,
        until: LogPos,
        mut f: impl FnMut(LogPos, &Event) -> std::result::Result<(), E>,
    ) -> std::result::Result<(), E> {
        if until <= from || self.segments()?.is_empty() {
            return Ok(());
        }
        let mut failed = None;
        let storage = self.store.storage().as_ref();
        log::for_each_record_while(storage, &self.log_dir(), from, |pos, r| {
            if pos >= until {
                return Ok(ControlFlow::Break(()));
            }
            match f(pos, &r.event) {
                Ok(()) => Ok(ControlFlow::Continue(())),
                Err(e) => {
                    failed = Some(e);
                    Ok(ControlFlow::Break(()))
                }
            }
        })?;
        failed.map_or(Ok(()), Err)
    }

    /// The numbers of our segments, in order; every one but the last is
    /// sealed (never written again).
    pub fn segments(&self) -> Result<Vec<u64>> {
        log::list_segments(self.store.storage().as_ref(), &self.log_dir(), self.machine())
    }

    /// Our segment files up to the one `to` is in, each with the length a
    /// push to `to` may send (see [`SegmentFile`]).
    pub fn segment_files(&self, to: LogPos) -> Result<Vec<SegmentFile>> {
        let storage = self.store.storage().as_ref();
        let log_dir = self.log_dir();
        (0..=to.segment)
            .map(|number| {
                let path = log::segment_path(&log_dir, self.machine(), number);
                let whole = storage.file_len(&path).map_err(|e| Error::io("stat", &path, e))?;
                let len = if number == to.segment { to.offset.min(whole) } else { whole };
                Ok(SegmentFile { number, path, len })
            })
            .collect()
    }

    /// The folder of blob files; a blob's file is [`Replication::blob_file`]
    /// under it, so rsync ships blocks by those relative names.
    pub fn blob_files_dir(&self) -> &Path {
        self.store.blobs().dir()
    }

    /// The blob file of block `hash`, relative to
    /// [`Replication::blob_files_dir`] (`<first two hex digits>/<hex>`).
    pub fn blob_file(&self, hash: &BlockHash) -> PathBuf {
        crate::blob::relative_path(hash)
    }

    /// The stored length of block `hash`'s blob file (header included);
    /// [`Error::MissingBlob`] when it is not stored here.
    pub fn blob_len(&self, hash: &BlockHash) -> Result<u64> {
        self.store.blobs().stored_len(hash)
    }

    /// Whether block `hash` is stored here.
    pub fn has_blob(&self, hash: &BlockHash) -> bool {
        self.store.blobs().contains(hash)
    }

    /// Stores a blob file fetched from the remote, after checking that it
    /// decodes to `hash`; [`Error::CorruptBlob`] (and nothing stored) when
    /// it does not. Record it with [`Replication::mark_on_remote`].
    pub fn store_fetched(&self, hash: &BlockHash, stored: &[u8]) -> Result<()> {
        self.store.blobs().put_raw_verified(hash, stored).map(|_| ())
    }

    /// Records `hashes` as on the remote (sent there, or fetched from it).
    pub fn mark_on_remote(&self, hashes: &[BlockHash]) -> Result<()> {
        self.store.cache().mark_pushed(hashes)
    }

    /// Whether block `hash` is recorded as on the remote.
    pub fn is_on_remote(&self, hash: &BlockHash) -> bool {
        self.store.cache().is_pushed(hash)
    }

    /// How many blocks are recorded as on the remote.
    pub fn on_remote_count(&self) -> usize {
        self.store.cache().pushed_count()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;
    use crate::event::{Attrs, NodeKind};
    use crate::ids::NodeId;

    fn tree() -> (tempfile::TempDir, LiveTree) {
        let tmp = tempfile::tempdir().expect("tempdir");
        let dir = tmp.path().join("data");
        let mut config = Config::new_default(MachineId(7));
        // Small segments, so a read crosses sealed ones.
        config.segment_size = crate::config::MIN_SEGMENT_SIZE;
        Store::init(&dir, config).expect("init");
        let e = LiveTree::open(&dir).expect("open");
        (tmp, e)
    }

    /// Creates a file and gives it a large xattr (so that a few dozen fill
    /// several segments); returns the position of the create.
    fn create(e: &LiveTree, name: &str) -> LogPos {
        let at = e.log_position();
        let id = e.create(NodeId::ROOT, name.as_bytes(), NodeKind::File, Attrs::default(), b"").expect("create").id;
        // Bytes that do not compress, in case records ever are.
        let mut x = name.bytes().fold(1u64, |h, b| h.wrapping_mul(31).wrapping_add(u64::from(b)));
        let value: Vec<u8> = (0..crate::XATTR_VALUE_MAX)
            .map(|_| {
                x = x.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1_442_695_040_888_963_407);
                (x >> 56) as u8
            })
            .collect();
        e.set_xattr(id, b"user.pad", &value, crate::XattrMode::Any).expect("xattr");
        at
    }

    fn names_between(e: &LiveTree, from: LogPos, until: LogPos) -> Vec<(LogPos, String)> {
        let mut out = Vec::new();
        e.replication()
            .events_since(from, until, |pos, ev| {
                if let crate::event::Change::Create { name, .. } = &ev.change {
                    out.push((pos, String::from_utf8_lossy(name).into_owned()));
                }
                Ok::<(), Error>(())
            })
            .expect("read");
        out
    }

    #[test]
    fn events_since_reads_from_a_middle_position_to_a_bound() {
        let (_tmp, e) = tree();
        let starts: Vec<LogPos> = (0..60).map(|i| create(&e, &format!("file-{i:03}"))).collect();
        let end = e.log_position();
        let r = e.replication();
        assert!(r.segments().expect("segments").len() > 2, "the log spans sealed segments");

        let all = names_between(&e, log_start(e.machine()), end);
        assert_eq!(all.len(), 60);
        assert_eq!(all.iter().map(|(p, _)| *p).collect::<Vec<_>>(), starts, "each event at its record's position");

        let middle = names_between(&e, starts[25], starts[50]);
        let want: Vec<String> = (25..50).map(|i| format!("file-{i:03}")).collect();
        assert_eq!(middle.into_iter().map(|(_, n)| n).collect::<Vec<_>>(), want);
        assert!(names_between(&e, end, end).is_empty(), "an empty range reads nothing");
    }

    #[test]
    fn events_since_stops_at_the_callers_error() {
        let (_tmp, e) = tree();
        let starts: Vec<LogPos> = (0..10).map(|i| create(&e, &format!("f{i}"))).collect();
        let mut seen = 0;
        let r = e.replication().events_since(starts[0], e.log_position(), |pos, _| {
            if pos == starts[3] {
                return Err(Error::Invalid("stop here".into()));
            }
            seen += 1;
            Ok(())
        });
        assert!(matches!(r, Err(Error::Invalid(ref why)) if why == "stop here"), "{r:?}");
        assert_eq!(seen, 3 * 2, "three files of two events each; nothing after the failing event is read");
    }

    #[test]
    fn segment_files_stop_at_the_position() {
        let (_tmp, e) = tree();
        for i in 0..40 {
            create(&e, &format!("file-{i:03}"));
        }
        let to = e.log_position();
        create(&e, "after");
        let files = e.replication().segment_files(to).expect("files");
        assert_eq!(files.len() as u64, to.segment + 1);
        for f in &files[..files.len() - 1] {
            assert_eq!(f.len, std::fs::metadata(&f.path).expect("stat").len(), "a sealed segment goes whole");
        }
        let last = files.last().expect("one");
        assert_eq!((last.number, last.len), (to.segment, to.offset), "never past the position");
        assert!(std::fs::metadata(&last.path).expect("stat").len() > to.offset, "the live file is longer");
    }

    #[test]
    fn blob_files_and_the_remote_record() {
        let (_tmp, e) = tree();
        let r = e.replication();
        let b = e.put_block(b"some bytes").expect("put");
        assert!(r.has_blob(&b.hash));
        let file = r.blob_files_dir().join(r.blob_file(&b.hash));
        assert_eq!(r.blob_len(&b.hash).expect("len"), std::fs::metadata(&file).expect("the blob file").len());
        assert!(!r.is_on_remote(&b.hash));
        r.mark_on_remote(&[b.hash]).expect("mark");
        assert!(r.is_on_remote(&b.hash));
        assert_eq!(r.on_remote_count(), 1);

        let stored = std::fs::read(&file).expect("read");
        let other = BlockHash::of(b"other bytes", e.config().hash_size);
        assert!(matches!(r.store_fetched(&other, &stored), Err(Error::CorruptBlob { .. })));
        assert!(!r.has_blob(&other), "a copy that is not its hash's is not stored");
    }
}
