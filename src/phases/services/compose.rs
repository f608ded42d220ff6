//! A host's compose file: its groups' `<group>.yml` files (rendered for the
//! host) merged, reduced to the services the host runs, with each built
//! service's `image:` pointing at the image mesh built for it.

use serde_json::{Map, Value};
use serde_saphyr::{MessageFormatter, UserMessageFormatter};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// Top-level compose keys merged across group files (by name).
const MERGED: &[&str] = &["services", "volumes", "networks", "configs", "secrets"];

/// Why a group's compose file cannot be used.
#[derive(Debug, thiserror::Error)]
pub(crate) enum ComposeError {
    #[error("{}{at}: YAML syntax error: {msg}. Fix: correct the compose file at that position", .path.display())]
    Syntax {
        path: PathBuf,
        /// `:line:col`, when known.
        at: String,
        msg: String,
    },
    #[error("{}: a compose file must be a mapping with a `services:` key. Fix: start it with `services:`", .path.display())]
    NotAMapping { path: PathBuf },
    #[error("{}: `{key}:` must be a mapping of names. Fix: write {key}: {{ NAME: {{ ... }} }}", .path.display())]
    NotNames { path: PathBuf, key: String },
    #[error("{key} \"{name}\" is defined differently in {} and {}. Fix: define it once, or identically in both group files", .first.display(), .second.display())]
    Conflict {
        key: String,
        name: String,
        first: PathBuf,
        second: PathBuf,
    },
}

/// Parse one rendered compose file.
pub(crate) fn parse(path: &Path, text: &str) -> Result<Map<String, Value>, ComposeError> {
    let value: Value = serde_saphyr::from_str(text).map_err(|e| {
        let at = e
            .location()
            .map(|l| format!(":{}:{}", l.line(), l.column()))
            .unwrap_or_default();
        let msg: String = UserMessageFormatter
            .format_message(e.without_snippet())
            .chars()
            .map(|c| if c.is_control() { ' ' } else { c })
            .collect();
        ComposeError::Syntax {
            path: path.to_path_buf(),
            at,
            msg,
        }
    })?;
    match value {
        Value::Object(map) => Ok(map),
        Value::Null => Ok(Map::new()),
        _ => Err(ComposeError::NotAMapping {
            path: path.to_path_buf(),
        }),
    }
}

/// Merge group compose files (in group order). The same name under a merged
/// key defined differently in two files is an error naming both.
pub(crate) fn merge(
    docs: Vec<(PathBuf, Map<String, Value>)>,
) -> Result<Map<String, Value>, ComposeError> {
    let mut out = Map::new();
    let mut origin: BTreeMap<(String, String), PathBuf> = BTreeMap::new();
    for (path, doc) in docs {
        for (key, value) in doc {
            if !MERGED.contains(&key.as_str()) {
                // version:, x-*: first one wins.
                out.entry(key).or_insert(value);
                continue;
            }
            let Value::Object(items) = value else {
                if !value.is_null() {
                    return Err(ComposeError::NotNames { path, key });
                }
                continue;
            };
            let slot = out
                .entry(key.clone())
                .or_insert_with(|| Value::Object(Map::new()));
            let Value::Object(slot) = slot else {
                continue;
            };
            for (name, def) in items {
                match slot.get(&name) {
                    Some(existing) if *existing != def => {
                        let first = &origin[&(key.clone(), name.clone())];
                        return Err(ComposeError::Conflict {
                            key,
                            name,
                            first: first.clone(),
                            second: path,
                        });
                    }
                    Some(_) => {}
                    None => {
                        origin.insert((key.clone(), name.clone()), path.clone());
                        slot.insert(name, def);
                    }
                }
            }
        }
    }
    Ok(out)
}

/// The names under `services:`.
pub(crate) fn service_names(doc: &Map<String, Value>) -> Vec<String> {
    match doc.get("services") {
        Some(Value::Object(s)) => s.keys().cloned().collect(),
        _ => Vec::new(),
    }
}

/// A service's definition.
pub(crate) fn service<'a>(doc: &'a Map<String, Value>, name: &str) -> Option<&'a Value> {
    doc.get("services")?.get(name)
}

