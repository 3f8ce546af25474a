//! The `peer_import` fuzz body: peers' logs, hostile names included, pulled
//! into a live data dir and imported the way `syncer sync` does.

use super::*;
use engine::Queries;
use engine::TreeRead;

/// Our machine in the data dir of [`peer_import`]. Machine 1's node ids are
/// the ones [`event`] names, so peers' events hit our nodes.
const US: MachineId = MachineId(1);

/// Machine ids the peers of [`peer_import`] take: small ones and extremes.
const PEER_IDS: [MachineId; 4] = [MachineId(2), MachineId(3), MachineId(u64::MAX), MachineId(0x00ab_cdef_0000_0002)];

/// Names under `log/` that are not machine folders. All but the last three
/// start with a lowercase hex digit, so the pull's rsync filter lets them in.
const HOSTILE_FOLDERS: [&[u8]; 10] = [
    b"0000000000000002x",
    b"000000000000000A",
    b"00000000000002",
    b"00000000000000002",
    b"0000000000000002 ",
    b"0x00000000000002",
    b"00000000000000\xff\xfe",
    b"+000000000000002",
    b".0000000000000002.tmp",
    b"log",
];

/// Names beside segment 0 in a machine folder that are not segment names.
const HOSTILE_SEGMENTS: [&[u8]; 6] = [
    b"0000000000000001x.seg",
    b"000000000000000A.seg",
    b"0000000000000001.SEG",
    b".0000000000000001.seg.Ab12Cd",
    b"0000000000000001.seg.partial",
    b"00000000000000\xff.seg",
];

/// Prefix of the data dirs [`peer_import`] makes (one per thread), followed
/// by the process id: a dir whose process is gone is removed by the next run.
const PEER_DIR_PREFIX: &str = "syncer-fuzz-peer-import-";

/// The copy of our index (our events only) that each input starts from.
const PEER_INDEX_TEMPLATE: &str = "index.redb.fuzz-template";

/// One file or folder under `log/` that the peers' pull brings.
#[derive(Debug)]
struct PulledEntry {
    /// Path under `log/`.
    path: std::path::PathBuf,
    /// A file's bytes, or `None` for a folder.
    bytes: Option<Vec<u8>>,
    /// What the first import sees: `None` nothing, `Some(n)` the first `n`
    /// bytes (a folder: the folder).
    first: Option<usize>,
}

/// What a peer's log was built from, for the properties that know it.
#[derive(Debug)]
struct PeerLog {
    machine: MachineId,
    /// The events built into its segments, in order.
    written: Vec<Event>,
    /// Every segment was built (none raw) and every damage was one a crash
    /// can do: what is accepted is a prefix of `written`.
    crash_only: bool,
    /// Besides that, only the last segment was damaged: the log is clean
    /// with at most a torn tail (a segment still arriving), so it must never
    /// be reported as damaged.
    clean: bool,
}

/// The peers' logs and hostile entries one input describes.
#[derive(Debug, Default)]
struct PeerPlan {
    entries: Vec<PulledEntry>,
    peers: Vec<PeerLog>,
}

impl PeerPlan {
    fn new(u: &mut Unstructured) -> Self {
        let mut plan = PeerPlan::default();
        for _ in 0..u.below(4) {
            let machine = PEER_IDS[usize::from(u.below(4))];
            if plan.peers.iter().all(|p| p.machine != machine) {
                plan.add_peer(u, machine);
            }
        }
        for i in 0..u64::from(u.below(3)) {
            plan.add_hostile(u, MachineId(0x10 + i));
        }
        plan
    }

