//! Content conflicts end to end: two machines, one local-directory remote,
//! real rsync, real mounts (the `syncer` binary). When both machines change
//! one file's content offline, the merge keeps two whole versions: the first
//! in merge order (older change, then lower machine id) keeps the name, the
//! other becomes `stem (conflict from <machine> <date>).ext` next to it.
//! `syncer conflicts` lists it and `syncer resolve` ends it with events that
//! replicate like any other.
//!
//! "Offline" here: a mount pushes and pulls once when it starts; each data
//! dir's config sets the push delay and the poll interval to an hour (see
//! `support::offline`), and each edit session waits for that first round to finish
//! and ends well within the hour (checked, see [`Machine::edit`]); a
//! machine's changes reach the remote only through `syncer sync`.

use std::collections::BTreeMap;
use std::ffi::OsStr;
use std::io::Write;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

mod support;

/// Longest edit session that stays clear of the mount's next push or
/// pull (an hour away, see `support::offline`).
const OFFLINE_WINDOW: Duration = Duration::from_secs(600);

/// Runs the `syncer` binary; panics with its output unless it succeeds.
fn syncer(args: &[&dyn AsRef<OsStr>]) -> String {
    let args: Vec<&OsStr> = args.iter().map(|a| a.as_ref()).collect();
    let out = Command::new(env!("CARGO_BIN_EXE_syncer")).args(&args).output().expect("run syncer");
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "syncer {args:?} failed: {text}");
    text
}

/// Runs the `sqlite3` CLI on `db`; panics with its output unless it succeeds.
fn sqlite(db: &Path, sql: &str) -> String {
    let out = Command::new("sqlite3").arg("-bail").arg(db).arg(sql).output().expect("run sqlite3");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "sqlite3 {} {sql:?} failed: {stderr}", db.display());
    String::from_utf8(out.stdout).expect("utf-8 from sqlite3").trim_end().to_string()
}

/// Today's UTC date, yyyy-mm-dd.
fn utc_date() -> String {
    let out = Command::new("date").args(["-u", "+%F"]).output().expect("run date");
    String::from_utf8(out.stdout).expect("utf-8").trim().to_string()
}

/// A machine: its data dir and mountpoint; mounted only inside `edit`.
struct Machine {
    name: &'static str,
    data: PathBuf,
    mnt: PathBuf,
    /// 16 lowercase hex digits, as `syncer status` prints it.
    id: String,
}

/// What identifies one write of `status.toml` (rewritten by rename).
fn stamp(path: &Path) -> Option<(u64, i64, i64)> {
    std::fs::metadata(path).ok().map(|m| (m.ino(), m.mtime(), m.mtime_nsec()))
}

impl Machine {
    fn new(tmp: &Path, name: &'static str) -> Machine {
        let mnt = tmp.join(format!("{name}-mnt"));
        std::fs::create_dir(&mnt).expect("mkdir mountpoint");
        Machine { name, data: tmp.join(name), mnt, id: String::new() }
    }

    /// Reads the machine id of the data dir, once it exists.
    fn read_id(&mut self) {
        let status = syncer(&[&"status", &self.data]);
        let line = status.lines().find_map(|l| l.strip_prefix("machine:")).expect("a machine: line in status");
        self.id = line.trim().to_string();
        assert!(self.id.len() == 16 && self.id.bytes().all(|b| b.is_ascii_hexdigit()), "{status}");
    }

    /// Mounts, waits for the mount's first round with the remote to end,
    /// runs `f` on the mountpoint, unmounts (every write committed). `f`
    /// must end before the next round, so what it changes reaches the other
    /// machine only through `syncer sync`.
    fn edit<T>(&self, f: impl FnOnce(&Path) -> T) -> T {
        let status = self.data.join("status.toml");
        let before = stamp(&status);
        syncer(&[&"mount", &self.data, &self.mnt]);
        let guard = support::MountGuard(&self.mnt);
        let deadline = Instant::now() + Duration::from_secs(60);
        while stamp(&status) == before {
            assert!(Instant::now() < deadline, "{}: the mount's first push never reported", self.name);
            std::thread::sleep(Duration::from_millis(20));
        }
        let started = Instant::now();
        let out = f(&self.mnt);
        let took = started.elapsed();
        syncer(&[&"unmount", &self.mnt]);
        drop(guard);
        assert!(took < OFFLINE_WINDOW, "{}: edit took {took:?}; the mount may have pushed part of it", self.name);
        out
    }