/// Compose project of the services a host's `docker-compose.yml` runs;
/// named volumes and networks are named after it (`mesh_<name>`), as
/// compose itself names them in this project.
pub(crate) const PROJECT: &str = "mesh";

/// A named volume or network mesh creates on the host and every compose
/// file of the host refers to as `external` by its fixed name: both slots
/// of a service and the shared project see the same volume (never
/// `mesh-<svc>-a_<vol>` beside `mesh-<svc>-b_<vol>`), and `compose down`
/// never removes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Shared {
    /// `volume` or `network`.
    pub kind: &'static str,
    /// The Docker name: the user's `name:`, else `mesh_<key>`.
    pub name: String,
    pub driver: Option<String>,
    pub driver_opts: Vec<(String, String)>,
}

/// The volumes and networks of a compose file that mesh creates: every
/// top-level one not marked `external` by the user.
pub(crate) fn shared(doc: &Map<String, Value>) -> Vec<Shared> {
    let mut out = Vec::new();
    for (top, kind) in [("volumes", "volume"), ("networks", "network")] {
        let Some(Value::Object(items)) = doc.get(top) else {
            continue;
        };
        for (key, def) in items {
            if def.get("external").is_some_and(is_true) {
                continue;
            }
            let name = fixed_name(key, def);
            let driver = def
                .get("driver")
                .and_then(Value::as_str)
                .map(str::to_string);
            let driver_opts = match def.get("driver_opts") {
                Some(Value::Object(o)) => o.iter().map(|(k, v)| (k.clone(), scalar(v))).collect(),
                _ => Vec::new(),
            };
            out.push(Shared {
                kind,
                name,
                driver,
                driver_opts,
            });
        }
    }
    out
}

/// The Docker name of a volume or network: the user's `name:`, else `mesh_<key>`.
fn fixed_name(key: &str, def: &Value) -> String {
    def.get("name")
        .and_then(Value::as_str)
        .map(str::to_string)
        .unwrap_or_else(|| format!("{PROJECT}_{key}"))
}

fn is_true(v: &Value) -> bool {
    matches!(v, Value::Bool(true)) || v.is_object()
}

fn scalar(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

/// Top-level volumes and networks as mesh creates them: `external`, by
/// their fixed name.
fn externalize(doc: &mut Map<String, Value>) {
    for top in ["volumes", "networks"] {
        let Some(Value::Object(items)) = doc.get_mut(top) else {
            continue;
        };
        for (key, def) in items.iter_mut() {
            if def.get("external").is_some_and(is_true) {
                continue;
            }
            let name = fixed_name(key, def);
            let mut ext = Map::new();
            ext.insert("external".into(), Value::Bool(true));
            ext.insert("name".into(), Value::String(name));
            *def = Value::Object(ext);
        }
    }
}

/// The environment variable that names a built service's image in the
/// host's compose file (`MESH_IMAGE_WEB_API`): `services-up` and `deploy`
/// set it from the host's record, so a rolled-back service stays back.
pub(crate) fn image_var(service: &str) -> String {
    format!("MESH_IMAGE_{}", super::plan::var_suffix(service))
}

/// The host's compose file: only the services in `images` or `keep`, each
/// built one with `image:` set (and `build:` dropped: hosts never build
/// from compose, nor pull what mesh ships).
pub(crate) fn finalize(
    mut doc: Map<String, Value>,
    images: &BTreeMap<String, String>,
    keep: &[String],
    own_file: &[String],
) -> String {
    if let Some(Value::Object(services)) = doc.get_mut("services") {
        services.retain(|name, _| {
            (images.contains_key(name) || keep.contains(name)) && !own_file.contains(name)
        });
        for (name, def) in services.iter_mut() {
            if let (Some(tag), Value::Object(def)) = (images.get(name), def) {
                def.remove("build");
                def.insert(
                    "image".into(),
                    Value::String(format!("${{{}:-{tag}}}", image_var(name))),
                );
                def.insert("pull_policy".into(), Value::String("never".into()));
            }
        }
    }
    externalize(&mut doc);
    to_text(doc)
}

fn to_text(doc: Map<String, Value>) -> String {
    let body = serde_saphyr::to_string(&Value::Object(doc))
        .unwrap_or_else(|e| format!("# mesh could not serialise this file: {e}\n"));
    format!("# Written by mesh from the dockerfiles folder's group files; edits are overwritten.\n{body}")
}

/// The names a service's `volumes:` entries refer to (short `vol:/path`
/// and long `{ type: volume, source: vol }` syntax).
fn volume_refs(def: &Value) -> Vec<String> {
    let mut out = Vec::new();
    for v in def
        .get("volumes")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        let source = match v {
            Value::String(s) => s.split(':').next().map(str::to_string),
            Value::Object(o) => o.get("source").and_then(Value::as_str).map(str::to_string),
            _ => None,
        };
        if let Some(src) = source.filter(|s| !s.is_empty() && !s.starts_with(['/', '.', '~', '$']))
        {
            out.push(src);
        }
    }
    out
}

