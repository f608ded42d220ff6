//! The host side of shipping an image: pure builders of the scripts a host
//! runs (unit-tested by content), so the op itself only sequences them.
//!
//! A host receives what it lacks into a private stage directory under
//! Docker's root (`<root>/tmp/mesh-load.XXXXXX`, on the disk the image goes
//! to). Each layer arrives zstd-compressed, is decompressed there and checked
//! against its diff id (the sha256 of the layer tar) — and the config against
//! the image id — before `docker load` reads any of it. The load archive is
//! the manifest, the config and the staged layers only: Docker skips a layer
//! whose chain it already has. The stage goes when the load ends, and stages
//! a day old (an interrupted run's) go with the next one.

use super::Layered;
use crate::quote::{quote, Cmd, Script};
use crate::ssh::Input;
use std::sync::Arc;

/// What a stage directory's name starts with.
pub(crate) const STAGE_PREFIX: &str = "mesh-load.";

/// The 64 hex digits of a `sha256:` digest.
pub(crate) fn hex(digest: &str) -> &str {
    digest.strip_prefix("sha256:").unwrap_or(digest)
}

/// The stage directory in every script: `$d`.
const D: &str = "\"$d\"";

/// Make the stage directory as `$d` (old ones removed first).
fn make_stage(s: &mut Script) {
    s.raw("root=$(docker info --format '{{.DockerRootDir}}' 2>/dev/null) || root=");
    s.raw("root=${root:-/var/lib/docker}");
    s.raw("mkdir -p \"$root/tmp\"");
    s.raw(&format!(
        "find \"$root/tmp\" -maxdepth 1 -name '{STAGE_PREFIX}*' -mmin +1440 -exec rm -rf {{}} + 2>/dev/null || true"
    ));
    s.raw(&format!(
        "d=$(mktemp -d \"$root/tmp/{STAGE_PREFIX}XXXXXX\")"
    ));
}

fn need_zstd(s: &mut Script) {
    s.raw("command -v zstd >/dev/null || { echo 'zstd is missing on the host' >&2; exit 1; }");
}

/// Fail unless `file` (a path under `dir`, a shell word) hashes to `digest`.
fn verify(s: &mut Script, dir: &str, rel: &str, digest: &str, what: &str) {
    s.raw(&format!(
        "[ \"$(sha256sum < {dir}/{rel} | cut -d' ' -f1)\" = {hex} ] || {{ echo {msg} >&2; exit 1; }}",
        rel = quote(rel),
        hex = quote(hex(digest)),
        msg = quote(&format!(
            "{what} {digest} arrived corrupt (its sha256 differs): nothing was loaded"
        )),
    ));
}

/// Write the manifest and the config from stdin into `dir`, check the
/// config, and load the staged layers (those from `start`).
fn load(s: &mut Script, dir: &str, image: &Layered, start: usize, input: &mut Vec<Input>) {
    let manifest = image.manifest();
    let config = format!("{}.json", hex(&image.id));
    s.raw(&format!("head -c {} > {dir}/manifest.json", manifest.len()));
    s.raw(&format!(
        "head -c {} > {dir}/{}",
        image.config.len(),
        quote(&config)
    ));
    input.push(Input::Bytes(Arc::new(manifest)));
    input.push(Input::Bytes(image.config.clone()));
    verify(s, dir, &config, &image.id, "the image config");
    let mut tar = Cmd::new("tar")
        .args(["-cf", "-", "manifest.json"])
        .arg(&config);
    for layer in &image.layers[start..] {
        tar = tar.arg(hex(&layer.diff_id));
    }
    s.raw(&format!("cd {dir}"));
    s.raw(&format!("{} | docker load", tar.build()));
}

/// Decompress the layer arriving on stdin into the stage and check it.
fn receive(s: &mut Script, dir: &str, layer: &super::LayerFile, input: &mut Vec<Input>) {
    let h = quote(hex(&layer.diff_id));
    s.raw(&format!("mkdir -p {dir}/{h}"));
    s.raw(&format!(
        "head -c {} | zstd -dcq > {dir}/{h}/layer.tar",
        layer.size
    ));
    input.push(Input::File(layer.path.clone()));
    verify(
        s,
        dir,
        &format!("{}/layer.tar", hex(&layer.diff_id)),
        &layer.diff_id,
        "layer",
    );
}

/// The whole SSH path in one round trip: stage, receive the layers from
/// `start` on stdin (each checked), load, remove the stage.
pub(crate) fn streamed(image: &Layered, start: usize) -> (Script, Input) {
    let mut s = Script::new();
    let mut input = Vec::new();
    s.raw("set -e");
    need_zstd(&mut s);
    make_stage(&mut s);
    s.raw("trap 'rm -rf \"$d\"' EXIT");
    for layer in &image.layers[start..] {
        receive(&mut s, D, layer, &mut input);
    }
    load(&mut s, D, image, start, &mut input);
    (s, Input::Chain(input))
}

#[cfg(test)]
mod tests {
    use super::super::{LayerFile, Layered};
    use super::*;
    use crate::quote::assert_valid_sh;
    use std::path::PathBuf;

    fn digest(c: char) -> String {
        format!("sha256:{}", c.to_string().repeat(64))
    }

    fn image() -> Layered {
        let config = br#"{"rootfs":{}}"#.to_vec();
        Layered {
            id: format!("sha256:{}", crate::ops::file::sha256_hex(&config)),
            tag: "mesh/web:0123".into(),
            config: Arc::new(config),
            layers: ['a', 'b', 'c']
                .iter()
                .map(|c| LayerFile {
                    diff_id: digest(*c),
                    path: PathBuf::from(format!("/cache/{c}.zst")),
                    size: 10,
                    sha256: c.to_string().repeat(64),
                })
                .collect(),
        }
    }

    #[test]
    fn the_stream_carries_only_the_missing_layers_each_checked_before_the_load() {
        let (s, input) = streamed(&image(), 2);
        assert_valid_sh(&s);
        let text = s.as_str();
        let c = "c".repeat(64);
        assert!(text.contains(&format!("head -c 10 | zstd -dcq > \"$d\"/{c}/layer.tar")));
        assert!(
            !text.contains(&"a".repeat(64)),
            "a present layer is not sent: {text}"
        );
        let check = text.find(&format!("= {c} ]")).unwrap();
        let load = text.find("docker load").unwrap();
        assert!(check < load, "checked before the load: {text}");
        assert!(text.contains(&format!(
            "tar -cf - manifest.json {}.json {c} | docker load",
            hex(&image().id)
        )));
        // Layer, then manifest, then config: in the order the script reads them.
        let Input::Chain(parts) = input else {
            panic!("a chain")
        };
        assert_eq!(parts.len(), 3);
        assert!(matches!(&parts[0], Input::File(p) if p.ends_with("c.zst")));
    }
}
