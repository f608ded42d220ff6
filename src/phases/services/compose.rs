//! A host's compose file: its groups' `<group>.yml` files (rendered for the
//! host) merged, reduced to the services the host runs, with each built
//! service's `image:` pointing at the image mesh built for it.

use serde_json::{Map, Value};
use serde_saphyr::{MessageFormatter, UserMessageFormatter};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// Top-level compose keys merged across group files (by name).
const MERGED: &[&str] = &["services", "volumes", "networks", "configs", "secrets"];

/// Parse one rendered compose file.
pub(crate) fn parse(path: &Path, text: &str) -> Result<Map<String, Value>, String> {
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
        format!(
            "{}{at}: YAML syntax error: {msg}. Fix: correct the compose file at that position",
            path.display()
        )
    })?;
    match value {
        Value::Object(map) => Ok(map),
        Value::Null => Ok(Map::new()),
        _ => Err(format!(
            "{}: a compose file must be a mapping with a `services:` key. Fix: start it with `services:`",
            path.display()
        )),
    }
}

/// Merge group compose files (in group order). The same name under a merged
/// key defined differently in two files is an error naming both.
pub(crate) fn merge(
    docs: Vec<(PathBuf, Map<String, Value>)>,
) -> Result<Map<String, Value>, String> {
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
                    return Err(format!(
                        "{}: `{key}:` must be a mapping of names. Fix: write {key}: {{ NAME: {{ ... }} }}",
                        path.display()
                    ));
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
                        return Err(format!(
                            "{key} \"{name}\" is defined differently in {} and {}. Fix: define it once, or identically in both group files",
                            first.display(),
                            path.display()
                        ));
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

/// The host's compose file: only the services in `images` or `keep`, each
/// built one with `image:` set (and `build:` dropped: hosts never build
/// from compose).
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
                def.insert("image".into(), Value::String(tag.clone()));
            }
        }
    }
    to_text(doc)
}

fn to_text(doc: Map<String, Value>) -> String {
    let body = serde_saphyr::to_string(&Value::Object(doc))
        .unwrap_or_else(|e| format!("# mesh could not serialise this file: {e}\n"));
    format!("# Written by mesh from the dockerfiles folder's group files; edits are overwritten.\n{body}")
}

/// The compose file of one service that runs in slots: only that service,
/// its image `${MESH_IMAGE:-<tag>}` (deploy names the image of each slot),
/// and the file's other top-level keys (volumes, networks).
pub(crate) fn slot_file(doc: &Map<String, Value>, name: &str, tag: &str) -> String {
    let mut one = doc.clone();
    if let Some(Value::Object(services)) = one.get_mut("services") {
        services.retain(|n, _| n == name);
        if let Some(Value::Object(def)) = services.get_mut(name) {
            def.remove("build");
            def.remove("container_name");
            def.insert(
                "image".into(),
                Value::String(format!("${{MESH_IMAGE:-{tag}}}")),
            );
        }
    }
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
        let err = merge(vec![("a.yml".into(), a), ("c.yml".into(), c)]).unwrap_err();
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
        assert_eq!(back["services"]["web"]["image"], "mesh/web:abc");
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
    fn syntax_errors_are_located() {
        let err = parse(Path::new("web.yml"), "services:\n  web: [\n").unwrap_err();
        assert!(err.starts_with("web.yml:"), "{err}");
        assert!(parse(Path::new("x.yml"), "- a\n")
            .unwrap_err()
            .contains("services"));
    }
}
