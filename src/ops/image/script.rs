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

use super::{LayerFile, Layered};
use crate::ops::read_exactly;
use crate::quote::{quote, Cmd, Script};
use crate::s3::{Body, Signed};
use crate::ssh::Input;
use std::sync::Arc;

/// What a stage directory's name starts with.
pub(crate) const STAGE_PREFIX: &str = "mesh-load.";

/// The 64 hex digits of a `sha256:` digest.
pub(crate) fn hex(digest: &str) -> &str {
    digest.strip_prefix("sha256:").unwrap_or(digest)
}

/// Whether `s` is 64 hex digits (a digest without its `sha256:`).
pub(crate) fn is_hex64(s: &str) -> bool {
    s.len() == 64 && s.bytes().all(|b| b.is_ascii_hexdigit())
}

/// The stage directory in every script: `$d`.
const D: &str = "\"$d\"";

/// Set `$root` to Docker's root directory and remove stages a day old.
fn docker_root(s: &mut Script) {
    s.append(&super::super::room::docker_root_var());
    s.raw("mkdir -p \"$root/tmp\"");
    s.raw(&format!(
        "find \"$root/tmp\" -maxdepth 1 -name '{STAGE_PREFIX}*' -mmin +1440 -exec rm -rf {{}} + 2>/dev/null || true"
    ));
}

/// Make the stage directory as `$d` (old ones removed first).
fn make_stage(s: &mut Script) {
    docker_root(s);
    s.raw(&format!(
        "d=$(mktemp -d \"$root/tmp/{STAGE_PREFIX}XXXXXX\")"
    ));
}

/// A stage name picked on the controller, for the scripts of one image's
/// shipping through garage (uploads, fetches, the load) to share.
pub(crate) fn stage_name() -> std::io::Result<String> {
    Ok(format!("{STAGE_PREFIX}{}", crate::secrets::random_hex(8)?))
}

/// Enter the named stage as `$d` (made if missing, private) and `cd` there;
/// a script that fails removes it, so nothing half-received stays.
fn enter_stage(s: &mut Script, name: &str) {
    docker_root(s);
    s.line("d=\"$root/tmp/\"{}", &[name]);
    s.raw("mkdir -p -m 0700 \"$d\"");
    s.raw("trap '[ $? = 0 ] || rm -rf \"$d\"' EXIT");
    s.raw("cd \"$d\"");
}

