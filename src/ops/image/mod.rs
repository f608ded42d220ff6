//! `image`: a Docker image present on the host with the wanted id, shipped
//! layer by layer.
//!
//! The probe asks the host's Docker for the tag's image id; only when it
//! differs does it also list the layers (diff ids) of the host's images, its
//! image store — nothing extra on a converged
//! host. A host then gets only the layers it lacks: `docker load` skips a
//! layer whose chain Docker already has, so the load archive holds the
//! image's config, its manifest and the missing layers ([`script`]). The
//! containerd image store does not skip them: such a host gets the whole
//! image, and its report says so.
//!
//! The layers come by the controller's SSH stream, in one round trip
//! ([`script`]), or — when the run ships through the fleet's garage — from
//! the host's own garage node, the controller sending each layer once
//! ([`fanout`]). Each is checked against its diff id before `docker load`
//! sees it. The report says how many layers and bytes came which way.

pub(crate) mod fanout;
pub(crate) mod script;

use super::room::human_bytes;
use super::{field, BoxFut, Decision, Op, OpCtx, OpError};
use crate::quote::Script;
use fanout::Fanout;
use std::path::PathBuf;
use std::sync::Arc;

/// Where an image comes from: its tag, its id and layers when known (not in
/// a dry run of an image not built yet), and its layer files, made on first
/// request.
pub trait ImageSource: Send + Sync {
    fn tag(&self) -> &str;
    fn id(&self) -> Option<&str>;
    /// Its size in bytes (uncompressed layers), when known.
    fn size(&self) -> Option<u64> {
        None
    }
    /// Its layers' diff ids, bottom first (empty when not known).
    fn diff_ids(&self) -> &[String];
    /// Its config and compressed layer files on the controller.
    fn layers(&self) -> BoxFut<'_, Result<Arc<Layered>, ArchiveError>>;
}

/// Why an image's layer files could not be made (the source's own typed error).
pub type ArchiveError = Box<dyn std::error::Error + Send + Sync>;

/// An image as shipped: its config (whose sha256 is its id) and its layers.
#[derive(Debug, Clone)]
pub struct Layered {
    /// `sha256:<hex>`.
    pub id: String,
    pub tag: String,
    pub config: Arc<Vec<u8>>,
    /// Bottom first.
    pub layers: Vec<LayerFile>,
}

/// One layer's zstd-compressed tar on the controller.
#[derive(Debug, Clone)]
pub struct LayerFile {
    /// `sha256:<hex>` of the uncompressed layer tar.
    pub diff_id: String,
    pub path: PathBuf,
    /// Bytes of the compressed file.
    pub size: u64,
    /// sha256 (hex) of the compressed file.
    pub sha256: String,
}

impl Layered {
    /// The `manifest.json` of a `docker load` archive of this image, its
    /// layers at `<hex>/layer.tar`.
    pub fn manifest(&self) -> Vec<u8> {
        let layers: Vec<String> = self
            .layers
            .iter()
            .map(|l| format!("{}/layer.tar", script::hex(&l.diff_id)))
            .collect();
        serde_json::json!([{
            "Config": format!("{}.json", script::hex(&self.id)),
            "RepoTags": [self.tag],
            "Layers": layers,
        }])
        .to_string()
        .into_bytes()
    }
}

/// How many of `want` (bottom first) the host has: the longest prefix any
/// of its images (the probe's `layers` lines) shares with it.
pub(crate) fn layers_present(probe: &str, want: &[String]) -> usize {
    probe
        .lines()
        .filter_map(|l| l.strip_prefix("layers"))
        .filter(|rest| rest.is_empty() || rest.starts_with(' '))
        .map(|rest| {
            rest.split_whitespace()
                .zip(want)
                .take_while(|(have, want)| have == want)
                .count()
        })
        .max()
        .unwrap_or(0)
}

/// The decision's flags: how many bottom layers the host has (low bits)…
const HAVE_MASK: u32 = 0xffff;
/// …and its image store is containerd's (no layer skipping: the whole image).
const WHOLE: u32 = 1 << 16;
/// …and its garage runs (the run ships through garage).
const GARAGE_UP: u32 = 1 << 17;

/// Bytes for the report: exact when small, with a readable size otherwise.
fn bytes(n: u64) -> String {
    if n < 10_000 {
        format!("{n} bytes")
    } else {
        format!("{} ({n} bytes)", human_bytes(n))
    }
}

#[derive(Clone)]
pub struct ImageOp {
    source: Arc<dyn ImageSource>,
    id: Option<String>,
    fanout: Option<Arc<Fanout>>,
}

impl ImageOp {
    pub fn new(source: Arc<dyn ImageSource>) -> Self {
        ImageOp {
            source,
            id: None,
            fanout: None,
        }
    }

    /// Ship through the fleet's garage (`None`: by SSH).
    pub(crate) fn via(mut self, fanout: Option<Arc<Fanout>>) -> Self {
        self.fanout = fanout;
        self
    }

    /// Name for triggers (e.g. a hook that runs when the image changed).
    pub fn id(mut self, id: &str) -> Self {
        self.id = Some(id.into());
        self
    }
}