    /// 1 to 3 segments of `machine`, each built (then damaged or not) or
    /// raw; the first import sees the segments before a chosen one, and a
    /// prefix of that one (how `rsync --append` delivers a log).
    fn add_peer(&mut self, u: &mut Unstructured, machine: MachineId) {
        let segments = u64::from(u.below(3)) + 1;
        let present = u64::from(u.below(segments as u8 + 1));
        let mut t = i64::from(u.u16() % 12_000);
        let mut peer = PeerLog { machine, written: Vec::new(), crash_only: true, clean: true };
        for n in 0..segments {
            let bytes = match u.below(4) {
                mode @ (0 | 1) => {
                    let first_seq = peer.written.len() as u64 + 1;
                    let (mut bytes, written, last) = built_segment(u, machine, n, first_seq, t);
                    t = last;
                    peer.written.extend(written);
                    if mode == 0 {
                        let before = bytes.clone();
                        peer.crash_only &= damage(u, &mut bytes);
                        if bytes != before && n + 1 != segments {
                            peer.clean = false;
                        }
                    }
                    bytes
                }
                mode => {
                    peer.crash_only = false;
                    let raw = u.long_bytes(4096);
                    if mode == 2 {
                        [&log::segment_header(machine, n)[..], raw].concat()
                    } else {
                        raw.to_vec()
                    }
                }
            };
            let first = match n.cmp(&present) {
                std::cmp::Ordering::Less => Some(bytes.len()),
                std::cmp::Ordering::Equal => Some(usize::from(u.u16()) % (bytes.len() + 1)),
                std::cmp::Ordering::Greater => None,
            };
            let path = Path::new(&machine.to_string()).join(log::segment_file_name(n));
            self.entries.push(PulledEntry { path, bytes: Some(bytes), first });
        }
        peer.clean &= peer.crash_only;
        self.peers.push(peer);
    }

    /// Something under `log/` that is no well-formed machine log, in a
    /// folder of its own (`spare` names it when it is a machine id). Its
    /// files are there but empty at the first import, whole at the second.
    fn add_hostile(&mut self, u: &mut Unstructured, spare: MachineId) {
        let folder = Path::new(&spare.to_string()).to_path_buf();
        let segment = |n: u64| folder.join(log::segment_file_name(n));
        let file = |path: std::path::PathBuf, bytes: Vec<u8>| PulledEntry { path, bytes: Some(bytes), first: Some(0) };
        let header = |m: MachineId, n: u64| log::segment_header(m, n).to_vec();
        match u.below(7) {
            0 => {
                let name = HOSTILE_FOLDERS[usize::from(u.below(HOSTILE_FOLDERS.len() as u8))];
                let path = Path::new(std::ffi::OsStr::from_bytes(name)).join(log::segment_file_name(0));
                self.entries.push(file(path, built_segment(u, PEER_IDS[0], 0, 1, 0).0));
            }
            1 => {
                let name = HOSTILE_SEGMENTS[usize::from(u.below(HOSTILE_SEGMENTS.len() as u8))];
                self.entries.push(file(segment(0), built_segment(u, spare, 0, 1, 0).0));
                self.entries.push(file(folder.join(std::ffi::OsStr::from_bytes(name)), header(spare, 1)));
            }
            // A folder named like a segment (the pull's filter lets it in).
            2 => self.entries.push(PulledEntry { path: segment(0), bytes: None, first: Some(0) }),
            // A file where a machine folder should be.
            3 => self.entries.push(file(folder, header(spare, 0))),
            // A machine folder with no segment yet: no damage.
            4 => self.entries.push(PulledEntry { path: folder, bytes: None, first: Some(0) }),
            // A gap: segment 1 without segment 0.
            5 => self.entries.push(file(segment(1), header(spare, 1))),
            // Segments that belong to another machine, or another number.
            _ => {
                self.entries.push(file(segment(0), header(US, 0)));
                self.entries.push(file(segment(1), header(spare, 2)));
            }
        }
    }

    /// Puts what the first import sees (`full` false) or everything under
    /// `log_root`.
    fn write(&self, log_root: &Path, full: bool) {
        for e in &self.entries {
            let Some(first) = e.first.or(full.then_some(usize::MAX)) else { continue };
            let path = log_root.join(&e.path);
            let done = match &e.bytes {
                None => std::fs::create_dir_all(&path),
                Some(bytes) => {
                    let n = if full { bytes.len() } else { first.min(bytes.len()) };
                    path.parent()
                        .map_or(Ok(()), std::fs::create_dir_all)
                        .and_then(|()| std::fs::write(&path, &bytes[..n]))
                }
            };
            done.unwrap_or_else(|err| panic!("peer_import harness: writing {}: {err}", path.display()));
        }
    }
}

