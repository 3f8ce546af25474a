//! The test kit's one generator of random events: events built from a
//! byte string. The fuzz targets feed it libFuzzer's input; the property
//! tests feed it proptest's bytes through [`strategy`]. There is no second
//! generator: a property test and a fuzz target that draw the same bytes
//! draw the same event.
//!
//! Why bytes are the source of truth (and not proptest strategies): a fuzz
//! target gets nothing but bytes, and its saved inputs must keep building
//! the same values for as long as they are replayed
//! (`engine/tests/fuzz_regressions.rs`); proptest, on the other hand, is
//! happy with any `Vec<u8>` mapped to a value. Shrinking then works on the
//! bytes: fewer and smaller bytes read as zeros, which build the simplest
//! values (the first variant, the root, empty names).
//!
//! Two event shapes, over one set of building blocks:
//! - [`event`]: a small world (3 machines, 8 node ids, short names that
//!   collide or are invalid), for the fold, the merge and peer imports,
//!   where events must meet each other to be interesting. Its reading of
//!   the bytes is fixed: the fuzz corpora depend on it.
//! - [`any_event`] (and [`any_event_v1`]): the whole domain of each field
//!   (any node id, machine, time, attribute, hash size, every node kind and
//!   every change variant), for the record codec's round trips.
//!
//! Always true: every byte string builds a value (reads past the end are
//! zero), and the same bytes build the same value.

use engine::clock::VectorClock;
use engine::event::{AttrChange, Attrs, BlockChange, BlockRef, Change, Event, EventV1, NodeKind};
use engine::ids::{BlockHash, EventId, MachineId, NodeId, Timestamp};

/// A cursor over input bytes that builds values from them; past the end
/// every read is zero.
#[derive(Debug)]
pub struct Unstructured<'a> {
    data: &'a [u8],
}

impl<'a> Unstructured<'a> {
    /// A cursor over `data`.
    pub fn new(data: &'a [u8]) -> Self {
        Unstructured { data }
    }

    /// Whether the input is used up.
    pub fn is_empty(&self) -> bool {
        self.data.is_empty()
    }

    /// The next byte.
    pub fn byte(&mut self) -> u8 {
        match self.data.split_first() {
            Some((&b, rest)) => {
                self.data = rest;
                b
            }
            None => 0,
        }
    }

    /// The next little-endian u16.
    pub fn u16(&mut self) -> u16 {
        u16::from_le_bytes([self.byte(), self.byte()])
    }

    /// The next little-endian u64.
    pub fn u64(&mut self) -> u64 {
        let mut b = [0u8; 8];
        for x in &mut b {
            *x = self.byte();
        }
        u64::from_le_bytes(b)
    }

    /// The next little-endian u32.
    pub fn u32(&mut self) -> u32 {
        u32::from_le_bytes([self.byte(), self.byte(), self.byte(), self.byte()])
    }

    /// The next little-endian i64.
    pub fn i64(&mut self) -> i64 {
        i64::from_le_bytes(self.u64().to_le_bytes())
    }

    /// The next little-endian u128.
    pub fn u128(&mut self) -> u128 {
        u128::from(self.u64()) | u128::from(self.u64()) << 64
    }

    /// A number in `0..n` (`n > 0`).
    pub fn below(&mut self, n: u8) -> u8 {
        self.byte() % n.max(1)
    }

    /// Up to `max` bytes, length first.
    pub fn bytes(&mut self, max: usize) -> Vec<u8> {
        let len = usize::from(self.byte()).min(max).min(self.data.len());
        let (head, rest) = self.data.split_at(len);
        self.data = rest;
        head.to_vec()
    }

    /// Up to `max` bytes, a 16-bit length first.
    pub fn long_bytes(&mut self, max: usize) -> &'a [u8] {
        let len = usize::from(self.u16()).min(max).min(self.data.len());
        let (head, rest) = self.data.split_at(len);
        self.data = rest;
        head
    }

    /// Everything left.
    pub fn rest(&mut self) -> &'a [u8] {
        std::mem::take(&mut self.data)
    }
}

/// Names a hostile peer could send: valid ones that collide, and invalid
/// ones (empty, `.`, `..`, with `/` or NUL, too long).
fn name(u: &mut Unstructured) -> Vec<u8> {
    match u.below(12) {
        0 => Vec::new(),
        1 => b".".to_vec(),
        2 => b"..".to_vec(),
        3 => b"a/b".to_vec(),
        4 => b"n\0ul".to_vec(),
        5 => vec![b'x'; 256],
        6 => b"f.txt".to_vec(),
        n => vec![b'a' + n % 4],
    }
}

