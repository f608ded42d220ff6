//! Images, built once on the controller with its own Docker.
//!
//! Every distinct rendered context (one tag) is built once, whatever the
//! number of hosts that run it; a tag the local Docker already has is not
//! rebuilt. An image is saved and compressed (`docker save | zstd`) only
//! when a host turns out to lack it, once, into a cache shared by later runs.

use super::plan::{HostPlan, RenderedFile};
use crate::inventory::Arch;
use crate::ops::image::ImageSource;
use crate::ssh::BoxFut;
use std::collections::BTreeMap;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use tokio::process::Command;

/// Archives kept in the cache (newest first); older ones are removed.
const KEEP_ARCHIVES: usize = 20;

#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    #[error("cannot run docker on this machine: {0}. Fix: install and start Docker here (the controller builds the images), or pass --build-on-host")]
    NoDocker(String),
    #[error("{tag} is for {arch} hosts ({hosts}), and building it here needs `docker buildx` with QEMU, which is missing ({detail}). Fix: install docker-buildx-plugin and qemu-user-static on this machine, or pass --build-on-host")]
    NoCrossBuild {
        tag: String,
        arch: Arch,
        hosts: String,
        detail: String,
    },
    #[error("building {tag} (from {dir}) failed:\n{tail}\nFix: correct the Dockerfile or its context; nothing was shipped")]
    Failed {
        tag: String,
        dir: String,
        tail: String,
    },
    #[error("{what}: {source}")]
    Local {
        what: String,
        source: std::io::Error,
    },
}

/// One image to have: a tag and the rendered context it is built from.
#[derive(Debug, Clone)]
pub(crate) struct ImageSpec {
    pub tag: String,
    pub arch: Arch,
    /// The service folder, for messages.
    pub dir: PathBuf,
    pub files: Vec<RenderedFile>,
    /// Hosts that run it.
    pub hosts: Vec<String>,
}

/// Distinct images across host plans, by tag.
pub(crate) fn specs(folder_root: &Path, plans: &BTreeMap<String, HostPlan>) -> Vec<ImageSpec> {
    let mut by_tag: BTreeMap<String, ImageSpec> = BTreeMap::new();
    for (host, plan) in plans {
        for s in &plan.services {
            by_tag
                .entry(s.tag.clone())
                .or_insert_with(|| ImageSpec {
                    tag: s.tag.clone(),
                    arch: s.arch,
                    dir: folder_root.join(&s.name),
                    files: s.files.clone(),
                    hosts: Vec::new(),
                })
                .hosts
                .push(host.clone());
        }
    }
    by_tag.into_values().collect()
}

/// A built (or, in a dry run, planned) image and its lazily made archive.
pub(crate) struct Image {
    tag: String,
    id: Option<String>,
    cache: PathBuf,
    archive: tokio::sync::OnceCell<PathBuf>,
}

impl ImageSource for Image {
    fn tag(&self) -> &str {
        &self.tag
    }

    fn id(&self) -> Option<&str> {
        self.id.as_deref()
    }

    fn archive(&self) -> BoxFut<'_, Result<PathBuf, String>> {
        Box::pin(async move {
            self.archive
                .get_or_try_init(|| save(&self.tag, self.id.as_deref(), &self.cache))
                .await
                .cloned()
        })
    }
}

#[cfg(test)]
impl Image {
    /// An image "built" with this id whose archive is `archive`.
    pub(crate) fn fake(tag: &str, id: &str, archive: &Path) -> Self {
        let cell = tokio::sync::OnceCell::new();
        cell.set(archive.to_path_buf()).expect("fresh cell");
        Image {
            tag: tag.into(),
            id: Some(id.into()),
            cache: archive.to_path_buf(),
            archive: cell,
        }
    }
}

/// What the build did, for the user.
#[derive(Debug, Default, serde::Serialize)]
pub(crate) struct BuildReport {
    pub built: Vec<String>,
    pub up_to_date: Vec<String>,
    /// `--dry-run`: would be built.
    pub would_build: Vec<String>,
}