/// The data dir [`peer_import`] imports into, made once per thread: our own
/// log of [`our_events`], then whatever each input pulls beside it.
#[derive(Debug)]
struct PeerHarness {
    dir: std::path::PathBuf,
    ours: Vec<Event>,
    our_segment: Vec<u8>,
    /// The tree of our events alone.
    our_tree: Merged,
    /// Our nodes grouped by every directory relation our events ever made:
    /// a peer event that touches one of a group may move the others.
    groups: std::collections::BTreeMap<NodeId, usize>,
}

thread_local! {
    static PEER_HARNESS: std::cell::RefCell<Option<PeerHarness>> = const { std::cell::RefCell::new(None) };
}

/// Our events: a small tree with a file moved between directories, a
/// removed directory, a symlink, and a group (`d/x`) whose node ids no
/// generated peer event names, so the "untouched" property gets checked.
fn our_events(hash_size: usize) -> Vec<Event> {
    let [a, b, f, c, e, d, x] = [1, 2, 3, 4, 5, 6, 7].map(|n| NodeId::new(n, US));
    let create = |parent, name: &[u8], kind, target: &[u8]| Change::Create {
        parent,
        name: name.to_vec(),
        kind,
        attrs: Attrs { mode: 0o755, ..Attrs::default() },
        target: target.to_vec(),
    };
    let block = |index, data: &[u8]| BlockChange {
        index,
        block: Some(BlockRef { hash: BlockHash::of(data, hash_size), len: data.len() as u32 }),
    };
    let changes = [
        (a, create(NodeId::ROOT, b"a", NodeKind::Dir, b"")),
        (b, create(a, b"b", NodeKind::File, b"")),
        (b, Change::Content { size: 10, blocks: vec![block(0, b"0123456789")] }),
        (f, create(NodeId::ROOT, b"f.txt", NodeKind::File, b"")),
        (f, Change::SetXattr { name: b"user.k".to_vec(), value: b"v".to_vec() }),
        (c, create(NodeId::ROOT, b"c", NodeKind::Dir, b"")),
        (b, Change::Move { parent: c, name: b"b2".to_vec() }),
        (e, create(c, b"e", NodeKind::Symlink, b"../f.txt")),
        (d, create(NodeId::ROOT, b"d", NodeKind::Dir, b"")),
        (x, create(d, b"x", NodeKind::File, b"")),
        (x, Change::Content { size: 3, blocks: vec![block(0, b"xyz")] }),
        (f, Change::Truncate { size: 4, tail: None }),
        (a, Change::Remove),
    ];
    changes
        .into_iter()
        .zip(1u64..)
        .map(|((node, change), seq)| Event {
            node,
            machine: US,
            seq,
            time: Timestamp(seq as i64 * 1000),
            clock: VectorClock::from_entries([(US, seq)]),
            change,
            base: None,
        })
        .collect()
}

/// Every node an event names: its own, and the directory or node it
/// places it in or swaps it with.
fn named_nodes(e: &Event) -> impl Iterator<Item = NodeId> {
    let other = match &e.change {
        Change::Create { parent, .. } | Change::Move { parent, .. } => Some(*parent),
        Change::Exchange { with } => Some(*with),
        _ => None,
    };
    std::iter::once(e.node).chain(other)
}