    fn sync(&self) -> String {
        syncer(&[&"sync", &self.data])
    }

    /// `syncer conflicts` (the data dir must not be mounted).
    fn conflicts(&self) -> String {
        syncer(&[&"conflicts", &self.data])
    }

    /// The whole tree as seen through a mount.
    fn tree(&self) -> Tree {
        self.edit(tree_of)
    }
}

/// One node of a tree: kind ('f', 'd' or 'l'), mode, content or link
/// target, xattrs.
#[derive(Clone, PartialEq, Eq)]
struct Entry {
    kind: char,
    mode: u32,
    body: Vec<u8>,
    xattrs: support::Xattrs,
}

impl std::fmt::Debug for Entry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let text = String::from_utf8_lossy(&self.body[..self.body.len().min(80)]).into_owned();
        write!(f, "{} {:o} {} bytes {text:?}.. {:?}", self.kind, self.mode, self.body.len(), self.xattrs)
    }
}

/// Relative path -> entry.
type Tree = BTreeMap<String, Entry>;

fn tree_of(root: &Path) -> Tree {
    support::walk(root)
        .into_iter()
        .map(|f| {
            (f.rel, Entry { kind: f.kind, mode: f.md.permissions().mode() & 0o7777, body: f.body, xattrs: f.xattrs })
        })
        .collect()
}

/// Two machines sharing a local-directory remote (64 KiB blocks): A made
/// with `init --remote`, `setup` run on its mount and synced, B cloned.
struct Pair {
    tmp: tempfile::TempDir,
    a: Machine,
    b: Machine,
}

impl Pair {
    fn new(setup: impl FnOnce(&Path)) -> Pair {
        support::require_fuse();
        let tmp = tempfile::tempdir().expect("tempdir");
        let remote = tmp.path().join("remote");
        let (mut a, mut b) = (Machine::new(tmp.path(), "A"), Machine::new(tmp.path(), "B"));
        syncer(&[&"init", &a.data, &"--remote", &remote, &"--block-size", &"64KiB"]);
        support::offline(&a.data);
        a.edit(setup);
        a.sync();
        syncer(&[&"clone", &b.data, &remote]);
        support::offline(&b.data);
        a.read_id();
        b.read_id();
        assert_ne!(a.id, b.id);
        Pair { tmp, a, b }
    }

    fn machine(&self, name: char) -> &Machine {
        match name {
            'A' => &self.a,
            'B' => &self.b,
            _ => panic!("no machine {name}"),
        }
    }

    /// `syncer sync` on each machine of `order` in turn ("ABA": A, B, A).
    fn sync(&self, order: &str) {
        for m in order.chars() {
            self.machine(m).sync();
        }
    }

    /// Each machine's tree, after checking that they are identical.
    fn converged_trees(&self) -> [(&Machine, Tree); 2] {
        let (ta, tb) = (self.a.tree(), self.b.tree());
        assert_eq!(ta, tb, "A's and B's trees differ");
        [(&self.a, ta), (&self.b, tb)]
    }

    /// The tree both machines have.
    fn converged_tree(&self) -> Tree {
        let [_, (_, tree)] = self.converged_trees();
        tree
    }
}

