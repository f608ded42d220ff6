//! Which files of a service's build context its host reads. With images
//! built on the controller the context stays there: a host gets only the
//! files something on it opens — the sources its compose file bind-mounts,
//! its `env_file:`, `label_file:`, `extends: { file }`, and top-level
//! `configs:` / `secrets:` `file:` entries, and the files the service's
//! hooks name (they run in its folder) — besides the files mesh writes
//! there itself (`.mesh-compose.yml`, `.mesh-ports`). A named directory
//! brings every context file under it.
//!
//! Every compose project of a host runs with the project directory
//! `/containers/build`, so `./traefik/traefik.yml` and
//! `/containers/build/traefik/traefik.yml` are one file. A path outside
//! `/containers/build` is the host's own, never a context file.

use super::plan::RenderedFile;
use super::BUILD_DIR;
use serde_json::{Map, Value};

/// `p` as an absolute path without `.`, `..` or repeated `/`, relative
/// paths taken from `base`; `None` for what compose expands itself (`~`,
/// `$VAR`) and for an empty path.
fn resolve(base: &str, p: &str) -> Option<String> {
    if p.is_empty() || p.contains('$') || p.starts_with('~') {
        return None;
    }
    let joined = if p.starts_with('/') {
        p.to_string()
    } else {
        format!("{base}/{p}")
    };
    let mut parts: Vec<&str> = Vec::new();
    for c in joined.split('/') {
        match c {
            "" | "." => {}
            ".." => {
                parts.pop();
            }
            c => parts.push(c),
        }
    }
    Some(format!("/{}", parts.join("/")))
}

/// `path` is `root` or inside it.
fn under(path: &str, root: &str) -> bool {
    path == root
        || root == "/"
        || path
            .strip_prefix(root)
            .is_some_and(|rest| rest.starts_with('/'))
}

/// One string or a list of strings (`env_file: a` or `[a, b]`), and the
/// `path:` of list items written as mappings.
fn strings(v: Option<&Value>) -> Vec<&str> {
    match v {
        Some(Value::String(s)) => vec![s],
        Some(Value::Array(a)) => a
            .iter()
            .filter_map(|i| match i {
                Value::String(s) => Some(s.as_str()),
                Value::Object(o) => o.get("path").and_then(Value::as_str),
                _ => None,
            })
            .collect(),
        _ => Vec::new(),
    }
}

/// The host path a `volumes:` entry bind-mounts, if any (short
/// `./src:/dst[:ro]` or long `{ type: bind, source: ./src }`; a bare name
/// is a named volume).
fn bind_source(v: &Value) -> Option<&str> {
    match v {
        Value::String(s) => s.split(':').next().filter(|s| s.starts_with(['.', '/'])),
        Value::Object(o) => {
            let bind = o.get("type").and_then(Value::as_str).unwrap_or("bind") == "bind";
            o.get("source")
                .and_then(Value::as_str)
                .filter(|s| bind && s.starts_with(['.', '/']))
        }
        _ => None,
    }
}

/// The paths under `/containers/build` that a host's compose file (reduced
/// to the services the host runs) makes compose or a container read.
pub(crate) fn compose_paths(doc: &Map<String, Value>) -> Vec<String> {
    let mut raw: Vec<&str> = Vec::new();
    if let Some(Value::Object(services)) = doc.get("services") {
        for def in services.values() {
            if let Some(Value::Array(vols)) = def.get("volumes") {
                raw.extend(vols.iter().filter_map(bind_source));
            }
            raw.extend(strings(def.get("env_file")));
            raw.extend(strings(def.get("label_file")));
            raw.extend(def.pointer("/extends/file").and_then(Value::as_str));
        }
    }
    for top in ["configs", "secrets"] {
        if let Some(Value::Object(items)) = doc.get(top) {
            raw.extend(items.values().filter_map(|d| d.get("file")?.as_str()));
        }
    }
    let mut out: Vec<String> = raw
        .into_iter()
        .filter_map(|p| resolve(BUILD_DIR, p))
        .filter(|p| under(p, BUILD_DIR))
        .collect();
    out.sort();
    out.dedup();
    out
}

/// The words of a hook of service `service` that are paths inside a
/// service folder (relative words from its own folder, where it runs).
/// The folder itself (`.`) is no such word: `. /etc/os-release` or
/// `find .` would otherwise ship the whole context.
pub(crate) fn hook_paths(service: &str, script: &[u8]) -> Vec<String> {
    let dir = format!("{BUILD_DIR}/{service}");
    let text = String::from_utf8_lossy(script);
    let mut out: Vec<String> = text
        .split(|c: char| !(c.is_ascii_alphanumeric() || "._-/+@%,".contains(c)))
        .filter_map(|w| resolve(&dir, w))
        .filter(|p| {
            p.strip_prefix(BUILD_DIR)
                .and_then(|rest| rest.strip_prefix('/'))
                .is_some_and(|rest| rest.contains('/'))
        })
        .collect();
    out.sort();
    out.dedup();
    out
}

/// The files of service `service` at or under one of `paths`.
pub(crate) fn needed(service: &str, files: &[RenderedFile], paths: &[String]) -> Vec<RenderedFile> {
    files
        .iter()
        .filter(|f| {
            let abs = format!("{BUILD_DIR}/{service}/{}", f.rel);
            paths.iter().any(|p| under(&abs, p))
        })
        .cloned()
        .collect()
}

