//! Images, built once on the controller with its own Docker.
//!
//! Every distinct rendered context (one tag) is built once, whatever the
//! number of hosts that run it; a tag the local Docker already has is not
//! rebuilt. An image is saved and compressed (`docker save | zstd`) only
//! when a host turns out to lack it, once, into a cache shared by later runs
//! and bounded after every build ([`cache`](super::cache)). Images carry
//! the label `mesh.service=<service>`, so hosts can tell their leftovers.
//!
//! With `docker buildx` on the controller (looked for once per run) images
//! are built by BuildKit (`docker buildx build --load`), so Dockerfiles can
//! use `RUN --mount=type=cache`, multi-stage targets and (Docker 23+)
//! heredocs; without it the classic builder is the fallback, and the run
//! says so once.

use super::cache::{self, CacheError};
use super::layers;
use super::plan::{HostPlan, RenderedFile};
use crate::inventory::Arch;
use crate::ops::image::{ImageSource, Layered};
use crate::ssh::BoxFut;
use crate::template::Redactor;
use std::collections::BTreeMap;
use std::collections::BTreeSet;
use std::ffi::OsString;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use tokio::process::Command;

/// The label every image mesh builds carries: its service.
pub(crate) const SERVICE_LABEL: &str = "mesh.service";

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
    #[error(transparent)]
    Cache(#[from] CacheError),
}

/// One image to have: a tag and the rendered context it is built from.
#[derive(Debug, Clone)]
pub(crate) struct ImageSpec {
    pub tag: String,
    /// The service it is built for (its `mesh.service` label).
    pub service: String,
    pub arch: Arch,
    /// The service folder, for messages.
    pub dir: PathBuf,
    pub files: Vec<RenderedFile>,
    /// Hosts that run it.
    pub hosts: Vec<String>,
    /// The Dockerfile stage to build (`--target`); `None`: the last stage.
    /// Part of the image's identity: a tag built for a target carries
    /// [`tag_suffix`] of it.
    pub target: Option<String>,
    /// The secret values rendered into the context (any host's redactor
    /// that runs it will do: one tag is one rendered context). `None`: not
    /// known, and a failed build of a context holding secret-bearing files
    /// shows no output at all.
    pub redactor: Option<Redactor>,
}

/// What a build target adds to the image tag: `""` without one, else
/// `-<target>` (lowercased, as BuildKit matches stage names), so
/// `mesh/web:<hash>` and `mesh/web:<hash>-dev` are different images. A
/// target with characters a tag cannot hold, or a long one, is shortened
/// and gets a hash of the original, so two targets never share a suffix.
pub(crate) fn tag_suffix(target: Option<&str>) -> String {
    const MAX: usize = 48;
    let Some(target) = target else {
        return String::new();
    };
    let lower = target.to_ascii_lowercase();
    let clean: String = lower
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-') {
                c
            } else {
                '_'
            }
        })
        .take(MAX)
        .collect();
    if clean == lower {
        format!("-{clean}")
    } else {
        let hash = crate::ops::file::sha256_hex(target.as_bytes());
        format!("-{clean}-{}", &hash[..8])
    }
}

/// How the controller builds images.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Builder {
    /// BuildKit through `docker buildx build --load`.
    Buildx,
    /// `docker build` with `DOCKER_BUILDKIT=0`: no `RUN --mount`, no heredocs.
    Classic,
}

/// Said once per run when the classic builder is all there is.
pub(crate) const CLASSIC_BUILDER: &str = "building with the classic builder: docker buildx is missing. Fix: install docker-buildx (Debian 13) or docker-buildx-plugin";

/// Whether this machine's Docker has buildx: asked once per run.
async fn builder() -> Builder {
    static BUILDER: tokio::sync::OnceCell<Builder> = tokio::sync::OnceCell::const_new();
    *BUILDER
        .get_or_init(|| async {
            let ok = Command::new("docker")
                .args(["buildx", "version"])
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()
                .await
                .is_ok_and(|s| s.success());
            if ok {
                Builder::Buildx
            } else {
                Builder::Classic
            }
        })
        .await
}

/// The arguments of `docker` that build `tag` from `context`: BuildKit
/// (`buildx build --load`, with `--platform` for another architecture) or
/// the classic builder (run with `DOCKER_BUILDKIT=0`, see [`Builder::env`]).
pub(crate) fn build_args(
    builder: Builder,
    tag: &str,
    service: &str,
    target: Option<&str>,
    platform: Option<&str>,
    context: &Path,
) -> Vec<OsString> {
    let mut args: Vec<OsString> = match builder {
        Builder::Buildx => vec!["buildx".into(), "build".into(), "--load".into()],
        Builder::Classic => vec!["build".into()],
    };
    if let (Builder::Buildx, Some(p)) = (builder, platform) {
        args.extend(["--platform".into(), p.into()]);
    }
    args.extend(["--tag".into(), tag.into()]);
    args.extend([
        "--label".into(),
        format!("{SERVICE_LABEL}={service}").into(),
    ]);
    if let Some(t) = target {
        args.extend(["--target".into(), t.into()]);
    }
    args.push(context.into());
    args
}

