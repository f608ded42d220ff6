//! The controller's layer store: each shipped image's config and its
//! layers, one zstd file per layer, under `<cache root>/layers` (a 0700
//! directory, 0600 files). A layer is compressed once (multi-threaded) and
//! shared by every image that has it; a host is sent only the files of the
//! layers it lacks.
//!
//! A layer file is named `<diff id hex>.<sha256 of the file>.zst` and used
//! only while its content still hashes to its name; a config is
//! `<image id hex>.json` and used only while it hashes to the id. Missing
//! ones are made from one `docker save` of the image, each layer checked
//! against its diff id on the way. [`super::cache::prune`] bounds the store.

use super::cache::{local, private_dir, CacheError};
use crate::ops::image::script::{hex, is_hex64};
use crate::ops::image::{LayerFile, Layered};
use std::collections::BTreeSet;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Arc;
use std::time::SystemTime;
use tokio::process::Command;

const LAYER_EXT: &str = ".zst";
/// The sha256 of nothing: no layer file is empty.
const EMPTY_SHA256: &str = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";

/// The layer store's directory under the cache root.
pub(crate) fn layers_dir(cache: &Path) -> PathBuf {
    cache.join("layers")
}

/// `(diff id hex, content sha256)` of a layer file's name.
pub(crate) fn parse_layer_name(name: &str) -> Option<(&str, &str)> {
    let (diff, sha) = name.strip_suffix(LAYER_EXT)?.split_once('.')?;
    (is_hex64(diff) && is_hex64(sha)).then_some((diff, sha))
}

/// The image id hex of a config file's name.
pub(crate) fn parse_config_name(name: &str) -> Option<&str> {
    let id = name.strip_suffix(".json")?;
    is_hex64(id).then_some(id)
}

fn hash_file(path: &Path) -> std::io::Result<String> {
    use sha2::Digest;
    let mut hasher = sha2::Sha256::new();
    std::io::copy(&mut std::fs::File::open(path)?, &mut hasher)?;
    Ok(crate::ops::file::hex(&hasher.finalize()))
}

async fn hash_async(path: PathBuf) -> Result<String, CacheError> {
    let what = format!("hashing {}", path.display());
    tokio::task::spawn_blocking(move || hash_file(&path))
        .await
        .map_err(|e| local(what.clone())(std::io::Error::other(e)))?
        .map_err(local(what))
}

/// Mark a file used now: the cap removes the least recently used first.
fn touch(path: &Path) {
    let _ = std::fs::File::options()
        .append(true)
        .open(path)
        .and_then(|f| f.set_modified(SystemTime::now()));
}

/// A temporary name in `dir` (dot-prefixed: never taken for a layer).
fn temp_name(dir: &Path, what: &str) -> Result<PathBuf, CacheError> {
    let r = crate::secrets::random_hex(4).map_err(local("picking a temporary name".into()))?;
    Ok(dir.join(format!(".{what}.{}.{r}.tmp", std::process::id())))
}

/// A layer file of `diff_hex` whose content matches its name; mismatching
/// ones go.
async fn verified_layer(
    dir: &Path,
    diff_hex: &str,
) -> Result<Option<(PathBuf, String, u64)>, CacheError> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Ok(None);
    };
    let candidates: Vec<(PathBuf, String)> = entries
        .filter_map(Result::ok)
        .filter_map(|e| {
            let name = e.file_name().to_string_lossy().into_owned();
            let (d, sha) = parse_layer_name(&name)?;
            (d == diff_hex).then(|| (e.path(), sha.to_string()))
        })
        .collect();
    for (path, sha) in candidates {
        match hash_async(path.clone()).await {
            Ok(h) if h == sha && h != EMPTY_SHA256 => {
                let size = std::fs::metadata(&path).map(|m| m.len()).unwrap_or(0);
                return Ok(Some((path, sha, size)));
            }
            _ => {
                let _ = std::fs::remove_file(&path);
            }
        }
    }
    Ok(None)
}

/// The image config `<id hex>.json`, if it is there and hashes to the id.
fn verified_config(dir: &Path, id_hex: &str) -> Option<Vec<u8>> {
    let path = dir.join(format!("{id_hex}.json"));
    let bytes = std::fs::read(&path).ok()?;
    if crate::ops::file::sha256_hex(&bytes) == id_hex {
        touch(&path);
        Some(bytes)
    } else {
        let _ = std::fs::remove_file(&path);
        None
    }
}

/// The diff ids an image config lists, bottom first.
pub(crate) fn config_diff_ids(config: &[u8]) -> Option<Vec<String>> {
    let v: serde_json::Value = serde_json::from_slice(config).ok()?;
    v["rootfs"]["diff_ids"]
        .as_array()?
        .iter()
        .map(|d| d.as_str().map(str::to_string))
        .collect()
}

