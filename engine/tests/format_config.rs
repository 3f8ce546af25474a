//! `config.toml`: round trips, and every bad config refused with a clear message.

use std::path::Path;
use std::time::Duration;

use engine::config::{format_size, parse_size, Config};
use engine::ids::MachineId;
use engine::storage::{CrashStorage, Storage};
use engine::Error;
use proptest::prelude::*;

const PATH: &str = "/data/config.toml";

fn config_strategy() -> impl Strategy<Value = Config> {
    (
        1u64..,
        prop::option::of("[a-z]{1,8}(@[a-z]{1,8})?:/[a-zA-Z0-9 _/.\"\\\\'-]{0,20}"),
        12u32..=24,
        16usize..=32,
        0i32..=19,
        (1u64 << 20)..=(1 << 30),
        any::<u64>(),
        any::<u64>(),
        any::<u64>(),
    )
        .prop_map(|(m, remote, bs_log, hash_size, level, segment_size, c, d, sb)| {
            let block_size = 1u64 << bs_log;
            Config {
                machine: MachineId(m),
                remote,
                cache_size: block_size + c % (1 << 50),
                block_size,
                hash_size,
                compression_level: level,
                segment_size,
                dirty_limit: block_size + d % (1 << 40),
                small_block: sb % (block_size + 1),
                reserve: sb % (1 << 40),
                push_delay: Duration::from_millis(10 + m % 3_590_000),
                push_max_delay: Duration::from_millis(3_600_000 + c % 82_800_000),
                poll_interval: Duration::from_millis(100 + d % 1_000_000),
                poll_interval_ssh: Duration::from_millis(500 + sb % 1_000_000),
            }
        })
}

proptest! {
    #[test]
    fn config_round_trips_through_toml(c in config_strategy()) {
        prop_assert_eq!(c.validate(), Ok(()));
        let text = c.to_toml();
        prop_assert_eq!(Config::from_toml(&text), Ok(c.clone()), "{}", text);
    }

    #[test]
    fn config_round_trips_through_a_file(c in config_strategy()) {
        let s = CrashStorage::new();
        s.create_dir_all(Path::new("/data")).expect("mkdir");
        c.save(&s, Path::new(PATH)).expect("save");
        s.crash(|_, _, _| 0);
        prop_assert_eq!(Config::load(&s, Path::new(PATH)).expect("load"), c);
    }

    #[test]
    fn sizes_round_trip(n: u64) {
        prop_assert_eq!(parse_size(&format_size(n)), Ok(n));
    }

    #[test]
    fn arbitrary_text_never_panics(text in "\\PC{0,200}") {
        // Never a panic; anything accepted prints back to itself.
        if let Ok(c) = Config::from_toml(&text) {
            prop_assert_eq!(Config::from_toml(&c.to_toml()), Ok(c));
        }
        if let Ok(n) = parse_size(&text) {
            prop_assert_eq!(parse_size(&format_size(n)), Ok(n));
        }
    }

    #[test]
    fn near_miss_configs_never_panic(key in "[a-z_]{1,18}", value in "[0-9a-zA-Z. \"-]{0,14}") {
        let text = format!("machine = \"00000000000000aa\"\nblock_size = 4096\nhash_size = 16\n{key} = {value}\n");
        if let Ok(c) = Config::from_toml(&text) {
            prop_assert_eq!(Config::from_toml(&c.to_toml()), Ok(c));
        }
    }
}

#[test]
fn defaults() {
    let c = Config::new_default(MachineId(0xab));
    assert_eq!(c.block_size, 1 << 20);
    assert_eq!(c.hash_size, 32);
    assert_eq!(c.compression_level, 1);
    assert_eq!(c.segment_size, 64 << 20);
    assert_eq!(c.dirty_limit, 256 << 20);
    assert_eq!(c.small_block, 64 << 10);
    assert_eq!(c.remote, None);
    assert_eq!(c.validate(), Ok(()));
    let text = c.to_toml();
    assert!(text.contains("machine = \"00000000000000ab\""), "{text}");
    assert!(text.contains("block_size = \"1MiB\""), "{text}");
}

#[test]
fn human_sizes_and_optional_fields() {
    let text = r#"
        machine = "0123456789abcdef"
        block_size = "64KiB"
        hash_size = 20
        cache_size = "1.5GB"
        segment_size = 8388608
        remote = "backup@nas:/srv/syncer"
    "#;
    let c = Config::from_toml(text).expect("valid");
    assert_eq!(c.block_size, 64 << 10);
    assert_eq!(c.cache_size, 1_500_000_000);
    assert_eq!(c.segment_size, 8 << 20);
    assert_eq!(c.compression_level, 1, "default");
    assert_eq!(c.dirty_limit, 256 << 20, "default");
    assert_eq!(c.remote.as_deref(), Some("backup@nas:/srv/syncer"));
}

const BASE: &str = "machine = \"0123456789abcdef\"\nblock_size = \"1MiB\"\nhash_size = 32\n";

