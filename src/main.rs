//! `syncer`: the command line. A thin layer: parse, call the engine, the
//! FUSE adapter or the replication crate, print, map errors to exit codes.
//!
//! Exit codes: 0 success; 1 an error (one line on stderr saying what and
//! where); 2 bad usage; 3 `log verify` found damage.
//!
//! How the crates fit together, and the rules every change keeps:
//! `docs/DESIGN.md`.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{bail, Context, Result};
use clap::{Parser, Subcommand};
use control::Request;
use engine::TreeRead;

mod conflicts;
mod control;
mod daemon_log;
mod history_cmd;
mod log_cmd;
mod mount;
mod remote;
mod table;

const EXIT_HELP: &str = "Exit codes: 0 success; 1 error (one line on stderr: what failed and where); \
2 bad usage; 3 `log verify` found damage.";

/// A FUSE filesystem over an event log: a bounded local cache of a larger
/// collection, full history, several machines writing at once.
#[derive(Parser, Debug)]
#[command(name = "syncer", version, after_help = EXIT_HELP)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Create a new data dir.
    Init {
        /// The data dir to create (missing or empty).
        data_dir: PathBuf,
        /// Remote: a local path or [user@]host:path reached by rsync.
        #[arg(long)]
        remote: Option<String>,
        /// Local cache limit, e.g. 10GiB.
        #[arg(long, default_value = "10GiB")]
        cache_size: String,
        /// Block size, a power of two from 4KiB to 16MiB.
        #[arg(long, default_value = "1MiB")]
        block_size: String,
        /// Bytes of blake3 kept per block hash (16..=32).
        #[arg(long, default_value_t = 32)]
        hash_size: usize,
        /// zstd level for blocks (0 = never compress).
        #[arg(long, default_value_t = 1)]
        compression_level: i32,
    },
    /// Show machine id, format, sizes and counts (mounted or not).
    Status {
        /// The data dir.
        data_dir: PathBuf,
        /// One JSON object instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Make a new machine from a remote: log and metadata now, content on demand.
    Clone {
        /// The new data dir (missing or empty).
        data_dir: PathBuf,
        /// The remote: a local path or [user@]host:path reached by rsync.
        remote: String,
        /// Local cache limit, e.g. 10GiB (default: the remote's).
        #[arg(long)]
        cache_size: Option<String>,
    },
    /// Push to and pull from the remote once, now (done by the mount when mounted).
    Sync {
        /// The data dir.
        data_dir: PathBuf,
        /// The summary as one JSON object.
        #[arg(long)]
        json: bool,
    },
    /// Keep a file or a whole directory local (fetched now, never evicted).
    Pin {
        /// The data dir.
        data_dir: PathBuf,
        /// Path inside the tree, e.g. /photos/thumbs.
        path: String,
    },
    /// Undo `pin` for a path and everything below it.
    Unpin {
        /// The data dir.
        data_dir: PathBuf,
        /// Path inside the tree.
        path: String,
    },
    /// Trim the local block store now: blocks already on the remote, least
    /// recently used first (never pinned, small or unpushed ones).
    Evict {
        /// The data dir.
        data_dir: PathBuf,
        /// Trim to this size, e.g. 2GiB (default: the cache limit).
        #[arg(long)]
        size: Option<String>,
    },
    /// Mount the tree (in the background unless --foreground).
    Mount {
        /// The data dir.
        data_dir: PathBuf,
        /// Where to mount it.
        mountpoint: PathBuf,
        /// Stay in the foreground; Ctrl-C or SIGTERM unmounts cleanly.
        #[arg(short, long)]
        foreground: bool,
        /// Mount options, comma separated (allow_other, ro, ...), as mount(8) passes them.
        #[arg(short = 'o', value_delimiter = ',')]
        options: Vec<String>,
        /// Mount the tree as it stood at WHEN, read-only: RFC 3339, "2h ago", "3d", a unix
        /// timestamp, @<machine>:<segment>:<offset> or <machine>#<seq> (as `log inspect` prints).
        #[arg(long, value_name = "WHEN")]
        at: Option<String>,
    },
    /// List every version of a file or directory (time, machine, size, kind of change).
    History {
        /// The data dir.
        data_dir: PathBuf,
        /// Path inside the tree, e.g. /docs/a.txt.
        path: String,
        /// Find the node at PATH as of WHEN (default: now).
        #[arg(long, value_name = "WHEN")]
        at: Option<String>,
        /// One JSON object instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Write out a file as it was at WHEN: to DEST, or back into the live tree as new events
    /// (through the mount when mounted: open files show it at once).
    Restore {
        /// The data dir.
        data_dir: PathBuf,
        /// Path inside the tree.
        path: String,
        /// The version to restore (see `mount --at`).
        #[arg(long, value_name = "WHEN")]
        at: String,
        /// Write to this new file instead of into the tree.
        #[arg(long, value_name = "DEST")]
        to: Option<PathBuf>,
    },
    /// Unmount a syncer mount (every buffered write is committed first).
    Unmount {
        /// The mountpoint, or a data dir (every syncer mount of it is unmounted).
        mountpoint: PathBuf,
    },
    /// The event log.
    Log {
        #[command(subcommand)]
        command: LogCommand,
    },
    /// List open content conflicts (both versions, machines and times) and
    /// every conflict the merge resolved.
    Conflicts {
        /// The data dir.
        data_dir: PathBuf,
        /// One JSON object instead of text.
        #[arg(long)]
        json: bool,
    },
    /// End a content conflict: keep one version (or both) under the
    /// original's name, with ordinary events that replicate; history keeps
    /// both versions.
    Resolve {
        /// The data dir.
        data_dir: PathBuf,
        /// The conflict copy, or the original if it has one open copy.
        path: String,
        /// Which version to keep under the name.
        #[arg(long, value_enum)]
        keep: conflicts::KeepArg,
    },
    /// The derived redb index.
    Index {
        #[command(subcommand)]
        command: IndexCommand,
    },
}

#[derive(Subcommand, Debug)]
enum LogCommand {
    /// Check every record checksum and every referenced block; exit 3 on damage.
    Verify {
        /// The data dir.
        data_dir: PathBuf,
        /// One JSON object instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Show events (damaged records too) as an aligned table or JSON lines.
    Inspect {
        /// The data dir.
        data_dir: PathBuf,
        /// Only events of this node (<counter>.<machine> as printed, or "root").
        #[arg(long)]
        node: Option<String>,
        /// Only events of the node at this path (now, or --at).
        #[arg(long)]
        path: Option<String>,
        /// Resolve --path as of WHEN.
        #[arg(long, value_name = "WHEN")]
        at: Option<String>,
        /// Only events of this machine (16 hex digits).
        #[arg(long)]
        machine: Option<String>,
        /// Only events at or after WHEN.
        #[arg(long, value_name = "WHEN")]
        since: Option<String>,
        /// Only events at or before WHEN.
        #[arg(long, value_name = "WHEN")]
        until: Option<String>,
        /// Only these kinds (create, attrs, write, truncate, move, remove, setxattr, removexattr,
        /// symlink, volname, pin, exchange); repeat or separate with commas.
        #[arg(long = "kind")]
        kinds: Vec<String>,
        /// One JSON object per line.
        #[arg(long)]
        json: bool,
    },
    /// Print a node's causal history (concurrent events, merge points) as Graphviz DOT.
    Graph {
        /// The data dir.
        data_dir: PathBuf,
        /// The node.
        #[arg(long)]
        node: String,
    },
}

#[derive(Subcommand, Debug)]
enum IndexCommand {
    /// Delete index.redb and rebuild it from the log (not while mounted).
    Rebuild {
        /// The data dir.
        data_dir: PathBuf,
    },
}

/// mimalloc: the index commits each group on a thread of its own, which
/// frees what the request threads allocated; glibc's malloc then contends
/// on its arena locks (measured: 20 µs against 12 µs per file created,
/// stat'ed and removed through the engine).
#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Makes mimalloc give freed memory back to the system at once and commit
/// its arenas page by page as they are used. With its defaults (purge
/// after a delay, arenas committed whole) the mount's resident memory
/// follows past peaks, not what is in use: measured on a mount of 20,000
/// files after `ls -R` and reading 3,000 of them, 75-99 MiB against 48-56
/// MiB. Set here, the options miss what mimalloc set up before `main`;
/// the mount daemon also gets them from its environment
/// ([`ALLOCATOR_ENV`]), which mimalloc reads before any allocation.
fn tune_allocator() {
    // Option numbers of mimalloc v2's `mi_option_e` (mimalloc.h), which the
    // `mimalloc` crate links; its Rust bindings do not name these two.
    const ARENA_EAGER_COMMIT: libc::c_int = 4;
    const PURGE_DELAY: libc::c_int = 15;
    extern "C" {
        fn mi_option_set(option: libc::c_int, value: libc::c_long);
    }
    // SAFETY: plain option setters of the linked allocator, before any
    // thread starts.
    unsafe {
        mi_option_set(ARENA_EAGER_COMMIT, 0);
        mi_option_set(PURGE_DELAY, 0);
    }
}

/// The environment that makes mimalloc start as [`tune_allocator`] leaves it.
pub(crate) const ALLOCATOR_ENV: [(&str, &str); 2] =
    [("MIMALLOC_ARENA_EAGER_COMMIT", "0"), ("MIMALLOC_PURGE_DELAY", "0")];

fn main() -> ExitCode {
    tune_allocator();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("SYNCER_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_writer(daemon_log::Lossy)
        .init();
    let cli = Cli::parse();
    if !matches!(cli.command, Command::Mount { .. }) {
        // Printing commands end quietly when their reader goes away
        // (`syncer log inspect | head`), like other Unix tools. The mount
        // daemon keeps SIGPIPE ignored: it writes to rsync's pipes.
        // SAFETY: setting a signal disposition before any thread starts.
        unsafe {
            libc::signal(libc::SIGPIPE, libc::SIG_DFL);
        }
    }
    match run(cli) {
        Ok(code) => code,
        Err(e) => {
            daemon_log::line(&format!("syncer: {}", daemon_log::error_chain(&e)));
            ExitCode::from(1)
        }
    }
}

fn run(cli: Cli) -> Result<ExitCode> {
    match cli.command {
        Command::Init { data_dir, remote, cache_size, block_size, hash_size, compression_level } => {
            let mut config = engine::config::Config::new_default(engine::ids::MachineId::random());
            config.remote = remote;
            config.cache_size = engine::config::parse_size(&cache_size)
                .map_err(|e| anyhow::anyhow!("--cache-size {cache_size:?}: {e}"))?;
            let bs = engine::config::parse_size(&block_size)
                .map_err(|e| anyhow::anyhow!("--block-size {block_size:?}: {e}"))?;
            config.block_size = bs;
            config.small_block = config.small_block.min(config.block_size);
            config.hash_size = hash_size;
            config.compression_level = compression_level;
            config.validate().map_err(|e| anyhow::anyhow!("{e}"))?;
            engine::Store::init(&data_dir, config.clone()).with_context(|| format!("init {}", data_dir.display()))?;
            println!("initialized {} (machine {})", data_dir.display(), config.machine);
            if config.remote.is_some() {
                remote::initial_push(&data_dir)?;
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Status { data_dir, json } => via_mount(&data_dir, Request::Status { json }),
        Command::Clone { data_dir, remote, cache_size } => {
            remote::clone(&data_dir, &remote, cache_size.as_deref()).map(|()| ExitCode::SUCCESS)
        }
        Command::Sync { data_dir, json } => via_mount(&data_dir, Request::Sync { json }),
        Command::Pin { data_dir, path } => via_mount(&data_dir, Request::Pin { path }),
        Command::Unpin { data_dir, path } => via_mount(&data_dir, Request::Unpin { path }),
        Command::Evict { data_dir, size } => {
            let size = size
                .map(|s| engine::config::parse_size(&s).map_err(|e| anyhow::anyhow!("--size {s:?}: {e}")))
                .transpose()?;
            via_mount(&data_dir, Request::Evict { size })
        }
        Command::Mount { data_dir, mountpoint, foreground, options, at } => {
            let at = at.map(|w| history_cmd::resolve(&data_dir, &w)).transpose()?;
            mount::mount(&data_dir, &mountpoint, foreground, &options, at).map(|()| ExitCode::SUCCESS)
        }
        Command::History { data_dir, path, at, json } => {
            let at = at.map(|w| history_cmd::resolve(&data_dir, &w)).transpose()?;
            history_cmd::print_history(&data_dir, &path, at, json).map(|()| ExitCode::SUCCESS)
        }
        Command::Restore { data_dir, path, at, to } => {
            let at = history_cmd::resolve(&data_dir, &at)?;
            match to {
                Some(dest) => history_cmd::restore_to(&data_dir, &path, at, &dest).map(|()| ExitCode::SUCCESS),
                None => via_mount(&data_dir, Request::Restore { path, at: at.0 }),
            }
        }
        Command::Log {
            command: LogCommand::Inspect { data_dir, node, path, at, machine, since, until, kinds, json },
        } => {
            let args = log_cmd::InspectArgs { node, path, at, machine, since, until, kinds, json };
            log_cmd::inspect(&data_dir, &args).map(|()| ExitCode::SUCCESS)
        }
        Command::Log { command: LogCommand::Graph { data_dir, node } } => {
            log_cmd::graph(&data_dir, &node).map(|()| ExitCode::SUCCESS)
        }
        Command::Unmount { mountpoint } => mount::unmount(&mountpoint).map(|()| ExitCode::SUCCESS),
        Command::Log { command: LogCommand::Verify { data_dir, json } } => {
            via_mount(&data_dir, Request::Verify { json })
        }
        Command::Conflicts { data_dir, json } => via_mount(&data_dir, Request::Conflicts { json }),
        Command::Resolve { data_dir, path, keep } => {
            via_mount(&data_dir, Request::Resolve { path, keep: keep.name().to_string() })
        }
        Command::Index { command: IndexCommand::Rebuild { data_dir } } => {
            if control::client::is_mounted(&data_dir)? {
                bail!(
                    "{} is mounted: `index rebuild` deletes the index the mount is serving from, so it cannot run \
                     while mounted; unmount it first (`syncer unmount {}`), then run it again",
                    data_dir.display(),
                    data_dir.display()
                );
            }
            let index = engine::Layout { dir: data_dir.clone() }.index();
            let e = engine::LiveTree::open(&data_dir).with_context(|| format!("open {}", data_dir.display()))?;
            drop(e);
            std::fs::remove_file(&index).with_context(|| format!("remove {}", index.display()))?;
            let e = engine::LiveTree::open(&data_dir).with_context(|| format!("rebuild {}", data_dir.display()))?;
            let s = e.stats()?;
            println!("rebuilt {}: {} events, {} nodes", index.display(), e.open_report().caught_up, s.nodes);
            Ok(ExitCode::SUCCESS)
        }
    }
}

/// Runs `req` in the mount that serves `data_dir` (through its control
/// socket), or in this process when nothing serves it; the output and the
/// exit code are the same either way.
fn via_mount(data_dir: &std::path::Path, req: Request) -> Result<ExitCode> {
    // As the mount names it, so both ways print the same paths.
    let data_dir = data_dir.canonicalize().unwrap_or_else(|_| data_dir.to_path_buf());
    let mut term = control::Terminal::new();
    let code = match control::client::connect(&data_dir)? {
        Some(stream) => control::client::call(&data_dir, stream, &req, &mut term)?,
        None => control::handlers::local(&data_dir, &req, &mut term)?,
    };
    Ok(ExitCode::from(code))
}
