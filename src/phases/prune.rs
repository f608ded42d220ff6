//! Image garbage collection on the hosts: after a successful `services` or
//! `deploy` run, and on demand with `mesh prune`.
//!
//! Each host keeps, per service, the image its record names as live and
//! the ones `--rollback` can still reach (`/var/lib/mesh/deploy/<svc>.state`,
//! at most [`KEEP_PREVIOUS`](super::services::slots::KEEP_PREVIOUS)), the
//! image its compose files start by default (the newest build shipped),
//! every image a container uses (running or stopped), and every image of a
//! service whose deploy lock is held. Other `mesh/*` tags go, and so do the
//! dangling images mesh built (label `mesh.service`) that older tags left.
//!
//! One read-only round trip says what the host has; only a host with
//! something to remove gets a second, which removes it with `docker rmi`
//! (never `-f`: Docker itself refuses an image a container uses) and
//! measures the space freed on Docker's data root.

use super::services::build::SERVICE_LABEL;
use super::services::slots::{recorded_services, state_fn, State, SLOT_DIR};
use super::services::BUILD_DIR;
use super::{HostCtx, Phase, Step, StepOutcome};
use crate::ops::docker_api::DOCKER_API;
use crate::ops::room::{docker_root_script, human_bytes, parse_root};
use crate::ops::{OpFailure, OpReport, Outcome};
use crate::quote::Script;
use crate::ssh::{BoxFut, Input};
use std::collections::{BTreeMap, BTreeSet};

/// What a host has, as far as its images' collection goes.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub(crate) struct HostImages {
    /// Docker's data root and its free bytes.
    pub root: String,
    pub avail: Option<u64>,
    /// `(image id, repo:tag)` of every `mesh/*` tag.
    pub tags: Vec<(String, String)>,
    /// Dangling images mesh built.
    pub dangling: Vec<String>,
    pub sizes: BTreeMap<String, u64>,
    /// Image ids containers (running or stopped) use.
    pub in_use: BTreeSet<String>,
    /// Each recorded service's state.
    pub states: BTreeMap<String, State>,
    /// Services whose deploy lock is held.
    pub locked: BTreeSet<String>,
    /// Tags the host's compose files name.
    pub refs: BTreeSet<String>,
    /// Docker's answer could not be read: nothing is removed.
    pub unreadable: bool,
}

/// A container of the API's `/containers/json?all=1` (what GC reads of it).
#[derive(Debug, serde::Deserialize)]
struct ApiContainer {
    #[serde(rename = "ImageID")]
    image_id: String,
}

/// An image of the API's `/images/json` (what GC reads of it).
#[derive(Debug, serde::Deserialize)]
struct ApiImage {
    #[serde(rename = "Id")]
    id: String,
    #[serde(rename = "RepoTags", default)]
    repo_tags: Option<Vec<String>>,
    #[serde(rename = "Size", default)]
    size: u64,
    #[serde(rename = "Labels", default)]
    labels: Option<BTreeMap<String, String>>,
}

/// One image (a tag, or the id of a dangling image) to remove.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Removal {
    /// What `docker rmi` gets.
    pub name: String,
    /// Its size, when removing it frees the image (its last tag).
    pub size: Option<u64>,
}

/// The service of a `mesh/<service>:<build>` tag.
fn service_of(tag: &str) -> Option<&str> {
    tag.strip_prefix("mesh/")?.split_once(':').map(|(s, _)| s)
}