#[test]
fn bad_configs_are_refused_with_clear_messages() {
    let without = |key: &str| BASE.lines().filter(|l| !l.starts_with(key)).map(|l| format!("{l}\n")).collect();
    let with = |extra: &str| format!("{BASE}{extra}\n");
    let replace = |key: &str, line: &str| format!("{}{line}\n", without(key));
    let cases: Vec<(String, &str)> = vec![
        (with("colour = \"blue\""), "unknown key `colour`"),
        (with("block-size = 4096"), "unknown key `block-size`"),
        (with("[remote]\nhost = \"x\""), "field `remote`: expected a string"),
        ("machine = ".to_string(), "not valid TOML"),
        (without("machine"), "missing field `machine`"),
        (without("block_size"), "missing field `block_size`"),
        (without("hash_size"), "missing field `hash_size`"),
        (replace("machine", "machine = \"0000000000000000\""), "field `machine`: must not be zero"),
        (replace("machine", "machine = \"0123456789ABCDEF\""), "field `machine`"),
        (replace("machine", "machine = \"../../etc/passwd\""), "field `machine`"),
        (replace("machine", "machine = 12"), "field `machine`: expected a string"),
        (with("remote = \"\""), "field `remote`: must not be empty"),
        (with("remote = \"--rsh=evil\""), "field `remote`"),
        (with("remote = \"host:/a\\nb\""), "control character"),
        (replace("block_size", "block_size = 3000"), "field `block_size`: 3000 is not a power of two"),
        (replace("block_size", "block_size = \"2KiB\""), "field `block_size`"),
        (replace("block_size", "block_size = \"32MiB\""), "field `block_size`"),
        (replace("block_size", "block_size = 1.5"), "field `block_size`: expected a size"),
        (replace("block_size", "block_size = \"1M\""), "ambiguous"),
        (replace("hash_size", "hash_size = 8"), "field `hash_size`: 8 is not within 16..=32"),
        (replace("hash_size", "hash_size = 33"), "field `hash_size`"),
        (replace("hash_size", "hash_size = -1"), "field `hash_size`"),
        (replace("hash_size", "hash_size = \"32\""), "field `hash_size`: expected an integer"),
        (with("compression_level = 20"), "field `compression_level`: 20"),
        (with("compression_level = -1"), "field `compression_level`"),
        (with("compression_level = 99999999999"), "field `compression_level`"),
        (with("segment_size = \"512KiB\""), "field `segment_size`"),
        (with("segment_size = \"2GiB\""), "field `segment_size`"),
        (with("cache_size = -5"), "field `cache_size`: -5 is negative"),
        (with("cache_size = \"lots\""), "field `cache_size`"),
        (with("cache_size = \"10 parsecs\""), "unknown unit"),
        (with("cache_size = 100"), "field `cache_size`: 100 is smaller than one block"),
        (with("dirty_limit = \"4KiB\""), "field `dirty_limit`"),
        (with("small_block = \"2MiB\""), "field `small_block`"),
        (with("cache_size = \"1GiB\"\ncache_size = \"2GiB\""), "not valid TOML"),
    ];
    for (text, want) in cases {
        let err = Config::from_toml(&text).expect_err(&format!("accepted:\n{text}"));
        assert!(err.contains(want), "config:\n{text}\nerror {err:?} lacks {want:?}");
        // Through load, the error names the file too.
        let s = CrashStorage::new();
        s.create_dir_all(Path::new("/data")).expect("mkdir");
        s.write_file(Path::new(PATH), text.as_bytes()).expect("write");
        let e = Config::load(&s, Path::new(PATH)).expect_err("load must refuse");
        assert!(matches!(e, Error::BadConfig { .. }), "{e}");
        let msg = e.to_string();
        assert!(msg.starts_with(PATH) && msg.contains(want), "{msg}");
    }
}

#[test]
fn unreadable_files_are_refused() {
    let s = CrashStorage::new();
    s.create_dir_all(Path::new("/data")).expect("mkdir");
    let e = Config::load(&s, Path::new(PATH)).expect_err("missing");
    assert!(e.to_string().contains("missing"), "{e}");
    s.write_file(Path::new(PATH), b"machine = \"\xff\"").expect("write");
    let e = Config::load(&s, Path::new(PATH)).expect_err("not utf-8");
    assert!(e.to_string().contains("UTF-8"), "{e}");
    s.write_file(Path::new(PATH), &vec![b'#'; 100_000]).expect("write");
    let e = Config::load(&s, Path::new(PATH)).expect_err("huge");
    assert!(e.to_string().contains("too large"), "{e}");
}

#[test]
fn save_refuses_an_invalid_config() {
    let s = CrashStorage::new();
    s.create_dir_all(Path::new("/data")).expect("mkdir");
    let mut c = Config::new_default(MachineId(1));
    c.block_size = 1000;
    assert!(matches!(c.save(&s, Path::new(PATH)), Err(Error::BadConfig { .. })));
    assert!(!s.exists(Path::new(PATH)));
}
