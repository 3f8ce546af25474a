//! `config.toml`: a data dir's settings, written at `init`/`clone`.
//!
//! # File format
//!
//! A TOML table with these keys (sizes are integers in bytes or strings such
//! as `"10GiB"`, `"512MiB"`, `"1.5GB"`; see [`parse_size`]):
//!
//! | key                 | type          | default  | range / rule                                  |
//! |---------------------|---------------|----------|-----------------------------------------------|
//! | `machine`           | string        | required | 16 lowercase hex digits, not zero             |
//! | `remote`            | string        | none     | rsync destination; non-empty, no control chars, not starting with `-` |
//! | `cache_size`        | size          | 10 GiB   | at least `block_size`                         |
//! | `block_size`        | size          | required | power of two, 4 KiB..=16 MiB                  |
//! | `hash_size`         | integer       | required | 16..=32 (bytes of blake3 kept)                |
//! | `compression_level` | integer       | 1        | 0 (off) or 1..=19 (zstd level)                |
//! | `segment_size`      | size          | 64 MiB   | 1 MiB..=1 GiB                                 |
//! | `dirty_limit`       | size          | 256 MiB  | at least `block_size`                         |
//! | `small_block`       | size          | 64 KiB   | at most `block_size`; blocks this small are never evicted |
//! | `reserve`           | size          | 64 MiB   | at most 1 TiB; free disk space new blocks never use, at most a sixteenth of the disk (see `blob`) |
//! | `push_delay`        | duration      | 300ms    | 10ms..=1h; a mount pushes this long after the last change (debounce) |
//! | `push_max_delay`    | duration      | 3s       | `push_delay`..=24h; ...but at most this long after the first unpushed change, under continuous writes |
//! | `poll_interval`     | duration      | 1s       | 100ms..=24h; how often a mount checks a local-directory remote for peers' new log bytes (a listing of the remote's `log/`, no rsync run unless something is new) |
//! | `poll_interval_ssh` | duration      | 2s       | 500ms..=24h; the same over ssh, where each check is one `rsync --list-only` run over the shared connection |
//!
//! Durations are strings of a decimal number and a unit: `ms`, `s`, `m` or `h`
//! (`"300ms"`, `"1.5s"`, `"2m"`), a whole number of milliseconds; see
//! [`parse_duration`]. The four replication keys are newer than the others:
//! a file without them (written before they existed) gets the defaults.
//!
//! Always true:
//! - `block_size` and `hash_size` are fixed when a data dir is made (a blob's
//!   name depends on the hash size, a file's block list on the block size), so
//!   loading requires them to be present instead of guessing a default:
//!   [`Config::new_default`] picks the defaults, [`Config::save`] writes every
//!   key;
//! - every key is validated on load; an unknown key is refused (a typo must
//!   not silently fall back to a default); each error names the file and key;
//! - [`Config::save`] replaces the file atomically and durably.

use std::fmt::Write as _;
use std::io;
use std::path::Path;
use std::time::Duration;

use crate::error::{Error, Result};
use crate::format::write_file_atomic;
use crate::ids::{MachineId, MAX_HASH_SIZE, MIN_HASH_SIZE};
use crate::storage::Storage;

const KIB: u64 = 1 << 10;
const MIB: u64 = 1 << 20;
const GIB: u64 = 1 << 30;

/// Default `block_size`.
pub(crate) const DEFAULT_BLOCK_SIZE: u64 = MIB;
/// Default `hash_size`.
pub const DEFAULT_HASH_SIZE: usize = 32;
/// Default `compression_level`.
pub(crate) const DEFAULT_COMPRESSION_LEVEL: i32 = 1;
/// Default `cache_size`.
pub const DEFAULT_CACHE_SIZE: u64 = 10 * GIB;
/// Default `segment_size`.
pub(crate) const DEFAULT_SEGMENT_SIZE: u64 = 64 * MIB;
/// Default `dirty_limit`.
pub(crate) const DEFAULT_DIRTY_LIMIT: u64 = 256 * MIB;
/// Default `small_block`.
pub(crate) const DEFAULT_SMALL_BLOCK: u64 = 64 * KIB;
/// Default `reserve`.
pub(crate) const DEFAULT_RESERVE: u64 = 64 * MIB;
/// Largest `reserve`.
pub(crate) const MAX_RESERVE: u64 = 1 << 40;