/// The start of a garage-path script: strict, zstd there, in the named stage.
fn in_stage(stage: &str) -> Script {
    let mut s = Script::new();
    s.raw("set -e");
    need_zstd(&mut s);
    enter_stage(&mut s, stage);
    s
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

/// Write the manifest and the config from stdin into `dir` and check the config.
fn write_meta(s: &mut Script, dir: &str, image: &Layered, input: &mut Vec<Input>) {
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
}

/// Load the staged layers (those from `start`) with the manifest and config.
fn load_staged(s: &mut Script, dir: &str, image: &Layered, start: usize) {
    let config = format!("{}.json", hex(&image.id));
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
        "{} | zstd -dcq > {dir}/{h}/layer.tar",
        read_exactly(&layer.size.to_string())
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
    write_meta(&mut s, D, image, &mut input);
    load_staged(&mut s, D, image, start);
    (s, Input::Chain(input))
}

/// The headers file a signed request reads (`-H @.h`), in the stage.
const HEADERS: &str = ".h";

/// Run `signed` with `body`, its headers from stdin through [`HEADERS`]
/// (the access key's id stays out of the process list); its exit code in `$rc`.
fn request(s: &mut Script, signed: &Signed, body: Body<'_>, input: &mut Vec<Input>) {
    let (curl, headers) = signed.curl_headers_in(HEADERS, body);
    s.raw(&format!("head -c {} > {HEADERS}", headers.len()));
    input.push(Input::Bytes(Arc::new(headers)));
    s.raw(&format!("rc=0; {curl} || rc=$?"));
    s.raw(&format!("rm -f {HEADERS}"));
}

/// Receive a layer's file on stdin keeping it compressed, check the file
/// and the layer, and put the file into the bucket: prints `put <hex> <rc>`.
fn receive_and_put(s: &mut Script, layer: &LayerFile, put: &Signed, input: &mut Vec<Input>) {
    let h = hex(&layer.diff_id);
    let zst = format!("{h}.zst");
    s.line("mkdir -p {}", &[h]);
    s.raw(&format!(
        "{} > {}",
        read_exactly(&layer.size.to_string()),
        quote(&zst)
    ));
    input.push(Input::File(layer.path.clone()));
    verify(s, D, &zst, &layer.sha256, "layer file");
    s.raw(&format!(
        "zstd -dcq < {} > {}/layer.tar",
        quote(&zst),
        quote(h)
    ));
    verify(s, D, &format!("{h}/layer.tar"), &layer.diff_id, "layer");
    request(s, put, Body::Upload(&zst), input);
    s.line("rm -f {}", &[&zst]);
    s.raw(&format!("echo put {h} \"$rc\""));
}

/// A layer the first host to lack it gets by SSH and puts into the bucket:
/// one round trip, the layer left staged for this host's load.
pub(crate) fn upload(stage: &str, layer: &LayerFile, put: &Signed) -> (Script, Input) {
    let mut s = in_stage(stage);
    let mut input = Vec::new();
    receive_and_put(&mut s, layer, put, &mut input);
    (s, Input::Chain(input))
}

/// Fetch a layer's file from the bucket and stage the layer if it
/// decompresses to its diff id: prints `fetch <hex> ok|corrupt|failed <rc>`.
fn fetch(s: &mut Script, layer: &LayerFile, get: &Signed, input: &mut Vec<Input>) {
    let h = hex(&layer.diff_id);
    let zst = format!("{h}.zst");
    request(s, get, Body::Download(&zst), input);
    s.raw("if [ \"$rc\" = 0 ]; then");
    s.line("  mkdir -p {}", &[h]);
    s.raw(&format!(
        "  if zstd -dcq < {z} > {h}/layer.tar 2>/dev/null && [ \"$(sha256sum < {h}/layer.tar | cut -d' ' -f1)\" = {h} ]; then echo fetch {h} ok; else rm -rf {h}; missing=1; echo fetch {h} corrupt; fi",
        z = quote(&zst),
        h = quote(h),
    ));
    s.raw(&format!(
        "else missing=1; echo fetch {} failed \"$rc\"; fi",
        quote(h)
    ));
    s.line("rm -f {}", &[&zst]);
}

/// What the last script of an image's shipping through garage brings.
pub(crate) struct Finish<'a> {
    /// From the bucket, each with its signed GET.
    pub fetch: Vec<(&'a LayerFile, Signed)>,
    /// By SSH; with a signed PUT, put back into the bucket too.
    pub stream: Vec<(&'a LayerFile, Option<Signed>)>,
}

/// Fetch and receive the layers not staged yet, then load the image when
/// every one arrived (`loaded`) or keep the stage for another round
/// (`load waiting`). The manifest and config come first on stdin, so a
/// waiting script has read all its input.
pub(crate) fn finish(
    stage: &str,
    image: &Layered,
    start: usize,
    what: &Finish<'_>,
) -> (Script, Input) {
    let mut s = in_stage(stage);
    let mut input = Vec::new();
    write_meta(&mut s, D, image, &mut input);
    s.raw("missing=");
    for (layer, get) in &what.fetch {
        fetch(&mut s, layer, get, &mut input);
    }
    for (layer, put) in &what.stream {
        match put {
            Some(put) => receive_and_put(&mut s, layer, put, &mut input),
            None => receive(&mut s, D, layer, &mut input),
        }
    }
    s.raw("if [ -n \"$missing\" ]; then echo 'load waiting'; exit 0; fi");
    load_staged(&mut s, D, image, start);
    s.raw("cd / && rm -rf \"$d\"");
    s.raw("echo loaded");
    (s, Input::Chain(input))
}

/// A request with no stage: a bucket listing (its XML on stdout) or deletes.
pub(crate) fn bucket_requests(requests: &[(Signed, &str)]) -> (Script, Input) {
    let mut s = Script::new();
    let mut input = Vec::new();
    s.raw("t=$(mktemp -d) && trap 'rm -rf \"$t\"' EXIT && cd \"$t\" || exit 1");
    for (signed, label) in requests {
        request(&mut s, signed, Body::None, &mut input);
        s.raw(&format!(
            "[ \"$rc\" = 0 ] || {{ echo {} \"$rc\" >&2; fail=1; }}",
            quote(&format!("request failed: {label}"))
        ));
    }
    s.raw("[ -z \"$fail\" ]");
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
        assert!(text.contains(&format!(
            "dd bs=1M count=10 iflag=count_bytes,fullblock status=none | zstd -dcq > \"$d\"/{c}/layer.tar"
        )));
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

    fn signed(method: &str) -> Signed {
        use crate::s3::{sign, Request, S3Key};
        let key = S3Key::new("GKid", "the-secret");
        let req = match method {
            "put" => Request::put(
                "127.0.0.1:3900",
                "mesh-images",
                "layers/c.zst",
                &"c".repeat(64),
            ),
            _ => Request::get("127.0.0.1:3900", "mesh-images", "layers/c.zst"),
        };
        sign(&key, &req, std::time::SystemTime::UNIX_EPOCH)
    }

    fn inputs(input: Input) -> Vec<Input> {
        match input {
            Input::Chain(parts) => parts,
            other => vec![other],
        }
    }

    #[test]
    fn an_upload_checks_the_file_and_the_layer_before_it_puts_it() {
        let img = image();
        let (s, input) = upload("mesh-load.ab12", &img.layers[2], &signed("put"));
        assert_valid_sh(&s);
        let text = s.as_str();
        let c = "c".repeat(64);
        assert!(text.contains("d=\"$root/tmp/\"mesh-load.ab12"), "{text}");
        let file_check = text.find(&format!("= {} ]", "c".repeat(64))).unwrap();
        let put = text.find("-T ").unwrap();
        assert!(file_check < put, "{text}");
        assert!(
            text.contains(&format!(
                "-H @.h -T {c}.zst http://127.0.0.1:3900/mesh-images/layers/c.zst"
            )),
            "{text}"
        );
        assert!(text.contains(&format!("echo put {c} \"$rc\"")));
        assert!(
            !text.contains("GKid") && !text.contains("docker load"),
            "{text}"
        );
        // The layer's file, then the request's headers (the key id only there).
        let parts = inputs(input);
        assert!(matches!(&parts[0], Input::File(p) if p.ends_with("c.zst")));
        let Input::Bytes(h) = &parts[1] else {
            panic!("headers")
        };
        assert!(String::from_utf8_lossy(h).contains("Credential=GKid/"));
    }

    #[test]
    fn the_last_round_fetches_streams_and_loads_only_when_every_layer_came() {
        let img = image();
        let what = Finish {
            fetch: vec![(&img.layers[1], signed("get"))],
            stream: vec![(&img.layers[2], None)],
        };
        let (s, input) = finish("mesh-load.ab12", &img, 1, &what);
        assert_valid_sh(&s);
        let text = s.as_str();
        let b = "b".repeat(64);
        assert!(
            text.contains(&format!(
                "-o {b}.zst http://127.0.0.1:3900/mesh-images/layers/c.zst"
            )),
            "{text}"
        );
        assert!(
            text.contains(&format!(
                "echo fetch {b} ok; else rm -rf {b}; missing=1; echo fetch {b} corrupt"
            )),
            "{text}"
        );
        let waiting = text.find("load waiting").unwrap();
        let load = text.find("docker load").unwrap();
        assert!(waiting < load, "{text}");
        assert!(text.contains(&format!(
            "manifest.json {}.json {b} {} | docker load",
            hex(&img.id),
            "c".repeat(64)
        )));
        // Manifest and config first: a waiting script has read all its input.
        let parts = inputs(input);
        assert_eq!(parts.len(), 4, "manifest, config, headers, layer");
        assert!(matches!(&parts[3], Input::File(p) if p.ends_with("c.zst")));
    }

    #[test]
    fn bucket_requests_fail_when_any_request_does() {
        let (s, input) = bucket_requests(&[(signed("get"), "list"), (signed("get"), "again")]);
        assert_valid_sh(&s);
        assert!(s.as_str().ends_with("[ -z \"$fail\" ]\n"), "{}", s.as_str());
        assert_eq!(inputs(input).len(), 2);
    }
}