impl Builder {
    /// The environment the build runs with.
    pub(crate) fn env(self) -> &'static [(&'static str, &'static str)] {
        match self {
            Builder::Buildx => &[],
            // Docker 23+ would otherwise hand `docker build` to BuildKit
            // (and fail without buildx); 20.10 reads it as "classic".
            Builder::Classic => &[("DOCKER_BUILDKIT", "0")],
        }
    }
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
                    service: s.name.clone(),
                    arch: s.arch,
                    dir: folder_root.join(&s.name),
                    files: s.files.clone(),
                    hosts: Vec::new(),
                    target: s.target.clone(),
                    redactor: Some(s.redactor.clone()),
                })
                .hosts
                .push(host.clone());
        }
    }
    by_tag.into_values().collect()
}

/// A built (or, in a dry run, planned) image and its lazily made layer files.
pub(crate) struct Image {
    tag: String,
    id: Option<String>,
    /// Bytes of its layers, uncompressed (what a host needs room for).
    size: Option<u64>,
    /// Its layers' diff ids, bottom first (empty in a dry run before the build).
    diff_ids: Vec<String>,
    /// The layer store's directory.
    store: PathBuf,
    layers: tokio::sync::OnceCell<std::sync::Arc<Layered>>,
}

impl ImageSource for Image {
    fn tag(&self) -> &str {
        &self.tag
    }

    fn id(&self) -> Option<&str> {
        self.id.as_deref()
    }

    fn size(&self) -> Option<u64> {
        self.size
    }

    fn diff_ids(&self) -> &[String] {
        &self.diff_ids
    }

    fn layers(
        &self,
    ) -> BoxFut<'_, Result<std::sync::Arc<Layered>, crate::ops::image::ArchiveError>> {
        Box::pin(async move {
            self.layers
                .get_or_try_init(|| async {
                    layers::layered(&self.tag, self.id.as_deref(), &self.store)
                        .await
                        .map(std::sync::Arc::new)
                })
                .await
                .cloned()
                .map_err(Into::into)
        })
    }
}