impl PeerHarness {
    fn new() -> Self {
        let base = Path::new("/dev/shm");
        let base = if base.is_dir() { base.to_path_buf() } else { std::env::temp_dir() };
        remove_stale_dirs(&base);
        static NEXT: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let dir = base.join(format!("{PEER_DIR_PREFIX}{}-{n}", std::process::id()));
        let fail = |what: &str, err: &dyn std::fmt::Display| -> ! {
            panic!("peer_import harness: {what} {}: {err}", dir.display())
        };
        if dir.exists() {
            std::fs::remove_dir_all(&dir).unwrap_or_else(|e| fail("removing", &e));
        }
        let config = Config::new_default(US);
        let ours = our_events(config.hash_size);
        engine::Store::init(&dir, config.clone()).unwrap_or_else(|e| fail("init", &e));
        let storage = std::sync::Arc::new(engine::storage::FsStorage);
        let (mut w, _) = log::LogWriter::open(storage, &dir.join("log"), US, config.segment_size)
            .unwrap_or_else(|e| fail("opening our log in", &e));
        w.append(&ours).unwrap_or_else(|e| fail("appending to our log in", &e));
        w.sync().unwrap_or_else(|e| fail("syncing our log in", &e));
        let our_segment = std::fs::read(log::segment_path(&dir.join("log"), US, 0))
            .unwrap_or_else(|e| fail("reading our log in", &e));
        drop(w);
        // Our index as a data dir has it before a pull, copied back for each
        // input: cheaper than building it again every time.
        let e = engine::LiveTree::open(&dir).unwrap_or_else(|e| fail("opening", &e));
        e.close().unwrap_or_else(|e| fail("closing", &e));
        drop(e);
        std::fs::copy(dir.join("index.redb"), dir.join(PEER_INDEX_TEMPLATE))
            .unwrap_or_else(|e| fail("copying the index in", &e));
        let our_tree = merge::merge(&ours, config.block_size);
        let mut groups = std::collections::BTreeMap::new();
        for (i, e) in ours.iter().enumerate() {
            let joined: Vec<NodeId> = named_nodes(e).filter(|n| *n != NodeId::ROOT).collect();
            let into = joined.iter().find_map(|n| groups.get(n).copied()).unwrap_or(i);
            let merged: Vec<usize> = joined.iter().filter_map(|n| groups.get(n).copied()).collect();
            for g in groups.values_mut() {
                if merged.contains(g) {
                    *g = into;
                }
            }
            for n in joined {
                groups.insert(n, into);
            }
        }
        PeerHarness { dir, ours, our_segment, our_tree, groups }
    }

    fn log_root(&self) -> std::path::PathBuf {
        self.dir.join("log")
    }

    /// Back to our log alone, with no index.
    fn reset(&self) {
        let log_root = self.log_root();
        let ours = std::ffi::OsString::from(US.to_string());
        let fail =
            |p: &Path, err: std::io::Error| -> ! { panic!("peer_import harness: resetting {}: {err}", p.display()) };
        for entry in std::fs::read_dir(&log_root).unwrap_or_else(|e| fail(&log_root, e)) {
            let entry = entry.unwrap_or_else(|e| fail(&log_root, e));
            if entry.file_name() == ours {
                continue;
            }
            let p = entry.path();
            let is_dir = entry.file_type().map(|t| t.is_dir()).unwrap_or_else(|e| fail(&p, e));
            let r = if is_dir { std::fs::remove_dir_all(&p) } else { std::fs::remove_file(&p) };
            r.unwrap_or_else(|e| fail(&p, e));
        }
        let seg = log::segment_path(&log_root, US, 0);
        std::fs::write(&seg, &self.our_segment).unwrap_or_else(|e| fail(&seg, e));
        for name in ["history.redb", "dirty"] {
            let p = self.dir.join(name);
            if p.exists() {
                std::fs::remove_file(&p).unwrap_or_else(|e| fail(&p, e));
            }
        }
        let index = self.dir.join("index.redb");
        // libFuzzer's timer signal can interrupt the copy (seen as EINTR
        // from copy_file_range): that is the harness's, not a find.
        let copy = || std::fs::copy(self.dir.join(PEER_INDEX_TEMPLATE), &index);
        let mut copied = copy();
        while matches!(&copied, Err(e) if e.kind() == std::io::ErrorKind::Interrupted) {
            copied = copy();
        }
        copied.unwrap_or_else(|e| fail(&index, e));
    }

    fn open(&self, when: &str) -> engine::LiveTree {
        engine::LiveTree::open(&self.dir).unwrap_or_else(|e| panic!("opening our data dir {when} failed: {e}"))
    }

