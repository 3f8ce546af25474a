//! Reading an open directory a reply at a time, with stable offsets, in
//! memory that does not grow with the directory.
//!
//! A handle keeps no copy of its directory. Each reply reads the entries it
//! needs from the tree, in name order, after the name the kernel resumes
//! at. The offsets the kernel, `telldir` and `seekdir` see are *cookies*:
//! - 0 is the start, 1 the position after `.`, 2 the one after `..`;
//! - every other cookie was handed out by this handle for one name, and
//!   resuming at it lists the names after that name, as the directory is
//!   when the reply is read (the name itself may be gone by then).
//!
//! Always true:
//! - `.` and `..` come first, then the names in byte order;
//! - in one pass from offset 0 to the end, each name present from the start
//!   to the end of the pass is listed exactly once, a name added or removed
//!   meanwhile at most once (POSIX leaves those open), and no name twice;
//!   rewinding (offset 0) starts a new pass that sees the directory as it is;
//! - while a handle remembers a name, the name keeps its cookie: listing it
//!   again (after a `seekdir`) gives the same offset, so a `telldir` taken
//!   in any pass still leads to the same place;
//! - a handle remembers names within [`COOKIE_BYTES`] (each counted with
//!   [`ENTRY_OVERHEAD`]), forgetting the least recently used first but
//!   never one used in its last two replies: the kernel continues a
//!   listing from a cookie of the last reply, or from the one the last
//!   reply resumed at when the reader took nothing from it;
//! - a cookie the handle forgot or never handed out is refused with
//!   `EINVAL`: resuming anywhere else could repeat or skip names silently.
//!   Only a `seekdir` far back in a long listing (more names than fit in
//!   the budget, about 6,000 of 40 bytes) meets it.
//!
//! Why cookies are remembered rather than computed from the name: 63 bits
//! cannot hold a name, and a hash of the name only resumes exactly in a
//! directory read in hash order (as ext4 does); the index keeps entries in
//! name order (live and past alike), which is what makes a page cost one
//! range read, O(log n + page).

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use fuser::Errno;

/// Bytes of names (plus [`ENTRY_OVERHEAD`] each) one directory handle
/// remembers cookies for. A constant rather than a setting: it bounds
/// memory per open directory; `generic/676` seeks back over 4,000 names.
pub(crate) const COOKIE_BYTES: usize = 1 << 20;

/// What one remembered cookie costs besides its name: three map entries
/// and the shared name's header, roughly.
pub(crate) const ENTRY_OVERHEAD: usize = 128;

/// The cookie of the position after `.`.
pub(crate) const AFTER_DOT: u64 = 1;
/// The cookie of the position after `..`.
pub(crate) const AFTER_DOTDOT: u64 = 2;
/// The first cookie handed out for a name.
const FIRST_NAME: u64 = 3;

/// Where a reply starts.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Resume {
    /// At `.`.
    Start,
    /// At `..`.
    DotDot,
    /// At the first name after this one (`None`: the first name).
    After(Option<Arc<[u8]>>),
}

/// One remembered cookie.
#[derive(Debug)]
struct Remembered {
    name: Arc<[u8]>,
    /// When it was last handed out (see [`Cookies::stamp`]).
    stamp: u64,
}

/// The cookies of one open directory handle (see the module docs).
#[derive(Debug)]
pub(crate) struct Cookies {
    by_cookie: HashMap<u64, Remembered>,
    by_name: HashMap<Arc<[u8]>, u64>,
    /// Cookies by the stamp they were last handed out with: oldest first.
    by_stamp: BTreeMap<u64, u64>,
    bytes: usize,
    budget: usize,
    next_cookie: u64,
    /// Counts hand-outs.
    stamp: u64,
    /// The stamp the current reply began at.
    reply_from: u64,
    /// The stamp the previous reply began at: hand-outs from it on are
    /// never forgotten.
    keep_from: u64,
}

impl Cookies {
    pub(crate) fn new(budget: usize) -> Cookies {
        Cookies {
            by_cookie: HashMap::new(),
            by_name: HashMap::new(),
            by_stamp: BTreeMap::new(),
            bytes: 0,
            budget,
            next_cookie: FIRST_NAME,
            stamp: 0,
            reply_from: 0,
            keep_from: 0,
        }
    }

    /// Where offset `offset` resumes; `EINVAL` for a cookie this handle
    /// does not remember. The cookie counts as handed out again: a reply
    /// the reader took nothing from (its buffer too small for the first
    /// entry) is asked for again from the same cookie.
    pub(crate) fn resume(&mut self, offset: u64) -> Result<Resume, Errno> {
        match offset {
            0 => Ok(Resume::Start),
            AFTER_DOT => Ok(Resume::DotDot),
            AFTER_DOTDOT => Ok(Resume::After(None)),
            c => {
                let name = self.by_cookie.get(&c).map(|r| r.name.clone()).ok_or(Errno::EINVAL)?;
                self.restamp(c);
                Ok(Resume::After(Some(name)))
            }
        }
    }