#[cfg(test)]
impl Image {
    /// An image "built" with this id whose layers are `layered`.
    pub(crate) fn fake(layered: Layered) -> Self {
        let cell = tokio::sync::OnceCell::new();
        let diff_ids = layered.layers.iter().map(|l| l.diff_id.clone()).collect();
        let (tag, id) = (layered.tag.clone(), layered.id.clone());
        cell.set(std::sync::Arc::new(layered)).expect("fresh cell");
        Image {
            tag,
            id: Some(id),
            size: Some(1000),
            diff_ids,
            store: PathBuf::from("/nonexistent"),
            layers: cell,
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
    /// What the user should know about how they were built (e.g.
    /// [`CLASSIC_BUILDER`]), each once.
    pub notes: Vec<String>,
    /// What bounding the controller's cache removed.
    pub cache: Option<cache::CacheReport>,
}

/// What the controller's Docker says about a tag it has.
struct Local {
    id: String,
    size: Option<u64>,
    diff_ids: Vec<String>,
}

/// The local image id, size and layers of `tag`, if Docker has it.
async fn local_image(tag: &str) -> Result<Option<Local>, BuildError> {
    let out = Command::new("docker")
        .args([
            "image",
            "inspect",
            "--format",
            "{{.Id}} {{.Size}}{{range .RootFS.Layers}} {{.}}{{end}}",
            tag,
        ])
        .stdin(Stdio::null())
        .output()
        .await
        .map_err(|e| BuildError::NoDocker(e.to_string()))?;
    if out.status.success() {
        let text = String::from_utf8_lossy(&out.stdout);
        let mut words = text.split_whitespace();
        let id = words.next().unwrap_or_default().to_string();
        let size = words.next().and_then(|s| s.parse().ok());
        return Ok(Some(Local {
            id,
            size,
            diff_ids: words.map(str::to_string).collect(),
        }));
    }
    let err = String::from_utf8_lossy(&out.stderr);
    if err.contains("Cannot connect") || err.contains("permission denied") {
        return Err(BuildError::NoDocker(err.trim().to_string()));
    }
    Ok(None)
}

/// Build every image the local Docker lacks, then bound the controller's
/// cache (archives up to `cap` bytes); `progress` hears one line per image.
pub(crate) async fn build_all(
    specs: &[ImageSpec],
    dry_run: bool,
    cache: &Path,
    cap: u64,
    progress: &(dyn Fn(&str) + Sync),
) -> Result<(BTreeMap<String, std::sync::Arc<Image>>, BuildReport), BuildError> {
    let mut images = BTreeMap::new();
    let mut report = BuildReport::default();
    for spec in specs {
        let mut found = local_image(&spec.tag).await?;
        if found.is_some() {
            report.up_to_date.push(spec.tag.clone());
        } else if dry_run {
            report.would_build.push(spec.tag.clone());
        } else {
            let builder = if spec.arch != Arch::native() {
                check_buildx(spec).await?;
                Builder::Buildx
            } else {
                builder().await
            };
            if builder == Builder::Classic && report.notes.is_empty() {
                progress(CLASSIC_BUILDER);
                report.notes.push(CLASSIC_BUILDER.to_string());
            }
            progress(&format!(
                "building {} for {} host(s): {}",
                spec.tag,
                spec.hosts.len(),
                spec.hosts.join(", ")
            ));
            build(spec, builder, cache).await?;
            found = local_image(&spec.tag).await?;
            report.built.push(spec.tag.clone());
        }
        let (id, size, diff_ids) = found.map_or((None, None, Vec::new()), |l| {
            (Some(l.id), l.size, l.diff_ids)
        });
        images.insert(
            spec.tag.clone(),
            std::sync::Arc::new(Image {
                tag: spec.tag.clone(),
                id,
                size,
                diff_ids,
                store: layers::layers_dir(cache),
                layers: tokio::sync::OnceCell::new(),
            }),
        );
    }
    if !dry_run {
        // Bounding the cache never fails a run: it is said, and tried again next time.
        let keep: BTreeSet<String> = specs.iter().map(|s| s.tag.clone()).collect();
        match cache::prune(cache, &keep, cap, false, cache::LocalImages::Keep).await {
            Ok(pruned) => {
                if let Some(line) = pruned.summary() {
                    progress(&line);
                }
                report.cache = Some(pruned);
            }
            Err(e) => report
                .notes
                .push(format!("controller cache not bounded: {e}")),
        }
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

/// Write the rendered context to a private temp dir and build it.
async fn build(spec: &ImageSpec, builder: Builder, cache: &Path) -> Result<(), BuildError> {
    let local = |what: String| move |source| BuildError::Local { what, source };
    let base = cache.join("build");
    cache::private_dir(&base)?;
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
        debug_assert!(
            spec.tag.ends_with(&tag_suffix(spec.target.as_deref())),
            "{} is built for target {:?}: its tag must carry tag_suffix of it",
            spec.tag,
            spec.target
        );
        let platform = (spec.arch != Arch::native()).then(|| spec.arch.docker_platform());
        let out = Command::new("docker")
            .args(build_args(
                builder,
                &spec.tag,
                &spec.service,
                spec.target.as_deref(),
                platform,
                dir.path(),
            ))
            .envs(builder.env().iter().copied())
            .stdin(Stdio::null())
            .output()
            .await
            .map_err(|e| BuildError::NoDocker(e.to_string()))?;
        if out.status.success() {
            return Ok(());
        }
        let mut text = String::from_utf8_lossy(&out.stdout).into_owned();
        text.push_str(&String::from_utf8_lossy(&out.stderr));
        Err(BuildError::Failed {
            tag: spec.tag.clone(),
            dir: spec.dir.display().to_string(),
            tail: failure_tail(spec, &text),
        })
    }
    .await;
    drop(dir);
    result
}

/// The last lines of a failed build's output, secrets redacted. Without a
/// redactor, a context that holds secret-bearing files (0600/0700: a
/// secret was rendered into them) shows none of it.
fn failure_tail(spec: &ImageSpec, output: &str) -> String {
    let text = match &spec.redactor {
        Some(r) => r.redact(output),
        None if spec.files.iter().any(|f| f.mode & 0o077 == 0) => {
            return "(output withheld: secret values were rendered into this context and no redactor was given)".into();
        }
        None => output.to_string(),
    };
    let lines: Vec<&str> = text.trim_end().lines().collect();
    lines[lines.len().saturating_sub(20)..].join("\n")
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

#[cfg(test)]
mod tests {
    use super::*;

    fn os(v: &[&str]) -> Vec<OsString> {
        v.iter().map(OsString::from).collect()
    }

    #[test]
    fn buildkit_loads_the_image_and_passes_the_target() {
        let ctx = Path::new("/c/ctx-1");
        assert_eq!(
            build_args(Builder::Buildx, "mesh/web:ab", "web", None, None, ctx),
            os(&[
                "buildx",
                "build",
                "--load",
                "--tag",
                "mesh/web:ab",
                "--label",
                "mesh.service=web",
                "/c/ctx-1"
            ])
        );
        assert_eq!(
            build_args(
                Builder::Buildx,
                "mesh/web:ab-dev",
                "web",
                Some("dev"),
                None,
                ctx
            ),
            os(&[
                "buildx",
                "build",
                "--load",
                "--tag",
                "mesh/web:ab-dev",
                "--label",
                "mesh.service=web",
                "--target",
                "dev",
                "/c/ctx-1"
            ])
        );
        assert_eq!(
            build_args(
                Builder::Buildx,
                "mesh/web:cd",
                "web",
                Some("app"),
                Some("linux/arm64"),
                ctx
            ),
            os(&[
                "buildx",
                "build",
                "--load",
                "--platform",
                "linux/arm64",
                "--tag",
                "mesh/web:cd",
                "--label",
                "mesh.service=web",
                "--target",
                "app",
                "/c/ctx-1"
            ])
        );
        assert!(Builder::Buildx.env().is_empty());
    }

    #[test]
    fn the_classic_builder_is_docker_build_without_buildkit() {
        let ctx = Path::new("/c/ctx-2");
        assert_eq!(
            build_args(Builder::Classic, "mesh/web:ab", "web", None, None, ctx),
            os(&[
                "build",
                "--tag",
                "mesh/web:ab",
                "--label",
                "mesh.service=web",
                "/c/ctx-2"
            ])
        );
        assert_eq!(
            build_args(
                Builder::Classic,
                "mesh/web:ab-x",
                "web",
                Some("x"),
                None,
                ctx
            ),
            os(&[
                "build",
                "--tag",
                "mesh/web:ab-x",
                "--label",
                "mesh.service=web",
                "--target",
                "x",
                "/c/ctx-2"
            ])
        );
        assert_eq!(Builder::Classic.env(), &[("DOCKER_BUILDKIT", "0")]);
        assert!(CLASSIC_BUILDER.contains("docker-buildx (Debian 13) or docker-buildx-plugin"));
    }

    #[test]
    fn a_target_is_part_of_the_tag() {
        assert_eq!(tag_suffix(None), "");
        assert_eq!(tag_suffix(Some("prod")), "-prod");
        assert_eq!(tag_suffix(Some("Build.Stage_2")), "-build.stage_2");
        // Not tag characters, or too long: shortened, and told apart by a hash.
        let odd = tag_suffix(Some("a b"));
        assert!(odd.starts_with("-a_b-") && odd.len() == 5 + 8, "{odd}");
        assert_ne!(odd, tag_suffix(Some("a+b")));
        assert_ne!(tag_suffix(Some("a_b")), odd);
        let long = tag_suffix(Some(&"x".repeat(200)));
        assert_eq!(long.len(), 1 + 48 + 1 + 8);
        // What a tag may hold after the colon: [A-Za-z0-9_.-], 128 at most.
        for s in [&odd, &long] {
            assert!(s
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "_.-".contains(c)));
            assert!(16 + s.len() <= 128);
        }
    }

    fn spec(mode: u32, redactor: Option<Redactor>) -> ImageSpec {
        ImageSpec {
            tag: "mesh/web:ab".into(),
            service: "web".into(),
            arch: Arch::native(),
            dir: PathBuf::from("dockerfiles/web"),
            files: vec![RenderedFile {
                rel: "Dockerfile".into(),
                bytes: std::sync::Arc::new(b"FROM scratch\n".to_vec()),
                sha256: String::new(),
                mode,
            }],
            hosts: vec!["w1".into()],
            target: None,
            redactor,
        }
    }

    #[test]
    fn a_failed_build_shows_its_output_with_secrets_redacted() {
        let mut r = Redactor::default();
        r.add("hunter2-secret");
        let out: String = (1..=30).map(|i| format!("line {i}\n")).collect::<String>()
            + "#5 [2/2] RUN echo hunter2-secret && false\n";
        let tail = failure_tail(&spec(0o600, Some(r)), &out);
        assert!(!tail.contains("hunter2"), "{tail}");
        assert!(tail.ends_with("RUN echo *** && false"), "{tail}");
        assert_eq!(tail.lines().count(), 20);
        assert!(tail.starts_with("line 12\n"), "{tail}");
        // No redactor: nothing of a secret-bearing context is shown.
        let hidden = failure_tail(&spec(0o600, None), &out);
        assert!(!hidden.contains("hunter2") && hidden.contains("withheld"));
        // No secret in the context: shown as it is.
        assert!(failure_tail(&spec(0o644, None), &out).contains("line 30"));
    }
}
