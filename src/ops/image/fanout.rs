//! Shipping through the fleet's garage: the controller's uplink carries each
//! new layer once.
//!
//! The first host of a run to lack a layer that is not in the `mesh-images`
//! bucket gets it by SSH (as on the direct path) and puts it into the bucket
//! from its own garage node; every other host that lacks it fetches it from
//! its own node (`127.0.0.1:3900`), and garage's replication carries the
//! bytes between zones. Objects are named by the layer's diff id
//! (`layers/<hex>.zst`) and a host stages a fetched one only when it
//! decompresses to that diff id: a corrupt object is refused, the layer
//! comes by SSH instead and is put back. A host whose garage is down, or
//! that cannot list the bucket, gets everything by SSH; its report says so.
//!
//! Requests are signed on the controller just before each script runs
//! ([`crate::s3`]): hosts never hold the key. The first listing of a run
//! also drops the objects of layers no image of the controller has any
//! more (`mesh prune` removes those images with the hosts' rollback window).

use super::script::{self, hex, Finish};
use super::{LayerFile, Layered, Tally};
use crate::ops::{OpCtx, OpError};
use crate::s3::{self, Request, S3Key, Signed, IMAGES_BUCKET};
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::SystemTime;
use tokio::sync::OnceCell;

/// Where a host's garage serves S3.
const ENDPOINT: &str = "127.0.0.1:3900";
/// The bucket's folder of layer files.
const PREFIX: &str = "layers/";
/// Under `--ship auto`, an image whose missing layers, times the hosts that
/// get it, come to at most this many bytes goes straight by SSH: through
/// garage every host would first wait for a bucket listing and one host's
/// put, to spare the uplink less than a second at 10 Mbit/s.
pub(crate) const DIRECT_MAX_BYTES: u64 = 1 << 20;

/// Whether `bytes` to each of `hosts` is little enough to skip garage.
fn small_enough(bytes: u64, hosts: usize) -> bool {
    bytes.saturating_mul(hosts as u64) <= DIRECT_MAX_BYTES
}

/// The object of a layer: `layers/<diff id hex>.zst`.
pub(crate) fn object_name(diff_id: &str) -> String {
    format!("{PREFIX}{}.zst", hex(diff_id))
}

/// The diff id hex an object of the bucket holds, if it is a layer's.
fn diff_hex_of(object: &str) -> Option<&str> {
    let h = object.strip_prefix(PREFIX)?.strip_suffix(".zst")?;
    script::is_hex64(h).then_some(h)
}

/// The layer objects to delete: those of layers not in `keep` (diff id hexes).
pub(crate) fn stale<'a>(objects: &'a BTreeSet<String>, keep: &BTreeSet<String>) -> Vec<&'a str> {
    objects
        .iter()
        .filter(|o| diff_hex_of(o).is_some_and(|h| !keep.contains(h)))
        .map(String::as_str)
        .collect()
}

/// What curl's exit code says, for a note.
fn curl_said(rc: &str) -> String {
    let why = match rc {
        "7" => "cannot connect",
        "22" => "an HTTP error",
        "28" => "timed out",
        "52" | "56" => "the connection broke",
        _ => return format!("curl exit {rc}"),
    };
    format!("{why}, curl exit {rc}")
}

/// What a script said of a layer: the rest of its `<verb> <hex> …` line.
fn said<'a>(out: &'a str, verb: &str, layer: &LayerFile) -> Option<&'a str> {
    let h = hex(&layer.diff_id);
    out.lines().find_map(|l| {
        l.strip_prefix(verb)?
            .strip_prefix(' ')?
            .strip_prefix(h)?
            .strip_prefix(' ')
    })
}

/// Whether a script loaded the image.
fn loaded(out: &str) -> bool {
    out.lines().any(|l| l == "loaded")
}

/// Log that `layer` is sent by SSH.
fn log_send(ctx: &OpCtx<'_>, layer: &LayerFile) {
    ctx.log.line(&format!(
        "send layer {} (file sha256 {})",
        layer.diff_id, layer.sha256
    ));
}

/// Where a layer is, once its first host settled it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Placed {
    InBucket,
    /// Its put failed: every host gets it by SSH.
    NotStored,
}

