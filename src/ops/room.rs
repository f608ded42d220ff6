//! `room`: the host's Docker data root has space for the images about to
//! be shipped, checked before anything is written.
//!
//! The probe (one more snippet in the host's probe round trip) reports
//! where Docker keeps its data, the space free there, and which of the
//! images the host already has. Only the images it lacks count: each needs
//! its own size twice (`docker load` unpacks the whole archive under the
//! data root before it adds the layers) and [`SPARE`] stays free. A host
//! short of that fails with both numbers; it never changes anything.

use super::docker_api::docker_info_script;
use super::{Decision, ImageSource, Op, OpCtx};
use crate::quote::Script;
use std::sync::Arc;

/// What stays free on the data root after an image is loaded.
pub(crate) const SPARE: u64 = 100 * 1000 * 1000;

/// Sets `$root` to Docker's data root from `$dinfo` (empty if it is not there).
pub(crate) const ROOT_FROM_INFO: &str =
    r#"root=$(printf '%s\n' "$dinfo" | sed -n 's/.*"DockerRootDir":"\([^"]*\)".*/\1/p')"#;

/// The shell that sets `$root` to Docker's data root, `/var/lib/docker` when
/// Docker cannot say.
pub(crate) fn docker_root_var() -> Script {
    let mut s = docker_info_script();
    s.raw(ROOT_FROM_INFO);
    s.raw("root=${root:-/var/lib/docker}");
    s
}

/// The shell that prints `root DIR` (Docker's data root, `/var/lib/docker`
/// when Docker cannot say) and `avail KIB` (free space on the filesystem
/// that holds it, or of its nearest existing parent).
pub(crate) fn docker_root_script() -> Script {
    let mut s = docker_root_var();
    s.raw("d=$root");
    s.raw("while [ ! -d \"$d\" ]; do d=$(dirname \"$d\"); done");
    s.raw("echo \"root $root\"");
    s.raw("echo \"avail $(df -Pk \"$d\" 2>/dev/null | awk 'NR==2 {print $4}')\"");
    s
}

/// Docker's data root and its free bytes, from [`docker_root_script`]'s output.
pub(crate) fn parse_root(probe: &str) -> (String, Option<u64>) {
    let root = super::field(probe, "root")
        .filter(|r| !r.is_empty())
        .unwrap_or("/var/lib/docker")
        .to_string();
    let avail = super::field(probe, "avail")
        .and_then(|a| a.trim().parse::<u64>().ok())
        .map(|kib| kib * 1024);
    (root, avail)
}

/// Sizes for people, in decimal units as Docker prints them: `84 MB`, `1.2 GB`.
pub(crate) fn human_bytes(bytes: u64) -> String {
    const UNITS: [&str; 5] = ["B", "kB", "MB", "GB", "TB"];
    let mut value = bytes as f64;
    let mut unit = 0;
    while value >= 1000.0 && unit + 1 < UNITS.len() {
        value /= 1000.0;
        unit += 1;
    }
    if unit == 0 || value >= 10.0 {
        format!("{value:.0} {}", UNITS[unit])
    } else {
        format!("{value:.1} {}", UNITS[unit])
    }
}

/// Bytes the images need on the data root: each twice, plus [`SPARE`].
pub(crate) fn needed(sizes: &[u64]) -> u64 {
    sizes.iter().map(|s| s.saturating_mul(2)).sum::<u64>() + SPARE
}

