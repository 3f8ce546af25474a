//! The `FORMAT` file: parse, refuse, upgrade in place, crash safety.

use std::path::Path;

use engine::format::{self, check_and_upgrade, parse, write_new, FormatVersion, Upgrade, CURRENT};
use engine::storage::{CrashStorage, Storage};
use engine::Error;
use proptest::prelude::*;

const DIR: &str = "/data";

fn with_format(content: &[u8]) -> CrashStorage {
    let s = CrashStorage::new();
    s.create_dir_all(Path::new(DIR)).expect("mkdir");
    s.write_file(&Path::new(DIR).join("FORMAT"), content).expect("write");
    s
}

#[test]
fn parses_the_current_line() {
    assert_eq!(parse(b"syncer-data 2.0.0\n"), Ok(CURRENT));
    assert_eq!(parse(b"syncer-data 1.0.3"), Ok(FormatVersion { major: 1, minor: 0, patch: 3 }));
    assert_eq!(CURRENT.to_line(), "syncer-data 2.0.0\n");
}

#[test]
fn garbled_files_are_refused_with_a_reason() {
    let long = format!("syncer-data 1.1.0{}\n", " ".repeat(300));
    let cases: &[(&[u8], &str)] = &[
        (b"", "expected"),
        (b"\n", "expected"),
        (b"other-data 1.1.0\n", "format name"),
        (b"syncer-data 1.1\n", "not <major>.<minor>.<patch>"),
        (b"syncer-data 1.1.0.0\n", "not <major>.<minor>.<patch>"),
        (b"syncer-data 1.x.0\n", "minor"),
        (b"syncer-data 01.1.0\n", "major"),
        (b"syncer-data 1.1.0-beta\n", "patch"),
        (b"syncer-data 1.1.+0\n", "patch"),
        (b"syncer-data 99999999999.1.0\n", "too large"),
        (b"syncer-data 1.1.0\njunk\n", "more than one line"),
        (b"syncer-data 1.1.0\n\n", "more than one line"),
        (b"syncer-data 1.1.0 \n", "patch"),
        (b"syncer-data  1.1.0\n", "major"),
        (b"syncer-data 1.1.0\r\n", "patch"),
        (b"syncer-data \xff.1.0\n", "UTF-8"),
        (long.as_bytes(), "too long"),
    ];
    for (input, want) in cases {
        let err = parse(input).expect_err(&format!("{:?} parsed", String::from_utf8_lossy(input)));
        assert!(err.contains(want), "{:?}: {err:?} lacks {want:?}", String::from_utf8_lossy(input));
        // Through the file too: BadFormatFile naming the file.
        let s = with_format(input);
        match check_and_upgrade(&s, Path::new(DIR)) {
            Err(e @ Error::BadFormatFile { .. }) => {
                let msg = e.to_string();
                assert!(msg.contains("/data/FORMAT"), "{msg}");
                assert!(msg.contains(want), "{msg}");
            }
            other => panic!("{:?}: {other:?}", String::from_utf8_lossy(input)),
        }
    }
}

#[test]
fn missing_file_is_not_a_data_dir() {
    let s = CrashStorage::new();
    s.create_dir_all(Path::new(DIR)).expect("mkdir");
    let e = check_and_upgrade(&s, Path::new(DIR)).expect_err("no FORMAT");
    assert!(matches!(e, Error::BadFormatFile { .. }));
    assert!(e.to_string().contains("not a syncer data dir (no FORMAT file)"), "{e}");
}

#[test]
fn newer_major_is_refused_and_left_alone() {
    let s = with_format(b"syncer-data 3.0.0\n");
    let e = check_and_upgrade(&s, Path::new(DIR)).expect_err("newer major");
    let msg = e.to_string();
    assert!(matches!(e, Error::NewerFormat { .. }), "{msg}");
    assert!(msg.contains("3.0.0") && msg.contains("2.0.0"), "{msg}");
    assert_eq!(s.read(&Path::new(DIR).join("FORMAT")).expect("read"), b"syncer-data 3.0.0\n");
}

#[test]
fn never_written_versions_are_refused() {
    let s = with_format(b"syncer-data 0.9.0\n");
    assert!(matches!(check_and_upgrade(&s, Path::new(DIR)), Err(Error::BadFormatFile { .. })));
}

