//! The dockerfiles folder: one subfolder per service (its Dockerfile and
//! build context, an optional `mesh.yml`, optional `hooks/before.sh` and
//! `hooks/after.sh`) and one compose file per inventory group, `<group>.yml`.
//!
//! Loading reads every file once and validates every `mesh.yml` (unknown
//! keys with a did-you-mean, each problem as `file:line:col: … Fix: …`);
//! nothing is rendered here (that is per host, see [`super::plan`]).

use crate::inventory::diag::Diag;
use crate::inventory::schema::{
    entries, read_port, read_string, read_string_list, read_u64, unknown_key,
};
use crate::inventory::yaml::{self, Node, Value};
use std::collections::BTreeMap;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// Keys of a service's `mesh.yml`.
pub(crate) const OPTION_KEYS: &[&str] = &["ports", "health", "data", "logs", "strategy", "backup"];
const HEALTH_KEYS: &[&str] = &["path", "timeout", "passes", "deadline", "interval"];
const DATA_KEYS: &[&str] = &["path", "owner", "mode"];

/// Files of a service folder that are mesh's, not part of the build context.
const OPTIONS_FILE: &str = "mesh.yml";
const HOOKS_DIR: &str = "hooks";

/// A problem with the dockerfiles folder; every one found is listed.
#[derive(Debug, thiserror::Error)]
#[error("{}", .problems.join("\n"))]
pub struct FolderError {
    pub problems: Vec<String>,
}

/// A file of a service folder, as read (not rendered yet).
#[derive(Debug, Clone)]
pub(crate) struct SourceFile {
    /// Path inside the service folder, `/`-separated.
    pub rel: String,
    /// Shared: a big binary is read once, whatever the number of hosts.
    pub bytes: Arc<Vec<u8>>,
    /// Hashed once at load: a file no host's variables change keeps it.
    pub sha256: String,
    pub executable: bool,
}

impl SourceFile {
    fn new(rel: String, bytes: Vec<u8>, executable: bool) -> Self {
        SourceFile {
            rel,
            sha256: crate::ops::file::sha256_hex(&bytes),
            bytes: Arc::new(bytes),
            executable,
        }
    }
}

/// `health:` of a service: checked from the host over HTTP.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Health {
    pub path: String,
    /// Seconds per request.
    pub timeout: u64,
    /// Consecutive 2xx answers needed.
    pub passes: u64,
    /// Seconds before giving up.
    pub deadline: u64,
    /// Seconds between requests.
    pub interval: u64,
}

/// A data directory under `/containers/data/<service>/`, with its owner.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct DataDir {
    pub path: String,
    /// `uid:gid` (numbers) or `user:group` (names known on the host).
    pub owner: String,
    pub mode: u32,
}

/// How `deploy` replaces a service's running copy.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) enum Strategy {
    /// The new copy starts beside the old one (other port), traffic
    /// switches, then the old one stops: no downtime.
    #[default]
    BlueGreen,
    /// The old copy stops, then the new one starts: for services that must
    /// never run twice (a database's data directory lock, a queue consumer).
    Recreate,
}

/// A service's `mesh.yml`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct ServiceOptions {
    /// Live and standby port (deploy switches between them); `PORT` is the first.
    pub ports: Option<(u16, u16)>,
    /// Where `ports:` is written (`line:col` in mesh.yml), for clash errors.
    pub ports_at: Option<(u64, u64)>,
    pub strategy: Strategy,
    pub health: Option<Health>,
    pub data: Vec<DataDir>,
    /// Log files created under `/containers/log/<service>/`.
    pub logs: Vec<String>,
    /// What `mesh backup` saves of it.
    pub backup: Option<crate::phases::backup::BackupSpec>,
}

/// One service folder.
#[derive(Debug, Clone)]
pub(crate) struct ServiceDef {
    pub name: String,
    pub dir: PathBuf,
    /// The build context, sorted by path.
    pub files: Vec<SourceFile>,
    pub options: ServiceOptions,
    pub before: Option<SourceFile>,
    pub after: Option<SourceFile>,
}

/// The whole folder.
#[derive(Debug, Clone)]
pub(crate) struct Folder {
    pub root: PathBuf,
    pub services: BTreeMap<String, ServiceDef>,
    /// Group name -> (compose file path, its text).
    pub compose: BTreeMap<String, (PathBuf, String)>,
}