/// The config and layer files of image `id` (tag `tag`), made where
/// missing; the files used are marked used.
pub(crate) async fn layered(
    tag: &str,
    id: Option<&str>,
    dir: &Path,
) -> Result<Layered, CacheError> {
    let id = id.ok_or_else(|| CacheError::NotBuilt { tag: tag.into() })?;
    let id_hex = hex(id).to_string();
    private_dir(dir)?;
    let config = verified_config(dir, &id_hex);
    let mut found = Vec::new();
    if let Some(config) = &config {
        let diffs =
            config_diff_ids(config).ok_or_else(|| bad(tag, "its config lists no layers"))?;
        for d in &diffs {
            match verified_layer(dir, hex(d)).await? {
                Some(f) => found.push(Some(f)),
                None => found.push(None),
            }
        }
        if found.iter().all(Option::is_some) {
            let layers = diffs
                .iter()
                .zip(found)
                .map(|(d, f)| {
                    let (path, sha256, size) = f.expect("all found");
                    touch(&path);
                    LayerFile {
                        diff_id: d.clone(),
                        path,
                        size,
                        sha256,
                    }
                })
                .collect();
            return Ok(Layered {
                id: format!("sha256:{id_hex}"),
                tag: tag.into(),
                config: Arc::new(config.clone()),
                layers,
            });
        }
    }
    from_save(tag, &id_hex, dir).await
}

fn bad(tag: &str, detail: &str) -> CacheError {
    CacheError::Save {
        tag: tag.into(),
        detail: detail.into(),
    }
}

/// Unpack `docker save` of `tag` into a private temporary directory and
/// make every layer file and the config from it.
async fn from_save(tag: &str, id_hex: &str, dir: &Path) -> Result<Layered, CacheError> {
    let tmp = temp_name(dir, "save")?;
    private_dir(&tmp)?;
    let made = unpack_and_store(tag, id_hex, dir, &tmp).await;
    let _ = std::fs::remove_dir_all(&tmp);
    made
}

async fn unpack_and_store(
    tag: &str,
    id_hex: &str,
    dir: &Path,
    tmp: &Path,
) -> Result<Layered, CacheError> {
    let out = Command::new("bash")
        .args([
            "-c",
            "set -o pipefail; docker save \"$1\" | tar -x -C \"$2\"",
            "mesh-save",
            tag,
        ])
        .arg(tmp)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .output()
        .await
        .map_err(|e| bad(tag, &e.to_string()))?;
    if !out.status.success() {
        return Err(bad(tag, String::from_utf8_lossy(&out.stderr).trim()));
    }
    let manifest = std::fs::read(tmp.join("manifest.json"))
        .map_err(local(format!("reading the manifest of docker save {tag}")))?;
    let manifest: serde_json::Value = serde_json::from_slice(&manifest)
        .map_err(|e| bad(tag, &format!("its manifest.json: {e}")))?;
    let entry = &manifest[0];
    let (Some(config_path), Some(layer_paths)) =
        (entry["Config"].as_str(), entry["Layers"].as_array())
    else {
        return Err(bad(tag, "its manifest.json names no config or layers"));
    };
    let config = std::fs::read(inside(tmp, config_path, tag)?)
        .map_err(local(format!("reading the config of docker save {tag}")))?;
    if crate::ops::file::sha256_hex(&config) != id_hex {
        return Err(bad(
            tag,
            "the saved config is not the image's (was it rebuilt meanwhile?)",
        ));
    }
    let diffs = config_diff_ids(&config).ok_or_else(|| bad(tag, "its config lists no layers"))?;
    if diffs.len() != layer_paths.len() {
        return Err(bad(
            tag,
            "its manifest and config list different numbers of layers",
        ));
    }
    let mut layers = Vec::with_capacity(diffs.len());
    for (diff, rel) in diffs.iter().zip(layer_paths) {
        if let Some((path, sha256, size)) = verified_layer(dir, hex(diff)).await? {
            touch(&path);
            layers.push(LayerFile {
                diff_id: diff.clone(),
                path,
                size,
                sha256,
            });
            continue;
        }
        let rel = rel
            .as_str()
            .ok_or_else(|| bad(tag, "a layer path is not a string"))?;
        layers.push(store_layer(tag, diff, &inside(tmp, rel, tag)?, dir).await?);
    }
    let config_file = dir.join(format!("{id_hex}.json"));
    let t = temp_name(dir, "config")?;
    write_private(&t, &config)?;
    std::fs::rename(&t, &config_file).map_err(local(format!("renaming {}", t.display())))?;
    Ok(Layered {
        id: format!("sha256:{id_hex}"),
        tag: tag.into(),
        config: Arc::new(config),
        layers,
    })
}

/// A path of the unpacked save, refused if it leaves it.
fn inside(tmp: &Path, rel: &str, tag: &str) -> Result<PathBuf, CacheError> {
    let p = Path::new(rel);
    if p.is_absolute()
        || p.components()
            .any(|c| matches!(c, std::path::Component::ParentDir))
    {
        return Err(bad(
            tag,
            &format!("its manifest names a path outside the archive: {rel}"),
        ));
    }
    Ok(tmp.join(p))
}