#[test]
fn newer_minor_is_readable_and_kept() {
    for v in ["2.1.0", "2.9.4", "2.0.7"] {
        let line = format!("syncer-data {v}\n");
        let s = with_format(line.as_bytes());
        let got = check_and_upgrade(&s, Path::new(DIR)).expect("readable");
        assert_eq!(got, Upgrade::NewerMinor(parse(line.as_bytes()).expect("parse")));
        assert_eq!(s.read(&Path::new(DIR).join("FORMAT")).expect("read"), line.as_bytes(), "never downgraded");
    }
}

#[test]
fn current_needs_nothing() {
    let s = with_format(b"syncer-data 2.0.0\n");
    assert_eq!(check_and_upgrade(&s, Path::new(DIR)).expect("ok"), Upgrade::None);
}

#[test]
fn older_version_is_upgraded_in_place_durably() {
    let s = with_format(b"syncer-data 1.0.2\n");
    s.sync_file(&Path::new(DIR).join("FORMAT")).expect("sync");
    s.sync_dir(Path::new(DIR)).expect("sync dir");
    let got = check_and_upgrade(&s, Path::new(DIR)).expect("upgrade");
    assert_eq!(got, Upgrade::UpgradedFrom(FormatVersion { major: 1, minor: 0, patch: 2 }));
    // Durable on return: a crash right after keeps the new version.
    s.crash(|_, synced, _| synced);
    assert_eq!(format::read(&s, Path::new(DIR)).expect("read"), CURRENT);
    assert_eq!(check_and_upgrade(&s, Path::new(DIR)).expect("again"), Upgrade::None);
    assert!(!s.exists(&Path::new(DIR).join("FORMAT.tmp")));
}

#[test]
fn a_1_1_data_dir_is_upgraded_too() {
    let s = with_format(b"syncer-data 1.1.0\n");
    let got = check_and_upgrade(&s, Path::new(DIR)).expect("upgrade");
    assert_eq!(got, Upgrade::UpgradedFrom(FormatVersion { major: 1, minor: 1, patch: 0 }));
    assert_eq!(format::read(&s, Path::new(DIR)).expect("read"), CURRENT);
}

#[test]
fn write_new_is_durable_and_refuses_an_existing_dir() {
    let s = CrashStorage::new();
    s.create_dir_all(Path::new(DIR)).expect("mkdir");
    write_new(&s, Path::new(DIR)).expect("write");
    s.crash(|_, _, _| 0);
    assert_eq!(check_and_upgrade(&s, Path::new(DIR)).expect("check"), Upgrade::None);
    assert!(matches!(write_new(&s, Path::new(DIR)), Err(Error::BadFormatFile { .. })));
}

proptest! {
    #[test]
    fn version_lines_round_trip(major: u32, minor: u32, patch: u32) {
        let v = FormatVersion { major, minor, patch };
        prop_assert_eq!(parse(v.to_line().as_bytes()), Ok(v));
    }

    #[test]
    fn arbitrary_bytes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..300)) {
        // Never a panic; anything accepted prints back to itself.
        if let Ok(v) = parse(&bytes) {
            prop_assert_eq!(parse(v.to_line().as_bytes()), Ok(v));
        }
    }

    #[test]
    fn near_miss_text_never_panics(s in "syncer-data [0-9.+-]{0,12}\n?[a-z]{0,3}") {
        // Anything accepted prints back to itself, but for the final
        // newline, which the format lets a file lack.
        if let Ok(v) = parse(s.as_bytes()) {
            let line = v.to_line();
            prop_assert_eq!(line.trim_end_matches('\n'), s.strip_suffix('\n').unwrap_or(&s));
        }
    }
}

/// Found by `near_miss_text_never_panics`: a line without its final newline
/// is a version (the format allows it), and the same one as with it.
#[test]
fn a_version_line_without_its_final_newline_is_accepted() {
    let v = FormatVersion { major: 0, minor: 0, patch: 0 };
    assert_eq!(parse(b"syncer-data 0.0.0"), Ok(v));
    assert_eq!(parse(b"syncer-data 0.0.0\n"), Ok(v));
    assert!(parse(b"syncer-data 0.0.0\n\n").is_err());
}