impl Folder {
    /// Read and check the folder at `root`.
    pub fn load(root: &Path) -> Result<Folder, FolderError> {
        let mut problems = Vec::new();
        let read_dir = std::fs::read_dir(root).map_err(|e| FolderError {
            problems: vec![format!(
                "cannot read the dockerfiles folder {}: {e}. Fix: pass --dockerfiles DIR (a folder with one subfolder per service and one <group>.yml per group)",
                root.display()
            )],
        })?;
        let mut names: Vec<(String, PathBuf)> = read_dir
            .filter_map(Result::ok)
            .filter_map(|e| Some((e.file_name().into_string().ok()?, e.path())))
            .collect();
        names.sort();
        let mut folder = Folder {
            root: root.to_path_buf(),
            services: BTreeMap::new(),
            compose: BTreeMap::new(),
        };
        for (name, path) in names {
            if name.starts_with('.') {
                continue;
            }
            if path.is_dir() {
                if !path.join("Dockerfile").is_file() {
                    // Helper folders (e.g. care/) are not services.
                    continue;
                }
                if !is_service_name(&name) {
                    problems.push(format!(
                        "{}: service folder name \"{name}\" is not usable as an image name. Fix: rename it with lowercase letters, digits, '-' and '_'",
                        path.display()
                    ));
                    continue;
                }
                match load_service(&name, &path) {
                    Ok(def) => {
                        folder.services.insert(name, def);
                    }
                    Err(mut p) => problems.append(&mut p),
                }
            } else if let Some(group) = name.strip_suffix(".yml") {
                match std::fs::read_to_string(&path) {
                    Ok(text) => {
                        folder.compose.insert(group.to_string(), (path, text));
                    }
                    Err(e) => problems.push(format!(
                        "{}: cannot read: {e}. Fix: make the compose file readable UTF-8 text",
                        path.display()
                    )),
                }
            }
        }
        if problems.is_empty() {
            Ok(folder)
        } else {
            Err(FolderError { problems })
        }
    }
}

/// Lowercase letters, digits, `-`, `_`, starting with a letter or digit
/// (valid as a Docker repository path component and a compose service).
pub(crate) fn is_service_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 63
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_')
        && name.as_bytes()[0].is_ascii_alphanumeric()
}

fn load_service(name: &str, dir: &Path) -> Result<ServiceDef, Vec<String>> {
    let mut problems = Vec::new();
    let mut files = Vec::new();
    walk(dir, dir, &mut files, &mut problems);
    let options_path = dir.join(OPTIONS_FILE);
    let options = if options_path.is_file() {
        match std::fs::read_to_string(&options_path) {
            Ok(text) => match parse_options(&options_path, &text) {
                Ok(o) => o,
                Err(mut p) => {
                    problems.append(&mut p);
                    ServiceOptions::default()
                }
            },
            Err(e) => {
                problems.push(format!("{}: cannot read: {e}", options_path.display()));
                ServiceOptions::default()
            }
        }
    } else {
        ServiceOptions::default()
    };
    let hook = |file: &str, problems: &mut Vec<String>| {
        let path = dir.join(HOOKS_DIR).join(file);
        if !path.is_file() {
            return None;
        }
        match std::fs::read(&path) {
            Ok(bytes) => Some(SourceFile::new(format!("{HOOKS_DIR}/{file}"), bytes, true)),
            Err(e) => {
                problems.push(format!("{}: cannot read: {e}", path.display()));
                None
            }
        }
    };
    let before = hook("before.sh", &mut problems);
    let after = hook("after.sh", &mut problems);
    if !problems.is_empty() {
        return Err(problems);
    }
    files.sort_by(|a, b| a.rel.cmp(&b.rel));
    Ok(ServiceDef {
        name: name.to_string(),
        dir: dir.to_path_buf(),
        files,
        options,
        before,
        after,
    })
}

