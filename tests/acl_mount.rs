//! POSIX ACLs through real mounts of the `syncer` binary: getfacl/setfacl,
//! mode and ACL kept in step (chmod, setfacl), default ACL inheritance
//! (compared with the same commands on the host's own filesystem), `cp -a`,
//! `rsync -aAX` and `tar --acls --xattrs` round trips (also after a remount
//! and on a replica), enforcement for another user, a concurrent chmod and
//! setfacl on two machines, and `-o noacl` (EOPNOTSUPP, and `cp -a` still
//! keeps modes). Needs root, /dev/fuse, fusermount3, rsync and the `acl`
//! package (scripts/deps.sh).

use std::ffi::OsStr;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

mod support;

use support::{getxattr, require_fuse, setxattr, MountGuard};

const BIN: &str = env!("CARGO_BIN_EXE_syncer");

fn text(o: &Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr))
}

fn syncer<S: AsRef<OsStr>>(args: &[S]) -> String {
    let o = Command::new(BIN).args(args).stdin(Stdio::null()).output().expect("run syncer");
    assert!(o.status.success(), "syncer {:?}: {}", args.iter().map(|a| a.as_ref()).collect::<Vec<_>>(), text(&o));
    text(&o)
}

/// Runs `script` with `sh -c` in `dir`; panics with its output on failure.
fn sh(dir: &Path, script: &str) -> String {
    let o = Command::new("sh").arg("-c").arg(script).current_dir(dir).output().expect("run sh");
    assert!(o.status.success(), "in {}: {script}: {}", dir.display(), text(&o));
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// `getfacl -R` of everything under `dir` (not `dir` itself), one block per
/// file, sorted (the traversal order is the directory order, which differs
/// between filesystems), with each file's octal mode in its header.
fn acls(dir: &Path) -> Vec<String> {
    let out = sh(dir, "getfacl -R -p . 2>&1");
    let mut blocks: Vec<String> = out
        .split("\n\n")
        .map(|b| b.trim().to_string())
        .filter(|b| !b.is_empty() && !b.starts_with("# file: .\n"))
        .map(|b| {
            let name = b.lines().next().unwrap_or("").trim_start_matches("# file: ").to_string();
            let mode = std::fs::symlink_metadata(dir.join(&name)).map(|m| m.mode() & 0o7777).unwrap_or(0);
            format!("mode {mode:o}\n{b}")
        })
        .collect();
    blocks.sort();
    blocks
}

/// A data dir and mountpoint in a temp dir, the host directory `host` for
/// comparisons beside them.
struct Setup {
    tmp: tempfile::TempDir,
    data: PathBuf,
    mnt: PathBuf,
}

impl Setup {
    fn new() -> Self {
        require_fuse();
        for tool in ["getfacl", "setfacl", "rsync", "setpriv"] {
            assert!(
                Command::new("sh")
                    .arg("-c")
                    .arg(format!("command -v {tool}"))
                    .stdout(Stdio::null())
                    .status()
                    .is_ok_and(|s| s.success()),
                "{tool} is missing: run scripts/deps.sh"
            );
        }
        let tmp = tempfile::tempdir().expect("tempdir");
        let data = tmp.path().join("data");
        let mnt = tmp.path().join("mnt");
        std::fs::create_dir(&mnt).expect("mkdir");
        syncer(&[OsStr::new("init"), data.as_os_str(), OsStr::new("--block-size"), OsStr::new("64KiB")]);
        Setup { tmp, data, mnt }
    }

    fn host(&self, name: &str) -> PathBuf {
        let p = self.tmp.path().join(name);
        std::fs::create_dir_all(&p).expect("mkdir host dir");
        p
    }

    fn mount(&self, opts: &str) -> MountGuard<'_> {
        let mut args = vec![OsStr::new("mount"), self.data.as_os_str(), self.mnt.as_os_str()];
        if !opts.is_empty() {
            args.extend([OsStr::new("-o"), OsStr::new(opts)]);
        }
        syncer(&args);
        MountGuard(&self.mnt)
    }

    fn unmount(&self) {
        syncer(&[OsStr::new("unmount"), self.mnt.as_os_str()]);
    }
}