/// Smallest `block_size`.
pub(crate) const MIN_BLOCK_SIZE: u64 = 4 * KIB;
/// Largest `block_size`.
pub(crate) const MAX_BLOCK_SIZE: u64 = 16 * MIB;
/// Smallest `segment_size`.
pub(crate) const MIN_SEGMENT_SIZE: u64 = MIB;
/// Largest `segment_size`.
pub(crate) const MAX_SEGMENT_SIZE: u64 = GIB;
/// Largest `compression_level`.
pub(crate) const MAX_COMPRESSION_LEVEL: i32 = 19;
/// Largest `config.toml` accepted.
pub(crate) const MAX_FILE_LEN: u64 = 64 * KIB;

/// Default `push_delay`.
pub const DEFAULT_PUSH_DELAY: Duration = Duration::from_millis(300);
/// Default `push_max_delay`.
pub const DEFAULT_PUSH_MAX_DELAY: Duration = Duration::from_secs(3);
/// Default `poll_interval`.
pub const DEFAULT_POLL_INTERVAL: Duration = Duration::from_secs(1);
/// Default `poll_interval_ssh`.
pub(crate) const DEFAULT_POLL_INTERVAL_SSH: Duration = Duration::from_secs(2);
/// Range of `push_delay`.
pub(crate) const PUSH_DELAY_RANGE: (Duration, Duration) = (Duration::from_millis(10), Duration::from_secs(3600));
/// Largest `push_max_delay` (the smallest is `push_delay`).
pub(crate) const MAX_PUSH_MAX_DELAY: Duration = Duration::from_secs(24 * 3600);
/// Range of `poll_interval`.
pub(crate) const POLL_INTERVAL_RANGE: (Duration, Duration) =
    (Duration::from_millis(100), Duration::from_secs(24 * 3600));
/// Range of `poll_interval_ssh`.
pub(crate) const POLL_INTERVAL_SSH_RANGE: (Duration, Duration) =
    (Duration::from_millis(500), Duration::from_secs(24 * 3600));

/// The keys a config may hold, in the order they are written.
pub(crate) const KEYS: [&str; 14] = [
    "machine",
    "remote",
    "cache_size",
    "block_size",
    "hash_size",
    "compression_level",
    "segment_size",
    "dirty_limit",
    "small_block",
    "reserve",
    "push_delay",
    "push_max_delay",
    "poll_interval",
    "poll_interval_ssh",
];

/// A data dir's settings (see the module docs for each field's rules).
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct Config {
    /// This machine.
    pub machine: MachineId,
    /// rsync destination of the shared remote, if any.
    pub remote: Option<String>,
    /// Bound of the local block cache, in bytes.
    pub cache_size: u64,
    /// Block size in bytes (fixed at init).
    pub block_size: u64,
    /// Bytes of blake3 kept in a block hash (fixed at init).
    pub hash_size: usize,
    /// zstd level for blocks; 0 = no compression.
    pub compression_level: i32,
    /// A log segment is sealed once it reaches this size.
    pub segment_size: u64,
    /// Most memory the dirty write buffers may hold.
    pub dirty_limit: u64,
    /// Blocks at or below this size are never evicted.
    pub small_block: u64,
    /// Free disk space that new blocks never use, so that the log, the
    /// index and a clean unmount always have room.
    pub reserve: u64,
    /// Quiet time after the last change before a mount pushes.
    pub push_delay: Duration,
    /// Longest wait from the first unpushed change to a push.
    pub push_max_delay: Duration,
    /// Pause between checks of a local-directory remote for peers' changes.
    pub poll_interval: Duration,
    /// Pause between checks of an ssh remote for peers' changes.
    pub poll_interval_ssh: Duration,
}