/// The failure of a host without room for `images` (tag, size), or `None`
/// when `avail` bytes are enough.
pub(crate) fn shortfall(
    host: &str,
    root: &str,
    avail: u64,
    images: &[(String, u64)],
) -> Option<String> {
    if images.is_empty() {
        return None;
    }
    let sizes: Vec<u64> = images.iter().map(|(_, s)| *s).collect();
    let need = needed(&sizes);
    if avail >= need {
        return None;
    }
    let what = match images {
        [(tag, _)] => format!("the image {tag} needs"),
        _ => format!(
            "the images {} need",
            images
                .iter()
                .map(|(t, _)| t.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        ),
    };
    Some(format!(
        "{host}: {} free on {root}, {what} {} ({} of layers, as much again while docker load unpacks, and {} to spare); nothing was shipped. Fix: make room on {root} (mesh prune removes the images no rollback needs) or grow that disk",
        human_bytes(avail),
        human_bytes(need),
        human_bytes(sizes.iter().sum()),
        human_bytes(SPARE),
    ))
}

/// The room check for the images one host is about to get.
pub struct RoomOp {
    host: String,
    images: Vec<Arc<dyn ImageSource>>,
}

impl RoomOp {
    /// Check `host` has room for those of `images` it lacks.
    pub fn new(host: &str, images: Vec<Arc<dyn ImageSource>>) -> Self {
        RoomOp {
            host: host.to_string(),
            images,
        }
    }

    /// The probe: the data root, its free space, the host's id of each tag.
    pub(crate) fn probe_script(&self) -> Script {
        let mut s = docker_root_script();
        for image in &self.images {
            s.line(
                "echo \"have {} $(docker image inspect --format '{{.Id}}' {} 2>/dev/null || echo absent)\"",
                &[image.tag(), image.tag()],
            );
        }
        s
    }
}

impl Op for RoomOp {
    fn label(&self) -> String {
        "room for images".into()
    }

    fn probe(&self, _ctx: &OpCtx<'_>) -> Option<Script> {
        Some(self.probe_script())
    }

    fn decide(&self, probe: &str, _recheck: Option<&str>, _triggered: bool) -> Decision {
        let (root, avail) = parse_root(probe);
        // Without a number (no df), the load itself reports a full disk.
        let Some(avail) = avail else {
            return Decision::Unchanged;
        };
        let lacking: Vec<(String, u64)> = self
            .images
            .iter()
            .filter_map(|image| {
                let size = image.size()?;
                let have = probe.lines().find_map(|l| {
                    l.strip_prefix("have ")?
                        .strip_prefix(image.tag())?
                        .strip_prefix(' ')
                });
                let missing = match (have.map(str::trim), image.id()) {
                    (None | Some("absent" | ""), _) => true,
                    (Some(have), Some(want)) => have != want,
                    (Some(_), None) => false,
                };
                missing.then(|| (image.tag().to_string(), size))
            })
            .collect();
        match shortfall(&self.host, &root, avail, &lacking) {
            Some(msg) => Decision::Fail(msg),
            None => Decision::Unchanged,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ssh::BoxFut;

    struct Img(&'static str, Option<&'static str>, Option<u64>);

    impl ImageSource for Img {
        fn tag(&self) -> &str {
            self.0
        }
        fn id(&self) -> Option<&str> {
            self.1
        }
        fn size(&self) -> Option<u64> {
            self.2
        }
        fn diff_ids(&self) -> &[String] {
            &[]
        }
        fn layers(
            &self,
        ) -> BoxFut<
            '_,
            Result<std::sync::Arc<crate::ops::image::Layered>, crate::ops::image::ArchiveError>,
        > {
            Box::pin(async { Err("not in this test".into()) })
        }
    }

    fn op(images: Vec<Img>) -> RoomOp {
        RoomOp::new(
            "c2",
            images
                .into_iter()
                .map(|i| Arc::new(i) as Arc<dyn ImageSource>)
                .collect(),
        )
    }

    #[test]
    fn the_probe_asks_docker_for_its_root_free_space_and_the_tags() {
        let op = op(vec![Img("mesh/web:ab", Some("sha256:1"), Some(1))]);
        assert_eq!(
            op.probe_script().as_str(),
            format!(
                "{}{ROOT_FROM_INFO}\n\
             root=${{root:-/var/lib/docker}}\n\
             d=$root\n\
             while [ ! -d \"$d\" ]; do d=$(dirname \"$d\"); done\n\
             echo \"root $root\"\n\
             echo \"avail $(df -Pk \"$d\" 2>/dev/null | awk 'NR==2 {{print $4}}')\"\n\
             echo \"have mesh/web:ab $(docker image inspect --format '{{{{.Id}}}}' mesh/web:ab 2>/dev/null || echo absent)\"\n",
                docker_info_script().as_str()
            )
        );
        crate::quote::assert_valid_sh(&op.probe_script());
    }

    #[test]
    fn a_host_short_of_room_fails_with_both_numbers() {
        let op = op(vec![
            Img("mesh/web:ab", Some("sha256:1"), Some(550_000_000)),
            Img("mesh/api:cd", Some("sha256:2"), Some(400_000_000)),
        ]);
        // 300 MB free; web is missing, api is there.
        let probe = "root /var/lib/docker\navail 292969\nhave mesh/web:ab absent\nhave mesh/api:cd sha256:2\n";
        let Decision::Fail(msg) = op.decide(probe, None, false) else {
            panic!("no failure")
        };
        assert_eq!(
            msg,
            "c2: 300 MB free on /var/lib/docker, the image mesh/web:ab needs 1.2 GB (550 MB of layers, as much again while docker load unpacks, and 100 MB to spare); nothing was shipped. Fix: make room on /var/lib/docker (mesh prune removes the images no rollback needs) or grow that disk"
        );
        // Another build under the tag counts as missing too.
        let other = probe.replace("sha256:2", "sha256:9");
        let Decision::Fail(msg) = op.decide(&other, None, false) else {
            panic!("no failure")
        };
        assert!(msg.contains("the images mesh/web:ab, mesh/api:cd need 2.0 GB"));
        // Enough room, or nothing to ship: nothing to say.
        let roomy = probe.replace("avail 292969", "avail 9999999");
        assert_eq!(op.decide(&roomy, None, false), Decision::Unchanged);
        let have_all =
            "root /srv/docker\navail 1\nhave mesh/web:ab sha256:1\nhave mesh/api:cd sha256:2\n";
        assert_eq!(op.decide(have_all, None, false), Decision::Unchanged);
    }

    #[test]
    fn unknown_sizes_and_free_space_do_not_fail() {
        // A dry run of an image not built yet: neither id nor size.
        let dry = op(vec![Img("mesh/web:ab", None, None)]);
        let probe = "root /var/lib/docker\navail 1\nhave mesh/web:ab absent\n";
        assert_eq!(dry.decide(probe, None, false), Decision::Unchanged);
        let sized = op(vec![Img("mesh/web:ab", Some("sha256:1"), Some(10))]);
        assert_eq!(
            sized.decide("root /var/lib/docker\navail \n", None, false),
            Decision::Unchanged
        );
        assert_eq!(
            parse_root("root \navail 12\n"),
            ("/var/lib/docker".to_string(), Some(12 * 1024))
        );
    }

    #[test]
    fn sizes_read_like_dockers() {
        assert_eq!(human_bytes(0), "0 B");
        assert_eq!(human_bytes(999), "999 B");
        assert_eq!(human_bytes(84_000_000), "84 MB");
        assert_eq!(human_bytes(1_200_000_000), "1.2 GB");
        assert_eq!(human_bytes(5_368_709_120), "5.4 GB");
        assert_eq!(human_bytes(12_345), "12 kB");
        assert_eq!(needed(&[1, 2]), 6 + SPARE);
    }

    #[test]
    fn the_data_root_is_read_from_what_docker_says() {
        let dir = tempfile::tempdir().unwrap();
        let docker = dir.path().join("docker");
        std::fs::write(
            &docker,
            "#!/bin/sh\necho '{\"ID\":\"x\",\"DockerRootDir\":\"/srv/docker data\",\"DriverStatus\":[[\"driver-type\",\"io.containerd.snapshotter.v1\"]]}'\n",
        )
        .unwrap();
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&docker, std::fs::Permissions::from_mode(0o755)).unwrap();
        let mut s = docker_info_script();
        s.raw(ROOT_FROM_INFO);
        s.raw("echo \"root=$root\"");
        let out = std::process::Command::new("sh")
            .args(["-c", s.as_str()])
            // Not this machine's daemon: the docker CLI (here a stand-in) answers.
            .env("DOCKER_HOST", "unix:///nonexistent.sock")
            .env("PATH", format!("{}:/usr/bin:/bin", dir.path().display()))
            .output()
            .unwrap();
        assert_eq!(
            String::from_utf8_lossy(&out.stdout),
            "root=/srv/docker data\n"
        );
    }
}