/// Every regular file under `dir` except mesh.yml and hooks/ at the top.
fn walk(root: &Path, dir: &Path, out: &mut Vec<SourceFile>, problems: &mut Vec<String>) {
    let entries = match std::fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) => {
            problems.push(format!("{}: cannot read: {e}", dir.display()));
            return;
        }
    };
    for entry in entries.filter_map(Result::ok) {
        let path = entry.path();
        let Ok(rel) = path.strip_prefix(root) else {
            continue;
        };
        let rel = rel.to_string_lossy().into_owned();
        if rel == OPTIONS_FILE || rel == HOOKS_DIR {
            continue;
        }
        let meta = match std::fs::metadata(&path) {
            Ok(m) => m,
            Err(e) => {
                problems.push(format!(
                    "{}: {e}. Fix: remove the broken link or file",
                    path.display()
                ));
                continue;
            }
        };
        if meta.is_dir() {
            walk(root, &path, out, problems);
        } else if meta.is_file() {
            match std::fs::read(&path) {
                Ok(bytes) => out.push(SourceFile::new(
                    rel,
                    bytes,
                    meta.permissions().mode() & 0o111 != 0,
                )),
                Err(e) => problems.push(format!("{}: cannot read: {e}", path.display())),
            }
        }
    }
}

/// Parse a `mesh.yml`; problems as `file:line:col: … Fix: …`.
pub(crate) fn parse_options(path: &Path, text: &str) -> Result<ServiceOptions, Vec<String>> {
    let mut d = Diag::default();
    let root = match yaml::parse(text) {
        Ok(root) => root,
        Err((loc, message)) => {
            d.push(
                loc,
                format!("YAML syntax error: {message}"),
                "correct the YAML at this position.",
            );
            return Err(d.into_lines(path));
        }
    };
    let mut o = ServiceOptions::default();
    for e in entries(&root, "mesh.yml", &mut d) {
        let v = e.value;
        match e.key.as_str() {
            "ports" => {
                o.ports = read_ports(v, &mut d);
                o.ports_at = Some((v.loc.line, v.loc.col));
            }
            "strategy" => match read_string(v, "mesh.yml", "strategy", &mut d).as_deref() {
                Some("blue-green") => o.strategy = Strategy::BlueGreen,
                Some("recreate") => o.strategy = Strategy::Recreate,
                Some(other) => d.push(
                    v.loc,
                    format!("mesh.yml: strategy \"{other}\" is not known (allowed: blue-green, recreate)"),
                    "write strategy: blue-green (new copy beside the old, no downtime) or strategy: recreate (stop the old copy first).",
                ),
                None => {}
            },
            "health" => o.health = Some(read_health(v, &mut d)),
            "data" => o.data = read_data(v, &mut d),
            "backup" => o.backup = Some(crate::phases::backup::read_spec(v, &mut d)),
            "logs" => {
                let logs = read_string_list(v, "mesh.yml", "logs", &mut d).unwrap_or_default();
                for l in &logs {
                    if !is_plain_rel(l) {
                        d.push(
                            v.loc,
                            format!("mesh.yml: log file \"{l}\" is not a plain relative path"),
                            "write a file name such as access.log (created under /containers/log/<service>/).",
                        );
                    }
                }
                o.logs = logs;
            }
            _ => unknown_key(&mut d, "mesh.yml", &e, OPTION_KEYS),
        }
    }
    if d.is_empty() {
        Ok(o)
    } else {
        Err(d.into_lines(path))
    }
}

/// Where Traefik's API answers on a bastion, from the `traefik` service's
/// static configuration (`traefik.yml`/`traefik.yaml`): its `traefik` entry
/// point (Traefik's default `:8080`). `None` when that file has no `api:`.
/// A folder without one: Traefik's defaults.
pub(crate) fn traefik_api(folder: &Folder) -> Option<crate::inventory::TraefikApi> {
    use crate::inventory::TraefikApi;
    let Some(def) = folder.services.get(crate::inventory::TRAEFIK_SERVICE) else {
        return Some(TraefikApi::default_local());
    };
    let Some(file) = def
        .files
        .iter()
        .find(|f| f.rel == "traefik.yml" || f.rel == "traefik.yaml")
    else {
        return Some(TraefikApi::default_local());
    };
    let doc: serde_json::Value =
        serde_saphyr::from_str(&String::from_utf8_lossy(&file.bytes)).ok()?;
    doc.get("api")?;
    let entry = doc
        .get("entryPoints")
        .or_else(|| doc.get("entrypoints"))
        .and_then(|e| e.get("traefik"))
        .and_then(|t| t.get("address"))
        .and_then(serde_json::Value::as_str);
    match entry {
        Some(address) => TraefikApi::from_entrypoint(address),
        None => Some(TraefikApi::default_local()),
    }
}