/// The local image id of `tag`, if Docker has it.
async fn local_id(tag: &str) -> Result<Option<String>, BuildError> {
    let out = Command::new("docker")
        .args(["image", "inspect", "--format", "{{.Id}}", tag])
        .stdin(Stdio::null())
        .output()
        .await
        .map_err(|e| BuildError::NoDocker(e.to_string()))?;
    if out.status.success() {
        return Ok(Some(
            String::from_utf8_lossy(&out.stdout).trim().to_string(),
        ));
    }
    let err = String::from_utf8_lossy(&out.stderr);
    if err.contains("Cannot connect") || err.contains("permission denied") {
        return Err(BuildError::NoDocker(err.trim().to_string()));
    }
    Ok(None)
}

/// Build every image the local Docker lacks; `progress` hears one line per image.
pub(crate) async fn build_all(
    specs: &[ImageSpec],
    dry_run: bool,
    cache: &Path,
    progress: &(dyn Fn(&str) + Sync),
) -> Result<(BTreeMap<String, std::sync::Arc<Image>>, BuildReport), BuildError> {
    let mut images = BTreeMap::new();
    let mut report = BuildReport::default();
    for spec in specs {
        let mut id = local_id(&spec.tag).await?;
        if id.is_some() {
            report.up_to_date.push(spec.tag.clone());
        } else if dry_run {
            report.would_build.push(spec.tag.clone());
        } else {
            if spec.arch != Arch::native() {
                check_buildx(spec).await?;
            }
            progress(&format!(
                "building {} for {} host(s): {}",
                spec.tag,
                spec.hosts.len(),
                spec.hosts.join(", ")
            ));
            build(spec, cache).await?;
            id = local_id(&spec.tag).await?;
            report.built.push(spec.tag.clone());
        }
        images.insert(
            spec.tag.clone(),
            std::sync::Arc::new(Image {
                tag: spec.tag.clone(),
                id,
                cache: cache.join("images"),
                archive: tokio::sync::OnceCell::new(),
            }),
        );
    }
    Ok((images, report))
}

/// A foreign-architecture build needs buildx (and QEMU binfmt handlers).
async fn check_buildx(spec: &ImageSpec) -> Result<(), BuildError> {
    let out = Command::new("docker")
        .args(["buildx", "inspect", "--bootstrap"])
        .stdin(Stdio::null())
        .output()
        .await
        .map_err(|e| BuildError::NoDocker(e.to_string()))?;
    let text = String::from_utf8_lossy(&out.stdout);
    let platform = spec.arch.docker_platform();
    if out.status.success() && text.contains(platform) {
        return Ok(());
    }
    let detail = if out.status.success() {
        format!("the builder lists no {platform} platform")
    } else {
        String::from_utf8_lossy(&out.stderr)
            .trim()
            .lines()
            .next()
            .unwrap_or("docker buildx failed")
            .to_string()
    };
    Err(BuildError::NoCrossBuild {
        tag: spec.tag.clone(),
        arch: spec.arch,
        hosts: spec.hosts.join(", "),
        detail,
    })
}