/// The read-only script that lists what [`HostImages`] holds.
pub(crate) fn read_script() -> Script {
    let mut s = Script::new();
    s.raw("command -v docker >/dev/null 2>&1 || { echo 'docker absent'; exit 0; }");
    s.append(&docker_root_script());
    // Two answers of the daemon's API (one line of JSON each) where its
    // socket answers; five docker CLI runs where it does not.
    s.raw("api=");
    s.raw(&format!(
        "[ -z \"$dapi\" ] || {{ c=$({DOCKER_API} 'http://docker/containers/json?all=1') && i=$({DOCKER_API} http://docker/images/json) && api=1 && printf 'api-containers %s\\napi-images %s\\n' \"$c\" \"$i\"; }}"
    ));
    s.raw("if [ -z \"$api\" ]; then");
    s.raw(
        "docker ps -aq --no-trunc | xargs -r docker inspect --format 'ctr {{.Image}}' 2>/dev/null",
    );
    s.raw("imgs=$(docker image ls --no-trunc --format '{{.ID}} {{.Repository}}:{{.Tag}}' | grep ' mesh/')");
    s.line(
        "dang=$(docker image ls -q --no-trunc --filter dangling=true --filter label={})",
        &[SERVICE_LABEL],
    );
    s.raw("printf '%s\\n' \"$imgs\" | sed -n 's/^./tag &/p'");
    s.raw("printf '%s\\n' \"$dang\" | sed -n 's/^./dangling &/p'");
    s.raw("ids=$(printf '%s\\n%s\\n' \"$imgs\" \"$dang\" | awk 'NF {print $1}' | sort -u)");
    s.raw("[ -z \"$ids\" ] || docker image inspect --format 'size {{.Id}} {{.Size}}' $ids");
    s.raw("fi");
    s.raw(&state_fn());
    s.raw(&format!(
        "for n in $({}); do mesh_state \"$n\" | sed \"s|^|state $n |\"; done",
        recorded_services()
    ));
    s.line(
        "for l in {}/*.lock; do [ ! -d \"$l\" ] || echo \"locked $(basename \"$l\" .lock)\"; done",
        &[SLOT_DIR],
    );
    s.line(
        "cat {} {}/*/.mesh-compose.yml 2>/dev/null | grep -o 'mesh/[a-z0-9_-]*:[A-Za-z0-9_.-]*' | sort -u | sed 's/^/ref /'",
        &[&format!("{BUILD_DIR}/docker-compose.yml"), BUILD_DIR],
    );
    s
}

impl HostImages {
    /// Read [`read_script`]'s output.
    pub(crate) fn parse(text: &str) -> HostImages {
        let (root, avail) = parse_root(text);
        let mut h = HostImages {
            root,
            avail,
            ..Default::default()
        };
        let mut states: BTreeMap<String, String> = BTreeMap::new();
        for line in text.lines() {
            if let Some(json) = line.strip_prefix("api-containers ") {
                match serde_json::from_str::<Vec<ApiContainer>>(json) {
                    Ok(list) => h.in_use.extend(list.into_iter().map(|c| c.image_id)),
                    Err(_) => h.unreadable = true,
                }
                continue;
            }
            if let Some(json) = line.strip_prefix("api-images ") {
                match serde_json::from_str::<Vec<ApiImage>>(json) {
                    Ok(list) => list.into_iter().for_each(|img| h.add_api_image(img)),
                    Err(_) => h.unreadable = true,
                }
                continue;
            }
            let mut words = line.splitn(3, ' ');
            let (key, a, b) = (words.next(), words.next(), words.next());
            match (key, a, b) {
                (Some("ctr"), Some(id), None) => {
                    h.in_use.insert(id.to_string());
                }
                (Some("tag"), Some(id), Some(tag)) if service_of(tag).is_some() => {
                    h.tags.push((id.to_string(), tag.to_string()));
                }
                (Some("dangling"), Some(id), None) => h.dangling.push(id.to_string()),
                (Some("size"), Some(id), Some(n)) => {
                    if let Ok(n) = n.trim().parse() {
                        h.sizes.insert(id.to_string(), n);
                    }
                }
                (Some("state"), Some(svc), Some(rest)) => {
                    let text = states.entry(svc.to_string()).or_default();
                    text.push_str(rest);
                    text.push('\n');
                }
                (Some("locked"), Some(svc), None) => {
                    h.locked.insert(svc.to_string());
                }
                (Some("ref"), Some(tag), None) => {
                    h.refs.insert(tag.to_string());
                }
                _ => {}
            }
        }
        h.states = states
            .into_iter()
            .map(|(svc, text)| (svc, State::parse(&text)))
            .collect();
        h
    }