    /// What the logs under `log/` hold now, read with the same functions the
    /// engine uses: every peer's events up to its first damage, and the
    /// damage each peer's log (and each name that is no machine folder)
    /// must be reported with.
    fn observe(&self) -> Observed {
        let log_root = self.log_root();
        let storage = engine::storage::FsStorage;
        let (machines, bad) = log::list_machines_tolerant(&storage, &log_root)
            .unwrap_or_else(|e| panic!("peer_import harness: listing {}: {e}", log_root.display()));
        let mut seen = Observed { problems: bad.iter().map(ToString::to_string).collect(), ..Observed::default() };
        for m in machines {
            let mut events = Vec::new();
            let read = log::for_each_record(&storage, &log_root, log::log_start(m), |_, r| {
                events.push(r.event.clone());
                Ok(())
            });
            match read {
                Ok(_) => {}
                Err(e) if m == US => panic!("our own log does not read back: {e}"),
                Err(e) => {
                    let text = e.to_string();
                    let folder = log::machine_dir(&log_root, m);
                    assert!(
                        text.contains(&folder.display().to_string()),
                        "damage in the log of {m} is reported without naming its folder: {text}"
                    );
                    seen.problems.push(text);
                }
            }
            if m != US {
                seen.accepted.insert(m, events);
            }
        }
        seen
    }

    /// Every property that must hold of `e` after an import of what
    /// `seen` observed.
    fn check(&self, e: &engine::LiveTree, plan: &PeerPlan, seen: &Observed, when: &str) {
        let peers: Vec<&Event> = seen.accepted.values().flatten().collect();
        let model = merge::merge(self.ours.iter().chain(peers.iter().copied()), e.block_size());
        if let Err(why) = check_tree(&model) {
            panic!("{when}: the merge of the imported events is not a tree: {why}");
        }
        if let Err(why) = engine_matches(e, &model) {
            panic!("{when}: the index is not the merge of our events and the peers' accepted ones: {why}");
        }
        let problems = e.peer_problems();
        for p in &seen.problems {
            assert!(problems.contains(p), "{when}: damage not reported through peer_problems: {p}\ngot {problems:?}");
        }
        for peer in &plan.peers {
            let got = seen.accepted.get(&peer.machine).map_or(&[][..], Vec::as_slice);
            if peer.crash_only {
                assert!(
                    got.len() <= peer.written.len() && got == &peer.written[..got.len()],
                    "{when}: {} accepted events it never wrote: {got:?}",
                    peer.machine
                );
            }
            if peer.clean {
                let folder = format!("{}/", log::machine_dir(&self.log_root(), peer.machine).display());
                if let Some(p) = problems.iter().find(|p| p.contains(&folder)) {
                    panic!("{when}: a clean log (at most a torn tail) of {} is reported as damaged: {p}", peer.machine);
                }
            }
        }
        self.check_untouched(e, &peers, when);
    }

    /// Our nodes in a group no accepted peer event names (and no name
    /// conflict involves) are exactly what our events alone make them.
    fn check_untouched(&self, e: &engine::LiveTree, peers: &[&Event], when: &str) {
        let ix = e.index().unwrap_or_else(|err| panic!("{when}: reading the index: {err}"));
        let conflicts = ix.conflicts().unwrap_or_else(|err| panic!("{when}: reading conflicts: {err}"));
        let touched: std::collections::BTreeSet<usize> = peers
            .iter()
            .flat_map(|p| named_nodes(p))
            .chain(conflicts.iter().flat_map(|c| [c.node, c.winner]))
            .filter_map(|n| self.groups.get(&n).copied())
            .collect();
        for (id, want) in &self.our_tree.nodes {
            if self.groups.get(id).is_none_or(|g| touched.contains(g)) {
                continue;
            }
            let got = ix.node(*id).unwrap_or_else(|err| panic!("{when}: reading {id}: {err}"));
            assert_eq!(got.as_ref(), Some(&want.record), "{when}: import changed our node {id}, which no peer touched");
            let blocks = ix.blocks(*id, 0, u64::MAX).unwrap_or_else(|err| panic!("{when}: reading {id}: {err}"));
            assert!(
                blocks.into_iter().eq(want.blocks.iter().map(|(i, b)| (*i, *b))),
                "{when}: import changed {id}'s blocks"
            );
        }
    }
}

