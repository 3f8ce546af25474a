//! A private sshd on 127.0.0.1 for the tests of the ssh remote: a new host
//! key and user key per test, root login by key only, killed on drop. The
//! tests that use it must not skip: without openssh-server they fail.

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

/// A running private sshd, killed on drop.
#[derive(Debug)]
pub struct Sshd {
    child: std::process::Child,
    /// The ssh command that reaches it (`ssh -p PORT -i KEY -o ...`), for
    /// rsync's `-e` or the `ssh` setting.
    pub ssh: String,
    /// Its port on 127.0.0.1.
    pub port: u16,
}

impl Drop for Sshd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A free TCP port of 127.0.0.1 (free when asked; good enough for tests).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").expect("bind").local_addr().expect("addr").port()
}

/// Makes an ed25519 key pair at `path` and `path.pub`.
pub fn keygen(path: &Path) {
    let ok = Command::new("ssh-keygen")
        .args(["-q", "-t", "ed25519", "-N", "", "-f"])
        .arg(path)
        .status()
        .expect("ssh-keygen (apt-get install openssh-client)");
    assert!(ok.success());
}

/// Starts sshd on a free port of 127.0.0.1 for root with new keys kept in
/// `dir` (made here; it must not exist), and waits until it listens.
pub fn start(dir: &Path) -> Sshd {
    let sshd_bin = Path::new("/usr/sbin/sshd");
    assert!(sshd_bin.exists(), "openssh-server is not installed (.ci/run installs it); this must not skip");
    std::fs::create_dir(dir).expect("mkdir");
    keygen(&dir.join("host"));
    keygen(&dir.join("user"));
    std::fs::copy(dir.join("user.pub"), dir.join("authorized_keys")).expect("authorized_keys");
    let port = free_port();
    let conf = dir.join("sshd_config");
    std::fs::write(
        &conf,
        format!(
            "Port {port}\nListenAddress 127.0.0.1\nHostKey {h}\nAuthorizedKeysFile {a}\nPermitRootLogin prohibit-password\n\
             PasswordAuthentication no\nKbdInteractiveAuthentication no\nUsePAM no\nStrictModes no\nPidFile {p}\n",
            h = dir.join("host").display(),
            a = dir.join("authorized_keys").display(),
            p = dir.join("sshd.pid").display()
        ),
    )
    .expect("sshd_config");
    std::fs::create_dir_all("/run/sshd").expect("privilege separation dir");
    let child = Command::new(sshd_bin)
        .arg("-D")
        .arg("-E")
        .arg(dir.join("sshd.log"))
        .arg("-f")
        .arg(&conf)
        .spawn()
        .expect("sshd");
    let ssh = format!(
        "ssh -p {port} -i {} -o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null -o LogLevel=ERROR",
        dir.join("user").display()
    );
    let server = Sshd { child, ssh, port };
    let t = Instant::now();
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(t.elapsed() < Duration::from_secs(10), "sshd did not listen");
        std::thread::sleep(Duration::from_millis(20));
    }
    server
}