/// What reached one host, for its report.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub(crate) struct Tally {
    pub layers: usize,
    pub of: usize,
    /// Layers (and compressed bytes) streamed from the controller by SSH.
    pub ssh: (usize, u64),
    /// The containerd image store: the whole image.
    pub whole: bool,
    /// The run ships through garage.
    pub via_garage: bool,
    /// Layers (and bytes) fetched from the host's garage node.
    pub garage: (usize, u64),
    /// Layers (and bytes) this host put into the bucket for the others.
    pub uploaded: (usize, u64),
    /// What went another way than planned, and why.
    pub notes: Vec<String>,
}

impl Tally {
    pub(crate) fn describe(&self) -> String {
        let what = if self.whole {
            format!(
                "whole image, {} layers (the host's containerd image store does not skip layers it has)",
                self.of
            )
        } else {
            format!("{} of {} layers", self.layers, self.of)
        };
        let mut out = format!("{what}: {} by ssh", bytes(self.ssh.1));
        if self.via_garage {
            if self.uploaded.0 > 0 {
                out.push_str(&format!(" ({} put into garage)", self.uploaded.0));
            }
            out.push_str(&format!(", {} from garage", bytes(self.garage.1)));
        }
        for note in &self.notes {
            out.push_str("; ");
            out.push_str(note);
        }
        out
    }
}

impl Op for ImageOp {
    fn label(&self) -> String {
        format!("image {}", self.source.tag())
    }

    fn id(&self) -> Option<&str> {
        self.id.as_deref()
    }

    fn probe(&self, _ctx: &OpCtx<'_>) -> Option<Script> {
        let mut s = Script::new();
        s.line(
            "id=$(docker image inspect --format '{{.Id}}' {} 2>/dev/null) || id=",
            &[self.source.tag()],
        );
        s.raw("echo \"image ${id:-absent}\"");
        // What shipping needs, only when the host lacks the image.
        s.line(
            "if [ \"$id\" != {} ]; then",
            &[self.source.id().unwrap_or("")],
        );
        s.append(&super::docker_api::docker_info_script());
        s.raw("printf '%s' \"$dinfo\" | grep -qF '\"driver-type\",\"io.containerd.snapshotter' && echo 'store containerd'");
        if self.fanout.is_some() {
            s.raw("systemctl is-active --quiet garage && echo 'garage up'");
        }
        s.raw("ids=$(docker image ls -aq --no-trunc 2>/dev/null | sort -u)");
        s.raw("[ -z \"$ids\" ] || docker image inspect --format 'layers {{range .RootFS.Layers}} {{.}}{{end}}' $ids 2>/dev/null");
        s.raw("fi");
        s.raw("true");
        Some(s)
    }

    fn decide(&self, probe: &str, _recheck: Option<&str>, _triggered: bool) -> Decision {
        let Some(have) = field(probe, "image") else {
            return Decision::Fail(format!(
                "cannot ask the host's Docker about {}: {}",
                self.source.tag(),
                probe.trim()
            ));
        };
        let what = match (have, self.source.id()) {
            ("absent", _) => "not on the host".to_string(),
            (have, Some(want)) if have != want => format!("host has {have}, want {want}"),
            _ => return Decision::Unchanged,
        };
        let want = self.source.diff_ids();
        if want.is_empty() {
            return Decision::change(what, 0);
        }
        let containerd = probe.lines().any(|l| l.trim() == "store containerd");
        let have = if containerd {
            0
        } else {
            layers_present(probe, want).min(HAVE_MASK as usize)
        };
        let mut flags = have as u32;
        if containerd {
            flags |= WHOLE;
        }
        if probe.lines().any(|l| l.trim() == "garage up") {
            flags |= GARAGE_UP;
        }
        let reason = if containerd {
            format!("{what}; the whole image (containerd image store)")
        } else {
            format!(
                "{what}; lacks {} of {} layers",
                want.len() - have,
                want.len()
            )
        };
        Decision::change(reason, flags)
    }

