//! Identifiers and hashes. Every id and hash has its own newtype so that a
//! machine id can never be passed where a node id is meant.
//!
//! Always true:
//! - a [`NodeId`] is `(counter << 64) | machine`: the machine that created the
//!   node is its low 64 bits, so creating a node never needs coordination;
//! - the root directory is [`NodeId::ROOT`] (counter 0, machine 0), which no
//!   machine ever allocates because counters start at 1;
//! - a conflict copy, which the merge makes and no machine creates, is
//!   [`NodeId::conflict_copy`] of the event that made it: the counter's top
//!   bit set over that event's seq, so it is the same on every replica and
//!   never one a machine allocates (counters never reach 2^63);
//! - a [`BlockHash`] is blake3 of a block's *uncompressed* bytes, truncated to
//!   the data dir's configured hash size (16..=32 bytes); bytes past `len` are
//!   zero, so equality and ordering only see the significant bytes.

use std::fmt;
use std::str::FromStr;

/// A machine: random at `init`/`clone`, never zero (zero is the root's creator).
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
#[rkyv(derive(Debug, PartialEq, Eq, PartialOrd, Ord))]
pub struct MachineId(pub u64);

impl MachineId {
    /// A fresh random machine id (never zero).
    pub fn random() -> Self {
        loop {
            let id: u64 = rand::random();
            if id != 0 {
                return MachineId(id);
            }
        }
    }
}

impl fmt::Display for MachineId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:016x}", self.0)
    }
}

impl fmt::Debug for MachineId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "MachineId({self})")
    }
}

/// Parses exactly 16 lowercase hex digits: the spelling used in folder names,
/// so a hostile peer folder name can never alias another machine.
impl FromStr for MachineId {
    type Err = ParseIdError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        parse_hex_u64(s, "machine id").map(MachineId)
    }
}

/// A node (file, directory, symlink, ...). See the module docs for its layout.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
#[rkyv(derive(Debug, PartialEq, Eq, PartialOrd, Ord))]
pub struct NodeId(pub u128);

impl NodeId {
    /// The root directory.
    pub const ROOT: NodeId = NodeId(0);

    /// The id `counter` of `machine`.
    pub fn new(counter: u64, machine: MachineId) -> Self {
        NodeId((u128::from(counter) << 64) | u128::from(machine.0))
    }

    /// The machine that created this node.
    pub fn machine(self) -> MachineId {
        MachineId(self.0 as u64)
    }

    /// The creating machine's counter.
    pub fn counter(self) -> u64 {
        (self.0 >> 64) as u64
    }

    /// The conflict copy that event `e` makes (see `merge`).
    pub fn conflict_copy(e: EventId) -> Self {
        NodeId::new(Self::COPY_BIT | (e.seq & !Self::COPY_BIT), e.machine)
    }

    /// Whether the merge made this node as a conflict copy.
    pub fn is_conflict_copy(self) -> bool {
        self.counter() & Self::COPY_BIT != 0
    }

    const COPY_BIT: u64 = 1 << 63;
}

impl fmt::Display for NodeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:x}.{:016x}", self.counter(), self.machine().0)
    }
}

impl fmt::Debug for NodeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "NodeId({self})")
    }
}

/// Parses the `Display` form `<counter hex>.<machine 16 hex>`.
impl FromStr for NodeId {
    type Err = ParseIdError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (counter, machine) =
            s.split_once('.').ok_or_else(|| ParseIdError(format!("node id {s:?} is not <counter>.<machine>")))?;
        if counter.is_empty() || counter.len() > 16 || !counter.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(ParseIdError(format!("node id {s:?}: bad counter")));
        }
        let counter = u64::from_str_radix(counter, 16).map_err(|e| ParseIdError(format!("node id {s:?}: {e}")))?;
        Ok(NodeId::new(counter, machine.parse()?))
    }
}

/// An id or hash that does not parse; the message says which and why.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct ParseIdError(pub String);