/// A tree with the modes `cp -a` used to lose, a file and a directory with
/// ACLs, and a default ACL, made by shell commands in `dir`.
const TREE: &str = "umask 022 && mkdir -p t/d755 t/d700 t/dacl && echo a > t/f644 && echo b > t/d755/f600 \
    && echo c > t/f755 && echo d > t/facl && chmod 755 t/f755 && chmod 600 t/d755/f600 && chmod 700 t/d700 \
    && setfacl -m u:nobody:rw,g:nogroup:r t/facl && setfacl -m u:nobody:rx t/dacl \
    && setfacl -d -m u:nobody:rwx,g::r-x,o::- t/dacl && echo e > t/dacl/inherits && mkdir t/dacl/sub";

#[test]
fn setfacl_getfacl_chmod_and_inheritance_match_the_host_filesystem() {
    let s = Setup::new();
    let host = s.host("host");
    let _g = s.mount("");
    // The same commands on the host's filesystem and on the mount give the
    // same modes and ACLs (ext4 or tmpfs: the kernel's own ACL code).
    let script = format!(
        "{TREE} && chmod 640 t/facl && touch t/plain && setfacl -m u:nobody:r t/plain && setfacl -b t/plain \
         && (umask 077 && touch t/dacl/umask_ignored && mkdir t/dacl/sub/deeper) \
         && setfacl -m m::r t/dacl/inherits"
    );
    sh(&host, &script);
    sh(&s.mnt, &script);
    let want = acls(&host);
    assert!(want.iter().any(|b| b.contains("default:user:nobody:rwx")), "the host kept ACLs: {want:?}");
    assert_eq!(acls(&s.mnt), want);
    // The mask sets the group bits: user:nobody:rw with chmod 640 is r--.
    let facl = sh(&s.mnt, "getfacl -p t/facl");
    assert!(facl.contains("user:nobody:rw-\t#effective:r--"), "{facl}");
    assert_eq!(std::fs::metadata(s.mnt.join("t/facl")).expect("stat").mode() & 0o777, 0o640);
    // The umask does not apply under a default ACL.
    assert_eq!(std::fs::metadata(s.mnt.join("t/dacl/umask_ignored")).expect("stat").mode() & 0o777, 0o660);
    // An ACL equivalent to the mode is not stored (setfacl -b, or the mode's own).
    assert_eq!(getxattr(&s.mnt.join("t/plain"), b"system.posix_acl_access", 256), Err(libc::ENODATA));

    // Bad input: a malformed ACL, a default ACL on a file.
    let f = s.mnt.join("t/f644");
    let mut bad = 2u32.to_le_bytes().to_vec();
    bad.extend_from_slice(&[1, 0, 6, 0, 0xff, 0xff, 0xff, 0xff]); // only an owner entry
    assert_eq!(setxattr(&f, b"system.posix_acl_access", &bad, 0), Err(libc::EINVAL));
    assert_eq!(setxattr(&f, b"system.posix_acl_access", b"\x02\x00\x00", 0), Err(libc::EINVAL));
    let d = getxattr(&s.mnt.join("t/dacl"), b"system.posix_acl_default", 256).expect("a default ACL");
    assert_eq!(setxattr(&f, b"system.posix_acl_default", &d, 0), Err(libc::EACCES));
    assert_eq!(std::fs::metadata(&f).expect("stat").mode() & 0o777, 0o644, "nothing changed");

    // After unmount and remount: the same.
    s.unmount();
    let _g = s.mount("");
    assert_eq!(acls(&s.mnt), want, "after a remount");
    s.unmount();
    let out = syncer(&[OsStr::new("log"), OsStr::new("verify"), s.data.as_os_str()]);
    assert!(!out.contains("DAMAGE"), "{out}");
}

#[test]
fn cp_a_rsync_and_tar_round_trip_modes_and_acls() {
    let s = Setup::new();
    let src = s.host("src");
    sh(&src, TREE);
    let want = acls(&src.join("t"));
    let _g = s.mount("");
    sh(&s.mnt, &format!("cp -a {}/t cp && rsync -aAX {}/t/ rsync/ && tar --acls --xattrs -C {} -cf - t | (mkdir tar && tar --acls --xattrs -C tar -xf -)", src.display(), src.display(), src.display()));
    for (dir, what) in [("cp", "cp -a"), ("rsync", "rsync -aAX"), ("tar/t", "tar --acls --xattrs")] {
        assert_eq!(acls(&s.mnt.join(dir)), want, "{what} into the mount");
    }
    // And back out of it.
    let back = s.host("back");
    sh(&back, &format!("rsync -aAX {}/rsync/ rsync/ && cp -a {}/cp cp && tar --acls --xattrs -C {}/tar -cf - t | (mkdir tar && tar --acls --xattrs -C tar -xf -)", s.mnt.display(), s.mnt.display(), s.mnt.display()));
    for dir in ["rsync", "cp", "tar/t"] {
        assert_eq!(acls(&back.join(dir)), want, "{dir} out of the mount");
    }
    s.unmount();
    let _g = s.mount("");
    for dir in ["cp", "rsync", "tar/t"] {
        assert_eq!(acls(&s.mnt.join(dir)), want, "{dir} after a remount");
    }
    s.unmount();
}

