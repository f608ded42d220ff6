//! A service's `backup:` section of its `mesh.yml`: what of its state goes
//! into the fleet's restic repository, and how its database is dumped and
//! fed back. Read with the rest of mesh.yml (`file:line:col`, did-you-mean).

use crate::inventory::diag::Diag;
use crate::inventory::schema::{entries, read_string, read_string_list, unknown_key};
use crate::inventory::yaml::Node;

const KEYS: &[&str] = &["paths", "volumes", "dump", "restore", "exclude"];

/// What `mesh backup` saves of one service.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct BackupSpec {
    /// Under the service's data dir `/containers/data/<service>/`.
    pub paths: Vec<String>,
    /// Named volumes of the service's compose file (`mesh_<name>` on the host).
    pub volumes: Vec<String>,
    /// Run inside the live container; its stdout is the dump.
    pub dump: Option<String>,
    /// Run inside the container after a restore, the dump on its stdin.
    pub restore: Option<String>,
    /// restic `--exclude` patterns for the paths and volumes.
    pub exclude: Vec<String>,
}

/// A relative path without `..`, empty or absolute parts.
fn plain_rel(p: &str) -> bool {
    !p.is_empty() && p.split('/').all(|c| !c.is_empty() && c != "." && c != "..")
}

/// A Docker volume key: letters, digits, `_`, `.`, `-`.
fn volume_name(v: &str) -> bool {
    !v.is_empty()
        && v.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"_.-".contains(&b))
}

/// Parse `backup:`; problems go to `d` at their position.
pub(crate) fn read_spec(v: &Node, d: &mut Diag) -> BackupSpec {
    let what = "mesh.yml backup";
    let mut spec = BackupSpec::default();
    let before = d.len();
    for e in entries(v, what, d) {
        let n = e.value;
        match e.key.as_str() {
            "paths" => {
                for p in read_string_list(n, what, "paths", d).unwrap_or_default() {
                    if plain_rel(&p) {
                        spec.paths.push(p);
                    } else {
                        d.push(
                            n.loc,
                            format!("{what}: path \"{p}\" is not a plain relative path"),
                            "write a folder under /containers/data/<service>/, such as uploads.",
                        );
                    }
                }
            }
            "volumes" => {
                for vol in read_string_list(n, what, "volumes", d).unwrap_or_default() {
                    if volume_name(&vol) {
                        spec.volumes.push(vol);
                    } else {
                        d.push(
                            n.loc,
                            format!("{what}: volume \"{vol}\" is not a volume name"),
                            "write the key of a top-level `volumes:` entry of the compose file, such as pgdata.",
                        );
                    }
                }
            }
            key @ ("dump" | "restore") => {
                if let Some(cmd) = read_string(n, what, key, d) {
                    if cmd.trim().is_empty() || cmd.contains('\n') {
                        d.push(
                            n.loc,
                            format!("{what}: {key} must be one non-empty command line"),
                            "write e.g. dump: \"pg_dumpall -U postgres\".",
                        );
                    } else if key == "dump" {
                        spec.dump = Some(cmd);
                    } else {
                        spec.restore = Some(cmd);
                    }
                }
            }
            "exclude" => spec.exclude = read_string_list(n, what, "exclude", d).unwrap_or_default(),
            _ => unknown_key(d, what, &e, KEYS),
        }
    }
    if spec.restore.is_some() && spec.dump.is_none() {
        d.push(
            v.loc,
            format!("{what}: restore needs a dump to feed it"),
            "add dump: the command whose output restore reads (a dump alone is fine, e.g. `redis-cli save` before its volume is saved).",
        );
    }
    let empty = spec.paths.is_empty() && spec.volumes.is_empty() && spec.dump.is_none();
    if empty && d.len() == before {
        d.push(
            v.loc,
            format!("{what}: nothing to back up"),
            "list paths, volumes or a dump command, or remove backup:.",
        );
    }
    spec
}

#[cfg(test)]
mod tests {
    use crate::phases::services::folder::parse_options;
    use std::path::Path;

    fn parse(text: &str) -> Result<super::BackupSpec, Vec<String>> {
        parse_options(Path::new("db/mesh.yml"), text).map(|o| o.backup.unwrap())
    }

    #[test]
    fn backup_section_parses() {
        let b = parse(
            "backup:\n  paths: [uploads]\n  volumes: [pgdata]\n  dump: \"pg_dumpall -U postgres\"\n  restore: \"psql -U postgres\"\n  exclude: [\"*.tmp\"]\n",
        )
        .unwrap();
        assert_eq!(b.paths, ["uploads"]);
        assert_eq!(b.volumes, ["pgdata"]);
        assert_eq!(b.dump.as_deref(), Some("pg_dumpall -U postgres"));
        assert_eq!(b.restore.as_deref(), Some("psql -U postgres"));
        assert_eq!(b.exclude, ["*.tmp"]);
        assert!(parse_options(Path::new("x"), "ports: [1, 2]\n")
            .unwrap()
            .backup
            .is_none());
    }

    #[test]
    fn bad_backup_sections_are_located_with_a_fix() {
        let err = parse("backup:\n  volumse: [x]\n").unwrap_err();
        assert!(err[0].starts_with("db/mesh.yml:2:3:"), "{err:?}");
        assert!(err[0].contains("did you mean \"volumes\""), "{err:?}");
        let err = parse("backup: { paths: [../etc] }\n").unwrap_err();
        assert!(
            err.iter()
                .any(|e| e.contains("../etc") && e.contains("Fix:")),
            "{err:?}"
        );
        let err = parse("backup: { restore: \"psql\" }\n").unwrap_err();
        assert!(err[0].contains("needs a dump"), "{err:?}");
        let err = parse("backup: { volumes: [\"a b\"] }\n").unwrap_err();
        assert!(err[0].contains("not a volume name"), "{err:?}");
    }
}