/// Write the rendered context to a private temp dir and `docker build` it.
async fn build(spec: &ImageSpec, cache: &Path) -> Result<(), BuildError> {
    let local = |what: String| move |source| BuildError::Local { what, source };
    let base = cache.join("build");
    std::fs::create_dir_all(&base).map_err(local(format!("creating {}", base.display())))?;
    let dir = tempfile_dir(&base)
        .map_err(local(format!("creating a directory in {}", base.display())))?;
    let result = async {
        for f in &spec.files {
            let path = dir.path().join(&f.rel);
            if let Some(parent) = path.parent() {
                std::fs::create_dir_all(parent)
                    .map_err(local(format!("creating {}", parent.display())))?;
            }
            std::fs::write(&path, &*f.bytes)
                .map_err(local(format!("writing {}", path.display())))?;
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(f.mode))
                .map_err(local(format!("chmod {}", path.display())))?;
        }
        let mut cmd = Command::new("docker");
        if spec.arch == Arch::native() {
            // Debian's dockerd has no buildx: the classic builder is what is there.
            cmd.args(["build", "--tag", &spec.tag])
                .env("DOCKER_BUILDKIT", "0");
        } else {
            cmd.args([
                "buildx",
                "build",
                "--load",
                "--platform",
                spec.arch.docker_platform(),
                "--tag",
                &spec.tag,
            ]);
        }
        let out = cmd
            .arg(dir.path())
            .stdin(Stdio::null())
            .output()
            .await
            .map_err(|e| BuildError::NoDocker(e.to_string()))?;
        if out.status.success() {
            return Ok(());
        }
        let mut text = String::from_utf8_lossy(&out.stdout).into_owned();
        text.push_str(&String::from_utf8_lossy(&out.stderr));
        let lines: Vec<&str> = text.trim_end().lines().collect();
        Err(BuildError::Failed {
            tag: spec.tag.clone(),
            dir: spec.dir.display().to_string(),
            tail: lines[lines.len().saturating_sub(20)..].join("\n"),
        })
    }
    .await;
    drop(dir);
    result
}

/// A fresh private directory under `base`, removed when dropped.
fn tempfile_dir(base: &Path) -> std::io::Result<TempDir> {
    use std::os::unix::fs::DirBuilderExt;
    for _ in 0..8 {
        let name = format!(
            "ctx-{}-{}",
            std::process::id(),
            crate::secrets::random_hex(4)?
        );
        let path = base.join(name);
        match std::fs::DirBuilder::new().mode(0o700).create(&path) {
            Ok(()) => return Ok(TempDir(path)),
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
            Err(e) => return Err(e),
        }
    }
    Err(std::io::Error::other("no free temporary directory name"))
}

struct TempDir(PathBuf);

impl TempDir {
    fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// `docker save TAG | zstd` into the cache, once per image id.
async fn save(tag: &str, id: Option<&str>, cache: &Path) -> Result<PathBuf, String> {
    let id = id.ok_or_else(|| format!("{tag} is not built on this machine"))?;
    let name = id.trim_start_matches("sha256:");
    std::fs::create_dir_all(cache).map_err(|e| format!("creating {}: {e}", cache.display()))?;
    let path = cache.join(format!("{name}.tar.zst"));
    if path.is_file() {
        return Ok(path);
    }
    let tmp = cache.join(format!(".{name}.{}.tmp", std::process::id()));
    let out = Command::new("bash")
        .args([
            "-c",
            "set -o pipefail; docker save \"$1\" | zstd -q -3 -T0 -f -o \"$2\"",
            "mesh-save",
            tag,
        ])
        .arg(&tmp)
        .stdin(Stdio::null())
        .output()
        .await
        .map_err(|e| format!("running docker save | zstd: {e}"))?;
    if !out.status.success() {
        let _ = std::fs::remove_file(&tmp);
        return Err(format!(
            "docker save {tag} | zstd failed: {}. Fix: check that zstd is installed on this machine",
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    std::fs::rename(&tmp, &path).map_err(|e| format!("renaming {}: {e}", tmp.display()))?;
    prune(cache);
    Ok(path)
}

/// Keep the newest [`KEEP_ARCHIVES`] archives.
fn prune(cache: &Path) {
    let Ok(entries) = std::fs::read_dir(cache) else {
        return;
    };
    let mut archives: Vec<(std::time::SystemTime, PathBuf)> = entries
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "zst"))
        .filter_map(|p| Some((std::fs::metadata(&p).ok()?.modified().ok()?, p)))
        .collect();
    archives.sort_by_key(|a| std::cmp::Reverse(a.0));
    for (_, p) in archives.into_iter().skip(KEEP_ARCHIVES) {
        let _ = std::fs::remove_file(p);
    }
}