fn parse_hex_u64(s: &str, what: &str) -> Result<u64, ParseIdError> {
    if s.len() != 16 || !s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')) {
        return Err(ParseIdError(format!("{what} {s:?} is not 16 lowercase hex digits")));
    }
    u64::from_str_radix(s, 16).map_err(|e| ParseIdError(format!("{what} {s:?}: {e}")))
}

/// Smallest and largest hash sizes a data dir may choose.
pub(crate) const MIN_HASH_SIZE: usize = 16;
/// See [`MIN_HASH_SIZE`].
pub(crate) const MAX_HASH_SIZE: usize = 32;

/// The address of a block's content: truncated blake3 of its uncompressed bytes.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
#[rkyv(derive(Debug, PartialEq, Eq))]
pub struct BlockHash {
    len: u8,
    bytes: [u8; MAX_HASH_SIZE],
}

impl BlockHash {
    /// Hashes `data` and keeps the first `hash_size` bytes.
    ///
    /// `hash_size` must be within [`MIN_HASH_SIZE`]..=[`MAX_HASH_SIZE`]; the
    /// config loader guarantees that, and out-of-range values are clamped.
    pub fn of(data: &[u8], hash_size: usize) -> Self {
        let full = blake3::hash(data);
        Self::from_slice_truncated(full.as_bytes(), hash_size)
    }

    fn from_slice_truncated(full: &[u8], hash_size: usize) -> Self {
        let len = hash_size.clamp(MIN_HASH_SIZE, MAX_HASH_SIZE);
        let mut bytes = [0u8; MAX_HASH_SIZE];
        bytes[..len].copy_from_slice(&full[..len]);
        BlockHash { len: len as u8, bytes }
    }

    /// Builds a hash from its significant bytes (16..=32 of them).
    pub fn from_bytes(b: &[u8]) -> Result<Self, ParseIdError> {
        if !(MIN_HASH_SIZE..=MAX_HASH_SIZE).contains(&b.len()) {
            return Err(ParseIdError(format!(
                "block hash of {} bytes; must be {MIN_HASH_SIZE}..={MAX_HASH_SIZE}",
                b.len()
            )));
        }
        Ok(Self::from_slice_truncated(b, b.len()))
    }

    /// The significant bytes.
    pub fn as_bytes(&self) -> &[u8] {
        &self.bytes[..usize::from(self.len).min(MAX_HASH_SIZE)]
    }

    /// Lowercase hex of the significant bytes; the blob's file name.
    pub fn to_hex(&self) -> String {
        self.as_bytes().iter().map(|b| format!("{b:02x}")).collect()
    }
}

impl fmt::Display for BlockHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_hex())
    }
}

impl fmt::Debug for BlockHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "BlockHash({})", self.to_hex())
    }
}

impl FromStr for BlockHash {
    type Err = ParseIdError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if !s.len().is_multiple_of(2) || !s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')) {
            return Err(ParseIdError(format!("block hash {s:?} is not lowercase hex")));
        }
        let bytes: Vec<u8> = (0..s.len() / 2)
            .map(|i| u8::from_str_radix(&s[2 * i..2 * i + 2], 16))
            .collect::<Result<_, _>>()
            .map_err(|e| ParseIdError(format!("block hash {s:?}: {e}")))?;
        BlockHash::from_bytes(&bytes)
    }
}

/// Wall-clock time in nanoseconds since the Unix epoch (negative before it).
#[derive(
    Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize,
)]
#[rkyv(derive(Debug, PartialEq, Eq, PartialOrd, Ord))]
pub struct Timestamp(pub i64);

