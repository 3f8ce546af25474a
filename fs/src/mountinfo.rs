//! The mount table as this process sees it: `/proc/self/mountinfo`
//! (proc(5)), one line per mount: `id parent maj:min root mountpoint
//! options [optional fields] - fstype source super-options`. Lines without
//! that shape are skipped; paths come back with mountinfo's octal escapes
//! (space, tab, newline, backslash) undone.

use std::ffi::OsString;
use std::os::unix::ffi::OsStringExt;
use std::path::PathBuf;

/// One mount.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Mount {
    /// The device, `major:minor` (names the mount's `/sys/class/bdi` entry).
    pub dev: String,
    /// Where it is mounted.
    pub mountpoint: PathBuf,
    /// Mounted read-only.
    pub read_only: bool,
    /// The mount's own options (`rw,nosuid,nodev,noatime`, ...).
    pub options: Vec<String>,
    /// Filesystem type, e.g. `fuse.syncer`.
    pub fstype: String,
    /// What is mounted (for syncer: the data dir).
    pub source: String,
}

/// Reads `/proc/self/mountinfo`.
pub fn read() -> std::io::Result<Vec<Mount>> {
    Ok(parse(&std::fs::read_to_string("/proc/self/mountinfo")?))
}

/// Parses mountinfo text.
pub fn parse(text: &str) -> Vec<Mount> {
    text.lines()
        .filter_map(|l| {
            let fields: Vec<&str> = l.split(' ').collect();
            let sep = fields.iter().position(|f| *f == "-")?;
            Some(Mount {
                dev: (*fields.get(2)?).to_string(),
                mountpoint: unescape(fields.get(4)?),
                read_only: fields.get(5)?.split(',').any(|o| o == "ro"),
                options: fields.get(5)?.split(',').map(str::to_string).collect(),
                fstype: (*fields.get(sep + 1)?).to_string(),
                source: unescape(fields.get(sep + 2)?).display().to_string(),
            })
        })
        .collect()
}

/// Undoes mountinfo's octal escapes (`\040` for a space, and so on).
fn unescape(s: &str) -> PathBuf {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        let octal = b.get(i + 1..i + 4).filter(|d| d.iter().all(|c| (b'0'..=b'7').contains(c)));
        match (b[i], octal) {
            (b'\\', Some(d)) => {
                // Three octal digits can exceed a byte (`\777`): not an
                // escape mountinfo writes, kept as it is.
                let v = u32::from(d[0] - b'0') * 64 + u32::from(d[1] - b'0') * 8 + u32::from(d[2] - b'0');
                match u8::try_from(v) {
                    Ok(v) => out.push(v),
                    Err(_) => out.extend_from_slice(&b[i..i + 4]),
                }
                i += 4;
            }
            (c, _) => {
                out.push(c);
                i += 1;
            }
        }
    }
    PathBuf::from(OsString::from_vec(out))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines() {
        let text = "36 35 98:0 /mnt1 /mnt\\040x rw,noatime master:1 - fuse.syncer /data\\040d rw,user_id=0\n\
                    37 35 0:53 / /ro ro,nosuid - fuse.syncer /d rw\n\
                    garbage line\n";
        let m = parse(text);
        assert_eq!(m.len(), 2);
        assert_eq!(
            m[0],
            Mount {
                dev: "98:0".into(),
                mountpoint: PathBuf::from("/mnt x"),
                read_only: false,
                options: vec!["rw".into(), "noatime".into()],
                fstype: "fuse.syncer".into(),
                source: "/data d".into()
            }
        );
        assert!(m[1].read_only);
        assert_eq!(m[1].dev, "0:53");
    }

    #[test]
    fn escapes() {
        assert_eq!(unescape(r"/mnt/a\040b\134c\011"), PathBuf::from("/mnt/a b\\c\t"));
        assert_eq!(unescape(r"/mnt/end\040"), PathBuf::from("/mnt/end "), "an escape at the very end");
        assert_eq!(unescape(r"/x\04"), PathBuf::from(r"/x\04"), "a cut escape stays as is");
        assert_eq!(unescape(r"/x\999"), PathBuf::from(r"/x\999"), "not octal");
        assert_eq!(unescape(r"/x\777"), PathBuf::from(r"/x\777"), "over a byte");
    }
}
