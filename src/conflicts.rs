//! `syncer conflicts` and `syncer resolve` (their work is in
//! `control::handlers`, so it runs in a mount as well): every conflict the merge
//! resolved, with both sides and how to get the other side back, and the
//! way to end a content conflict. Nothing is destroyed by a conflict: both
//! versions of a file changed on two machines at once stay whole and visible
//! (one as a conflict copy), both nodes of a name collision stay in the
//! tree, and every version of every node stays in history (`syncer
//! history`, `syncer restore --at`).

/// `s` as one shell word: single-quoted unless it holds only plain
/// characters.
pub fn shell_quote(s: &str) -> String {
    if !s.is_empty() && s.bytes().all(|b| b.is_ascii_alphanumeric() || b"/._-+=:,@".contains(&b)) {
        return s.to_string();
    }
    format!("'{}'", s.replace('\'', "'\\''"))
}

/// What `--keep` names: a version by role, or by who wrote it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum KeepArg {
    /// The version that kept the name; the copy is removed.
    Original,
    /// The copy's version, under the name; the copy is removed.
    Copy,
    /// Both: the copy stays, as an ordinary file.
    Both,
    /// The version this machine wrote.
    Mine,
    /// The version the other machine wrote.
    Theirs,
}

impl KeepArg {
    /// The name the control protocol uses.
    pub fn name(self) -> &'static str {
        match self {
            KeepArg::Original => "original",
            KeepArg::Copy => "copy",
            KeepArg::Both => "both",
            KeepArg::Mine => "mine",
            KeepArg::Theirs => "theirs",
        }
    }
}