fn write_private(path: &Path, bytes: &[u8]) -> Result<(), CacheError> {
    use std::io::Write as _;
    let mut f = std::fs::File::options()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .map_err(local(format!("creating {}", path.display())))?;
    f.write_all(bytes)
        .map_err(local(format!("writing {}", path.display())))
}

/// Check a saved layer against its diff id, compress it (zstd, all cores)
/// into the store under its final name.
async fn store_layer(
    tag: &str,
    diff: &str,
    src: &Path,
    dir: &Path,
) -> Result<LayerFile, CacheError> {
    let got = hash_async(src.to_path_buf()).await?;
    if got != hex(diff) {
        return Err(bad(
            tag,
            &format!("its layer {diff} is saved in a form whose sha256 is {got} (a compressed layer: is the controller's Docker on the containerd image store?)"),
        ));
    }
    let tmp = temp_name(dir, "layer")?;
    let file = std::fs::File::options()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&tmp)
        .map_err(local(format!("creating {}", tmp.display())))?;
    // Spawned, not `output()`: that would capture stdout instead of the file.
    let child = Command::new("zstd")
        .args(["-q", "-3", "-T0", "-c"])
        .arg(src)
        .stdin(Stdio::null())
        .stdout(file)
        .stderr(Stdio::piped())
        .spawn();
    let out = match child {
        Ok(c) => c.wait_with_output().await,
        Err(e) => Err(e),
    };
    let failed = |detail: String| {
        let _ = std::fs::remove_file(&tmp);
        bad(tag, &format!("zstd of layer {diff}: {detail}. Fix: install zstd on this machine and check its disk has room"))
    };
    match out {
        Ok(o) if o.status.success() => {}
        Ok(o) => {
            return Err(failed(
                String::from_utf8_lossy(&o.stderr).trim().to_string(),
            ))
        }
        Err(e) => return Err(failed(e.to_string())),
    }
    let size = std::fs::metadata(&tmp).map(|m| m.len()).unwrap_or(0);
    if size == 0 {
        return Err(failed("it wrote nothing".into()));
    }
    let sha256 = hash_async(tmp.clone()).await?;
    let path = dir.join(format!("{}.{sha256}{LAYER_EXT}", hex(diff)));
    std::fs::rename(&tmp, &path).map_err(local(format!("renaming {}", tmp.display())))?;
    Ok(LayerFile {
        diff_id: diff.to_string(),
        path,
        size,
        sha256,
    })
}

/// One file of the store, for bounding it.
#[derive(Debug, Clone)]
pub(crate) struct Stored {
    pub path: PathBuf,
    /// The diff id hex (a layer) or image id hex (a config).
    pub key: String,
    pub size: u64,
    pub modified: SystemTime,
}

/// The store's well-named files, newest first.
pub(crate) fn list(dir: &Path) -> Vec<Stored> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut out: Vec<Stored> = entries
        .filter_map(Result::ok)
        .filter_map(|e| {
            let name = e.file_name().to_string_lossy().into_owned();
            let key = match (parse_layer_name(&name), parse_config_name(&name)) {
                (Some((d, _)), _) => d.to_string(),
                (None, Some(id)) => id.to_string(),
                _ => return None,
            };
            let meta = e.metadata().ok()?;
            Some(Stored {
                path: e.path(),
                key,
                size: meta.len(),
                modified: meta.modified().ok()?,
            })
        })
        .collect();
    out.sort_by_key(|s| std::cmp::Reverse(s.modified));
    out
}

/// Whether a store file belongs to a live image: its config, or one of its
/// layers (`live` holds image id and diff id hexes).
pub(crate) fn is_live(s: &Stored, live: &BTreeSet<String>) -> bool {
    live.contains(&s.key)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layer_and_config_names_carry_their_digests() {
        let d = "a".repeat(64);
        let s = "b".repeat(64);
        assert_eq!(
            parse_layer_name(&format!("{d}.{s}.zst")),
            Some((d.as_str(), s.as_str()))
        );
        assert_eq!(parse_layer_name(&format!("{d}.zst")), None);
        assert_eq!(parse_layer_name(".layer.1.ab.tmp"), None);
        assert_eq!(parse_config_name(&format!("{d}.json")), Some(d.as_str()));
        assert_eq!(parse_config_name("manifest.json"), None);
    }

    #[test]
    fn a_config_lists_its_diff_ids_bottom_first() {
        let c = br#"{"rootfs":{"type":"layers","diff_ids":["sha256:aa","sha256:bb"]}}"#;
        assert_eq!(
            config_diff_ids(c),
            Some(vec!["sha256:aa".into(), "sha256:bb".into()])
        );
        assert_eq!(config_diff_ids(b"{}"), None);
    }

    #[test]
    fn paths_outside_the_saved_archive_are_refused() {
        let tmp = Path::new("/t");
        assert!(inside(tmp, "abc/layer.tar", "mesh/x:1").is_ok());
        assert!(inside(tmp, "../etc/passwd", "mesh/x:1").is_err());
        assert!(inside(tmp, "/etc/passwd", "mesh/x:1").is_err());
    }
}
