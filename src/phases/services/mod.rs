//! `mesh services` and `mesh services-up`.
//!
//! `services`: the dockerfiles folder is loaded and rendered for every
//! selected host ([`plan`]), every distinct rendered context is built once
//! on the controller ([`build`]), then each host gets, in one step: the
//! images it lacks, of its services' rendered contexts only the files the
//! host itself reads ([`host_files`]: what its compose file mounts, its
//! hooks name) under `/containers/build/<service>/` (the whole context
//! with `--build-on-host`; files mesh no longer puts there are removed),
//! its compose file, data and log
//! directories, the hooks of the services whose files changed, and — on a
//! bastion — Redis and CrowdSec ([`bastion`]); a host without room on
//! Docker's data root for the images it lacks fails before anything is
//! written ([`RoomOp`]). Services that vanished from the folder are
//! removed. Then the routes are published ([`publish`]), and each host
//! drops the images no rollback needs ([`prune`](crate::phases::prune)).
//!
//! `services-up`: `docker compose up -d` on every host ([`up`]), then the
//! routes are published.

pub(crate) mod bastion;
pub(crate) mod build;
pub(crate) mod cache;
pub(crate) mod compose;
pub(crate) mod folder;
pub(crate) mod host_files;
pub(crate) mod layers;
pub(crate) mod plan;
pub(crate) mod publish;
pub(crate) mod routes;
pub(crate) mod slots;
pub(crate) mod up;

pub use bastion::{CROWDSEC_BOUNCER_KEY, REDIS_PWD};
pub use build::BuildError;
pub use folder::FolderError;

use super::{HostCtx, Phase, Stage, Step, StepOutcome};
use crate::inventory::{Inventory, Publisher};
use crate::ops::image::fanout::Fanout;
use crate::ops::{
    converge, AptInstall, CommandOp, DirOp, FileOp, ImageOp, ImageSource, Op, OpCtx, OpError,
    OpFailure, Outcome, RoomOp,
};
use crate::quote::Script;
use crate::s3::S3Key;
use crate::ssh::{BoxFut, Input};
use build::Image;
use plan::{HostPlan, ServicePlan};
use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::sync::Arc;

/// Where mesh keeps the services on a host.
pub(crate) const BUILD_DIR: &str = "/containers/build";
pub(crate) const LOG_DIR: &str = "/containers/log";
pub(crate) const DATA_DIR: &str = "/containers/data";
/// The routes a host's services publish, as `services` last wrote them.
pub(crate) const ROUTES_FILE: &str = "/var/lib/mesh/routes.json";

/// Options of `mesh services`.
#[derive(Debug, Clone)]
pub struct ServicesOptions {
    pub dockerfiles: PathBuf,
    /// Build on the hosts from the shipped contexts (controllers without Docker).
    pub build_on_host: bool,
    pub dry_run: bool,
    /// Local cache (image archives, build contexts).
    pub cache: PathBuf,
    pub assets: PathBuf,
    /// `deploy --service S`: only S, only on the hosts that run it.
    pub only: Option<String>,
    /// Remove the services that vanished from the folder.
    pub prune: bool,
    /// How the images reach the hosts.
    pub ship: Ship,
    /// The images' key of the fleet's garage, once `mesh nodes` made it.
    pub images_key: Option<S3Key>,
}

/// How images reach the hosts (`--ship`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum Ship {
    /// Through garage when the fleet has it and more than one host gets an
    /// image, else by SSH; a change of 1 MiB or less for all hosts together
    /// goes by SSH too.
    #[default]
    Auto,
    /// Each layer once into the fleet's garage, every host fetching it from its own node.
    Garage,
    /// Straight from this machine to every host.
    Ssh,
}