#[test]
fn a_user_the_acl_denies_gets_eacces() {
    let s = Setup::new();
    let _g = s.mount("allow_other");
    sh(
        &s.mnt,
        "echo open > open && echo denied > denied && echo granted > granted && chmod 644 open denied \
         && chmod 600 granted && setfacl -m u:nobody:- denied && setfacl -m u:nobody:r granted \
         && mkdir shut && chmod 777 shut && setfacl -m u:nobody:rx shut",
    );
    let as_nobody = |cmd: &str| {
        Command::new("setpriv")
            .args(["--reuid=nobody", "--regid=nogroup", "--clear-groups", "sh", "-c", cmd])
            .current_dir("/")
            .output()
            .expect("run setpriv")
    };
    let read = |name: &str| as_nobody(&format!("cat {}", s.mnt.join(name).display()));
    let o = read("open");
    assert!(o.status.success() && o.stdout == b"open\n", "{}", text(&o));
    let o = read("denied");
    assert!(!o.status.success() && text(&o).contains("Permission denied"), "{}", text(&o));
    let o = read("granted");
    assert!(o.status.success() && o.stdout == b"granted\n", "{}", text(&o));
    // Mode 777, but the ACL gives nobody r-x only on the directory.
    let o = as_nobody(&format!("touch {}", s.mnt.join("shut/x").display()));
    assert!(!o.status.success() && text(&o).contains("Permission denied"), "{}", text(&o));
    // chmod updates the ACL's mask: after chmod 600, nobody's r is masked.
    sh(&s.mnt, "chmod 600 granted");
    let o = read("granted");
    assert!(!o.status.success() && text(&o).contains("Permission denied"), "{}", text(&o));
    s.unmount();
}

/// setfacl by the owner keeps set-group-id when the owner is in the
/// node's group and takes it off when not (the kernel's
/// `posix_acl_update_mode`, which FUSE leaves to the filesystem), on a
/// file and a directory, as on the host's own filesystem; root keeps it.
#[test]
fn setfacl_by_an_owner_outside_the_group_clears_setgid() {
    let s = Setup::new();
    let _g = s.mount("allow_other");
    let host = s.host("host");
    for dir in [s.tmp.path(), &s.mnt, &host] {
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o777)).expect("chmod");
    }
    let mut seen = Vec::new();
    for dir in [&s.mnt, &host] {
        sh(dir, "touch f && mkdir d && chown 100:100 f d");
        let mut modes = Vec::new();
        for name in ["f", "d"] {
            let p = dir.join(name);
            // (user, group) running setfacl; the stranger to the group last.
            for (uid, gid) in [(0, 0), (100, 100), (100, 101)] {
                std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o2755)).expect("chmod 2755");
                let o = Command::new("setpriv")
                    .args([&format!("--reuid={uid}"), &format!("--regid={gid}"), "--clear-groups"])
                    .args(["setfacl", "-m", "u::rwx,g::rwx,o::rwx"])
                    .arg(&p)
                    .current_dir("/")
                    .output()
                    .expect("run setpriv");
                assert!(o.status.success(), "setfacl as {uid}:{gid} on {}: {}", p.display(), text(&o));
                let mode = std::fs::metadata(&p).expect("stat").mode() & 0o7777;
                modes.push((name, uid, gid, mode));
            }
        }
        seen.push(modes);
    }
    let want = |name| vec![(name, 0, 0, 0o2777), (name, 100, 100, 0o2777), (name, 100, 101, 0o777)];
    let want: Vec<_> = want("f").into_iter().chain(want("d")).collect();
    assert_eq!(seen[0], want, "in the mount");
    assert_eq!(seen[1], want, "on the host's filesystem");
    // The mode is in the log, not only in the kernel's cache.
    s.unmount();
    let _g2 = s.mount("allow_other");
    for name in ["f", "d"] {
        assert_eq!(std::fs::metadata(s.mnt.join(name)).expect("stat").mode() & 0o7777, 0o777, "{name}");
    }
    s.unmount();
}