impl Config {
    /// The defaults for a new data dir of `machine`.
    pub fn new_default(machine: MachineId) -> Self {
        Config {
            machine,
            remote: None,
            cache_size: DEFAULT_CACHE_SIZE,
            block_size: DEFAULT_BLOCK_SIZE,
            hash_size: DEFAULT_HASH_SIZE,
            compression_level: DEFAULT_COMPRESSION_LEVEL,
            segment_size: DEFAULT_SEGMENT_SIZE,
            dirty_limit: DEFAULT_DIRTY_LIMIT,
            small_block: DEFAULT_SMALL_BLOCK,
            reserve: DEFAULT_RESERVE,
            push_delay: DEFAULT_PUSH_DELAY,
            push_max_delay: DEFAULT_PUSH_MAX_DELAY,
            poll_interval: DEFAULT_POLL_INTERVAL,
            poll_interval_ssh: DEFAULT_POLL_INTERVAL_SSH,
        }
    }

    /// Checks every field's range and the rules between fields; the error
    /// names the field.
    pub fn validate(&self) -> Result<(), String> {
        if self.machine.0 == 0 {
            return Err("field `machine`: must not be zero".to_string());
        }
        if let Some(r) = &self.remote {
            check_remote(r).map_err(|e| format!("field `remote`: {e}"))?;
        }
        let bs = self.block_size;
        if !bs.is_power_of_two() || !(MIN_BLOCK_SIZE..=MAX_BLOCK_SIZE).contains(&bs) {
            return Err(format!(
                "field `block_size`: {} is not a power of two within {}..={}",
                format_size(bs),
                format_size(MIN_BLOCK_SIZE),
                format_size(MAX_BLOCK_SIZE)
            ));
        }
        if !(MIN_HASH_SIZE..=MAX_HASH_SIZE).contains(&self.hash_size) {
            return Err(format!(
                "field `hash_size`: {} is not within {MIN_HASH_SIZE}..={MAX_HASH_SIZE}",
                self.hash_size
            ));
        }
        if !(0..=MAX_COMPRESSION_LEVEL).contains(&self.compression_level) {
            return Err(format!(
                "field `compression_level`: {} is not within 0 (off)..={MAX_COMPRESSION_LEVEL}",
                self.compression_level
            ));
        }
        if !(MIN_SEGMENT_SIZE..=MAX_SEGMENT_SIZE).contains(&self.segment_size) {
            return Err(format!(
                "field `segment_size`: {} is not within {}..={}",
                format_size(self.segment_size),
                format_size(MIN_SEGMENT_SIZE),
                format_size(MAX_SEGMENT_SIZE)
            ));
        }
        if self.cache_size < bs {
            return Err(format!(
                "field `cache_size`: {} is smaller than one block ({})",
                format_size(self.cache_size),
                format_size(bs)
            ));
        }
        if self.dirty_limit < bs {
            return Err(format!(
                "field `dirty_limit`: {} is smaller than one block ({})",
                format_size(self.dirty_limit),
                format_size(bs)
            ));
        }
        if self.small_block > bs {
            return Err(format!(
                "field `small_block`: {} is larger than the block size ({})",
                format_size(self.small_block),
                format_size(bs)
            ));
        }
        if self.reserve > MAX_RESERVE {
            return Err(format!("field `reserve`: {} is over {}", format_size(self.reserve), format_size(MAX_RESERVE)));
        }
        let within = |key: &str, d: Duration, (lo, hi): (Duration, Duration)| {
            if (lo..=hi).contains(&d) {
                Ok(())
            } else {
                Err(format!(
                    "field `{key}`: {} is not within {}..={}",
                    format_duration(d),
                    format_duration(lo),
                    format_duration(hi)
                ))
            }
        };
        within("push_delay", self.push_delay, PUSH_DELAY_RANGE)?;
        within("push_max_delay", self.push_max_delay, (self.push_delay, MAX_PUSH_MAX_DELAY))
            .map_err(|e| format!("{e} (it may not be shorter than `push_delay`)"))?;
        within("poll_interval", self.poll_interval, POLL_INTERVAL_RANGE)?;
        within("poll_interval_ssh", self.poll_interval_ssh, POLL_INTERVAL_SSH_RANGE)?;
        Ok(())
    }