/// One run's shipping through garage, shared by every host of the run.
pub(crate) struct Fanout {
    key: S3Key,
    /// Diff id hexes whose objects stay in the bucket.
    keep: BTreeSet<String>,
    /// The image tags that ship this way, each with the number of hosts
    /// of the run that get it.
    tags: BTreeMap<String, usize>,
    /// `--ship auto`: a small change goes straight by SSH ([`DIRECT_MAX_BYTES`]).
    auto: bool,
    /// The bucket's layer objects, listed once a run (after the stale ones went).
    listed: OnceCell<Arc<BTreeSet<String>>>,
    layers: Mutex<HashMap<String, Arc<OnceCell<Placed>>>>,
    puts: AtomicUsize,
    put_bytes: AtomicU64,
}

impl std::fmt::Debug for Fanout {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Fanout")
            .field("key", &self.key)
            .field("keep", &self.keep.len())
            .finish()
    }
}

impl Fanout {
    /// `keep`: the diff ids (hex or `sha256:`) of every image the
    /// controller still has; other layers' objects are removed. `tags`:
    /// the images that ship this way, with how many hosts get each. `auto`:
    /// small changes go by SSH instead.
    pub(crate) fn new(
        key: S3Key,
        keep: impl IntoIterator<Item = String>,
        tags: BTreeMap<String, usize>,
        auto: bool,
    ) -> Self {
        Fanout {
            key,
            keep: keep.into_iter().map(|d| hex(&d).to_string()).collect(),
            tags,
            auto,
            listed: OnceCell::new(),
            layers: Mutex::new(HashMap::new()),
            puts: AtomicUsize::new(0),
            put_bytes: AtomicU64::new(0),
        }
    }

    /// Whether the image `tag` ships this way.
    pub(crate) fn ships(&self, tag: &str) -> bool {
        self.tags.contains_key(tag)
    }

    /// Whether the layers of `image` from `start` go to this host straight
    /// by SSH after all: under `--ship auto`, when their copies for every
    /// host that gets the image come to at most [`DIRECT_MAX_BYTES`].
    pub(crate) fn direct(&self, image: &Layered, start: usize) -> bool {
        let hosts = self.tags.get(&image.tag).copied().unwrap_or(1);
        let bytes = image.layers[start..].iter().map(|l| l.size).sum();
        self.auto && small_enough(bytes, hosts)
    }

    /// Layers put into the bucket by this run, and their bytes.
    pub(crate) fn uploaded(&self) -> (usize, u64) {
        (
            self.puts.load(Ordering::Relaxed),
            self.put_bytes.load(Ordering::Relaxed),
        )
    }

    fn sign(&self, req: &Request) -> Signed {
        s3::sign(&self.key, req, SystemTime::now())
    }

    fn slot(&self, diff_id: &str) -> Arc<OnceCell<Placed>> {
        let mut layers = self.layers.lock().unwrap_or_else(|e| e.into_inner());
        layers.entry(diff_id.to_string()).or_default().clone()
    }

    /// The bucket's layer objects, listed from this host unless another
    /// host of the run already did.
    async fn listed(&self, ctx: &OpCtx<'_>) -> Result<Arc<BTreeSet<String>>, OpError> {
        self.listed
            .get_or_try_init(|| async {
                let mut objects = BTreeSet::new();
                let mut token: Option<String> = None;
                loop {
                    let req = Request::list(ENDPOINT, IMAGES_BUCKET, PREFIX, token.as_deref());
                    let (s, input) = script::bucket_requests(&[(self.sign(&req), "list")]);
                    let out = ctx
                        .run_ok(&format!("list garage's {IMAGES_BUCKET}"), s.as_str(), input)
                        .await?;
                    let page = s3::parse_list(&out.stdout_str())
                        .map_err(|e| OpError::Step(Box::new(e)))?;
                    objects.extend(page.objects.into_iter().map(|o| o.key));
                    match page.next_token {
                        Some(t) if page.truncated => token = Some(t),
                        _ => break,
                    }
                }
                let gone = self.drop_stale(ctx, &objects).await;
                objects.retain(|o| !gone.contains(o));
                Ok(Arc::new(objects))
            })
            .await
            .cloned()
    }

    /// Delete the stale objects; the ones deleted (a failure is logged and
    /// left for the next run).
    async fn drop_stale(&self, ctx: &OpCtx<'_>, objects: &BTreeSet<String>) -> BTreeSet<String> {
        let stale = stale(objects, &self.keep);
        if stale.is_empty() {
            return BTreeSet::new();
        }
        let requests: Vec<(Signed, &str)> = stale
            .iter()
            .map(|o| (self.sign(&Request::delete(ENDPOINT, IMAGES_BUCKET, o)), *o))
            .collect();
        let (s, input) = script::bucket_requests(&requests);
        let title = format!("remove {} stale layers from {IMAGES_BUCKET}", stale.len());
        match ctx.run_ok(&title, s.as_str(), input).await {
            Ok(_) => stale.iter().map(|o| o.to_string()).collect(),
            Err(e) => {
                ctx.log
                    .line(&format!("{title}: {e} (left for the next run)"));
                BTreeSet::new()
            }
        }
    }