#[test]
fn noacl_refuses_the_acl_names_and_cp_a_keeps_modes() {
    let s = Setup::new();
    let src = s.host("src");
    sh(&src, "umask 022 && mkdir -p t/d755 t/d700 && echo a > t/f644 && echo b > t/f600 && chmod 600 t/f600 && chmod 700 t/d700");
    let _g = s.mount("noacl");
    let f = s.mnt.join("f");
    std::fs::write(&f, b"x").expect("write");
    let mut minimal = 2u32.to_le_bytes().to_vec();
    for (tag, perm) in [(1u16, 6u16), (4, 4), (0x20, 4)] {
        minimal.extend_from_slice(&tag.to_le_bytes());
        minimal.extend_from_slice(&perm.to_le_bytes());
        minimal.extend_from_slice(&u32::MAX.to_le_bytes());
    }
    assert_eq!(setxattr(&f, b"system.posix_acl_access", &minimal, 0), Err(libc::EOPNOTSUPP));
    assert_eq!(getxattr(&f, b"system.posix_acl_access", 256), Err(libc::EOPNOTSUPP));
    let o = Command::new("setfacl").args(["-m", "u:nobody:r"]).arg(&f).output().expect("setfacl");
    assert!(!o.status.success() && text(&o).contains("Operation not supported"), "{}", text(&o));
    // cp -a falls back to fchmod: the modes survive.
    sh(&s.mnt, &format!("cp -a {}/t t", src.display()));
    for (rel, mode) in [("t/f644", 0o644), ("t/f600", 0o600), ("t/d755", 0o755), ("t/d700", 0o700)] {
        let m = std::fs::metadata(s.mnt.join(rel)).expect("stat").permissions().mode() & 0o777;
        assert_eq!(m, mode, "{rel}");
    }
    assert!(support::xattrs(&f).expect("list").is_empty());
    s.unmount();
}

#[test]
fn acls_replicate_and_a_concurrent_chmod_and_setfacl_converge() {
    let s = Setup::new();
    let remote = s.tmp.path().join("remote");
    let a = s.tmp.path().join("a");
    let b = s.tmp.path().join("b");
    syncer(&[OsStr::new("init"), a.as_os_str(), OsStr::new("--remote"), remote.as_os_str()]);
    let edit = |data: &Path, f: &mut dyn FnMut(&Path)| {
        syncer(&[OsStr::new("mount"), data.as_os_str(), s.mnt.as_os_str()]);
        let g = MountGuard(&s.mnt);
        f(&s.mnt);
        syncer(&[OsStr::new("unmount"), s.mnt.as_os_str()]);
        drop(g);
    };
    edit(&a, &mut |m| {
        sh(m, TREE);
    });
    let mut want = Vec::new();
    edit(&a, &mut |m| want = acls(m));
    syncer(&[OsStr::new("sync"), a.as_os_str()]);
    syncer(&[OsStr::new("clone"), b.as_os_str(), remote.as_os_str()]);
    let mut got = Vec::new();
    edit(&b, &mut |m| got = acls(m));
    assert_eq!(got, want, "the replica shows the same modes and ACLs");

    // Offline and concurrent: a chmods a file with an ACL, b changes the ACL.
    edit(&a, &mut |m| {
        sh(m, "chmod 600 t/facl && setfacl -m u:nobody:r t/f644");
    });
    edit(&b, &mut |m| {
        sh(m, "setfacl -m u:nobody:rwx t/facl && chmod 640 t/f644");
    });
    for d in [&a, &b, &a] {
        syncer(&[OsStr::new("sync"), d.as_os_str()]);
    }
    let (mut on_a, mut on_b) = (Vec::new(), Vec::new());
    edit(&a, &mut |m| on_a = acls(m));
    edit(&b, &mut |m| on_b = acls(m));
    assert_eq!(on_a, on_b, "both machines show the same modes and ACLs");
    // Whichever value won, the mode's group bits are the ACL's mask.
    for block in on_a.iter().filter(|b| b.contains("# file: ./t/facl") || b.contains("# file: ./t/f644")) {
        let mode =
            u32::from_str_radix(block.lines().next().unwrap_or("").trim_start_matches("mode "), 8).expect("mode");
        let mask = block.lines().find_map(|l| l.strip_prefix("mask::")).expect("a mask");
        let bits = mask.chars().zip([4, 2, 1]).map(|(c, b)| if c == '-' { 0 } else { b }).sum::<u32>();
        assert_eq!((mode >> 3) & 7, bits, "{block}");
    }
}