    /// One image of the API's `/images/json`, as the CLI path lists it:
    /// its `mesh/*` tags, or (untagged, built by mesh) a dangling one, and
    /// then its size.
    fn add_api_image(&mut self, img: ApiImage) {
        let tags: Vec<String> = img
            .repo_tags
            .unwrap_or_default()
            .into_iter()
            .filter(|t| t != "<none>:<none>")
            .collect();
        let ours = tags.iter().filter(|t| service_of(t).is_some());
        let mut listed = false;
        for tag in ours {
            self.tags.push((img.id.clone(), tag.clone()));
            listed = true;
        }
        let built_by_mesh = img
            .labels
            .as_ref()
            .is_some_and(|l| l.contains_key(SERVICE_LABEL));
        if tags.is_empty() && built_by_mesh {
            self.dangling.push(img.id.clone());
            listed = true;
        }
        if listed {
            self.sizes.insert(img.id, img.size);
        }
    }

    /// The tags the records name: live images and the rollback window.
    fn named(&self) -> BTreeSet<&str> {
        self.states
            .values()
            .flat_map(|st| st.image.iter().chain(&st.previous))
            .map(String::as_str)
            .collect()
    }

    /// What goes, in the host's listing order: tags nothing keeps, then
    /// dangling images no container uses.
    pub(crate) fn removals(&self) -> Vec<Removal> {
        if self.unreadable {
            return Vec::new();
        }
        let named = self.named();
        let keep = |id: &str, tag: &str| {
            self.in_use.contains(id)
                || named.contains(tag)
                || self.refs.contains(tag)
                || service_of(tag).is_some_and(|s| self.locked.contains(s))
        };
        let going: Vec<&(String, String)> = self
            .tags
            .iter()
            .filter(|(id, tag)| !keep(id, tag))
            .collect();
        let mut out: Vec<Removal> = Vec::new();
        for (n, (id, tag)) in going.iter().enumerate() {
            // The last of an image's tags to go removes it (and frees its size).
            let all_go = self
                .tags
                .iter()
                .filter(|(i, _)| i == id)
                .all(|t| going.contains(&t));
            let last = !going[n + 1..].iter().any(|(i, _)| i == id);
            out.push(Removal {
                name: tag.clone(),
                size: (all_go && last)
                    .then(|| self.sizes.get(id).copied())
                    .flatten(),
            });
        }
        for id in &self.dangling {
            if !self.in_use.contains(id) && !self.tags.iter().any(|(i, _)| i == id) {
                out.push(Removal {
                    name: id.clone(),
                    size: self.sizes.get(id).copied(),
                });
            }
        }
        out
    }
}

/// The script that removes `names` (`docker rmi`, never forced) and says
/// what it removed and the free space before and after.
pub(crate) fn remove_script(names: &[String]) -> Script {
    let mut s = docker_root_script();
    let words: Vec<&str> = names.iter().map(String::as_str).collect();
    s.line(
        &format!("for r in{}; do", " {}".repeat(words.len())),
        &words,
    );
    s.raw("  if docker rmi \"$r\" >/dev/null 2>&1; then echo \"removed $r\"; else echo \"kept $r\"; fi");
    s.raw("done");
    s.raw("echo \"after $(df -Pk \"$d\" 2>/dev/null | awk 'NR==2 {print $4}')\"");
    s
}

/// What [`remove_script`] did: removed, kept (in use after all), bytes freed.
pub(crate) fn parse_removed(text: &str) -> (Vec<String>, Vec<String>, Option<u64>) {
    let words = |key: &str| -> Vec<String> {
        text.lines()
            .filter_map(|l| l.strip_prefix(key))
            .map(|w| w.trim().to_string())
            .collect()
    };
    let kib = |key: &str| crate::ops::field(text, key).and_then(|v| v.trim().parse::<u64>().ok());
    let freed = match (kib("avail"), kib("after")) {
        (Some(before), Some(after)) => Some(after.saturating_sub(before) * 1024),
        _ => None,
    };
    (words("removed "), words("kept "), freed)
}

