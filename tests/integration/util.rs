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
        for args in [&["prereqs"][..], &["image"][..]] {
            let script = if args[0] == "prereqs" {
                repo_root().join("tests/lab/prereqs.sh")
            } else {
                lab_script()
            };
            let mut cmd = Command::new("bash");
            cmd.arg(&script);
            if args[0] != "prereqs" {
                cmd.args(args);
            }
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

/// A set of lab hosts for one test, removed when dropped
/// (kept with `MESH_KEEP_LAB=1` for debugging).
pub struct Lab {
    pub name: String,
    pub dir: PathBuf,
    pub count: usize,
}

impl Lab {
    /// Start `count` hosts named `<name>-1..N` at 10.77.<slot>.11.. .
    /// Every test uses its own slot so tests can run in parallel.
    pub fn start(name: &str, count: usize, slot: u8) -> Lab {
        prepare();
        let name = format!("mt-{name}");
        let dir = repo_root().join("target/lab").join(&name);
        let out = sh(Command::new("bash").arg(lab_script()).args([
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
        Lab { name, dir, count }
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

    pub fn run(mut self) -> Run {
        Run::from(sh(&mut self.cmd))
    }
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