    /// Parses and validates the text of a `config.toml` (no file involved:
    /// also the fuzz entry point). The error names the key.
    pub fn from_toml(text: &str) -> Result<Config, String> {
        let table: toml::Table = toml::from_str(text).map_err(|e| format!("not valid TOML: {}", e.message()))?;
        for key in table.keys() {
            if !KEYS.contains(&key.as_str()) {
                return Err(format!("unknown key `{key}` (known keys: {})", KEYS.join(", ")));
            }
        }
        let machine = match table.get("machine") {
            None => return Err("missing field `machine`".to_string()),
            Some(toml::Value::String(s)) => s.parse::<MachineId>().map_err(|e| format!("field `machine`: {e}"))?,
            Some(v) => return Err(format!("field `machine`: expected a string, found {}", v.type_str())),
        };
        let remote = match table.get("remote") {
            None => None,
            Some(toml::Value::String(s)) => Some(s.clone()),
            Some(v) => return Err(format!("field `remote`: expected a string, found {}", v.type_str())),
        };
        let fixed = |key: &str| -> Result<&toml::Value, String> {
            table.get(key).ok_or_else(|| {
                format!("missing field `{key}` (fixed when the data dir was made; a default could not be trusted)")
            })
        };
        let block_size = size_value(fixed("block_size")?).map_err(|e| format!("field `block_size`: {e}"))?;
        let hash_size = int_value(fixed("hash_size")?, "hash_size")?;
        let hash_size = usize::try_from(hash_size)
            .map_err(|_| format!("field `hash_size`: {hash_size} is not within {MIN_HASH_SIZE}..={MAX_HASH_SIZE}"))?;
        let compression_level = match table.get("compression_level") {
            None => DEFAULT_COMPRESSION_LEVEL,
            Some(v) => {
                let l = int_value(v, "compression_level")?;
                i32::try_from(l).map_err(|_| {
                    format!("field `compression_level`: {l} is not within 0 (off)..={MAX_COMPRESSION_LEVEL}")
                })?
            }
        };
        let size = |key: &str, default: u64| -> Result<u64, String> {
            match table.get(key) {
                None => Ok(default),
                Some(v) => size_value(v).map_err(|e| format!("field `{key}`: {e}")),
            }
        };
        let duration = |key: &str, default: Duration| -> Result<Duration, String> {
            match table.get(key) {
                None => Ok(default),
                Some(toml::Value::String(s)) => parse_duration(s).map_err(|e| format!("field `{key}`: {e}")),
                Some(v) => Err(format!(
                    "field `{key}`: expected a duration string such as \"500ms\" or \"2s\", found {}",
                    v.type_str()
                )),
            }
        };
        let config = Config {
            machine,
            remote,
            cache_size: size("cache_size", DEFAULT_CACHE_SIZE)?,
            block_size,
            hash_size,
            compression_level,
            segment_size: size("segment_size", DEFAULT_SEGMENT_SIZE)?,
            dirty_limit: size("dirty_limit", DEFAULT_DIRTY_LIMIT)?,
            small_block: size("small_block", DEFAULT_SMALL_BLOCK)?,
            reserve: size("reserve", DEFAULT_RESERVE)?,
            push_delay: duration("push_delay", DEFAULT_PUSH_DELAY)?,
            push_max_delay: duration("push_max_delay", DEFAULT_PUSH_MAX_DELAY)?,
            poll_interval: duration("poll_interval", DEFAULT_POLL_INTERVAL)?,
            poll_interval_ssh: duration("poll_interval_ssh", DEFAULT_POLL_INTERVAL_SSH)?,
        };
        config.validate()?;
        Ok(config)
    }