/// `paths` that lie in service `service`'s folder, relative to it; `[""]`
/// when one of them is the folder itself or holds it.
pub(crate) fn inside(service: &str, paths: &[String]) -> Vec<String> {
    let dir = format!("{BUILD_DIR}/{service}");
    if paths.iter().any(|p| under(&dir, p)) {
        return vec![String::new()];
    }
    paths
        .iter()
        .filter_map(|p| p.strip_prefix(&format!("{dir}/")).map(str::to_string))
        .collect()
}

/// Whether `path` is a file of `files` (service `service`) or a folder
/// that holds one.
pub(crate) fn names_a_file(service: &str, files: &[RenderedFile], path: &str) -> bool {
    !needed(service, files, &[path.to_string()]).is_empty()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    fn file(rel: &str) -> RenderedFile {
        RenderedFile {
            rel: rel.into(),
            bytes: Arc::new(Vec::new()),
            sha256: String::new(),
            mode: 0o644,
        }
    }

    fn rels(files: &[RenderedFile]) -> Vec<&str> {
        files.iter().map(|f| f.rel.as_str()).collect()
    }

    fn doc(text: &str) -> Map<String, Value> {
        super::super::compose::parse(std::path::Path::new("g.yml"), text).unwrap()
    }

    #[test]
    fn compose_names_bind_mounts_env_files_configs_and_secrets() {
        let d = doc("services:
  traefik:
    volumes:
      - /containers/build/traefik/traefik.yml:/etc/traefik.yml:ro
      - ./traefik/rules/:/rules
      - /containers/data/traefik:/data
      - acme:/acme
      - { type: bind, source: ./traefik/../traefik/tls, target: /tls }
      - { type: volume, source: ./not-a-bind, target: /x }
      - ~/home:/home
    env_file: [./traefik/env, { path: traefik/more.env, required: false }]
  app:
    env_file: app/.env
    label_file: app/labels
    extends: { file: ./app/base.yml, service: base }
configs:
  site: { file: ./app/site.conf }
  other: { external: true }
secrets:
  key: { file: /containers/build/app/key }
  outside: { file: /etc/ssl/key }
");
        assert_eq!(
            compose_paths(&d),
            [
                "/containers/build/app/.env",
                "/containers/build/app/base.yml",
                "/containers/build/app/key",
                "/containers/build/app/labels",
                "/containers/build/app/site.conf",
                "/containers/build/traefik/env",
                "/containers/build/traefik/more.env",
                "/containers/build/traefik/rules",
                "/containers/build/traefik/tls",
                "/containers/build/traefik/traefik.yml",
            ]
        );
        // Nothing under /containers/build: nothing of a context is read.
        let none = doc("services:\n  web:\n    volumes: [\"/containers/log/web:/var/log/web\", \"/:/host:ro\"]\n");
        assert!(compose_paths(&none).is_empty());
    }

    #[test]
    fn a_host_gets_only_the_files_named_and_everything_under_a_named_folder() {
        let files: Vec<RenderedFile> = [
            "Dockerfile",
            "big.bin",
            "rules/a.yml",
            "rules/b/c.yml",
            "rulesx",
            "traefik.yml",
        ]
        .into_iter()
        .map(file)
        .collect();
        let paths = vec![
            "/containers/build/traefik/traefik.yml".to_string(),
            "/containers/build/traefik/rules".to_string(),
            "/containers/build/other/traefik.yml".to_string(),
        ];
        assert_eq!(
            rels(&needed("traefik", &files, &paths)),
            ["rules/a.yml", "rules/b/c.yml", "traefik.yml"]
        );
        assert_eq!(inside("traefik", &paths), ["traefik.yml", "rules"]);
        assert!(needed("web", &files, &paths).is_empty());
        assert!(inside("web", &paths).is_empty());
        // A mount of the whole folder (or of /containers/build) ships it all.
        let all = vec!["/containers/build".to_string()];
        assert_eq!(needed("traefik", &files, &all).len(), files.len());
        assert_eq!(inside("traefik", &all), [""]);
        assert!(names_a_file(
            "traefik",
            &files,
            "/containers/build/traefik/rules/b"
        ));
        assert!(!names_a_file(
            "traefik",
            &files,
            "/containers/build/traefik/rule"
        ));
    }

    #[test]
    fn hooks_name_files_by_relative_or_absolute_path_but_not_the_folder() {
        let hook = b". /etc/os-release\nfind . -name x\ninstall -m 644 ./conf/nginx.conf /etc/nginx/nginx.conf\ncp \"/containers/build/web/static/\"* /srv && sh ../db/seed.sh\necho done >&2\n";
        let paths = hook_paths("web", hook);
        assert!(paths.contains(&"/containers/build/web/conf/nginx.conf".to_string()));
        assert!(paths.contains(&"/containers/build/web/static".to_string()));
        assert!(paths.contains(&"/containers/build/db/seed.sh".to_string()));
        assert!(paths.contains(&"/containers/build/web/done".to_string()));
        assert!(
            !paths
                .iter()
                .any(|p| p == "/containers/build/web" || p == "/containers/build"),
            "{paths:?}"
        );
        let files: Vec<RenderedFile> = ["Dockerfile", "conf/nginx.conf", "static/i.html", "app.py"]
            .into_iter()
            .map(file)
            .collect();
        assert_eq!(
            rels(&needed("web", &files, &paths)),
            ["conf/nginx.conf", "static/i.html"]
        );
    }

    #[test]
    fn paths_resolve_lexically() {
        assert_eq!(resolve("/b", "./x/../y//z/").as_deref(), Some("/b/y/z"));
        assert_eq!(resolve("/b", "/a/./c").as_deref(), Some("/a/c"));
        assert_eq!(resolve("/b", "${HOME}/x"), None);
        assert!(under("/a/b", "/a") && !under("/ab", "/a") && under("/a", "/a"));
    }
}