/// The conflict copy of `name` that machine `writer` made on one of
/// `dates`, checked to be `tree`'s only entry besides `name`.
fn only_copy(tree: &Tree, name: &str, writer: &Machine, dates: &[String]) -> String {
    let (stem, ext) = name.rsplit_once('.').map_or((name, String::new()), |(s, e)| (s, format!(".{e}")));
    let names: Vec<String> = dates.iter().map(|d| format!("{stem} (conflict from {} {d}){ext}", writer.id)).collect();
    let copy = names.iter().find(|n| tree.contains_key(*n));
    let copy = copy.unwrap_or_else(|| panic!("no copy named like {names:?} in {:?}", tree.keys().collect::<Vec<_>>()));
    let mut want = vec![name.to_string(), copy.clone()];
    want.sort();
    assert_eq!(tree.keys().cloned().collect::<Vec<_>>(), want, "exactly {name} and its conflict copy");
    copy.clone()
}

/// The dates a change made between two calls of `utc_date` can carry.
fn dates(before: String, after: String) -> Vec<String> {
    if before == after {
        vec![before]
    } else {
        vec![before, after]
    }
}

/// The rows of table `t` of a database.
#[derive(PartialEq, Eq)]
struct Rows {
    summary: String,
    all: String,
}

impl std::fmt::Debug for Rows {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "rows (count|min id|max id|sum of lengths) {}", self.summary)
    }
}

/// Checks the database at `db` (a file outside any mount) and reads its rows.
fn checked_rows(db: &Path) -> Rows {
    assert_eq!(sqlite(db, "pragma integrity_check"), "ok", "{} is damaged", db.display());
    Rows {
        summary: sqlite(db, "select count(*), min(id), max(id), sum(length(v)) from t"),
        all: sqlite(db, "select id, v from t order by id"),
    }
}

/// Copies `file` (in a mount) to `dir/as_name` and reads it as a database.
fn rows_of_copy(file: &Path, dir: &Path, as_name: &str) -> Rows {
    let out = dir.join(as_name);
    std::fs::copy(file, &out).expect("copy the database out of the mount");
    checked_rows(&out)
}

const DB: &str = "db.sqlite";

/// ~3 MB: 20,000 rows of ~160 bytes, about 50 blocks of 64 KiB.
const CREATE_DB: &str = "create table t(id integer primary key, v text not null);
with recursive c(x) as (select 1 union all select x + 1 from c where x < 20000)
insert into t select x, printf('row %05d ', x) || hex(randomblob(75)) from c;";

/// A's offline change: updates in the middle of the table.
const EDIT_ON_A: &str = "update t set v = 'updated on A ' || v where id between 9000 and 11000;";

/// B's offline change: inserts at the end, deletes near the start.
const EDIT_ON_B: &str = "with recursive c(x) as (select 1 union all select x + 1 from c where x < 1500)
insert into t(v) select printf('inserted on B %04d ', x) || hex(randomblob(75)) from c;
delete from t where id between 2000 and 2999 or id % 97 = 0;";

/// One whole scenario: a shared database, changed offline on both machines,
/// then synced in `order`.
fn sqlite_scenario(order: &str) {
    let pair = Pair::new(|m| {
        sqlite(&m.join(DB), CREATE_DB);
    });
    let work = pair.tmp.path().join("work");
    std::fs::create_dir(&work).expect("mkdir");
    let (a, b) = (&pair.a, &pair.b);

    // B has the same database as A, spanning many blocks.
    let (size, original) = a
        .edit(|m| (std::fs::metadata(m.join(DB)).expect("stat").len(), rows_of_copy(&m.join(DB), &work, "original-a")));
    assert!(size > 2_500_000, "the database is only {size} bytes");
    assert_eq!(b.edit(|m| rows_of_copy(&m.join(DB), &work, "original-b")), original, "B got A's database");

    // Offline, A then B, each through its own mount.
    let date_before = utc_date();
    let rows_a = a.edit(|m| {
        sqlite(&m.join(DB), EDIT_ON_A);
        rows_of_copy(&m.join(DB), &work, "edited-a")
    });
    let rows_b = b.edit(|m| {
        sqlite(&m.join(DB), EDIT_ON_B);
        rows_of_copy(&m.join(DB), &work, "edited-b")
    });
    let dates = dates(date_before, utc_date());
    assert!(rows_a != original && rows_b != original && rows_a != rows_b, "{original:?} {rows_a:?} {rows_b:?}");

    pair.sync(order);
    let trees = pair.converged_trees();
    // A changed it first: A's version keeps the name, B's is the copy.
    let copy = only_copy(&trees[0].1, DB, b, &dates);
    for (machine, tree) in &trees {
        for (name, want, whose) in [(DB, &rows_a, "A's"), (copy.as_str(), &rows_b, "B's")] {
            let file = work.join(format!("{}-{name}", machine.name));
            std::fs::write(&file, &tree[name].body).expect("write out");
            let got = checked_rows(&file);
            assert!(got == *want, "order {order}: {name} on {} holds {got:?}, not {whose} {want:?}", machine.name);
        }
    }
    let listed = a.conflicts();
    assert!(listed.contains(&format!("conflict copy:  /{copy} by machine {}", b.id)), "{listed}");
    assert_eq!(open_conflicts(&listed), 1, "{listed}");
}