fn machine(u: &mut Unstructured) -> MachineId {
    MachineId(u64::from(u.below(3)) + 1)
}

fn node(u: &mut Unstructured) -> NodeId {
    match u.below(8) {
        0 => NodeId::ROOT,
        n => NodeId::new(u64::from(n % 4) + 1, MachineId(u64::from(n / 4) + 1)),
    }
}

fn time(u: &mut Unstructured) -> Timestamp {
    Timestamp(i64::from(u.u16()))
}

fn clock(u: &mut Unstructured) -> VectorClock {
    let n = u.below(4);
    VectorClock::from_entries((0..n).map(|_| (machine(u), u64::from(u.below(6)))))
}

fn kind(u: &mut Unstructured) -> NodeKind {
    [NodeKind::File, NodeKind::Dir, NodeKind::Symlink, NodeKind::Fifo, NodeKind::Socket][usize::from(u.below(5))]
}

fn block(u: &mut Unstructured) -> Option<BlockRef> {
    (u.below(4) != 0).then(|| BlockRef { hash: BlockHash::of(&[u.byte()], 16), len: u32::from(u.u16()) })
}

fn opt<T>(u: &mut Unstructured, f: impl FnOnce(&mut Unstructured) -> T) -> Option<T> {
    (u.below(2) == 1).then(|| f(u))
}

fn change(u: &mut Unstructured) -> Change {
    match u.below(12) {
        0 | 1 => Change::Create {
            parent: node(u),
            name: name(u),
            kind: kind(u),
            attrs: Attrs { mode: u32::from(u.u16()), ..Attrs::default() },
            target: u.bytes(8),
        },
        2 => Change::SetAttrs(AttrChange {
            mode: opt(u, |u| u32::from(u.u16())),
            uid: opt(u, |u| u32::from(u.byte())),
            mtime: opt(u, time),
            ..AttrChange::default()
        }),
        3 => {
            let blocks =
                (0..u.below(4)).map(|_| BlockChange { index: u64::from(u.below(8)), block: block(u) }).collect();
            // Sizes near u64::MAX too: a hostile peer is not bound by what a disk holds.
            let size = if u.below(8) == 0 { u64::MAX - u64::from(u.byte()) } else { u64::from(u.u16()) };
            Change::Content { size, blocks }
        }
        4 => Change::Truncate {
            size: u64::from(u.u16()),
            tail: opt(u, |u| BlockChange { index: u64::from(u.below(8)), block: block(u) }),
        },
        5 | 6 => Change::Move { parent: node(u), name: name(u) },
        7 => Change::Remove,
        8 => Change::SetXattr { name: name(u), value: u.bytes(4) },
        9 => Change::RemoveXattr { name: name(u) },
        10 => Change::SetTarget { target: u.bytes(8) },
        _ => match u.below(3) {
            0 => Change::Exchange { with: node(u) },
            1 => Change::SetPinned { pinned: u.below(2) == 1 },
            _ => Change::SetVolname { name: u.bytes(8) },
        },
    }
}

/// An event over a small world (3 machines, 8 node ids, short
/// names including invalid ones), with arbitrary seq, time and clock.
///
/// A content change's base is drawn from the fields already drawn (the
/// event before it from the same machine), so that the checked-in seeds,
/// written before events had a base, still build the same events.
pub fn event(u: &mut Unstructured) -> Event {
    let (node, machine, seq, time, clock, change) =
        (node(u), machine(u), u64::from(u.below(16)), time(u), clock(u), change(u));
    let base = change.is_content().then_some(engine::ids::EventId { machine, seq: seq.saturating_sub(1) });
    Event { node, machine, seq, time, clock, change, base }
}

// ---- the whole domain, for the codecs ---------------------------------------

fn any_time(u: &mut Unstructured) -> Timestamp {
    Timestamp(u.i64())
}

fn any_bytes(u: &mut Unstructured) -> Vec<u8> {
    u.bytes(40)
}

fn any_node(u: &mut Unstructured) -> NodeId {
    NodeId(u.u128())
}

fn any_clock(u: &mut Unstructured) -> VectorClock {
    let n = u.below(5);
    VectorClock::from_entries((0..n).map(|_| (MachineId(u.u64()), u64::from(u.u16() % 1000))))
}

const KINDS: [NodeKind; 7] = [
    NodeKind::File,
    NodeKind::Dir,
    NodeKind::Symlink,
    NodeKind::Fifo,
    NodeKind::Socket,
    NodeKind::CharDev,
    NodeKind::BlockDev,
];