/// See [`PeerHarness::observe`].
#[derive(Debug, Default)]
struct Observed {
    accepted: std::collections::BTreeMap<MachineId, Vec<Event>>,
    problems: Vec<String>,
}

/// Removes the data dirs of [`peer_import`] runs whose process is gone.
fn remove_stale_dirs(base: &Path) {
    let Ok(entries) = std::fs::read_dir(base) else { return };
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(pid) = name.to_str().and_then(|n| n.strip_prefix(PEER_DIR_PREFIX)).and_then(|r| r.split('-').next())
        else {
            continue;
        };
        if Path::new("/proc/self").exists() && !Path::new("/proc").join(pid).exists() {
            let _ = std::fs::remove_dir_all(entry.path());
        }
    }
}

/// Whether the live index of `e` holds exactly the tree `model`: every
/// node's record and blocks, every entry, the live count and the conflicts.
pub fn engine_matches(e: &engine::LiveTree, model: &Merged) -> Result<(), String> {
    let ix = e.index().map_err(|err| err.to_string())?;
    let s = |err: engine::Error| err.to_string();
    for (id, want) in &model.nodes {
        let got = ix.node(*id).map_err(s)?;
        if got.as_ref() != Some(&want.record) {
            return Err(format!("node {id}: the index has {got:?}, the merge {:?}", want.record));
        }
        let blocks = ix.blocks(*id, 0, u64::MAX).map_err(s)?;
        if !blocks.iter().copied().eq(want.blocks.iter().map(|(i, b)| (*i, *b))) {
            return Err(format!("node {id}: the index has blocks {blocks:?}, the merge {:?}", want.blocks));
        }
    }
    for ((dir, name), child) in &model.dirents {
        let got = ix.lookup(*dir, name).map_err(s)?.map(|(c, _)| c);
        if got != Some(*child) {
            return Err(format!("entry {dir}/{name:?}: the index has {got:?}, the merge {child}"));
        }
    }
    // Counted without the root (`LiveTree::stats` adds it).
    let live = model.nodes.iter().filter(|(id, n)| **id != NodeId::ROOT && !n.record.removed).count() as u64;
    let counts = ix.counts().map_err(s)?;
    if counts.nodes != live {
        return Err(format!("the index counts {} live nodes, the merge has {live}", counts.nodes));
    }
    // The index lists conflicts by event, node and kind; the merge in the
    // order it resolved them: compare as sorted lists.
    let key = |c: &merge::Conflict| (c.time, c.event, c.node, matches!(c.kind, merge::ConflictKind::Concurrent { .. }));
    let mut got = ix.conflicts().map_err(s)?;
    let mut want = model.conflicts.clone();
    got.sort_by_key(key);
    want.sort_by_key(key);
    if got != want {
        return Err(format!("conflicts differ: the index has {got:?}, the merge {want:?}"));
    }
    Ok(())
}

/// Target `peer_import`: peers' logs pulled into a real data dir (made once
/// per thread under `/dev/shm`, reset between inputs) and imported by a
/// live [`engine::LiveTree`], the way `syncer sync` does: the input builds 0
/// to 3 peers' logs of 1 to 3 segments each (built from events with hostile
/// names, clocks and sizes, then maybe damaged, or raw bytes) and up to 2
/// hostile entries (folders that are no machine id, bad segment names,
/// folders named as segments, gaps, segments of another machine); the
/// first import sees a prefix of each peer's log (as `rsync --append`
/// delivers it), the second all of it, the third nothing new.
///
/// Properties: never panics; opening and importing never fail because of
/// a peer; after each import the index is exactly the merge of our events
/// and every peer event before its log's first damage; every damage (and
/// every name that is no machine folder) is in `peer_problems`, naming the
/// peer's folder, and a clean log with at most a torn tail never is; a log
/// damaged only as a crash damages it yields a prefix of what was written;
/// our log's bytes never change, nor do our nodes that no accepted peer
/// event (or name conflict) touches; a repeated import applies nothing and
/// changes nothing; the index rebuilt from the logs equals the live one,
/// and reports exactly the damage there is.
pub fn peer_import(data: &[u8]) {
    peer_import_outcome(data);
}

