//! Three machines, one local-directory remote, real rsync, real mounts
//! (the `syncer` binary): scripted concurrent edits made offline on each
//! machine, then `syncer sync` on each in several orders until quiet. The
//! three mounted trees must be identical (content and metadata) and match
//! what the merge rules say (see engine/src/merge.rs): a file whose content
//! two machines changed shows one whole version and a conflict copy of the
//! other, never a splice.

use std::collections::BTreeMap;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Command;

mod support;
use support::{pattern, setxattr};

const BS: usize = 64 << 10;

fn syncer(args: &[&Path]) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_syncer")).args(args).output().expect("run syncer");
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "syncer {args:?} failed: {text}");
    text
}

fn p(s: &str) -> &Path {
    Path::new(s)
}

/// A machine: its data dir and mountpoint; mounted only inside `edit`.
struct Machine {
    data: PathBuf,
    mnt: PathBuf,
}

impl Machine {
    /// Mounts, runs `f` on the mountpoint, unmounts (every write committed).
    fn edit(&self, f: impl FnOnce(&Path)) {
        syncer(&[p("mount"), &self.data, &self.mnt]);
        let guard = support::MountGuard(&self.mnt);
        f(&self.mnt);
        syncer(&[p("unmount"), &self.mnt]);
        drop(guard);
    }

    fn sync(&self) -> String {
        syncer(&[p("sync"), &self.data])
    }

    /// The whole tree as seen through a mount: path -> (kind, mode, size,
    /// content or link target, xattrs).
    fn snapshot(&self) -> Snapshot {
        let mut out = BTreeMap::new();
        self.edit(|m| out = snapshot_of(m));
        out
    }
}

/// path -> (kind, mode, size, content or link target, xattrs).
type Snapshot = BTreeMap<String, (char, u32, u64, Vec<u8>, support::Xattrs)>;

fn snapshot_of(root: &Path) -> Snapshot {
    support::walk(root)
        .into_iter()
        .map(|f| {
            let size = if f.kind == 'd' { 0 } else { f.md.size() };
            (f.rel, (f.kind, f.md.permissions().mode() & 0o7777, size, f.body, f.xattrs))
        })
        .collect()
}