fn plural(n: usize) -> String {
    format!("{n} image{}", if n == 1 { "" } else { "s" })
}

/// The GC step: after a run (skipped by `--dry-run`: nothing was shipped)
/// or on demand (`mesh prune`, whose `--dry-run` lists what would go).
pub(crate) struct Images {
    after_run: bool,
}

impl Images {
    /// The step that ends `services` and `deploy`.
    pub(crate) fn after_run() -> Self {
        Images { after_run: true }
    }

    /// `mesh prune`'s step.
    pub(crate) fn on_demand() -> Self {
        Images { after_run: false }
    }

    async fn collect(&self, ctx: &HostCtx) -> Result<StepOutcome, OpFailure> {
        let fail = |error| OpFailure {
            label: "images".into(),
            error,
            done: Vec::new(),
        };
        let op = ctx.op_ctx();
        let out = op
            .run_ok("list images", read_script().as_str(), Input::None)
            .await
            .map_err(fail)?;
        let host = HostImages::parse(&out.stdout_str());
        let going = host.removals();
        if going.is_empty() {
            return Ok(vec![OpReport {
                label: "images".into(),
                outcome: Outcome::Unchanged,
                detail: String::new(),
            }]
            .into());
        }
        let size = |r: &Removal| r.size.map(human_bytes).unwrap_or_else(|| "tag only".into());
        if ctx.dry_run {
            let total: u64 = going.iter().filter_map(|r| r.size).sum();
            return Ok(StepOutcome {
                reports: going
                    .iter()
                    .map(|r| OpReport {
                        label: format!("image {}", r.name),
                        outcome: Outcome::WouldChange,
                        detail: format!("would be removed ({})", size(r)),
                    })
                    .collect(),
                output: Some(format!(
                    "would remove {} ({}): {}",
                    plural(going.len()),
                    human_bytes(total),
                    going
                        .iter()
                        .map(|r| r.name.as_str())
                        .collect::<Vec<_>>()
                        .join(", ")
                )),
            });
        }
        let names: Vec<String> = going.iter().map(|r| r.name.clone()).collect();
        let out = op
            .long()
            .run_ok("remove images", remove_script(&names).as_str(), Input::None)
            .await
            .map_err(fail)?;
        let (removed, kept, freed) = parse_removed(&out.stdout_str());
        let mut reports: Vec<OpReport> = going
            .iter()
            .map(|r| {
                let gone = removed.contains(&r.name);
                OpReport {
                    label: format!("image {}", r.name),
                    outcome: if gone {
                        Outcome::Changed
                    } else {
                        Outcome::Unchanged
                    },
                    detail: if gone {
                        format!("removed ({})", size(r))
                    } else {
                        "kept: in use".into()
                    },
                }
            })
            .collect();
        if removed.is_empty() {
            reports.push(OpReport {
                label: "images".into(),
                outcome: Outcome::Unchanged,
                detail: String::new(),
            });
        }
        let mut line = format!(
            "removed {}, freed {} on {}",
            plural(removed.len()),
            freed.map_or_else(|| "?".into(), human_bytes),
            host.root
        );
        if !kept.is_empty() {
            line.push_str(&format!(
                "; kept {} (in use): {}",
                plural(kept.len()),
                kept.join(", ")
            ));
        }
        Ok(StepOutcome {
            reports,
            output: Some(line),
        })
    }
}

impl Step for Images {
    fn name(&self) -> &'static str {
        "images"
    }

    fn wants(&self, ctx: &HostCtx) -> bool {
        !(self.after_run && ctx.dry_run)
    }

    fn run<'a>(&'a self, ctx: &'a HostCtx) -> BoxFut<'a, Result<StepOutcome, OpFailure>> {
        Box::pin(self.collect(ctx))
    }
}