/// The networks a service joins (list or mapping).
fn network_refs(def: &Value) -> Vec<String> {
    match def.get("networks") {
        Some(Value::Array(a)) => a
            .iter()
            .filter_map(|n| n.as_str().map(str::to_string))
            .collect(),
        Some(Value::Object(o)) => o.keys().cloned().collect(),
        _ => Vec::new(),
    }
}

/// The file reduced to the services `names` and the volumes and networks
/// they use.
pub(crate) fn only_services(doc: &Map<String, Value>, names: &[String]) -> Map<String, Value> {
    let mut out = doc.clone();
    let mut vols = Vec::new();
    let mut nets = Vec::new();
    if let Some(Value::Object(services)) = out.get_mut("services") {
        services.retain(|n, _| names.contains(n));
        for def in services.values() {
            vols.extend(volume_refs(def));
            nets.extend(network_refs(def));
        }
    }
    for (top, used) in [("volumes", &vols), ("networks", &nets)] {
        if let Some(Value::Object(items)) = out.get_mut(top) {
            items.retain(|k, _| used.contains(k));
        }
    }
    out
}

/// The compose file of one service that runs in slots: only that service,
/// its image `${MESH_IMAGE:-<tag>}` (deploy names the image of each slot),
/// the volumes and networks it uses (external, so both slots share them),
/// and its `depends_on` reduced to itself: the services it depends on run
/// in the host's project, started first by `services-up`. Relative paths
/// mean what they meant in the group file because every slot command runs
/// with `--project-directory /containers/build`.
pub(crate) fn slot_file(doc: &Map<String, Value>, name: &str, tag: &str) -> String {
    let mut one = only_services(doc, &[name.to_string()]);
    if let Some(Value::Object(services)) = one.get_mut("services") {
        if let Some(Value::Object(def)) = services.get_mut(name) {
            def.remove("build");
            def.remove("container_name");
            def.remove("depends_on");
            def.insert(
                "image".into(),
                Value::String(format!("${{MESH_IMAGE:-{tag}}}")),
            );
            def.insert("pull_policy".into(), Value::String("never".into()));
        }
    }
    for top in ["volumes", "networks"] {
        if one
            .get(top)
            .and_then(Value::as_object)
            .is_some_and(Map::is_empty)
        {
            one.remove(top);
        }
    }
    externalize(&mut one);
    to_text(one)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn doc(text: &str) -> Map<String, Value> {
        parse(Path::new("g.yml"), text).unwrap()
    }

    #[test]
    fn groups_merge_and_a_conflict_names_both_files() {
        let a = doc("services:\n  web: { image: x }\nvolumes: { data: {} }\n");
        let b = doc("services:\n  web: { image: x }\n  api: { image: y }\n");
        let m = merge(vec![("a.yml".into(), a.clone()), ("b.yml".into(), b)]).unwrap();
        assert_eq!(service_names(&m), ["api", "web"]);
        let c = doc("services:\n  web: { image: z }\n");
        let err = merge(vec![("a.yml".into(), a), ("c.yml".into(), c)])
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("a.yml") && err.contains("c.yml") && err.contains("Fix:"),
            "{err}"
        );
    }

    #[test]
    fn finalize_sets_images_and_drops_other_services() {
        let d =
            doc("services:\n  web: { build: ./web, labels: [\"a=b\"] }\n  other: { image: o }\n");
        let images = BTreeMap::from([("web".to_string(), "mesh/web:abc".to_string())]);
        let text = finalize(d.clone(), &images, &[], &[]);
        let back = doc(&text);
        assert_eq!(service_names(&back), ["web"]);
        assert_eq!(
            back["services"]["web"]["image"],
            "${MESH_IMAGE_WEB:-mesh/web:abc}"
        );
        assert_eq!(back["services"]["web"]["pull_policy"], "never");
        assert!(back["services"]["web"].get("build").is_none());
        assert_eq!(back["services"]["web"]["labels"][0], "a=b");
        // A slotted service leaves the shared file for its own.
        let shared = finalize(d.clone(), &images, &[], &["web".into()]);
        assert!(service_names(&doc(&shared)).is_empty());
        let own = doc(&slot_file(&d, "web", "mesh/web:abc"));
        assert_eq!(service_names(&own), ["web"]);
        assert_eq!(
            own["services"]["web"]["image"],
            "${MESH_IMAGE:-mesh/web:abc}"
        );
    }

    #[test]
    fn both_slots_and_the_shared_project_see_one_volume() {
        let d = doc("services:
  kv:
    volumes: [\"kvdata:/data\", \"./kv/conf:/conf:ro\", \"/containers/log/kv:/log\"]
    env_file: ./kv/env
    depends_on: [db]
  db:
    volumes: [{ type: volume, source: pgdata, target: /var/lib/postgresql }]
  web: { image: x }
volumes:
  kvdata: {}
  pgdata: { driver: local, driver_opts: { type: tmpfs, device: tmpfs } }
  theirs: { external: true, name: keep-me }
");
        let shared_vols = shared(&d);
        assert_eq!(
            shared_vols
                .iter()
                .map(|v| v.name.as_str())
                .collect::<Vec<_>>(),
            ["mesh_kvdata", "mesh_pgdata"]
        );
        assert_eq!(shared_vols[1].driver.as_deref(), Some("local"));
        assert_eq!(shared_vols[1].driver_opts.len(), 2);
        // The slot file: only kv, its own volume external by the fixed name,
        // no depends_on across projects, relative paths untouched (the slot
        // runs with --project-directory /containers/build).
        let slot = doc(&slot_file(&d, "kv", "mesh/kv:1"));
        assert_eq!(service_names(&slot), ["kv"]);
        assert!(slot["services"]["kv"].get("depends_on").is_none());
        assert_eq!(slot["services"]["kv"]["env_file"], "./kv/env");
        assert_eq!(slot["services"]["kv"]["pull_policy"], "never");
        let vols = slot["volumes"].as_object().unwrap();
        assert_eq!(vols.keys().collect::<Vec<_>>(), ["kvdata"]);
        assert_eq!(vols["kvdata"]["external"], true);
        assert_eq!(vols["kvdata"]["name"], "mesh_kvdata");
        // The host's file names the same volume; the user's external one stays.
        let images = BTreeMap::from([("db".to_string(), "mesh/db:1".to_string())]);
        let host = doc(&finalize(
            d.clone(),
            &images,
            &["web".into()],
            &["kv".into()],
        ));
        assert_eq!(host["volumes"]["pgdata"]["name"], "mesh_pgdata");
        assert_eq!(host["volumes"]["theirs"]["name"], "keep-me");
        // Only what the kept services use is created.
        let web_only = only_services(&d, &["web".into()]);
        assert!(shared(&web_only).is_empty());
    }

    #[test]
    fn syntax_errors_are_located() {
        let err = parse(Path::new("web.yml"), "services:\n  web: [\n")
            .unwrap_err()
            .to_string();
        assert!(err.starts_with("web.yml:"), "{err}");
        assert!(parse(Path::new("x.yml"), "- a\n")
            .unwrap_err()
            .to_string()
            .contains("services"));
    }
}