#[test]
fn three_machines_converge_after_concurrent_offline_edits() {
    support::require_fuse();
    let tmp = tempfile::tempdir().expect("tempdir");
    let remote = tmp.path().join("remote");
    let machine = |name: &str| {
        let mnt = tmp.path().join(format!("{name}-mnt"));
        std::fs::create_dir(&mnt).expect("mkdir");
        Machine { data: tmp.path().join(name), mnt }
    };
    let (a, b, c) = (machine("a"), machine("b"), machine("c"));
    syncer(&[p("init"), &a.data, p("--remote"), &remote, p("--block-size"), p("64KiB")]);
    // Edits stay on their machine until `syncer sync`.
    support::offline(&a.data);

    // A shared starting point.
    let big = pattern(1, 4 * BS);
    a.edit(|m| {
        std::fs::write(m.join("big.bin"), &big).expect("write");
        std::fs::write(m.join("hot.bin"), &big).expect("write");
        std::fs::write(m.join("e.txt"), b"to be edited").expect("write");
        std::fs::write(m.join("f"), b"attrs").expect("write");
        std::fs::create_dir(m.join("d1")).expect("mkdir");
        std::fs::create_dir(m.join("d2")).expect("mkdir");
        std::fs::write(m.join("d1/inside1"), b"1").expect("write");
        std::fs::write(m.join("d2/inside2"), b"2").expect("write");
    });
    a.sync();
    syncer(&[p("clone"), &b.data, &remote]);
    syncer(&[p("clone"), &c.data, &remote]);
    support::offline(&b.data);
    support::offline(&c.data);

    // Offline, concurrently (in time order A, B, C).
    let write_at = |path: &Path, block: usize, byte: u8| {
        use std::os::unix::fs::FileExt;
        let f = std::fs::OpenOptions::new().write(true).open(path).expect("open");
        f.write_all_at(&vec![byte; BS], (block * BS) as u64).expect("write");
        f.sync_all().expect("fsync");
    };
    a.edit(|m| {
        write_at(&m.join("big.bin"), 0, 0xaa); // same file, different blocks
        write_at(&m.join("hot.bin"), 1, 0xaa); // same file, same block
        std::fs::rename(m.join("d1"), m.join("d2/d1")).expect("move d1 into d2");
        std::fs::remove_file(m.join("e.txt")).expect("delete");
        std::fs::write(m.join("new.txt"), b"from a").expect("write");
        setxattr(&m.join("f"), b"user.a", b"1", 0).expect("setxattr");
        std::fs::set_permissions(m.join("f"), std::fs::Permissions::from_mode(0o600)).expect("chmod");
    });
    b.edit(|m| {
        write_at(&m.join("big.bin"), 2, 0xbb);
        std::fs::rename(m.join("d2"), m.join("d1/d2")).expect("move d2 into d1");
        std::fs::write(m.join("new.txt"), b"from b").expect("write");
        setxattr(&m.join("f"), b"user.b", b"2", 0).expect("setxattr");
    });
    c.edit(|m| {
        write_at(&m.join("hot.bin"), 1, 0xcc);
        std::fs::write(m.join("e.txt"), b"edited on c").expect("edit");
    });

    // Sync in several orders until quiet.
    for order in [[&a, &b, &c], [&c, &a, &b], [&b, &c, &a]] {
        for m in order {
            m.sync();
        }
    }
    let (sa, sb, sc) = (a.snapshot(), b.snapshot(), c.snapshot());
    assert_eq!(sa, sb, "A and B differ");
    assert_eq!(sa, sc, "A and C differ");

    // The documented outcomes.
    let file = |k: &str| sa.get(k).unwrap_or_else(|| panic!("{k} missing from {:?}", sa.keys().collect::<Vec<_>>()));
    // One file's content changed on two machines: never spliced; the
    // version first in the merge order (A's) keeps the name, the other
    // machine's whole version is a conflict copy beside it.
    let copy_of = |stem: &str, writer: &Machine| {
        let want = format!("{stem} (conflict from {} ", machine_id(writer));
        let copies: Vec<&String> = sa.keys().filter(|k| k.starts_with(&want) && k.ends_with(").bin")).collect();
        assert_eq!(copies.len(), 1, "{want}: {:?}", sa.keys().collect::<Vec<_>>());
        file(copies[0]).3.clone()
    };
    let with = |block: usize, byte: u8| {
        let mut v = big.clone();
        v[block * BS..(block + 1) * BS].fill(byte);
        v
    };
    assert!(file("big.bin").3 == with(0, 0xaa), "big.bin is A's whole version");
    assert!(copy_of("big", &b) == with(2, 0xbb), "B's whole version of big.bin is its copy");
    assert!(file("hot.bin").3 == with(1, 0xaa), "hot.bin is A's whole version");
    assert!(copy_of("hot", &c) == with(1, 0xcc), "C's whole version of hot.bin is its copy");
    assert_eq!(file("e.txt").3, b"edited on c", "an edit wins over a concurrent delete");
    assert_eq!(file("f").1, 0o600);
    assert_eq!(file("f").4, vec![(b"user.a".to_vec(), b"1".to_vec()), (b"user.b".to_vec(), b"2".to_vec())]);
    // Crossing moves: exactly one applied, no cycle, nothing lost.
    let d1_in_d2 = sa.contains_key("d2/d1/inside1");
    let d2_in_d1 = sa.contains_key("d1/d2/inside2");
    assert!(d1_in_d2 != d2_in_d1, "exactly one of the crossing moves applies: {:?}", sa.keys().collect::<Vec<_>>());
    assert_eq!(sa.keys().filter(|k| k.ends_with("inside1") || k.ends_with("inside2")).count(), 2);
    // Same new name on two machines: both visible, B's under a conflict name.
    assert_eq!(file("new.txt").3, b"from a");
    let conflict: Vec<&String> = sa.keys().filter(|k| k.starts_with("new (conflict from ")).collect();
    assert_eq!(conflict.len(), 1, "{:?}", sa.keys().collect::<Vec<_>>());
    assert_eq!(file(conflict[0]).3, b"from b");
    let listed = syncer(&[p("conflicts"), &a.data]);
    assert!(listed.contains("name /new.txt") && listed.contains("1 name conflicts"), "{listed}");
    assert!(listed.contains("content /hot.bin") && listed.contains("content /big.bin"), "{listed}");
    assert!(listed.contains("2 open content conflicts"), "{listed}");
}

/// The machine id a data dir was made with (`config.toml`).
fn machine_id(m: &Machine) -> String {
    let config = std::fs::read_to_string(m.data.join("config.toml")).expect("config.toml");
    let line = config.lines().find(|l| l.trim_start().starts_with("machine")).expect("a machine line");
    line.split('"').nth(1).expect("a quoted machine id").to_string()
}
