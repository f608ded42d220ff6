//! `image`: a Docker image present on the host with the wanted id.
//!
//! The probe asks the host's Docker for the tag's image id; only a host that
//! lacks it (or has another build under that tag) gets the image, streamed
//! as the controller's compressed `docker save` archive into
//! `zstd -dc | docker load`. The archive is made once, on first need, and
//! shared by every host (see [`ImageSource`]).

use super::{field, BoxFut, Decision, Op, OpCtx, OpError};
use crate::quote::Script;
use crate::ssh::Input;
use std::path::PathBuf;
use std::sync::Arc;

/// Where an image comes from: its tag, its id when known (not in a dry run
/// of an image not built yet), and its archive, made on first request.
pub trait ImageSource: Send + Sync {
    fn tag(&self) -> &str;
    fn id(&self) -> Option<&str>;
    /// Its size in bytes (uncompressed layers), when known.
    fn size(&self) -> Option<u64> {
        None
    }
    /// Path of the zstd-compressed `docker save` archive.
    fn archive(&self) -> BoxFut<'_, Result<PathBuf, ArchiveError>>;
}

/// Why an image's archive could not be made (the source's own typed error).
pub type ArchiveError = Box<dyn std::error::Error + Send + Sync>;

#[derive(Clone)]
pub struct ImageOp {
    source: Arc<dyn ImageSource>,
    id: Option<String>,
}

impl ImageOp {
    pub fn new(source: Arc<dyn ImageSource>) -> Self {
        ImageOp { source, id: None }
    }

    /// Name for triggers (e.g. a hook that runs when the image changed).
    pub fn id(mut self, id: &str) -> Self {
        self.id = Some(id.into());
        self
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
        Some(s)
    }

    fn decide(&self, probe: &str, _recheck: Option<&str>, _triggered: bool) -> Decision {
        match (field(probe, "image"), self.source.id()) {
            (None, _) => Decision::Fail(format!(
                "cannot ask the host's Docker about {}: {}",
                self.source.tag(),
                probe.trim()
            )),
            (Some("absent"), _) => Decision::change("not on the host", 0),
            (Some(have), Some(want)) if have != want => {
                Decision::change(format!("host has {have}, want {want}"), 0)
            }
            _ => Decision::Unchanged,
        }
    }

    fn apply<'a>(&'a self, ctx: &'a OpCtx<'a>, _flags: u32) -> BoxFut<'a, Result<bool, OpError>> {
        Box::pin(async move {
            let archive = self.source.archive().await.map_err(OpError::Step)?;
            let mut s = Script::new();
            s.raw("set -e");
            s.raw(
                "command -v zstd >/dev/null || { echo 'zstd is missing on the host' >&2; exit 1; }",
            );
            s.raw("zstd -dcq | docker load");
            // An archive is named by image id: it may carry another tag of
            // the same image (an identical build of a different context).
            if let Some(id) = self.source.id() {
                s.line("docker tag {} {}", &[id, self.source.tag()]);
            }
            ctx.long()
                .run_ok(&self.label(), s.as_str(), Input::File(archive))
                .await?;
            Ok(true)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Fixed(Option<&'static str>);

    impl ImageSource for Fixed {
        fn tag(&self) -> &str {
            "mesh/web:0123456789abcdef"
        }
        fn id(&self) -> Option<&str> {
            self.0
        }
        fn archive(&self) -> BoxFut<'_, Result<PathBuf, ArchiveError>> {
            Box::pin(async { Ok(PathBuf::from("/nonexistent")) })
        }
    }

    #[test]
    fn decides_from_the_hosts_image_id() {
        let op = ImageOp::new(Arc::new(Fixed(Some("sha256:aa"))));
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
        let dry = ImageOp::new(Arc::new(Fixed(None)));
        assert_eq!(
            dry.decide("image sha256:cc\n", None, false),
            Decision::Unchanged
        );
    }
}