#[test]
fn sqlite_changed_on_two_machines_keeps_two_whole_databases() {
    for order in ["ABA", "BAB"] {
        sqlite_scenario(order);
    }
}

const NOTES: &str = "notes.txt";
const SHARED: &str = "shared line 1\nshared line 2\n";

fn append(file: &Path, text: &str) {
    let mut f = std::fs::OpenOptions::new().append(true).open(file).expect("open for append");
    f.write_all(text.as_bytes()).expect("append");
    f.sync_all().expect("fsync");
}

/// A pair with `notes.txt` (SHARED) appended to offline on both machines;
/// returns it with the dates B's change can carry.
fn pair_with_appends() -> (Pair, Vec<String>) {
    let pair = Pair::new(|m| std::fs::write(m.join(NOTES), SHARED).expect("write"));
    assert_eq!(pair.b.edit(|m| std::fs::read_to_string(m.join(NOTES)).expect("read")), SHARED);
    let date_before = utc_date();
    pair.a.edit(|m| append(&m.join(NOTES), "from A\n"));
    pair.b.edit(|m| append(&m.join(NOTES), "from B\n"));
    let dates = dates(date_before, utc_date());
    (pair, dates)
}

#[test]
fn appends_on_both_sides_are_both_visible() {
    let (pair, dates) = pair_with_appends();
    pair.sync("ABA");
    let tree = pair.converged_tree();
    let copy = only_copy(&tree, NOTES, &pair.b, &dates);
    let text = |name: &str| String::from_utf8_lossy(&tree[name].body).into_owned();
    assert_eq!(text(NOTES), format!("{SHARED}from A\n"));
    assert_eq!(text(&copy), format!("{SHARED}from B\n"));
    for (name, e) in &tree {
        let t = String::from_utf8_lossy(&e.body);
        assert!(!(t.contains("from A") && t.contains("from B")), "{name} has both appends: {t:?}");
    }
}

/// How many open content conflicts `syncer conflicts` reports.
fn open_conflicts(listed: &str) -> usize {
    let line = listed.lines().find(|l| l.contains(" open content conflicts ("));
    let line = line.unwrap_or_else(|| panic!("no summary line in {listed:?}"));
    line.split(' ').next().and_then(|n| n.parse().ok()).unwrap_or_else(|| panic!("bad summary line {line:?}"))
}

/// One `--keep` choice of `syncer resolve`, run on A, and the tree after.
struct Choice {
    keep: &'static str,
    /// Whether `resolve` names the copy (else the original).
    by_copy: bool,
    /// Whose version the original's name holds after: 'A' or 'B'.
    name_holds: char,
    /// Whether the copy (B's version) stays.
    copy_stays: bool,
}