/// What [`peer_import`] ended with, for tests that check an input reaches
/// the path it was written for.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PeerImportOutcome {
    /// Peer events in the index after the last import.
    pub peer_events: usize,
    /// `peer_problems` of the data dir reopened with a rebuilt index, sorted.
    pub problems: Vec<String>,
    /// Whether the first or second import replayed the index.
    pub replayed: bool,
}

/// [`peer_import`], returning what it ended with.
pub fn peer_import_outcome(data: &[u8]) -> PeerImportOutcome {
    let plan = PeerPlan::new(&mut Unstructured::new(data));
    PEER_HARNESS.with(|h| {
        let mut h = h.borrow_mut();
        let h = h.get_or_insert_with(PeerHarness::new);
        h.reset();
        run_peer_import(h, &plan)
    })
}

/// Removes this thread's [`peer_import`] data dir (tests call it when done;
/// a fuzz run's dir is removed by the next run, see `PEER_DIR_PREFIX`).
pub fn peer_import_cleanup() {
    PEER_HARNESS.with(|h| {
        if let Some(h) = h.borrow_mut().take() {
            let _ = std::fs::remove_dir_all(&h.dir);
        }
    });
}

fn run_peer_import(h: &PeerHarness, plan: &PeerPlan) -> PeerImportOutcome {
    let e = h.open("before the pull");
    let mut before = 0;
    let mut replayed = false;
    for (full, when) in [(false, "first import"), (true, "second import")] {
        plan.write(&h.log_root(), full);
        let report = e.import().unwrap_or_else(|err| panic!("{when} failed (a peer's log must never stop it): {err}"));
        let seen = h.observe();
        let now: usize = seen.accepted.values().map(Vec::len).sum();
        let want = if report.replayed { h.ours.len() + now } else { now - before.min(now) };
        assert_eq!(report.applied, want as u64, "{when}: applied count (replayed: {})", report.replayed);
        h.check(&e, plan, &seen, when);
        before = now;
        replayed |= report.replayed;
    }
    let dump =
        |e: &engine::LiveTree, when: &str| e.dump_tree().unwrap_or_else(|err| panic!("{when}: dump_tree: {err}"));
    let live = dump(&e, "after the second import");
    let again = e.import().unwrap_or_else(|err| panic!("third import failed: {err}"));
    assert_eq!((again.applied, again.replayed), (0, false), "a repeated import applied events");
    assert_eq!(dump(&e, "after the third import"), live, "a repeated import changed the tree");
    let counts = e.index().and_then(|ix| ix.counts()).unwrap_or_else(|err| panic!("counts: {err}"));
    drop(e);
    let seg = log::segment_path(&h.log_root(), US, 0);
    assert!(std::fs::read(&seg).ok() == Some(h.our_segment.clone()), "importing changed our own log");
    let index = h.dir.join("index.redb");
    std::fs::remove_file(&index).unwrap_or_else(|err| panic!("peer_import harness: removing the index: {err}"));
    let rebuilt = h.open("with the peers' logs (index rebuilt)");
    let seen = h.observe();
    h.check(&rebuilt, plan, &seen, "rebuild");
    assert_eq!(dump(&rebuilt, "rebuild"), live, "the index rebuilt from the logs differs from the live one");
    let rebuilt_counts = rebuilt.index().and_then(|ix| ix.counts()).unwrap_or_else(|err| panic!("counts: {err}"));
    assert_eq!(rebuilt_counts, counts, "the rebuilt index counts differently");
    let mut got = rebuilt.peer_problems();
    let mut want = seen.problems.clone();
    got.sort();
    want.sort();
    assert_eq!(got, want, "a fresh open reports other damage than there is");
    PeerImportOutcome { peer_events: before, problems: got, replayed }
}