    /// Ship `image`'s layers from `start` to this host and load it: what
    /// it has to put goes up by SSH, the rest comes from its garage node.
    pub(crate) async fn ship(
        &self,
        ctx: &OpCtx<'_>,
        image: &Layered,
        start: usize,
        tally: &mut Tally,
    ) -> Result<(), OpError> {
        tally.via_garage = true;
        let listed = match self.listed(ctx).await {
            Ok(listed) => listed,
            Err(e) => {
                ctx.log.line(&format!("garage's {IMAGES_BUCKET}: {e}"));
                tally
                    .notes
                    .push("garage did not answer on this host: by ssh".into());
                return by_ssh(ctx, image, start, tally).await;
            }
        };
        let stage = script::stage_name().map_err(|e| OpError::Step(Box::new(e)))?;
        let missing = &image.layers[start..];
        let mut staged: BTreeSet<&str> = BTreeSet::new();
        let mut placed: BTreeMap<&str, (&LayerFile, Placed)> = BTreeMap::new();
        for layer in missing {
            if placed.contains_key(layer.diff_id.as_str()) {
                continue;
            }
            let mut put_here = false;
            let slot = self.slot(&layer.diff_id);
            let at = slot
                .get_or_try_init(|| async {
                    if listed.contains(&object_name(&layer.diff_id)) {
                        return Ok(Placed::InBucket);
                    }
                    put_here = true;
                    self.upload(ctx, &stage, layer, tally).await
                })
                .await?;
            if put_here {
                staged.insert(&layer.diff_id);
            }
            placed.insert(&layer.diff_id, (layer, *at));
        }
        let unstaged = |want: Placed| -> Vec<&LayerFile> {
            placed
                .iter()
                .filter(|(d, (_, p))| *p == want && !staged.contains(*d))
                .map(|(_, (l, _))| *l)
                .collect()
        };
        let first = Finish {
            fetch: unstaged(Placed::InBucket)
                .into_iter()
                .map(|l| {
                    let get = Request::get(ENDPOINT, IMAGES_BUCKET, &object_name(&l.diff_id));
                    (l, self.sign(&get))
                })
                .collect(),
            stream: unstaged(Placed::NotStored)
                .into_iter()
                .map(|l| (l, None))
                .collect(),
        };
        let out = self
            .finish(ctx, &stage, image, start, &first, tally)
            .await?;
        let again: Vec<(&LayerFile, Option<Signed>)> = first
            .fetch
            .iter()
            .filter_map(|(l, _)| {
                let said = said(&out, "fetch", l)?;
                match said.split_once(' ') {
                    None if said == "ok" => {
                        tally.garage.0 += 1;
                        tally.garage.1 += l.size;
                        None
                    }
                    None => {
                        tally.notes.push(format!(
                            "layer {} was corrupt in garage (refused by its sha256): by ssh, and put back",
                            l.diff_id
                        ));
                        let put = Request::put(
                            ENDPOINT,
                            IMAGES_BUCKET,
                            &object_name(&l.diff_id),
                            &l.sha256,
                        );
                        Some((*l, Some(self.sign(&put))))
                    }
                    Some((_, rc)) => {
                        tally.notes.push(format!(
                            "layer {} could not be fetched from garage ({}): by ssh",
                            l.diff_id,
                            curl_said(rc)
                        ));
                        Some((*l, None))
                    }
                }
            })
            .collect();
        if loaded(&out) {
            return Ok(());
        }
        if again.is_empty() {
            return Err(OpError::Refused(format!(
                "the load of {} on this host said neither loaded nor which layer is missing:\n{out}",
                image.tag
            )));
        }
        let second = Finish {
            fetch: Vec::new(),
            stream: again,
        };
        let out = self
            .finish(ctx, &stage, image, start, &second, tally)
            .await?;
        if loaded(&out) {
            Ok(())
        } else {
            Err(OpError::Refused(format!(
                "{} was not loaded on this host:\n{out}",
                image.tag
            )))
        }
    }