fn any_block_change(u: &mut Unstructured) -> BlockChange {
    let index = u.u64();
    let block = opt(u, |u| {
        let mut seed = [0u8; 32];
        seed.iter_mut().for_each(|b| *b = u.byte());
        // Every hash size a data dir may have: 16..=32 bytes.
        let size = 16 + usize::from(u.below(17));
        BlockRef { hash: BlockHash::of(&seed, size), len: u.u32() }
    });
    BlockChange { index, block }
}

fn any_attrs(u: &mut Unstructured) -> Attrs {
    Attrs {
        mode: u.u32(),
        uid: u.u32(),
        gid: u.u32(),
        rdev: u.u32(),
        flags: u.u32(),
        atime: any_time(u),
        mtime: any_time(u),
        ctime: any_time(u),
        crtime: any_time(u),
        bkuptime: any_time(u),
    }
}

fn any_attr_change(u: &mut Unstructured) -> AttrChange {
    AttrChange {
        mode: opt(u, |u| u.u32()),
        uid: opt(u, |u| u.u32()),
        gid: opt(u, |u| u.u32()),
        flags: opt(u, |u| u.u32()),
        atime: opt(u, any_time),
        mtime: opt(u, any_time),
        crtime: opt(u, any_time),
        bkuptime: opt(u, any_time),
    }
}

/// Any change: every variant, each field over its whole type.
pub fn any_change(u: &mut Unstructured) -> Change {
    match u.below(13) {
        0 => Change::Create {
            parent: any_node(u),
            name: any_bytes(u),
            kind: KINDS[usize::from(u.below(7))],
            attrs: any_attrs(u),
            target: any_bytes(u),
        },
        1 => Change::SetAttrs(any_attr_change(u)),
        2 => {
            let size = u.u64();
            Change::Content { size, blocks: (0..u.below(6)).map(|_| any_block_change(u)).collect() }
        }
        3 => Change::Truncate { size: u.u64(), tail: opt(u, any_block_change) },
        4 => Change::Move { parent: any_node(u), name: any_bytes(u) },
        5 => Change::Remove,
        6 => Change::SetXattr { name: any_bytes(u), value: any_bytes(u) },
        7 => Change::RemoveXattr { name: any_bytes(u) },
        8 => Change::SetTarget { target: any_bytes(u) },
        9 => Change::SetVolname { name: any_bytes(u) },
        10 => Change::SetPinned { pinned: u.below(2) == 1 },
        11 => Change::Exchange { with: any_node(u) },
        _ => Change::Resolve,
    }
}

/// Any event of the current format: every field over its whole type, any
/// change, with or without a base.
pub fn any_event(u: &mut Unstructured) -> Event {
    Event {
        node: any_node(u),
        machine: MachineId(u.u64()),
        seq: u.u64(),
        time: any_time(u),
        clock: any_clock(u),
        change: any_change(u),
        base: opt(u, |u| EventId { machine: MachineId(u.u64()), seq: u.u64() }),
    }
}

/// Any event of record version 1, whose time is whole seconds within
/// what converts to nanoseconds (-4e9..8e9 s).
pub fn any_event_v1(u: &mut Unstructured) -> EventV1 {
    EventV1 {
        node: any_node(u),
        machine: MachineId(u.u64()),
        seq: u.u64(),
        time_secs: (u.u64() % 12_000_000_000) as i64 - 4_000_000_000,
        clock: any_clock(u),
        change: any_change(u),
    }
}

/// The generators above as proptest strategies: proptest draws the bytes,
/// the generator reads them (see the module docs).
pub mod strategy {
    use super::Unstructured;
    use engine::event::{Event, EventV1};
    use proptest::collection::vec;
    use proptest::prelude::*;

    /// Enough bytes for the largest value the generators build (a content
    /// change of five 32-byte-seeded blocks, names of 40 bytes).
    const INPUT: std::ops::Range<usize> = 0..640;

    fn from_bytes<T: std::fmt::Debug>(build: fn(&mut Unstructured) -> T) -> impl Strategy<Value = T> {
        vec(any::<u8>(), INPUT).prop_map(move |bytes| build(&mut Unstructured::new(&bytes)))
    }

    /// [`super::event`]: the small world.
    pub fn event() -> impl Strategy<Value = Event> {
        from_bytes(super::event)
    }

    /// [`super::any_event`]: the whole domain.
    pub fn any_event() -> impl Strategy<Value = Event> {
        from_bytes(super::any_event)
    }

    /// [`super::any_event_v1`].
    pub fn any_event_v1() -> impl Strategy<Value = EventV1> {
        from_bytes(super::any_event_v1)
    }
}