    fn apply<'a>(&'a self, ctx: &'a OpCtx<'a>, flags: u32) -> BoxFut<'a, Result<bool, OpError>> {
        Box::pin(async move { self.apply_reporting(ctx, flags).await.map(|(c, _)| c) })
    }

    fn apply_reporting<'a>(
        &'a self,
        ctx: &'a OpCtx<'a>,
        flags: u32,
    ) -> BoxFut<'a, Result<(bool, Option<String>), OpError>> {
        Box::pin(async move {
            let image = self.source.layers().await.map_err(OpError::Step)?;
            let n = image.layers.len();
            let whole = flags & WHOLE != 0;
            let start = if whole {
                0
            } else {
                ((flags & HAVE_MASK) as usize).min(n)
            };
            let mut tally = Tally {
                layers: n - start,
                of: n,
                whole,
                ..Tally::default()
            };
            let long = ctx.long();
            match &self.fanout {
                Some(f) if f.direct(&image, start) => {
                    fanout::by_ssh(&long, &image, start, &mut tally).await?
                }
                Some(f) if flags & GARAGE_UP != 0 => {
                    f.ship(&long, &image, start, &mut tally).await?
                }
                Some(_) => {
                    tally.via_garage = true;
                    tally
                        .notes
                        .push("garage is not running on this host: by ssh".into());
                    fanout::by_ssh(&long, &image, start, &mut tally).await?
                }
                None => fanout::by_ssh(&long, &image, start, &mut tally).await?,
            }
            Ok((true, Some(tally.describe())))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Fixed(Option<&'static str>, Vec<String>);

    impl ImageSource for Fixed {
        fn tag(&self) -> &str {
            "mesh/web:0123456789abcdef"
        }
        fn id(&self) -> Option<&str> {
            self.0
        }
        fn diff_ids(&self) -> &[String] {
            &self.1
        }
        fn layers(&self) -> BoxFut<'_, Result<Arc<Layered>, ArchiveError>> {
            Box::pin(async { Err("not in this test".into()) })
        }
    }

    fn d(c: char) -> String {
        format!("sha256:{}", c.to_string().repeat(64))
    }

    #[test]
    fn decides_from_the_hosts_image_id() {
        let op = ImageOp::new(Arc::new(Fixed(Some("sha256:aa"), vec![])));
        assert_eq!(
            op.decide("image sha256:aa\n", None, false),
            Decision::Unchanged
        );
        assert!(matches!(
            op.decide("image absent\n", None, false),
            Decision::Change { .. }
        ));
        assert!(matches!(
            op.decide("image sha256:bb\n", None, false),
            Decision::Change { .. }
        ));
        assert!(matches!(op.decide("", None, false), Decision::Fail(_)));
        // Dry run, image not built yet: the tag names the content.
        let dry = ImageOp::new(Arc::new(Fixed(None, vec![])));
        assert_eq!(
            dry.decide("image sha256:cc\n", None, false),
            Decision::Unchanged
        );
    }

    #[test]
    fn a_host_lacks_the_layers_past_the_longest_prefix_it_shares() {
        let want = vec![d('a'), d('b'), d('c')];
        let probe = format!(
            "image absent\nlayers {a}\nlayers {a} {b} {x}\nlayers {x} {a} {b}\nlayers\n",
            a = d('a'),
            b = d('b'),
            x = d('x')
        );
        assert_eq!(layers_present(&probe, &want), 2);
        assert_eq!(layers_present("image absent\n", &want), 0);
        let op = ImageOp::new(Arc::new(Fixed(Some("sha256:ff"), want.clone())));
        assert_eq!(
            op.decide(&probe, None, false),
            Decision::change("not on the host; lacks 1 of 3 layers", 2)
        );
        // The containerd store: the whole image, whatever the host has.
        let containerd = format!("{probe}store containerd\n");
        assert_eq!(
            op.decide(&containerd, None, false),
            Decision::change(
                "not on the host; the whole image (containerd image store)",
                WHOLE
            )
        );
    }

    #[test]
    fn the_report_says_what_came_which_way() {
        let t = Tally {
            layers: 1,
            of: 7,
            ssh: (1, 612),
            ..Tally::default()
        };
        assert_eq!(t.describe(), "1 of 7 layers: 612 bytes by ssh");
        let big = Tally {
            layers: 7,
            of: 7,
            ssh: (7, 40_000_000),
            whole: true,
            ..Tally::default()
        };
        assert_eq!(
            big.describe(),
            "whole image, 7 layers (the host's containerd image store does not skip layers it has): 40 MB (40000000 bytes) by ssh"
        );
        let first = Tally {
            layers: 3,
            of: 3,
            ssh: (3, 40_000_000),
            via_garage: true,
            uploaded: (3, 40_000_000),
            ..Tally::default()
        };
        assert_eq!(
            first.describe(),
            "3 of 3 layers: 40 MB (40000000 bytes) by ssh (3 put into garage), 0 bytes from garage"
        );
        let other = Tally {
            layers: 3,
            of: 3,
            ssh: (1, 900),
            via_garage: true,
            garage: (2, 39_999_100),
            notes: vec!["layer x was corrupt in garage".into()],
            ..Tally::default()
        };
        assert_eq!(
            other.describe(),
            "3 of 3 layers: 900 bytes by ssh, 40 MB (39999100 bytes) from garage; layer x was corrupt in garage"
        );
    }

    #[test]
    fn the_manifest_lists_every_layer_and_the_config() {
        let img = Layered {
            id: d('f'),
            tag: "mesh/web:1".into(),
            config: Arc::new(b"{}".to_vec()),
            layers: vec![LayerFile {
                diff_id: d('a'),
                path: PathBuf::from("/x"),
                size: 1,
                sha256: "0".repeat(64),
            }],
        };
        let m: serde_json::Value = serde_json::from_slice(&img.manifest()).unwrap();
        assert_eq!(m[0]["Config"], format!("{}.json", "f".repeat(64)));
        assert_eq!(m[0]["RepoTags"][0], "mesh/web:1");
        assert_eq!(m[0]["Layers"][0], format!("{}/layer.tar", "a".repeat(64)));
    }
}