    /// The `config.toml` text for this config: every key, sizes in exact
    /// human units, with a comment per key.
    pub fn to_toml(&self) -> String {
        let mut s = String::from("# syncer data dir settings; see README.md.\n");
        let q = |v: &str| toml::Value::String(v.to_string()).to_string();
        let _ = writeln!(s, "# This machine's id (random at init/clone).\nmachine = {}", q(&self.machine.to_string()));
        match &self.remote {
            Some(r) => {
                let _ = writeln!(s, "# rsync destination of the shared remote.\nremote = {}", q(r));
            }
            None => s.push_str("# rsync destination of the shared remote (none yet).\n# remote = \"host:/path\"\n"),
        }
        let _ = writeln!(s, "# Bound of the local block cache.\ncache_size = {}", q(&format_size(self.cache_size)));
        let _ = writeln!(s, "# Fixed at init: never change it.\nblock_size = {}", q(&format_size(self.block_size)));
        let _ = writeln!(s, "# Fixed at init: never change it.\nhash_size = {}", self.hash_size);
        let _ = writeln!(s, "# zstd level for blocks (0 = off).\ncompression_level = {}", self.compression_level);
        let _ = writeln!(
            s,
            "# Log segments are sealed at this size.\nsegment_size = {}",
            q(&format_size(self.segment_size))
        );
        let _ =
            writeln!(s, "# Most memory held by unwritten data.\ndirty_limit = {}", q(&format_size(self.dirty_limit)));
        let _ =
            writeln!(s, "# Blocks this small are never evicted.\nsmall_block = {}", q(&format_size(self.small_block)));
        let _ = writeln!(
            s,
            "# Free disk space new blocks never use (room for the log, the index, an unmount).\nreserve = {}",
            q(&format_size(self.reserve))
        );
        let _ = writeln!(
            s,
            "# A mount pushes this long after the last change...\npush_delay = {}\n\
             # ...but at most this long after the first unpushed one.\npush_max_delay = {}",
            q(&format_duration(self.push_delay)),
            q(&format_duration(self.push_max_delay))
        );
        let _ = writeln!(
            s,
            "# How often a mount looks for peers' changes on a local-directory remote (no rsync run unless \
             there are some)...\npoll_interval = {}\n# ...and on an ssh remote (one rsync run per look).\n\
             poll_interval_ssh = {}",
            q(&format_duration(self.poll_interval)),
            q(&format_duration(self.poll_interval_ssh))
        );
        s
    }

    /// Reads and validates `path`; errors are [`Error::BadConfig`] naming the
    /// file and the key.
    pub fn load(storage: &dyn Storage, path: &Path) -> Result<Config> {
        let bad = |reason: String| Error::BadConfig { path: path.to_path_buf(), reason };
        match storage.file_len(path) {
            Ok(n) if n > MAX_FILE_LEN => return Err(bad(format!("{n} bytes is too large for a config file"))),
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                return Err(bad("missing (not a syncer data dir, or not initialized)".to_string()))
            }
            Err(e) => return Err(Error::io("stat", path, e)),
        }
        let bytes = storage.read(path).map_err(|e| Error::io("read", path, e))?;
        let text = std::str::from_utf8(&bytes).map_err(|e| bad(format!("not UTF-8 text ({e})")))?;
        Config::from_toml(text).map_err(bad)
    }

    /// Validates and writes the config to `path`, atomically and durably.
    pub fn save(&self, storage: &dyn Storage, path: &Path) -> Result<()> {
        self.validate().map_err(|reason| Error::BadConfig { path: path.to_path_buf(), reason })?;
        write_file_atomic(storage, path, self.to_toml().as_bytes())
    }
}

/// Whether `r` can be a remote at all, whatever the transport: not empty,
/// no control character, not starting with `-` (rsync and ssh would read it
/// as an option). The one check behind `config.toml`'s `remote` and the
/// replication crate's remote parser.
pub fn check_remote(r: &str) -> Result<(), String> {
    if r.trim().is_empty() {
        return Err("must not be empty".to_string());
    }
    if r.chars().any(char::is_control) {
        return Err(format!("{r:?} holds a control character"));
    }
    if r.starts_with('-') {
        return Err(format!("{r:?} starts with `-` (rsync would read it as an option)"));
    }
    Ok(())
}