    /// Marks cookie `c` as handed out now.
    fn restamp(&mut self, c: u64) {
        self.stamp += 1;
        if let Some(r) = self.by_cookie.get_mut(&c) {
            self.by_stamp.remove(&r.stamp);
            r.stamp = self.stamp;
            self.by_stamp.insert(self.stamp, c);
        }
    }

    /// The cookie of `name` (remembered from before, or a new one).
    pub(crate) fn cookie(&mut self, name: &[u8]) -> u64 {
        if let Some(&c) = self.by_name.get(name) {
            self.restamp(c);
            return c;
        }
        self.stamp += 1;
        let stamp = self.stamp;
        let c = self.next_cookie;
        // 2^63 names would be needed to run out; offsets stay positive
        // (they are `loff_t` to the kernel) by stopping there.
        self.next_cookie = (c + 1).min(i64::MAX as u64);
        let name: Arc<[u8]> = Arc::from(name);
        self.bytes += name.len() + ENTRY_OVERHEAD;
        self.by_name.insert(name.clone(), c);
        self.by_cookie.insert(c, Remembered { name, stamp });
        self.by_stamp.insert(stamp, c);
        c
    }

    /// Ends a reply: the previous one may now be forgotten, this one and
    /// the next may not. Forgets the least recently handed out cookies
    /// over the budget.
    pub(crate) fn reply_done(&mut self) {
        self.keep_from = self.reply_from;
        self.reply_from = self.stamp + 1;
        while self.bytes > self.budget {
            let Some((&stamp, &c)) = self.by_stamp.first_key_value() else { break };
            if stamp >= self.keep_from {
                break;
            }
            self.by_stamp.remove(&stamp);
            if let Some(r) = self.by_cookie.remove(&c) {
                self.by_name.remove(&r.name);
                self.bytes -= r.name.len() + ENTRY_OVERHEAD;
            }
        }
    }

    /// Bytes counted against the budget.
    #[cfg(test)]
    pub(crate) fn bytes(&self) -> usize {
        self.bytes
    }
}

/// Entries fetched from the tree per read at first; each further read of
/// the same reply doubles it, up to [`FETCH_MAX`]. A reply is one page of
/// the kernel's (a few dozen to a couple hundred entries), so the first
/// read usually fills it without fetching many that do not fit.
const FETCH_FIRST: usize = 32;
const FETCH_MAX: usize = 1024;

/// What adding an entry to a reply did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Add {
    Added,
    /// Left out (readdirplus: the name no longer leads to that node).
    Skipped,
    /// Not added: the reply is full.
    Full,
}

/// Fills one reply from `offset`: `add(cookie, entry)` for `.`, `..` (from
/// `dots`) and then the names from `fetch(after, limit)` (up to `limit`
/// entries with names after `after`, by name), until `add` says the reply
/// is full or the directory ends. An error after some entries were added
/// ends the reply with them (the kernel asks again from the last one; an
/// empty reply would mean the end); before any, it is returned.
pub(crate) fn fill<T>(
    cookies: &mut Cookies,
    offset: u64,
    dots: impl FnOnce() -> Result<[T; 2], Errno>,
    mut fetch: impl FnMut(Option<&[u8]>, usize) -> Result<Vec<T>, Errno>,
    name_of: impl Fn(&T) -> &[u8],
    mut add: impl FnMut(u64, &T) -> Add,
) -> Result<(), Errno> {
    let resume = cookies.resume(offset)?;
    let mut added = false;
    let result = (|| {
        let mut after = match resume {
            Resume::Start | Resume::DotDot => {
                let [dot, dotdot] = dots()?;
                let mut dots = vec![(AFTER_DOTDOT, dotdot)];
                if resume == Resume::Start {
                    dots.insert(0, (AFTER_DOT, dot));
                }
                for (cookie, e) in &dots {
                    match add(*cookie, e) {
                        Add::Full => return Ok(()),
                        Add::Added => added = true,
                        Add::Skipped => {}
                    }
                }
                None
            }
            Resume::After(name) => name,
        };
        let mut limit = FETCH_FIRST;
        loop {
            let page = fetch(after.as_deref(), limit)?;
            let ended = page.len() < limit;
            for e in &page {
                match add(cookies.cookie(name_of(e)), e) {
                    Add::Full => return Ok(()),
                    Add::Added => added = true,
                    Add::Skipped => {}
                }
            }
            match page.last() {
                Some(last) if !ended => after = Some(Arc::from(name_of(last))),
                _ => return Ok(()),
            }
            limit = (limit * 2).min(FETCH_MAX);
        }
    })();
    cookies.reply_done();
    match result {
        Err(_) if added => Ok(()),
        r => r,
    }
}

#[cfg(test)]
mod tests;