/// `mesh prune`: the collection on every selected host.
pub(crate) fn phase() -> Phase {
    Phase::of_steps("prune", vec![Box::new(Images::on_demand())])
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::log::HostLog;
    use crate::ssh::recording::{ok, RecordingTransport};
    use std::sync::{Arc, Mutex};

    /// A host after five deploys of web (b6 live, b5..b3 to roll back to,
    /// b2 and b1 left behind), api (recorded live: a1; a0 older), the
    /// bastion's traefik, and mesh's dangling leftovers.
    const LISTING: &str = "root /var/lib/docker
avail 1000000
ctr sha256:w6
ctr sha256:a0
ctr sha256:other
tag sha256:w6 mesh/web:b6
tag sha256:w5 mesh/web:b5
tag sha256:w4 mesh/web:b4
tag sha256:w3 mesh/web:b3
tag sha256:w2 mesh/web:b2
tag sha256:w1 mesh/web:b1
tag sha256:w1 mesh/web:b1-again
tag sha256:a1 mesh/api:a1
tag sha256:a0 mesh/api:a0
tag sha256:j1 mesh/job:j1
tag sha256:j0 mesh/job:j0
tag sha256:t1 mesh/traefik:t1
dangling sha256:d1
dangling sha256:a0
size sha256:w6 60000000
size sha256:w2 50000000
size sha256:w1 40000000
size sha256:d1 30000000
state web slot b
state web image mesh/web:b6
state web previous mesh/web:b5
state web previous mesh/web:b4
state web previous mesh/web:b3
state api image mesh/api:a1
locked job
ref mesh/web:b6
ref mesh/traefik:t1
";

    #[test]
    fn the_host_keeps_exactly_the_live_image_and_the_rollback_window() {
        let h = HostImages::parse(LISTING);
        assert_eq!(h.root, "/var/lib/docker");
        assert_eq!(h.avail, Some(1_024_000_000));
        assert_eq!(h.states["web"].previous.len(), 3);
        assert_eq!(
            h.removals(),
            [
                Removal {
                    name: "mesh/web:b2".into(),
                    size: Some(50_000_000)
                },
                // Both tags of one image go; the last one frees it.
                Removal {
                    name: "mesh/web:b1".into(),
                    size: None
                },
                Removal {
                    name: "mesh/web:b1-again".into(),
                    size: Some(40_000_000)
                },
                Removal {
                    name: "sha256:d1".into(),
                    size: Some(30_000_000)
                },
            ]
        );
    }

    #[test]
    fn nothing_a_container_a_record_a_compose_file_or_a_deploy_holds_goes() {
        let base = HostImages::parse(LISTING);
        let names =
            |h: &HostImages| -> Vec<String> { h.removals().into_iter().map(|r| r.name).collect() };
        // A stopped container of b2 keeps it.
        let mut h = base.clone();
        h.in_use.insert("sha256:w2".into());
        assert!(!names(&h).contains(&"mesh/web:b2".to_string()));
        // The lock of job released: its old builds go (no record, no compose).
        let mut h = base.clone();
        h.locked.clear();
        assert!(names(&h).contains(&"mesh/job:j0".to_string()));
        assert!(names(&h).contains(&"mesh/job:j1".to_string()));
        // A record that names b1 (an older mesh's longer stack) keeps it.
        let mut h = base.clone();
        h.states
            .get_mut("web")
            .unwrap()
            .previous
            .push("mesh/web:b1".into());
        assert_eq!(names(&h), ["mesh/web:b2", "mesh/web:b1-again", "sha256:d1"]);
        // One tag of an image kept: the other only untags, freeing nothing.
        assert_eq!(
            h.removals()[1],
            Removal {
                name: "mesh/web:b1-again".into(),
                size: None
            }
        );
        // A converged host: nothing.
        let converged = HostImages::parse(
            "root /var/lib/docker\navail 5\ntag sha256:w6 mesh/web:b6\nstate web image mesh/web:b6\n",
        );
        assert!(converged.removals().is_empty());
        assert!(HostImages::parse("docker absent\n").removals().is_empty());
    }

    #[test]
    fn the_daemons_api_answer_reads_as_the_cli_listing_does() {
        let cli = HostImages::parse(
            "root /var/lib/docker\navail 5\nctr sha256:w6\nctr sha256:a0\n\
             tag sha256:w6 mesh/web:b6\ntag sha256:w1 mesh/web:b1\ntag sha256:w1 mesh/web:b1-again\n\
             dangling sha256:d1\nsize sha256:w6 60000000\nsize sha256:w1 40000000\nsize sha256:d1 30000000\n\
             state web image mesh/web:b6\n",
        );
        let api = HostImages::parse(concat!(
            "root /var/lib/docker\navail 5\n",
            r#"api-containers [{"Id":"c1","Image":"mesh/web:b6","ImageID":"sha256:w6","Command":"python3 /app/app.py","Status":"Up 3 minutes"},{"Id":"c2","ImageID":"sha256:a0"}]"#,
            "\n",
            r#"api-images [{"Id":"sha256:w6","Labels":{"mesh.service":"web"},"RepoTags":["mesh/web:b6"],"Size":60000000},"#,
            r#"{"Id":"sha256:w1","Labels":null,"RepoTags":["mesh/web:b1","mesh/web:b1-again","other/x:1"],"Size":40000000},"#,
            r#"{"Id":"sha256:d1","Labels":{"mesh.service":"web"},"RepoTags":[],"Size":30000000},"#,
            r#"{"Id":"sha256:d2","Labels":{"mesh.service":"web"},"RepoTags":["<none>:<none>"],"Size":30000000},"#,
            r#"{"Id":"sha256:n1","Labels":{},"RepoTags":null,"Size":7},{"Id":"sha256:o1","RepoTags":["debian:13"],"Size":9}]"#,
            "\nstate web image mesh/web:b6\n"
        ));
        let mut want = cli.clone();
        want.dangling.push("sha256:d2".into());
        want.sizes.insert("sha256:d2".into(), 30000000);
        assert_eq!(api, want);
        // An answer mesh cannot read removes nothing.
        let torn = HostImages::parse(&format!("{LISTING}api-images [{{\"Id\":\n"));
        assert!(torn.unreadable && torn.removals().is_empty());
    }

    #[test]
    fn the_remote_scripts_read_exactly_this() {
        let read = read_script();
        let text = read.as_str();
        for line in [
            "command -v docker >/dev/null 2>&1 || { echo 'docker absent'; exit 0; }\n",
            "docker ps -aq --no-trunc | xargs -r docker inspect --format 'ctr {{.Image}}' 2>/dev/null\n",
            "imgs=$(docker image ls --no-trunc --format '{{.ID}} {{.Repository}}:{{.Tag}}' | grep ' mesh/')\n",
            "dang=$(docker image ls -q --no-trunc --filter dangling=true --filter label=mesh.service)\n",
            "[ -z \"$ids\" ] || docker image inspect --format 'size {{.Id}} {{.Size}}' $ids\n",
            "[ -z \"$dapi\" ] || { c=$(curl -sf --max-time 10 --unix-socket /var/run/docker.sock 'http://docker/containers/json?all=1') && i=$(curl -sf --max-time 10 --unix-socket /var/run/docker.sock http://docker/images/json) && api=1 && printf 'api-containers %s\\napi-images %s\\n' \"$c\" \"$i\"; }\n",
            "for l in /var/lib/mesh/deploy/*.lock; do [ ! -d \"$l\" ] || echo \"locked $(basename \"$l\" .lock)\"; done\n",
            "cat /containers/build/docker-compose.yml /containers/build/*/.mesh-compose.yml 2>/dev/null | grep -o 'mesh/[a-z0-9_-]*:[A-Za-z0-9_.-]*' | sort -u | sed 's/^/ref /'\n",
        ] {
            assert!(text.contains(line), "{line}\nnot in:\n{text}");
        }
        crate::quote::assert_valid_sh(&read);
        let remove = remove_script(&["mesh/web:b2".into(), "sha256:d1".into()]);
        let tail = remove
            .as_str()
            .split_once("echo \"root $root\"\n")
            .unwrap()
            .1;
        assert_eq!(
            tail,
            "echo \"avail $(df -Pk \"$d\" 2>/dev/null | awk 'NR==2 {print $4}')\"\n\
             for r in mesh/web:b2 sha256:d1; do\n  \
             if docker rmi \"$r\" >/dev/null 2>&1; then echo \"removed $r\"; else echo \"kept $r\"; fi\n\
             done\n\
             echo \"after $(df -Pk \"$d\" 2>/dev/null | awk 'NR==2 {print $4}')\"\n"
        );
        crate::quote::assert_valid_sh(&remove);
        // A name that is not a plain word stays one word.
        assert!(remove_script(&["a b".into()])
            .as_str()
            .contains("for r in 'a b'; do"));
    }

    #[test]
    fn the_listing_script_reads_a_real_shell_answer() {
        // The read script's own parts on a machine without docker: it
        // says so and stops.
        let conn = RecordingTransport::local_sh(None);
        let script = format!("PATH=/nonexistent; {}", read_script().as_str());
        let out = crate::ssh::Transport::exec(&conn, &script, Input::None);
        let out = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap()
            .block_on(out)
            .unwrap();
        assert_eq!(out.stdout_str(), "docker absent\n");
    }

    fn run_step(dry_run: bool, answers: Vec<String>) -> (StepOutcome, Vec<String>) {
        let answers = Arc::new(Mutex::new(answers));
        let conn = Arc::new(RecordingTransport::new(move |_, _| {
            ok(&answers.lock().unwrap().remove(0))
        }));
        let inv = crate::inventory::Inventory::parse(
            std::path::Path::new("i.yml"),
            "groups:\n  web:\n    hosts:\n      w1: { address: 10.0.0.2 }\n",
        )
        .unwrap();
        let ctx = HostCtx::new(
            inv.host("w1").unwrap().clone(),
            conn.clone(),
            HostLog::discard(),
            crate::template::VarSet::new(),
            dry_run,
            false,
        );
        let step = Images::on_demand();
        let outcome = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap()
            .block_on(step.run(&ctx))
            .unwrap();
        (outcome, conn.calls())
    }

    #[test]
    fn prune_removes_reports_what_it_freed_and_a_dry_run_only_lists() {
        let (dry, calls) = run_step(true, vec![LISTING.into()]);
        assert_eq!(calls.len(), 1, "a dry run only reads");
        assert_eq!(
            dry.output.as_deref(),
            Some("would remove 4 images (120 MB): mesh/web:b2, mesh/web:b1, mesh/web:b1-again, sha256:d1")
        );
        assert!(dry
            .reports
            .iter()
            .all(|r| r.outcome == Outcome::WouldChange));
        let removed = "root /var/lib/docker\navail 1000000\nremoved mesh/web:b2\nremoved mesh/web:b1\nremoved mesh/web:b1-again\nkept sha256:d1\nafter 1082032\n";
        let (done, calls) = run_step(false, vec![LISTING.into(), removed.into()]);
        assert_eq!(calls.len(), 2);
        assert!(
            calls[1].contains("for r in mesh/web:b2 mesh/web:b1 mesh/web:b1-again sha256:d1; do")
        );
        assert_eq!(
            done.output.as_deref(),
            Some("removed 3 images, freed 84 MB on /var/lib/docker; kept 1 image (in use): sha256:d1")
        );
        let changed = done
            .reports
            .iter()
            .filter(|r| r.outcome == Outcome::Changed)
            .count();
        assert_eq!(changed, 3);
        // Nothing to remove: one round trip, one unchanged report.
        let (again, calls) = run_step(
            false,
            vec!["root /var/lib/docker\navail 1\nstate web image mesh/web:b6\n".into()],
        );
        assert_eq!(calls.len(), 1);
        assert_eq!(again.output, None);
        assert_eq!(again.reports.len(), 1);
        assert_eq!(again.reports[0].outcome, Outcome::Unchanged);
    }
}