fn int_value(v: &toml::Value, key: &str) -> Result<i64, String> {
    match v {
        toml::Value::Integer(i) => Ok(*i),
        v => Err(format!("field `{key}`: expected an integer, found {}", v.type_str())),
    }
}

fn size_value(v: &toml::Value) -> Result<u64, String> {
    match v {
        toml::Value::Integer(i) => u64::try_from(*i).map_err(|_| format!("{i} is negative")),
        toml::Value::String(s) => parse_size(s),
        v => Err(format!("expected a size (bytes, or a string like \"512MiB\"), found {}", v.type_str())),
    }
}

/// Parses a duration: a decimal number and a unit, `ms`, `s`, `m` or `h`
/// (`"300ms"`, `"1.5s"`, `"2m"`), optionally separated by spaces; the
/// result must be a whole number of milliseconds. A bare number is refused:
/// its unit would be a guess.
pub(crate) fn parse_duration(s: &str) -> Result<Duration, String> {
    let t = s.trim();
    let split = t.find(|c: char| !(c.is_ascii_digit() || c == '.')).unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let unit = unit.trim_start();
    let ms: u128 = match unit {
        "ms" => 1,
        "s" => 1_000,
        "m" => 60_000,
        "h" => 3_600_000,
        "" => return Err(format!("{s:?} has no unit (write e.g. \"500ms\", \"2s\", \"1m\", \"1h\")")),
        u => return Err(format!("{s:?}: unknown unit `{u}` (use ms, s, m or h)")),
    };
    let (int, frac) = num.split_once('.').unwrap_or((num, ""));
    if int.is_empty() || !int.bytes().all(|b| b.is_ascii_digit()) || !frac.bytes().all(|b| b.is_ascii_digit()) {
        return Err(format!("{s:?}: {num:?} is not a number"));
    }
    if num.contains('.') && frac.is_empty() || frac.len() > 9 {
        return Err(format!("{s:?}: {num:?} is not a number"));
    }
    let too_long = || format!("{s:?} is too long");
    let int: u128 = int.parse().map_err(|_| too_long())?;
    let den = 10u128.pow(frac.len() as u32);
    let frac: u128 = if frac.is_empty() { 0 } else { frac.parse().map_err(|_| format!("{s:?}: bad decimals"))? };
    if !(frac * ms).is_multiple_of(den) {
        return Err(format!("{s:?} is not a whole number of milliseconds"));
    }
    let total = int.checked_mul(ms).and_then(|w| w.checked_add(frac * ms / den)).ok_or_else(too_long)?;
    u64::try_from(total).map(Duration::from_millis).map_err(|_| too_long())
}

/// Formats a duration exactly (whole milliseconds), in the largest unit
/// that divides it (`"300ms"`, `"2s"`, `"1h"`), so [`parse_duration`]
/// gives it back.
pub(crate) fn format_duration(d: Duration) -> String {
    let ms = d.as_millis();
    for (unit, m) in [("h", 3_600_000u128), ("m", 60_000), ("s", 1_000)] {
        if ms >= m && ms.is_multiple_of(m) {
            return format!("{}{unit}", ms / m);
        }
    }
    format!("{ms}ms")
}

/// Units [`parse_size`] accepts (case-insensitive) and their byte counts.
const UNITS: [(&str, u64); 9] = [
    ("b", 1),
    ("kib", KIB),
    ("mib", MIB),
    ("gib", GIB),
    ("tib", 1 << 40),
    ("kb", 1_000),
    ("mb", 1_000_000),
    ("gb", 1_000_000_000),
    ("tb", 1_000_000_000_000),
];