    /// Stream `layer` to this host and put it into the bucket from there.
    async fn upload(
        &self,
        ctx: &OpCtx<'_>,
        stage: &str,
        layer: &LayerFile,
        tally: &mut Tally,
    ) -> Result<Placed, OpError> {
        let object = object_name(&layer.diff_id);
        let put = Request::put(ENDPOINT, IMAGES_BUCKET, &object, &layer.sha256);
        ctx.log.line(&format!(
            "send layer {} (file sha256 {}) and put it into garage",
            layer.diff_id, layer.sha256
        ));
        let (s, input) = script::upload(stage, layer, &self.sign(&put));
        let title = format!("put layer {} into garage", layer.diff_id);
        let out = ctx.run_ok(&title, s.as_str(), input).await?;
        tally.ssh.0 += 1;
        tally.ssh.1 += layer.size;
        Ok(self.record_put(&out.stdout_str(), layer, tally))
    }

    /// Read a script's `put <hex> <rc>` line for `layer`.
    fn record_put(&self, out: &str, layer: &LayerFile, tally: &mut Tally) -> Placed {
        let rc = said(out, "put", layer).unwrap_or("none");
        if rc == "0" {
            tally.uploaded.0 += 1;
            tally.uploaded.1 += layer.size;
            self.puts.fetch_add(1, Ordering::Relaxed);
            self.put_bytes.fetch_add(layer.size, Ordering::Relaxed);
            Placed::InBucket
        } else {
            tally.notes.push(format!(
                "layer {} could not be put into garage ({}): by ssh to every host",
                layer.diff_id,
                curl_said(rc)
            ));
            Placed::NotStored
        }
    }

    /// Run one [`script::finish`]; its stdout.
    async fn finish(
        &self,
        ctx: &OpCtx<'_>,
        stage: &str,
        image: &Layered,
        start: usize,
        what: &Finish<'_>,
        tally: &mut Tally,
    ) -> Result<String, OpError> {
        for (l, _) in &what.fetch {
            ctx.log
                .line(&format!("fetch layer {} from garage", l.diff_id));
        }
        for (l, _) in &what.stream {
            log_send(ctx, l);
        }
        let (s, input) = script::finish(stage, image, start, what);
        let out = ctx
            .run_ok(&format!("load {}", image.tag), s.as_str(), input)
            .await?
            .stdout_str();
        for (l, put) in &what.stream {
            tally.ssh.0 += 1;
            tally.ssh.1 += l.size;
            if put.is_some() {
                self.record_put(&out, l, tally);
            }
        }
        Ok(out)
    }
}

/// The direct SSH stream, in one round trip.
pub(crate) async fn by_ssh(
    ctx: &OpCtx<'_>,
    image: &Layered,
    start: usize,
    tally: &mut Tally,
) -> Result<(), OpError> {
    for l in &image.layers[start..] {
        log_send(ctx, l);
    }
    let (s, input) = script::streamed(image, start);
    ctx.run_ok(&format!("load {}", image.tag), s.as_str(), input)
        .await?;
    let sent = &image.layers[start..];
    tally.ssh.0 += sent.len();
    tally.ssh.1 += sent.iter().map(|l| l.size).sum::<u64>();
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn d(c: char) -> String {
        format!("sha256:{}", c.to_string().repeat(64))
    }

    #[test]
    fn objects_are_named_by_diff_id_and_only_unkept_layers_go() {
        assert_eq!(
            object_name(&d('a')),
            format!("layers/{}.zst", "a".repeat(64))
        );
        let objects: BTreeSet<String> = [
            object_name(&d('a')),
            object_name(&d('b')),
            "layers/notes.txt".to_string(),
            "other/x".to_string(),
        ]
        .into();
        let keep: BTreeSet<String> = ["a".repeat(64)].into();
        assert_eq!(stale(&objects, &keep), vec![object_name(&d('b')).as_str()]);
    }

    #[test]
    fn under_auto_only_a_change_small_for_the_whole_fleet_skips_garage() {
        // A one-file change (a few hundred bytes) to 10 or 200 hosts.
        assert!(small_enough(790, 10));
        assert!(small_enough(790, 200));
        // The budget is for all copies together.
        assert!(small_enough(DIRECT_MAX_BYTES / 4, 4));
        assert!(!small_enough(DIRECT_MAX_BYTES / 4 + 1, 4));
        // A new base layer, even to two hosts; no overflow at any size.
        assert!(!small_enough(40_000_000, 2));
        assert!(!small_enough(u64::MAX, 3));
    }

    #[test]
    fn curl_exit_codes_read_as_words() {
        assert_eq!(curl_said("7"), "cannot connect, curl exit 7");
        assert_eq!(curl_said("3"), "curl exit 3");
    }
}