/// A relative path without `..`, empty or absolute parts.
fn is_plain_rel(p: &str) -> bool {
    !p.is_empty() && p.split('/').all(|c| !c.is_empty() && c != "." && c != "..")
}

fn read_ports(v: &Node, d: &mut Diag) -> Option<(u16, u16)> {
    let fix = "write ports: [LIVE, STANDBY], two different ports such as [8000, 8001].";
    let Value::Seq(items) = &v.value else {
        d.push(
            v.loc,
            format!(
                "mesh.yml: \"ports\" expects a list of two ports, got {}",
                v.kind_name()
            ),
            fix,
        );
        return None;
    };
    let ports: Vec<u16> = items
        .iter()
        .filter_map(|i| read_port(i, "mesh.yml", "ports entry", d))
        .collect();
    match ports[..] {
        [a, b] if a != b => Some((a, b)),
        _ if ports.len() != items.len() => None,
        _ => {
            d.push(
                v.loc,
                "mesh.yml: \"ports\" needs exactly two different ports",
                fix,
            );
            None
        }
    }
}

fn read_health(v: &Node, d: &mut Diag) -> Health {
    let mut h = Health {
        path: "/".into(),
        timeout: 2,
        passes: 2,
        deadline: 60,
        interval: 1,
    };
    let what = "mesh.yml health";
    for e in entries(v, what, d) {
        let n = e.value;
        match e.key.as_str() {
            "path" => {
                if let Some(p) = read_string(n, what, "path", d) {
                    if p.starts_with('/') {
                        h.path = p;
                    } else {
                        d.push(
                            n.loc,
                            format!("{what}: path \"{p}\" does not start with /"),
                            "write an absolute URL path such as /up.",
                        );
                    }
                }
            }
            key @ ("timeout" | "passes" | "deadline" | "interval") => {
                if let Some(x) = read_u64(n, what, key, d) {
                    if x == 0 {
                        d.push(
                            n.loc,
                            format!("{what}: {key} must be at least 1"),
                            "write 1 or more.",
                        );
                    }
                    match key {
                        "timeout" => h.timeout = x,
                        "passes" => h.passes = x,
                        "deadline" => h.deadline = x,
                        _ => h.interval = x,
                    }
                }
            }
            _ => unknown_key(d, what, &e, HEALTH_KEYS),
        }
    }
    h
}

fn read_data(v: &Node, d: &mut Diag) -> Vec<DataDir> {
    let what = "mesh.yml data";
    let Value::Seq(items) = &v.value else {
        d.push(
            v.loc,
            format!("{what}: expects a list, got {}", v.kind_name()),
            "write data: [{ path: uploads, owner: \"1000:1000\" }].",
        );
        return Vec::new();
    };
    let mut out = Vec::new();
    for item in items {
        let mut dir = DataDir {
            path: String::new(),
            owner: "root:root".into(),
            mode: 0o755,
        };
        for e in entries(item, what, d) {
            let n = e.value;
            match e.key.as_str() {
                "path" => {
                    if let Some(p) = read_string(n, what, "path", d) {
                        if is_plain_rel(&p) {
                            dir.path = p;
                        } else {
                            d.push(
                                n.loc,
                                format!("{what}: path \"{p}\" is not a plain relative path"),
                                "write a name such as uploads (created under /containers/data/<service>/).",
                            );
                        }
                    }
                }
                "owner" => {
                    if let Some(o) = read_string(n, what, "owner", d) {
                        if is_owner(&o) {
                            dir.owner = o;
                        } else {
                            d.push(
                                n.loc,
                                format!("{what}: owner \"{o}\" is not uid:gid"),
                                "write owner: \"1000:1000\" (quoted), or user:group names.",
                            );
                        }
                    }
                }
                "mode" => {
                    if let Some(m) = read_string(n, what, "mode", d) {
                        match u32::from_str_radix(&m, 8) {
                            Ok(mode) if mode <= 0o7777 => dir.mode = mode,
                            _ => d.push(
                                n.loc,
                                format!("{what}: mode \"{m}\" is not an octal mode"),
                                "write mode: \"750\" (quoted octal).",
                            ),
                        }
                    }
                }
                _ => unknown_key(d, what, &e, DATA_KEYS),
            }
        }
        if dir.path.is_empty() {
            d.push(
                item.loc,
                format!("{what}: an entry has no path"),
                "add path: NAME.",
            );
        } else {
            out.push(dir);
        }
    }
    out
}