/// Parses a byte count: a plain integer (`"4096"`), or a decimal number and a
/// unit: `B`, binary `KiB MiB GiB TiB` (powers of 1024) or decimal
/// `KB MB GB TB` (powers of 1000), case-insensitive, optionally separated by
/// spaces (`"10GiB"`, `"1.5 GB"`). The result must be a whole number of
/// bytes that fits in a u64. A bare `K`/`M`/`G`/`T` is refused as ambiguous.
pub fn parse_size(s: &str) -> Result<u64, String> {
    let t = s.trim();
    let split = t.find(|c: char| !(c.is_ascii_digit() || c == '.')).unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let unit = unit.trim_start();
    if num.is_empty() {
        return Err(format!("{s:?} is not a size (expected e.g. 4096, \"512MiB\", \"1.5GB\")"));
    }
    let mult = if unit.is_empty() {
        1
    } else {
        let lower = unit.to_ascii_lowercase();
        match UNITS.iter().find(|(u, _)| *u == lower) {
            Some((_, m)) => *m,
            None if matches!(lower.as_str(), "k" | "m" | "g" | "t") => {
                let u = unit.to_ascii_uppercase();
                return Err(format!("{s:?}: unit `{unit}` is ambiguous; write {u}iB (binary) or {u}B (decimal)"));
            }
            None => return Err(format!("{s:?}: unknown unit `{unit}` (use B, KiB, MiB, GiB, TiB, KB, MB, GB, TB)")),
        }
    };
    let (int, frac) = match num.split_once('.') {
        Some((i, f)) => (i, f),
        None => (num, ""),
    };
    if int.is_empty() || frac.contains('.') || (num.contains('.') && frac.is_empty()) {
        return Err(format!("{s:?}: {num:?} is not a number"));
    }
    if frac.len() > 18 {
        return Err(format!("{s:?}: too many decimals"));
    }
    let too_big = || format!("{s:?} is larger than {} bytes", u64::MAX);
    let int: u128 = int.parse().map_err(|_| too_big())?;
    let frac_num: u128 = if frac.is_empty() { 0 } else { frac.parse().map_err(|_| format!("{s:?}: bad decimals"))? };
    let frac_den: u128 = 10u128.pow(frac.len() as u32);
    let mult = u128::from(mult);
    let whole = int.checked_mul(mult).ok_or_else(too_big)?;
    let part = frac_num * mult;
    if !part.is_multiple_of(frac_den) {
        return Err(format!("{s:?} is not a whole number of bytes"));
    }
    let total = whole.checked_add(part / frac_den).ok_or_else(too_big)?;
    u64::try_from(total).map_err(|_| too_big())
}

/// Formats a byte count exactly, in the largest binary unit that divides it
/// (`"1MiB"`, `"1536MiB"`, `"4097"`), so [`parse_size`] gives it back. For a
/// rounded display form see [`format_size_human`].
pub fn format_size(n: u64) -> String {
    for (unit, m) in [("TiB", 1u64 << 40), ("GiB", GIB), ("MiB", MIB), ("KiB", KIB)] {
        if n >= m && n.is_multiple_of(m) {
            return format!("{}{unit}", n / m);
        }
    }
    n.to_string()
}