impl Timestamp {
    /// The current wall-clock time.
    pub fn now() -> Self {
        match std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH) {
            Ok(d) => Timestamp(i64::try_from(d.as_nanos()).unwrap_or(i64::MAX)),
            Err(e) => Timestamp(-i64::try_from(e.duration().as_nanos()).unwrap_or(i64::MAX)),
        }
    }

    /// From whole seconds and nanoseconds.
    pub fn from_secs_nanos(secs: i64, nanos: u32) -> Self {
        Timestamp(secs.saturating_mul(1_000_000_000).saturating_add(i64::from(nanos)))
    }

    /// Whole seconds since the epoch (floor).
    pub fn secs(self) -> i64 {
        self.0.div_euclid(1_000_000_000)
    }

    /// The nanoseconds past [`Timestamp::secs`].
    pub fn subsec_nanos(self) -> u32 {
        self.0.rem_euclid(1_000_000_000) as u32
    }

    /// As a `SystemTime` (for FUSE and `std::fs`).
    pub fn to_system_time(self) -> std::time::SystemTime {
        let base = std::time::UNIX_EPOCH;
        if self.0 >= 0 {
            base + std::time::Duration::from_nanos(self.0 as u64)
        } else {
            base - std::time::Duration::from_nanos(self.0.unsigned_abs())
        }
    }

    /// From a `SystemTime`.
    pub fn from_system_time(t: std::time::SystemTime) -> Self {
        match t.duration_since(std::time::UNIX_EPOCH) {
            Ok(d) => Timestamp(i64::try_from(d.as_nanos()).unwrap_or(i64::MAX)),
            Err(e) => Timestamp(-i64::try_from(e.duration().as_nanos()).unwrap_or(i64::MAX)),
        }
    }
}

impl fmt::Debug for Timestamp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Timestamp({}.{:09})", self.secs(), self.subsec_nanos())
    }
}

/// One event in every replica: the machine that made it and that machine's
/// event counter (see `event`). A file's content versions are named by the
/// event that made them.
#[derive(
    Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Debug, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize,
)]
#[rkyv(derive(Debug, PartialEq, Eq))]
pub struct EventId {
    /// Who made it.
    pub machine: MachineId,
    /// That machine's event counter.
    pub seq: u64,
}

impl fmt::Display for EventId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}#{}", self.machine, self.seq)
    }
}

/// Where a record sits: machine, segment number, byte offset of its frame.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Debug)]
pub struct LogPos {
    /// Whose log.
    pub machine: MachineId,
    /// Segment number within that machine's log (starts at 0).
    pub segment: u64,
    /// Byte offset of the record's frame within the segment file.
    pub offset: u64,
}

impl fmt::Display for LogPos {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "@{}:{}:{}", self.machine, self.segment, self.offset)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn node_id_display_round_trips(counter: u64, machine: u64) {
            let id = NodeId::new(counter, MachineId(machine));
            prop_assert_eq!(id.to_string().parse::<NodeId>(), Ok(id));
            prop_assert_eq!(id.machine(), MachineId(machine));
            prop_assert_eq!(id.counter(), counter);
        }

        #[test]
        fn block_hash_hex_round_trips(data: Vec<u8>, size in MIN_HASH_SIZE..=MAX_HASH_SIZE) {
            let h = BlockHash::of(&data, size);
            prop_assert_eq!(h.as_bytes().len(), size);
            prop_assert_eq!(h.to_hex().parse::<BlockHash>(), Ok(h));
        }

        #[test]
        fn timestamp_secs_nanos_round_trip(secs in -1_000_000_000i64..4_000_000_000, nanos in 0u32..1_000_000_000) {
            let t = Timestamp::from_secs_nanos(secs, nanos);
            prop_assert_eq!((t.secs(), t.subsec_nanos()), (secs, nanos));
            prop_assert_eq!(Timestamp::from_system_time(t.to_system_time()), t);
        }
    }

    #[test]
    fn machine_id_refuses_hostile_names() {
        for bad in ["", "../../etc", "0123456789ABCDEF", "0123456789abcde", "0123456789abcdef0", "012345678/abcdef"] {
            assert!(bad.parse::<MachineId>().is_err(), "{bad:?} parsed");
        }
        assert_eq!("00000000000000ff".parse::<MachineId>(), Ok(MachineId(255)));
    }
}