/// Why `services` stopped before touching any host.
#[derive(Debug, thiserror::Error)]
pub enum ServicesError {
    #[error(transparent)]
    Folder(#[from] FolderError),
    #[error("{}", .0.join("\n"))]
    Plan(Vec<String>),
    #[error(transparent)]
    Build(#[from] BuildError),
    #[error(transparent)]
    Cache(#[from] cache::CacheError),
    #[error("--ship garage: the fleet's garage has no images' key yet (IMAGES_KEY and IMAGES_SECRET in secrets.env). Fix: run `mesh nodes` (its garage step makes it), or use --ship ssh")]
    NoImagesKey,
}

/// What `services` settled on the controller before touching a host.
pub struct Prepared {
    plans: BTreeMap<String, HostPlan>,
    images: BTreeMap<String, Arc<Image>>,
    report: build::BuildReport,
    /// Where each bastion's Traefik API answers (`None`: it has none).
    traefik_api: Option<crate::inventory::TraefikApi>,
    /// Shipping through garage (`None`: by SSH).
    fanout: Option<Arc<Fanout>>,
}

impl Prepared {
    /// The run's shipping through garage, for its closing line.
    pub(crate) fn fanout(&self) -> Option<Arc<Fanout>> {
        self.fanout.clone()
    }

    /// Print the build report: a JSON event with `--json`, else one line.
    pub fn print(&self, json: bool) {
        if json {
            println!("{}", self.json());
        } else {
            println!("{}", self.summary());
        }
    }

    /// One line for the user: what was built.
    fn summary(&self) -> String {
        let r = &self.report;
        let line = self.build_line();
        match r.cache.as_ref().and_then(|c| c.summary()) {
            Some(c) => format!("{line}\n{c}"),
            None => line,
        }
    }

    fn build_line(&self) -> String {
        let r = &self.report;
        if !r.would_build.is_empty() {
            format!(
                "images: {} would be built, {} up to date",
                r.would_build.len(),
                r.up_to_date.len()
            )
        } else {
            format!(
                "images: {} built, {} up to date",
                r.built.len(),
                r.up_to_date.len()
            )
        }
    }

    /// The build report as a JSON event.
    fn json(&self) -> serde_json::Value {
        serde_json::json!({ "event": "images", "built": self.report.built,
            "up_to_date": self.report.up_to_date, "would_build": self.report.would_build,
            "notes": self.report.notes, "cache": self.report.cache })
    }
}

/// Load the folder, plan every selected host (every problem at once), and
/// build what the local Docker lacks. Nothing on any host is touched.
pub async fn prepare(
    opts: &ServicesOptions,
    inv: &Inventory,
    ctxs: &[Arc<HostCtx>],
    progress: &(dyn Fn(&str) + Sync),
) -> Result<Prepared, ServicesError> {
    let folder = folder::Folder::load(&opts.dockerfiles)?;
    let mut plans = BTreeMap::new();
    let mut problems = Vec::new();
    if folder.services.is_empty() && folder.compose.is_empty() {
        // Never plan "remove everything" from a wrong --dockerfiles.
        return Err(ServicesError::Plan(vec![format!(
            "{}: no service folder (with a Dockerfile) and no <group>.yml compose file: nothing to deploy, and every host would lose its services. Fix: pass --dockerfiles with the folder that holds your services",
            folder.root.display()
        )]));
    }
    let traefik_api = match &inv.ingress.traefik_api {
        Some(api) => Some(api.clone()),
        None => folder::traefik_api(&folder),
    };
    for ctx in ctxs {
        match plan::plan_host(&folder, inv, &ctx.host, &ctx.vars) {
            Ok(p) => {
                plans.insert(ctx.host.name.clone(), p);
            }
            Err(mut p) => problems.append(&mut p),
        }
        if inv.ingress.publisher == Publisher::TraefikKop
            && !ctx.host.is_bastion()
            && plans
                .get(&ctx.host.name)
                .is_some_and(|p| !p.backends.is_empty())
        {
            if let Err(e) = super::nodes::check_asset(&opts.assets, ctx.host.arch, "traefik-kop") {
                problems.push(format!("host {}: {e}", ctx.host.name));
            }
        }
    }
    if let Some(only) = &opts.only {
        narrow(&mut plans, only, &folder, &mut problems);
    }
    if !problems.is_empty() {
        return Err(ServicesError::Plan(problems));
    }
    let cap = cache::cap_from_env()?;
    let specs = build::specs(&folder.root, &plans);
    let (images, report) = if opts.build_on_host {
        (BTreeMap::new(), build::BuildReport::default())
    } else {
        build::build_all(&specs, opts.dry_run, &opts.cache, cap, progress).await?
    };
    let fanout = fanout(opts, &plans, &images, report.cache.as_ref()).await?;
    if fanout.is_some() {
        progress(&format!(
            "images ship through the fleet's garage ({}): each new layer leaves this machine once",
            crate::s3::IMAGES_BUCKET
        ));
    }
    Ok(Prepared {
        plans,
        images,
        report,
        traefik_api,
        fanout,
    })
}

/// The closing line of a run that put layers into garage (none when it put none).
pub(crate) fn fanout_line(f: Option<&Fanout>) -> Option<String> {
    let (layers, bytes) = f?.uploaded();
    (layers > 0).then(|| {
        format!(
            "garage: {layers} new layers ({}) went into {} once, for every host",
            crate::ops::room::human_bytes(bytes),
            crate::s3::IMAGES_BUCKET
        )
    })
}

/// The run's garage fan-out, as `--ship` asks: `auto` takes it when the
/// fleet's garage has the images' key, for the images more than one host gets.
async fn fanout(
    opts: &ServicesOptions,
    plans: &BTreeMap<String, HostPlan>,
    images: &BTreeMap<String, Arc<Image>>,
    cache: Option<&cache::CacheReport>,
) -> Result<Option<Arc<Fanout>>, ServicesError> {
    if opts.build_on_host || opts.dry_run || opts.ship == Ship::Ssh {
        return Ok(None);
    }
    let Some(key) = &opts.images_key else {
        return match opts.ship {
            Ship::Garage => Err(ServicesError::NoImagesKey),
            _ => Ok(None),
        };
    };
    // Images that more than one host gets (auto), or all (garage).
    let mut receivers: BTreeMap<&str, usize> = BTreeMap::new();
    for s in plans.values().flat_map(|p| &p.services) {
        if images.contains_key(&s.tag) {
            *receivers.entry(&s.tag).or_default() += 1;
        }
    }
    let auto = opts.ship == Ship::Auto;
    let min = if auto { 2 } else { 1 };
    let tags: BTreeMap<String, usize> = receivers
        .into_iter()
        .filter(|(_, n)| *n >= min)
        .map(|(t, n)| (t.to_string(), n))
        .collect();
    if tags.is_empty() {
        return Ok(None);
    }
    // The bucket keeps the layers of every image the controller keeps (as
    // the build's cache bound found them, or asked for now).
    let mut keep = match cache {
        Some(c) => c.kept_layers.clone(),
        None => cache::local_layers().await?,
    };
    keep.extend(images.values().flat_map(|i| i.diff_ids().to_vec()));
    Ok(Some(Arc::new(Fanout::new(key.clone(), keep, tags, auto))))
}

/// Keep only service `only`, on the hosts that run it (deploy).
fn narrow(
    plans: &mut BTreeMap<String, HostPlan>,
    only: &str,
    folder: &folder::Folder,
    problems: &mut Vec<String>,
) {
    plans.retain(|_, p| p.services.iter().any(|s| s.name == only));
    for p in plans.values_mut() {
        p.services.retain(|s| s.name == only);
        p.backends.retain(|b| b.service == only);
    }
    if !folder.services.contains_key(only) {
        problems.push(format!(
            "no service \"{only}\" in {}. Fix: use one of: {}",
            folder.root.display(),
            folder
                .services
                .keys()
                .cloned()
                .collect::<Vec<_>>()
                .join(", ")
        ));
        return;
    };
    if plans.is_empty() && problems.is_empty() {
        problems.push(format!(
            "no selected host runs \"{only}\". Fix: check --limit and the hosts' services"
        ));
    }
}

/// Hosts, plans and images settled by [`prepare`], for deploy.
/// What deploy takes from [`Prepared`].
pub(crate) struct Parts {
    pub plans: BTreeMap<String, HostPlan>,
    pub images: BTreeMap<String, Arc<Image>>,
    pub traefik_api: Option<crate::inventory::TraefikApi>,
    pub fanout: Option<Arc<Fanout>>,
}

impl Prepared {
    pub(crate) fn into_parts(self) -> Parts {
        Parts {
            plans: self.plans,
            images: self.images,
            traefik_api: self.traefik_api,
            fanout: self.fanout,
        }
    }
}

/// The `services` phase: one host step, then the routes.
pub fn phase(
    prepared: Prepared,
    opts: &ServicesOptions,
    inv: &Inventory,
    bastions: BTreeMap<String, Arc<HostCtx>>,
) -> Phase {
    let plans = Arc::new(prepared.plans);
    let step = Services {
        plans: plans.clone(),
        images: prepared.images,
        fanout: prepared.fanout,
        build_on_host: opts.build_on_host,
        crowdsec: inv.ingress.crowdsec,
        publisher: inv.ingress.publisher,
        assets: opts.assets.clone(),
        prune: opts.prune,
    };
    let mut phase = with_routes("services", Box::new(step), inv, bastions, false);
    phase.stages.push(Stage::Hosts(Box::new(
        crate::phases::prune::Images::after_run(),
    )));
    phase
}

/// The `services-up` phase: compose up on every host, then the routes
/// (a host whose containers did not come up is withdrawn), then the
/// standby copies a deploy left behind stop.
pub fn up_phase(inv: &Inventory, bastions: BTreeMap<String, Arc<HostCtx>>) -> Phase {
    let mut phase = with_routes("services-up", Box::new(up::Up), inv, bastions, true);
    phase.stages.push(Stage::Hosts(Box::new(up::Settle)));
    phase
}

/// A phase of one host step, then (mesh publisher) the routes of its hosts.
fn with_routes(
    name: &'static str,
    step: Box<dyn Step>,
    inv: &Inventory,
    bastions: BTreeMap<String, Arc<HostCtx>>,
    withdraw_failed: bool,
) -> Phase {
    let routes_step = step.name();
    let mut stages = vec![Stage::Hosts(step)];
    if inv.ingress.publisher == Publisher::Mesh {
        stages.push(Stage::Cluster(Box::new(publish::Routes {
            step: routes_step,
            bastions,
            inventory_hosts: inv.hosts.iter().map(|h| h.name.clone()).collect(),
            withdraw_failed,
        })));
    }
    Phase { name, stages }
}

/// The bastions whose Redis the selected hosts' routes go to, by name.
pub fn bastions_for<'a>(
    inv: &'a Inventory,
    hosts: &[&'a crate::inventory::Host],
) -> Vec<&'a crate::inventory::Host> {
    let mut out: Vec<&crate::inventory::Host> = Vec::new();
    for h in hosts {
        for b in inv.bastions_of(h) {
            if !out.iter().any(|o| o.name == b.name) {
                out.push(b);
            }
        }
    }
    out
}

/// Whether the inventory has a bastion (which then needs REDIS_PWD).
pub fn has_bastion(inv: &Inventory) -> bool {
    inv.hosts.iter().any(|h| h.is_bastion())
}

/// The per-host step of `services`.
struct Services {
    plans: Arc<BTreeMap<String, HostPlan>>,
    images: BTreeMap<String, Arc<Image>>,
    fanout: Option<Arc<Fanout>>,
    build_on_host: bool,
    crowdsec: bool,
    publisher: Publisher,
    assets: PathBuf,
    prune: bool,
}

/// An op and the service it belongs to (its hooks see its changes).
type Tagged = (Option<usize>, Box<dyn Op>);

/// Why the `services` step could not build a host's operations.
#[derive(Debug, thiserror::Error)]
pub(crate) enum StepError {
    #[error(transparent)]
    Template(#[from] crate::template::TemplateError),
    #[error(transparent)]
    Bastion(#[from] bastion::BastionError),
    #[error(transparent)]
    Arch(#[from] crate::phases::ArchError),
    #[error("internal error (a bug in mesh, please report it): no image for {0}")]
    NoImage(String),
}

impl Services {
    /// The host's ops in order; `before` names services whose before-hook
    /// runs ahead of their changes.
    async fn ops(
        &self,
        ctx: &HostCtx,
        plan: &HostPlan,
        before: &BTreeSet<usize>,
    ) -> Result<Vec<Tagged>, StepError> {
        let mut ops: Vec<Tagged> = Vec::new();
        let mut common = |op: Box<dyn Op>| ops.push((None, op));
        let ships_images = !plan.services.is_empty() && !self.build_on_host;
        if ships_images {
            // First: a host without room fails in the probe, before any write.
            common(Box::new(room_op(ctx, &plan.services, &self.images)));
            common(Box::new(AptInstall::new(["zstd"])));
        }
        for dir in ["/containers", BUILD_DIR, LOG_DIR, DATA_DIR] {
            common(Box::new(DirOp::new(dir)));
        }
        let logrotate =
            crate::template::render_builtin("logrotate-containers.j2", &ctx.vars, None)?;
        common(Box::new(FileOp::from_bytes(
            "/etc/logrotate.d/mesh-containers",
            logrotate,
        )));
        if self.prune {
            common(Box::new(remove_vanished(&plan.service_names())));
        }
        for op in shared_ops(plan) {
            common(Box::new(op));
        }
        if ctx.host.is_bastion() {
            for op in bastion::ops(ctx, self.crowdsec)? {
                common(op);
            }
        }
        if self.publisher == Publisher::TraefikKop
            && !ctx.host.is_bastion()
            && !plan.backends.is_empty()
        {
            let arch = ctx.arch().await?;
            for op in bastion::traefik_kop_ops(ctx, &self.assets, arch)? {
                common(op);
            }
        }
        for (i, s) in plan.services.iter().enumerate() {
            let id = format!("svc:{}", s.name);
            if before.contains(&i) {
                if let Some(hook) = &s.before {
                    ops.push((Some(i), Box::new(Hook::new(s, "before.sh", hook, &[]))));
                }
            }
            for op in service_ops(
                s,
                &id,
                &self.images,
                self.fanout.as_ref(),
                self.build_on_host,
            )? {
                ops.push((Some(i), op));
            }
            if let Some(hook) = &s.after {
                ops.push((Some(i), Box::new(Hook::new(s, "after.sh", hook, &[id]))));
            }
        }
        match &plan.compose {
            Some(f) => ops.push((
                None,
                Box::new(
                    FileOp::from_shared(
                        format!("{BUILD_DIR}/docker-compose.yml"),
                        f.bytes.clone(),
                        f.sha256.clone(),
                    )
                    .mode(f.mode),
                ),
            )),
            None => {
                let mut check = Script::new();
                check.line(
                    "test ! -e {}",
                    &[&format!("{BUILD_DIR}/docker-compose.yml")],
                );
                let mut run = Script::new();
                run.line("rm -f -- {}", &[&format!("{BUILD_DIR}/docker-compose.yml")]);
                ops.push((
                    None,
                    Box::new(CommandOp::new("remove docker-compose.yml", run).unless(check)),
                ));
            }
        }
        for op in firewall_ops(ctx, plan) {
            ops.push((None, Box::new(op)));
        }
        let routes = publish::plan_manifest(&ctx.host.name, plan);
        ops.push((None, Box::new(FileOp::from_bytes(ROUTES_FILE, routes))));
        Ok(ops)
    }
}

/// One service's image, files, data and log directories. Its folder on
/// the host gets the whole context only when the host builds the image;
/// otherwise only the files the host reads ([`host_files`]).
pub(crate) fn service_ops(
    s: &ServicePlan,
    id: &str,
    images: &BTreeMap<String, Arc<Image>>,
    fanout: Option<&Arc<Fanout>>,
    build_on_host: bool,
) -> Result<Vec<Box<dyn Op>>, StepError> {
    let dir = format!("{BUILD_DIR}/{}", s.name);
    let mut ops: Vec<Box<dyn Op>> = vec![Box::new(DirOp::new(&dir))];
    let shipped = if build_on_host {
        &s.files
    } else {
        &s.host_files
    };
    if let Some(op) = remove_unmanaged(&dir, shipped, &s.named) {
        ops.push(Box::new(op.id(id)));
    }
    for f in shipped {
        ops.push(Box::new(
            FileOp::from_shared(
                format!("{dir}/{}", f.rel),
                f.bytes.clone(),
                f.sha256.clone(),
            )
            .mode(f.mode)
            .id(id),
        ));
    }
    if build_on_host {
        let mut check = Script::new();
        check.line("docker image inspect {} >/dev/null", &[&s.tag]);
        let mut run = Script::new();
        run.line(
            "docker build --tag {} --label {} {}",
            &[
                &s.tag,
                &format!("{}={}", build::SERVICE_LABEL, s.name),
                &dir,
            ],
        );
        ops.push(Box::new(
            CommandOp::new(format!("build {} on the host", s.tag), run)
                .unless(check)
                .id(id),
        ));
    } else {
        let image = images
            .get(&s.tag)
            .ok_or_else(|| StepError::NoImage(s.tag.clone()))?;
        ops.push(Box::new(
            ImageOp::new(image.clone())
                .via(fanout.filter(|f| f.ships(&s.tag)).cloned())
                .id(id),
        ));
    }
    if let Some(slot) = &s.slot {
        ops.push(Box::new(
            FileOp::from_shared(
                format!("{dir}/{}", plan::SLOT_COMPOSE),
                slot.compose.bytes.clone(),
                slot.compose.sha256.clone(),
            )
            .mode(slot.compose.mode),
        ));
        ops.push(Box::new(FileOp::from_bytes(
            format!("{dir}/.mesh-ports"),
            format!("{} {}\n", slot.ports.0, slot.ports.1),
        )));
    }
    let data = format!("{DATA_DIR}/{}", s.name);
    if !s.options.data.is_empty() {
        ops.push(Box::new(DirOp::new(&data)));
    }
    for d in &s.options.data {
        let (owner, group) = d.owner.split_once(':').unwrap_or((&d.owner, &d.owner));
        ops.push(Box::new(
            DirOp::new(format!("{data}/{}", d.path))
                .owner(owner, group)
                .mode(d.mode),
        ));
    }
    if !s.options.logs.is_empty() {
        let logs = format!("{LOG_DIR}/{}", s.name);
        ops.push(Box::new(DirOp::new(&logs)));
        for l in &s.options.logs {
            ops.push(Box::new(touch(&format!("{logs}/{l}"), 0o644)));
        }
    }
    Ok(ops)
}

/// Files mesh writes in a service's folder itself (besides its context).
const OWN_FILES: &[&str] = &[plan::SLOT_COMPOSE, ".mesh-ports"];

/// Remove the files in a service's folder on the host that mesh no longer
/// puts there (a context file an earlier run shipped, a file gone from the
/// context), with their records and the folders they leave empty; never
/// mesh's own files, nor what lies under a path the host's compose file or
/// hooks name (`named`: a container may write there). `None` when the
/// whole folder is named. Exit 0 of the check: nothing to remove.
fn remove_unmanaged(
    dir: &str,
    shipped: &[plan::RenderedFile],
    named: &[String],
) -> Option<CommandOp> {
    let (check, run) = unmanaged_scripts(dir, shipped, named)?;
    Some(CommandOp::new(format!("remove unmanaged files in {dir}"), run).unless(check))
}

/// The check and the removal of [`remove_unmanaged`].
fn unmanaged_scripts(
    dir: &str,
    shipped: &[plan::RenderedFile],
    named: &[String],
) -> Option<(Script, Script)> {
    if named.iter().any(String::is_empty) {
        return None;
    }
    let mut args: Vec<String> = OWN_FILES.iter().map(|f| format!("k:{f}")).collect();
    args.extend(shipped.iter().map(|f| format!("k:{}", f.rel)));
    args.extend(named.iter().map(|n| format!("m:{n}")));
    let words: Vec<&str> = args.iter().map(String::as_str).collect();
    // Every file under the folder, less the kept ones (k:) and what lies
    // under a named path (m:).
    let stale = |s: &mut Script| {
        s.line("dir={}", &[dir]);
        s.line(
            &format!(
                "stale() {{ find \"$dir\" -mindepth 1 ! -type d 2>/dev/null | awk '{STALE_AWK}' \"$dir\"{}; }}",
                " {}".repeat(words.len())
            ),
            &words,
        );
    };
    let mut check = Script::new();
    stale(&mut check);
    check.raw("! stale | grep -q .");
    let mut run = Script::new();
    stale(&mut run);
    run.raw(&format!(
        r#"stale | while IFS= read -r f; do
  rm -f -- "$f"
  rm -f -- "{}/files/$(printf %s "$f" | sha256sum | cut -c1-32)"
  d=${{f%/*}}
  while [ "$d" != "$dir" ] && rmdir -- "$d" 2>/dev/null; do d=${{d%/*}}; done
  echo "removed $f"
done"#,
        crate::ops::STATE_DIR
    ));
    Some((check, run))
}

/// Prints the paths read on stdin that are neither kept (`k:REL`) nor
/// under a named path (`m:REL`), relative to the folder (first argument).
const STALE_AWK: &str = r#"BEGIN { dir = ARGV[1]; for (i = 2; i < ARGC; i++) { v = substr(ARGV[i], 3); if (substr(ARGV[i], 1, 2) == "k:") keep[v] = 1; else named[++n] = v } ARGC = 1 }
{ r = substr($0, length(dir) + 2); if (r in keep) next; for (i = 1; i <= n; i++) if (r == named[i] || index(r, named[i] "/") == 1) next; print }"#;

/// The room check for the images of `services` a host is about to get.
pub(crate) fn room_op(
    ctx: &HostCtx,
    services: &[ServicePlan],
    images: &BTreeMap<String, Arc<Image>>,
) -> RoomOp {
    let mut wanted: Vec<Arc<dyn ImageSource>> = Vec::new();
    let mut seen = BTreeSet::new();
    for s in services {
        if let Some(image) = images.get(&s.tag).filter(|_| seen.insert(&s.tag)) {
            wanted.push(image.clone());
        }
    }
    RoomOp::new(&ctx.host.name, wanted)
}

/// The named volumes and networks of the host's compose files, created by
/// mesh (once) so every compose project of the host shares them.
pub(crate) fn shared_ops(plan: &HostPlan) -> Vec<CommandOp> {
    plan.shared
        .iter()
        .map(|v| {
            let mut check = Script::new();
            check.line("docker {} inspect {} >/dev/null 2>&1", &[v.kind, &v.name]);
            let mut run = Script::new();
            let mut args: Vec<String> = vec![v.kind.to_string(), "create".into()];
            if let Some(d) = &v.driver {
                args.push("--driver".into());
                args.push(d.clone());
            }
            for (k, val) in &v.driver_opts {
                args.push("--opt".into());
                args.push(format!("{k}={val}"));
            }
            args.push(v.name.clone());
            let words: Vec<&str> = args.iter().map(String::as_str).collect();
            run.line(
                &format!("docker{} >/dev/null", " {}".repeat(words.len())),
                &words,
            );
            CommandOp::new(format!("{} {}", v.kind, v.name), run).unless(check)
        })
        .collect()
}

/// The host firewall (when ufw is on) lets the bastions, and only them,
/// reach the ports of the services they route to: the live and standby port.
pub(crate) fn firewall_ops(ctx: &HostCtx, plan: &HostPlan) -> Vec<CommandOp> {
    let Some(ips) = ctx.vars.get("TRAEFIK_IPS") else {
        return Vec::new();
    };
    let mut ops = Vec::new();
    for bastion_ip in ips.split(',').filter(|s| !s.is_empty()) {
        ops.extend(firewall_ops_from(plan, bastion_ip));
    }
    ops
}

fn firewall_ops_from(plan: &HostPlan, bastion_ip: &str) -> Vec<CommandOp> {
    let mut ops = Vec::new();
    for b in &plan.backends {
        let ports = match plan
            .services
            .iter()
            .find(|s| s.name == b.service)
            .and_then(|s| s.options.ports)
        {
            Some((live, standby)) => format!("{live},{standby}"),
            None => b.url.rsplit(':').next().unwrap_or_default().to_string(),
        };
        let comment = format!("mesh-{}", b.service);
        let hex: String = comment.bytes().map(|c| format!("{c:02x}")).collect();
        let tuple =
            format!("### tuple ### allow tcp {ports} 0.0.0.0/0 any {bastion_ip} in comment={hex}");
        let mut check = Script::new();
        check.line(
            "grep -q '^ENABLED=yes' /etc/ufw/ufw.conf 2>/dev/null || exit 0; grep -qxF -- {} /etc/ufw/user.rules",
            &[&tuple],
        );
        let mut run = Script::new();
        run.line(
            "ufw allow from {} to any port {} proto tcp comment {} >/dev/null",
            &[bastion_ip, &ports, &comment],
        );
        ops.push(
            CommandOp::new(
                format!("firewall: {} from {bastion_ip} to {ports}", b.service),
                run,
            )
            .unless(check),
        );
    }
    ops
}

/// An empty file, created once with this mode (its content is the
/// service's own: never rewritten).
pub(crate) fn touch(path: &str, mode: u32) -> CommandOp {
    let mut run = Script::new();
    run.line("mkdir -p -- \"$(dirname -- {})\"", &[path]);
    run.line("install -m {} /dev/null {}", &[&format!("{mode:o}"), path]);
    CommandOp::new(format!("create {path}"), run).creates(path)
}

/// Remove services no longer in the folder: their containers, images and
/// files under /containers/build. Exit 0 of the check: nothing to remove.
fn remove_vanished(wanted: &[String]) -> CommandOp {
    let list = format!(" {} ", wanted.join(" "));
    let mut check = Script::new();
    check.line("wanted={}", &[&list]);
    check.line(
        "for d in {}/*/; do [ -d \"$d\" ] || continue; n=$(basename \"$d\"); case \"$wanted\" in *\" $n \"*) ;; *) exit 1;; esac; done",
        &[BUILD_DIR],
    );
    let mut run = Script::new();
    run.line("wanted={}", &[&list]);
    run.line("for d in {}/*/; do", &[BUILD_DIR]);
    run.raw(
        r#"  [ -d "$d" ] || continue; n=$(basename "$d")
  case "$wanted" in *" $n "*) continue;; esac
  ids=$(docker ps -aq --filter "label=com.docker.compose.service=$n" 2>/dev/null || true)
  [ -z "$ids" ] || docker rm -f $ids >/dev/null
  imgs=$(docker images -q "mesh/$n" 2>/dev/null | sort -u)
  [ -z "$imgs" ] || docker rmi -f $imgs >/dev/null 2>&1 || true
  rm -rf -- "$d"
  rm -f -- "/var/lib/mesh/deploy/$n.state" "/var/lib/mesh/deploy/$n.slot" "/var/lib/mesh/deploy/$n.image" "/var/lib/mesh/deploy/$n.previous"
  echo "removed service $n"
done"#,
    );
    CommandOp::new("remove vanished services", run).unless(check)
}

/// A service hook (`hooks/before.sh`, `hooks/after.sh`), run on the host in
/// the service's folder with its rendered text on stdin (never in argv: it
/// may hold secrets).
pub(crate) struct Hook {
    label: String,
    dir: String,
    script: Arc<Vec<u8>>,
    triggers: Vec<String>,
}

impl Hook {
    pub(crate) fn new(s: &ServicePlan, file: &str, script: &[u8], triggers: &[String]) -> Self {
        Hook {
            label: format!("hook {}/hooks/{file}", s.name),
            dir: format!("{BUILD_DIR}/{}", s.name),
            script: Arc::new(script.to_vec()),
            triggers: triggers.to_vec(),
        }
    }
}

impl Op for Hook {
    fn label(&self) -> String {
        self.label.clone()
    }

    fn triggers(&self) -> &[String] {
        &self.triggers
    }

    fn probe(&self, _ctx: &OpCtx<'_>) -> Option<Script> {
        None
    }

    fn decide(
        &self,
        _probe: &str,
        _recheck: Option<&str>,
        triggered: bool,
    ) -> crate::ops::Decision {
        if self.triggers.is_empty() || triggered {
            crate::ops::Decision::change("the service's files changed", 0)
        } else {
            crate::ops::Decision::Unchanged
        }
    }

    fn apply<'a>(&'a self, ctx: &'a OpCtx<'a>, _flags: u32) -> BoxFut<'a, Result<bool, OpError>> {
        Box::pin(async move {
            let mut s = Script::new();
            s.line("cd {} 2>/dev/null || cd /", &[&self.dir]);
            s.raw("sh -se");
            ctx.run_ok(&self.label, s.as_str(), Input::Bytes(self.script.clone()))
                .await?;
            Ok(true)
        })
    }

    fn system_changing(&self) -> bool {
        true
    }
}

impl Step for Services {
    fn name(&self) -> &'static str {
        "services"
    }

    fn wants(&self, ctx: &HostCtx) -> bool {
        self.plans.contains_key(&ctx.host.name)
    }

    fn run<'a>(&'a self, ctx: &'a HostCtx) -> BoxFut<'a, Result<StepOutcome, OpFailure>> {
        Box::pin(async move {
            let fail = |e: StepError| OpFailure {
                label: "services".into(),
                error: OpError::Step(Box::new(e)),
                done: Vec::new(),
            };
            let plan = &self.plans[&ctx.host.name];
            // First a read-only pass: which services are about to change, so
            // their before-hooks run ahead of the change. A converged host
            // stops here, after one round trip.
            let tagged = self.ops(ctx, plan, &BTreeSet::new()).await.map_err(fail)?;
            let (tags, ops): (Vec<Option<usize>>, Vec<Box<dyn Op>>) = tagged.into_iter().unzip();
            let dry = converge(&ctx.op_ctx(), &ops, true).await?;
            let changing: BTreeSet<usize> = dry
                .iter()
                .zip(&tags)
                .filter(|(r, _)| r.outcome == Outcome::WouldChange)
                .filter_map(|(_, t)| *t)
                .collect();
            if ctx.dry_run || dry.iter().all(|r| r.outcome == Outcome::Unchanged) {
                return Ok(dry.into());
            }
            let (_, ops): (Vec<_>, Vec<Box<dyn Op>>) = self
                .ops(ctx, plan, &changing)
                .await
                .map_err(fail)?
                .into_iter()
                .unzip();
            Ok(converge(&ctx.op_ctx(), &ops, false).await?.into())
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::log::HostLog;
    use crate::ssh::recording::{ok, RecordingTransport};
    use crate::template::{Source, VarSet};
    use std::path::Path;

    const REDIS: &str = "redis-secret-0123456789abcdef";
    const BOUNCER: &str = "bouncer-secret-0123456789abcdef";

    /// A host where nothing exists yet: every probe answers "absent".
    fn empty_host() -> Arc<RecordingTransport> {
        Arc::new(RecordingTransport::new(|script, _| {
            let mut out = String::new();
            for line in script.lines() {
                if let Some(i) = line.strip_prefix("echo '@@mesh-op ") {
                    out.push_str(&format!(
                        "@@mesh-op {}\nstat absent\nnum absent\nrec none\nimage absent\nguard todo\n",
                        i.trim_end_matches('\'')
                    ));
                }
            }
            ok(&out)
        }))
    }

    fn sh(script: &Script) -> std::process::Output {
        std::process::Command::new("sh")
            .args(["-c", script.as_str()])
            .output()
            .unwrap()
    }

    #[test]
    fn files_mesh_no_longer_ships_are_removed_but_not_its_own_nor_named_ones() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("traefik");
        for f in [
            "Dockerfile",
            "traefik",
            "traefik.yml",
            ".mesh-ports",
            ".mesh-compose.yml",
            "rules/a.yml",
            "rules/acme/written-by-the-container",
            "old/deep/x y",
        ] {
            let p = dir.join(f);
            std::fs::create_dir_all(p.parent().unwrap()).unwrap();
            std::fs::write(p, "x").unwrap();
        }
        let shipped = vec![plan::RenderedFile {
            rel: "traefik.yml".into(),
            bytes: Arc::new(Vec::new()),
            sha256: String::new(),
            mode: 0o600,
        }];
        let named = vec!["traefik.yml".to_string(), "rules".to_string()];
        let d = dir.to_str().unwrap();
        let (check, run) = unmanaged_scripts(d, &shipped, &named).unwrap();
        crate::quote::assert_valid_sh(&run);
        assert!(!sh(&check).status.success(), "stale files found");
        let out = sh(&run);
        assert!(out.status.success(), "{out:?}");
        assert!(String::from_utf8_lossy(&out.stdout).contains("removed"));
        assert!(sh(&check).status.success(), "nothing left to remove");
        let mut left: Vec<String> = walkdir(&dir);
        left.sort();
        assert_eq!(
            left,
            [
                ".mesh-compose.yml",
                ".mesh-ports",
                "rules/a.yml",
                "rules/acme/written-by-the-container",
                "traefik.yml"
            ]
        );
        assert!(!dir.join("old").exists(), "emptied folders go too");
        // The whole folder named (mounted): nothing is ever removed.
        assert!(remove_unmanaged(d, &shipped, &[String::new()]).is_none());
    }

    fn walkdir(root: &Path) -> Vec<String> {
        let out = std::process::Command::new("find")
            .arg(root)
            .args(["-type", "f"])
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .map(|l| l[root.to_str().unwrap().len() + 1..].to_string())
            .collect()
    }

    #[test]
    fn no_secret_reaches_a_command_line_on_a_bastion_or_a_worker() {
        let dir = tempfile::tempdir().unwrap();
        let df = dir.path().join("df");
        for svc in ["web", "traefik"] {
            std::fs::create_dir_all(df.join(svc).join("hooks")).unwrap();
            std::fs::write(df.join(svc).join("Dockerfile"), "FROM x\n").unwrap();
            std::fs::write(df.join(svc).join("conf"), "password: << REDIS_PWD >>\n").unwrap();
            std::fs::write(
                df.join(svc).join("hooks/after.sh"),
                "echo << REDIS_PWD >>\n",
            )
            .unwrap();
        }
        std::fs::write(df.join("web/mesh.yml"), "ports: [8000, 8001]\n").unwrap();
        std::fs::write(
            df.join("web.yml"),
            "services:\n  web:\n    environment: { PW: \"<< REDIS_PWD >>\" }\n    labels: { traefik.http.routers.web.rule: \"Host(`a`)\" }\n",
        )
        .unwrap();
        std::fs::write(df.join("bastion.yml"), "services:\n  traefik: {}\n").unwrap();
        let inv = Inventory::parse(
            Path::new("i.yml"),
            "ingress: { publisher: traefik-kop }\ngroups:\n  bastion:\n    hosts:\n      edge: { address: 10.0.0.1, arch: x86_64, services: [traefik, redis] }\n  web:\n    hosts:\n      w1: { address: 10.0.0.2, arch: x86_64 }\n",
        )
        .unwrap();
        let assets = dir.path().join("assets");
        std::fs::create_dir_all(assets.join("x86_64")).unwrap();
        std::fs::write(assets.join("x86_64/traefik-kop"), "#!/bin/sh\n").unwrap();
        let archive = dir.path().join("img.tar.zst");
        std::fs::write(&archive, "x").unwrap();
        let folder = folder::Folder::load(&df).unwrap();
        let mut plans = BTreeMap::new();
        let mut ctxs = Vec::new();
        for name in ["edge", "w1"] {
            let host = inv.host(name).unwrap();
            let mut vars = VarSet::new();
            vars.add("OVERLAY_IP", &host.address, Source::Fact);
            vars.add("REDIS_IP", "10.0.0.1", Source::Fact);
            vars.add("HOSTNAME", name, Source::Fact);
            vars.add_secret(REDIS_PWD, REDIS, Source::SecretsFile);
            vars.add_secret(CROWDSEC_BOUNCER_KEY, BOUNCER, Source::SecretsFile);
            plans.insert(
                name.to_string(),
                plan::plan_host(&folder, &inv, host, &vars).unwrap(),
            );
            let conn = empty_host();
            let ctx = HostCtx::new(
                host.clone(),
                conn.clone(),
                HostLog::discard(),
                vars,
                false,
                false,
            );
            ctxs.push((ctx, conn));
        }
        let images = plans
            .values()
            .flat_map(|p| &p.services)
            .map(|s| {
                (
                    s.tag.clone(),
                    Arc::new(Image::fake(crate::ops::image::Layered {
                        id: "sha256:ab".into(),
                        tag: s.tag.clone(),
                        config: Arc::new(b"{}".to_vec()),
                        layers: vec![crate::ops::image::LayerFile {
                            diff_id: "sha256:cd".into(),
                            path: archive.clone(),
                            size: 1,
                            sha256: "0".repeat(64),
                        }],
                    })),
                )
            })
            .collect();
        let step = Services {
            plans: Arc::new(plans),
            images,
            fanout: None,
            build_on_host: false,
            crowdsec: true,
            publisher: Publisher::TraefikKop,
            assets,
            prune: true,
        };
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        for (ctx, conn) in &ctxs {
            let outcome = rt.block_on(step.run(ctx)).unwrap();
            assert!(outcome
                .reports
                .iter()
                .any(|r| r.outcome == Outcome::Changed));
            let calls = conn.calls();
            assert!(calls.len() > 2, "{calls:?}");
            for script in calls {
                assert!(
                    !script.contains(REDIS),
                    "REDIS_PWD in a command line:\n{script}"
                );
                assert!(
                    !script.contains(BOUNCER),
                    "bouncer key in a command line:\n{script}"
                );
            }
        }
    }
}