/// Formats a byte count for people, rounded to one decimal in the largest
/// binary unit below it (`"3.2 GiB"`, `"512 B"`). Not exact: for config files
/// use [`format_size`].
pub fn format_size_human(n: u64) -> String {
    let units = [("TiB", 1u64 << 40), ("GiB", GIB), ("MiB", MIB), ("KiB", KIB)];
    for (unit, m) in units {
        if n >= m {
            let tenths = (u128::from(n) * 10 + u128::from(m) / 2) / u128::from(m);
            return format!("{}.{} {unit}", tenths / 10, tenths % 10);
        }
    }
    format!("{n} B")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes() {
        assert_eq!(parse_size("10GiB"), Ok(10 * GIB));
        assert_eq!(parse_size("512MiB"), Ok(512 * MIB));
        assert_eq!(parse_size("1.5GB"), Ok(1_500_000_000));
        assert_eq!(parse_size("1.5 gib"), Ok(3 * GIB / 2));
        assert_eq!(parse_size(" 4096 "), Ok(4096));
        assert_eq!(parse_size("0"), Ok(0));
        assert!(parse_size("1.1KiB").unwrap_err().contains("whole number"));
        assert!(parse_size("10G").unwrap_err().contains("ambiguous"));
        assert!(parse_size("-1").is_err());
        assert!(parse_size("").is_err());
        assert!(parse_size("1..5GB").is_err());
        assert!(parse_size("1.GB").is_err());
        assert!(parse_size(".5GB").is_err());
        assert!(parse_size("99999999999TiB").unwrap_err().contains("larger"));
        assert!(parse_size("18446744073709551616").is_err());
        assert_eq!(parse_size("18446744073709551615"), Ok(u64::MAX));
        assert_eq!(format_size(MIB), "1MiB");
        assert_eq!(format_size(1536 * MIB), "1536MiB");
        assert_eq!(format_size(4097), "4097");
        assert_eq!(format_size(0), "0");
        assert_eq!(format_size_human(3_435_973_837), "3.2 GiB");
        assert_eq!(format_size_human(512), "512 B");
    }

    #[test]
    fn durations() {
        let ms = Duration::from_millis;
        assert_eq!(parse_duration("300ms"), Ok(ms(300)));
        assert_eq!(parse_duration(" 1.5 s "), Ok(ms(1500)));
        assert_eq!(parse_duration("2m"), Ok(ms(120_000)));
        assert_eq!(parse_duration("1h"), Ok(ms(3_600_000)));
        assert!(parse_duration("2").unwrap_err().contains("no unit"));
        assert!(parse_duration("2d").unwrap_err().contains("unknown unit"));
        assert!(parse_duration("0.5ms").unwrap_err().contains("whole number"));
        assert!(parse_duration("1.s").is_err());
        assert!(parse_duration(".5s").is_err());
        assert!(parse_duration("-1s").is_err());
        assert!(parse_duration("99999999999999999999999h").is_err());
        for d in [ms(300), ms(1500), ms(2000), ms(120_000), ms(3_600_000), ms(0)] {
            assert_eq!(parse_duration(&format_duration(d)), Ok(d), "{}", format_duration(d));
        }
    }

    #[test]
    fn replication_intervals_default_validate_and_round_trip() {
        let base = Config::new_default(MachineId(7));
        let text = base.to_toml();
        assert_eq!(Config::from_toml(&text), Ok(base.clone()));
        // A file written before the keys existed gets the defaults.
        let old: String = text
            .lines()
            .filter(|l| !["push_delay", "push_max_delay", "poll_interval"].iter().any(|k| l.starts_with(k)))
            .map(|l| format!("{l}\n"))
            .collect();
        let c = Config::from_toml(&old).expect("older file");
        assert_eq!((c.push_delay, c.push_max_delay), (DEFAULT_PUSH_DELAY, DEFAULT_PUSH_MAX_DELAY));
        assert_eq!((c.poll_interval, c.poll_interval_ssh), (DEFAULT_POLL_INTERVAL, DEFAULT_POLL_INTERVAL_SSH));
        let with = |extra: &str| Config::from_toml(&format!("{old}{extra}\n"));
        let c = with("poll_interval = \"250ms\"\npush_delay = \"1s\"").expect("set");
        assert_eq!((c.poll_interval, c.push_delay), (Duration::from_millis(250), Duration::from_secs(1)));
        let err = |extra: &str| with(extra).expect_err(extra);
        assert!(err("poll_interval = \"10ms\"").contains("field `poll_interval`: 10ms is not within 100ms..=24h"));
        assert!(err("poll_interval_ssh = \"100ms\"").contains("field `poll_interval_ssh`"));
        assert!(err("push_delay = \"2h\"").contains("field `push_delay`"));
        assert!(err("push_delay = \"5s\"").contains("field `push_max_delay`"), "shorter than push_delay");
        assert!(err("push_delay = 300").contains("field `push_delay`: expected a duration string"));
        assert!(err("poll_interval = \"1\"").contains("field `poll_interval`: \"1\" has no unit"));
    }
}