/// `uid:gid` or `user:group` with plain names.
fn is_owner(o: &str) -> bool {
    let word = |w: &str| {
        !w.is_empty()
            && w.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
    };
    matches!(o.split_once(':'), Some((u, g)) if word(u) && word(g))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<ServiceOptions, Vec<String>> {
        parse_options(Path::new("web/mesh.yml"), text)
    }

    #[test]
    fn options_parse_with_defaults() {
        let o = parse(
            "ports: [8000, 8001]\nhealth: { path: /up, passes: 3 }\n\
             data:\n  - { path: uploads, owner: \"1000:1000\", mode: \"750\" }\nlogs: [access.log]\n",
        )
        .unwrap();
        assert_eq!(o.ports, Some((8000, 8001)));
        let h = o.health.unwrap();
        assert_eq!((h.path.as_str(), h.passes, h.timeout), ("/up", 3, 2));
        assert_eq!(o.data[0].owner, "1000:1000");
        assert_eq!(o.data[0].mode, 0o750);
        assert_eq!(o.logs, vec!["access.log"]);
        assert_eq!(parse("").unwrap(), ServiceOptions::default());
    }

    #[test]
    fn unknown_keys_and_bad_values_are_located_with_a_fix() {
        let err =
            parse("prots: [1, 2]\nhealth: { path: up }\ndata: [{ path: ../x }]\n").unwrap_err();
        assert!(err[0].starts_with("web/mesh.yml:1:1:"), "{err:?}");
        assert!(err[0].contains("did you mean \"ports\""), "{err:?}");
        assert!(err
            .iter()
            .any(|e| e.contains("web/mesh.yml:2:") && e.contains("/up")));
        assert!(err.iter().any(|e| e.contains("../x")));
        let err = parse("ports: [8000, 8000]\n").unwrap_err();
        assert!(err[0].contains("two different ports"), "{err:?}");
        let err = parse("data: [{ path: x, owner: \"root\" }]\n").unwrap_err();
        assert!(err[0].contains("uid:gid"), "{err:?}");
    }

    #[test]
    fn a_folder_lists_services_compose_files_and_hooks() {
        let dir = tempfile::tempdir().unwrap();
        let web = dir.path().join("web");
        std::fs::create_dir_all(web.join("hooks")).unwrap();
        std::fs::create_dir_all(web.join("static")).unwrap();
        std::fs::write(web.join("Dockerfile"), "FROM x\n").unwrap();
        std::fs::write(web.join("static/index.html"), "hi").unwrap();
        std::fs::write(web.join("mesh.yml"), "ports: [1, 2]\n").unwrap();
        std::fs::write(web.join("hooks/after.sh"), "echo after\n").unwrap();
        std::fs::create_dir_all(dir.path().join("care")).unwrap();
        std::fs::write(dir.path().join("web.yml"), "services: {}\n").unwrap();
        let f = Folder::load(dir.path()).unwrap();
        let def = &f.services["web"];
        let rels: Vec<&str> = def.files.iter().map(|f| f.rel.as_str()).collect();
        assert_eq!(rels, ["Dockerfile", "static/index.html"]);
        assert!(def.after.is_some() && def.before.is_none());
        assert_eq!(def.options.ports, Some((1, 2)));
        assert!(f.compose.contains_key("web"));
        assert!(!f.services.contains_key("care"));

        std::fs::create_dir_all(dir.path().join("Bad.Name")).unwrap();
        std::fs::write(dir.path().join("Bad.Name/Dockerfile"), "FROM x\n").unwrap();
        let err = Folder::load(dir.path()).unwrap_err().to_string();
        assert!(err.contains("Bad.Name") && err.contains("Fix:"), "{err}");
        let err = Folder::load(&dir.path().join("absent"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("--dockerfiles"), "{err}");
    }
}