#[test]
fn resolve_each_choice_converges() {
    // A wrote the version that kept the name, so on A "mine" is A's.
    let choices = [
        Choice { keep: "original", by_copy: false, name_holds: 'A', copy_stays: false },
        Choice { keep: "copy", by_copy: true, name_holds: 'B', copy_stays: false },
        Choice { keep: "both", by_copy: true, name_holds: 'A', copy_stays: true },
        Choice { keep: "mine", by_copy: true, name_holds: 'A', copy_stays: false },
        Choice { keep: "theirs", by_copy: false, name_holds: 'B', copy_stays: false },
    ];
    for Choice { keep, by_copy, name_holds, copy_stays } in choices {
        let (pair, dates) = pair_with_appends();
        pair.sync("ABA");
        let copy = only_copy(&pair.converged_tree(), NOTES, &pair.b, &dates);
        for m in [&pair.a, &pair.b] {
            let listed = m.conflicts();
            assert_eq!(open_conflicts(&listed), 1, "on {} before resolving: {listed}", m.name);
            assert!(listed.contains(&format!("content /{NOTES}")), "{listed}");
            assert!(listed.contains(&format!("kept the name:  /{NOTES} by machine {}", pair.a.id)), "{listed}");
            assert!(listed.contains(&format!("conflict copy:  /{copy} by machine {}", pair.b.id)), "{listed}");
        }

        let target = format!("/{}", if by_copy { &copy } else { NOTES });
        syncer(&[&"resolve", &pair.a.data, &target, &"--keep", &keep]);
        pair.sync("ABA");
        let tree = pair.converged_tree();
        let got: Vec<(&str, String)> =
            tree.iter().map(|(k, e)| (k.as_str(), String::from_utf8_lossy(&e.body).into_owned())).collect();
        let mut want = vec![(NOTES, format!("{SHARED}from {name_holds}\n"))];
        if copy_stays {
            want.push((copy.as_str(), format!("{SHARED}from B\n")));
        }
        want.sort();
        assert_eq!(got, want, "--keep {keep}");
        for m in [&pair.a, &pair.b] {
            let listed = m.conflicts();
            assert_eq!(open_conflicts(&listed), 0, "--keep {keep}, on {} after resolving: {listed}", m.name);
        }
    }
}

/// `conflicts` and `resolve` while the data dir is mounted: they run in
/// the mount (through its control socket), print what they print
/// unmounted, and the mount shows the resolution at once.
#[test]
fn conflicts_and_resolve_through_a_mount() {
    let (pair, dates) = pair_with_appends();
    pair.sync("ABA");
    let copy = only_copy(&pair.converged_tree(), NOTES, &pair.b, &dates);
    let unmounted = pair.a.conflicts();
    let unmounted_json = syncer(&[&"conflicts", &pair.a.data, &"--json"]);
    assert_eq!(open_conflicts(&unmounted), 1, "{unmounted}");
    pair.a.edit(|mnt| {
        assert!(pair.a.data.join("control.sock").exists(), "the mount serves its control socket");
        assert_eq!(pair.a.conflicts(), unmounted, "conflicts, mounted and not");
        assert_eq!(syncer(&[&"conflicts", &pair.a.data, &"--json"]), unmounted_json);
        let json: serde_json::Value = serde_json::from_str(&unmounted_json).expect("conflicts --json");
        assert_eq!(json["open_content"], 1, "{json}");
        assert_eq!(json["open"][0]["copy"], format!("/{copy}"), "{json}");
        // Seen by the kernel before the resolve: it must drop what it holds.
        assert!(mnt.join(&copy).exists());
        let before = std::fs::read_to_string(mnt.join(NOTES)).expect("read");
        assert_eq!(before, format!("{SHARED}from A\n"));
        let out = syncer(&[&"resolve", &pair.a.data, &format!("/{copy}"), &"--keep", &"copy"]);
        assert!(out.contains("now holds the version of"), "{out}");
        assert_eq!(std::fs::read_to_string(mnt.join(NOTES)).expect("read"), format!("{SHARED}from B\n"));
        assert!(!mnt.join(&copy).exists(), "the copy is gone from the mount");
        assert!(pair.a.conflicts().contains("0 open content conflicts"));
    });
    let listed = pair.a.conflicts();
    assert_eq!(open_conflicts(&listed), 0, "{listed}");
}
