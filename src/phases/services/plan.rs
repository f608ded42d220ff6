//! What `services` will put on each host, worked out on the controller
//! before anything is built or touched: every file of every service the
//! host runs rendered with the host's variables, the image tag each
//! rendered context hashes to, the host's compose file, and the routes its
//! services publish. Any missing variable or bad file stops here (exit 2).

use super::compose;
use super::folder::{Folder, ServiceDef, ServiceOptions, SourceFile};
use super::host_files;
use super::routes;
use crate::inventory::{Arch, Host, Inventory};
use crate::ops::file::sha256_hex;
use crate::template::{render_file, Source, VarSet};
use sha2::{Digest, Sha256};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// A bastion's Redis is mesh's own (from Debian), not a compose service.
pub(crate) const REDIS: &str = "redis";

/// One rendered file of a build context.
#[derive(Debug, Clone)]
pub(crate) struct RenderedFile {
    pub rel: String,
    pub bytes: Arc<Vec<u8>>,
    pub sha256: String,
    pub mode: u32,
}

/// A service as one host runs it.
#[derive(Debug, Clone)]
pub(crate) struct ServicePlan {
    pub name: String,
    /// `mesh/<service>:<first 16 hex of the context hash>`.
    pub tag: String,
    /// The host's architecture: part of the hash (an arm64 build is another image).
    pub arch: Arch,
    /// The rendered build context (all of it is hashed into `tag`).
    pub files: Vec<RenderedFile>,
    /// The files of `files` something on the host reads (see
    /// [`host_files`]): all a host gets of the context when the image is
    /// built on the controller.
    pub host_files: Vec<RenderedFile>,
    /// Paths in its folder on the host, relative to it, that the host's
    /// compose file or its hooks name (`""`: the whole folder): what is
    /// there is never removed as a file mesh no longer manages.
    pub named: Vec<String>,
    pub options: ServiceOptions,
    pub before: Option<Vec<u8>>,
    pub after: Option<Vec<u8>>,
    /// A service with a port pair: its own compose file, one project per slot.
    pub slot: Option<Slotted>,
    /// Seconds its container gets to stop after SIGTERM (compose
    /// `stop_grace_period`, default 10).
    pub stop_grace: u64,
    /// The Dockerfile stage to build (compose `build.target`).
    pub target: Option<String>,
    /// The secret values rendered into its context (build output is redacted with it).
    pub redactor: crate::template::Redactor,
}

/// How a service with a port pair runs: slot `a` on the first port, `b`
/// on the second; its compose file takes `MESH_IMAGE` and
/// `MESH_PORT_<SERVICE>` from the environment (defaults: this build, the
/// first port).
#[derive(Debug, Clone)]
pub(crate) struct Slotted {
    pub ports: (u16, u16),
    pub compose: RenderedFile,
}

/// A route one host's service publishes into its bastion's Redis.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Backend {
    pub host: String,
    pub service: String,
    /// `traefik.*` labels of the compose service, sorted.
    pub labels: Vec<(String, String)>,
    /// `http://<overlay ip>:<port>`: the first port of a pair until a
    /// deploy switches the service to its other slot.
    pub url: String,
    /// The port pair of a service that deploys between two slots.
    pub ports: Option<(u16, u16)>,
}

/// Everything `services` puts on one host.
#[derive(Debug, Clone, Default)]
pub(crate) struct HostPlan {
    pub services: Vec<ServicePlan>,
    /// The rendered compose file; `None` when the host runs nothing.
    pub compose: Option<RenderedFile>,
    pub backends: Vec<Backend>,
    /// The bastions its routes go to (each gets every route).
    pub bastions: Vec<String>,
    /// Named volumes and networks mesh creates for its compose files.
    pub shared: Vec<compose::Shared>,
}

impl HostPlan {
    pub fn service_names(&self) -> Vec<String> {
        self.services.iter().map(|s| s.name.clone()).collect()
    }
}

/// A service name as part of a variable name (`web-api` -> `WEB_API`).
pub(crate) fn var_suffix(service: &str) -> String {
    service
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() {
                c.to_ascii_uppercase()
            } else {
                '_'
            }
        })
        .collect()
}

/// `PORT_<SERVICE>` as offered to compose files (`web-api` -> `PORT_WEB_API`).
pub(crate) fn port_var(service: &str) -> String {
    format!("PORT_{}", var_suffix(service))
}

/// Ports mesh itself listens on, on every host: garage (S3, RPC, web,
/// admin) and wesher's gossip.
const MESH_PORTS: &[(u16, &str)] = &[
    (3900, "garage S3"),
    (3901, "garage RPC"),
    (3902, "garage web"),
    (3903, "garage admin"),
    (7946, "wesher gossip"),
];

/// Ports a bastion uses besides: Traefik's entry points and API, Redis,
/// CrowdSec's local API (moved off 8080 by mesh).
const BASTION_PORTS: &[(u16, &str)] = &[
    (80, "Traefik http"),
    (443, "Traefik https"),
    (8080, "Traefik's API"),
    (6379, "Redis"),
    (super::bastion::CROWDSEC_LAPI_PORT, "CrowdSec's local API"),
];

/// Every clash of a port pair with another service's pair on the host or
/// with a port mesh uses there, as `mesh.yml:line:col: ... Fix:` lines.
fn port_clashes(folder: &Folder, host: &Host, run: &[String]) -> Vec<String> {
    let mut problems = Vec::new();
    let mut taken: Vec<(u16, String)> = MESH_PORTS
        .iter()
        .chain(if host.is_bastion() {
            BASTION_PORTS
        } else {
            &[]
        })
        .map(|(p, what)| (*p, format!("{what} (mesh)")))
        .collect();
    for name in run {
        let Some(def) = folder.services.get(name) else {
            continue;
        };
        let Some((a, b)) = def.options.ports else {
            continue;
        };
        let (line, col) = def.options.ports_at.unwrap_or((1, 1));
        for port in [a, b] {
            if let Some((_, other)) = taken.iter().find(|(p, _)| *p == port) {
                problems.push(format!(
                    "{}:{line}:{col}: host {}: port {port} of service \"{name}\" is also {other}. Fix: give {name} two ports no other service of the host and none of mesh's own ({}) use",
                    def.dir.join("mesh.yml").display(),
                    host.name,
                    taken
                        .iter()
                        .filter(|(_, w)| w.ends_with("(mesh)"))
                        .map(|(p, _)| p.to_string())
                        .collect::<Vec<_>>()
                        .join(", ")
                ));
            }
        }
        taken.push((a, format!("the live port of service \"{name}\"")));
        taken.push((b, format!("the standby port of service \"{name}\"")));
    }
    problems
}

/// Plan one host. `vars` are the host's variables (facts, inventory,
/// environment, secrets). Every problem is returned, not just the first.
pub(crate) fn plan_host(
    folder: &Folder,
    inv: &Inventory,
    host: &Host,
    vars: &VarSet,
) -> Result<HostPlan, Vec<String>> {
    let mut problems = Vec::new();
    let mut vars = vars.clone();
    for def in folder.services.values() {
        if let Some((first, _)) = def.options.ports {
            // Which of its two ports a service listens on is decided when it
            // starts (the slot deploy picks): compose fills it in then.
            let var = port_var(&def.name);
            vars.add(&var, format!("${{MESH_{var}:-{first}}}"), Source::Fact);
        }
    }
    // The host's groups' compose files, rendered for it, merged.
    let mut docs = Vec::new();
    for group in &host.groups {
        let Some((path, text)) = folder.compose.get(group) else {
            continue;
        };
        match render_file(path, text.as_bytes(), &vars) {
            Ok((_, bytes)) => match compose::parse(path, &String::from_utf8_lossy(&bytes)) {
                Ok(doc) => docs.push((path.clone(), doc)),
                Err(e) => problems.push(e.to_string()),
            },
            Err(e) => problems.push(e.to_string()),
        }
    }
    if !problems.is_empty() {
        return Err(problems);
    }
    let files: Vec<PathBuf> = docs.iter().map(|(p, _)| p.clone()).collect();
    let doc = compose::merge(docs).map_err(|e| vec![e.to_string()])?;
    let defined = compose::service_names(&doc);
    let bastion = host.is_bastion();
    let run: Vec<String> = if host.services.is_empty() {
        defined.clone()
    } else {
        host.services
            .iter()
            .filter(|s| !(bastion && *s == REDIS && !defined.contains(s)))
            .cloned()
            .collect()
    };
    let groups_hint = || {
        if files.is_empty() {
            format!(
                "none of its groups ({}) has a compose file in {}",
                host.groups.join(", "),
                folder.root.display()
            )
        } else {
            format!(
                "none of {} defines it",
                files
                    .iter()
                    .map(|p| p.display().to_string())
                    .collect::<Vec<_>>()
                    .join(", ")
            )
        }
    };
    problems.extend(port_clashes(folder, host, &run));
    let mut plan = HostPlan {
        bastions: inv
            .bastions_of(host)
            .into_iter()
            .map(|b| b.name.clone())
            .collect(),
        ..HostPlan::default()
    };
    let mut images = BTreeMap::new();
    let mut keep = Vec::new();
    for name in &run {
        let Some(def) = compose::service(&doc, name) else {
            problems.push(format!(
                "host {}: runs service \"{name}\" but {}. Fix: add `services: {{ {name}: ... }}` to the compose file of one of its groups, or remove it from the host's services",
                host.name,
                groups_hint()
            ));
            continue;
        };
        let ports = folder.services.get(name).and_then(|s| s.options.ports);
        match backend(host, name, def, ports, &vars) {
            Ok(Some(b)) => plan.backends.push(b),
            Ok(None) => {}
            Err(e) => problems.push(e.to_string()),
        }
        match folder.services.get(name) {
            Some(sdef) => match render_service(
                sdef,
                &vars,
                host.arch.unwrap_or_else(Arch::native),
                build_target(def),
            ) {
                Ok(sp) => {
                    images.insert(name.clone(), sp.tag.clone());
                    plan.services.push(sp);
                }
                Err(mut p) => problems.append(&mut p),
            },
            None if def.get("image").is_some() => keep.push(name.clone()),
            None => problems.push(format!(
                "host {}: compose service \"{name}\" has no folder {} with a Dockerfile and no `image:`. Fix: add {}/Dockerfile (hosts never pull from a registry)",
                host.name,
                folder.root.join(name).display(),
                folder.root.join(name).display()
            )),
        }
    }
    if !plan.backends.is_empty() && plan.bastions.is_empty() {
        problems.push(format!(
            "host {}: its services have Traefik labels but it has no bastion to publish them to. Fix: set traefik_host: <a host with traefik in its services>",
            host.name
        ));
    }
    if !problems.is_empty() {
        return Err(problems);
    }
    // Services with a port pair run in a compose project of their own per
    // slot (`mesh-<service>-a|b`), so deploy can start the new copy beside
    // the live one; the others share the host's compose file.
    for s in &mut plan.services {
        if let Some(ports) = s.options.ports {
            let text = compose::slot_file(&doc, &s.name, &s.tag);
            let compose = rendered(
                SLOT_COMPOSE.into(),
                Arc::new(text.into_bytes()),
                None,
                false,
                &vars,
            );
            s.slot = Some(Slotted { ports, compose });
        }
    }
    let used = compose::only_services(&doc, &run);
    plan.shared = compose::shared(&used);
    // What the host reads of the contexts: its compose file's paths, and
    // the paths its services' hooks name that are context files or folders.
    let mut named = host_files::compose_paths(&used);
    for s in &plan.services {
        for hook in [&s.before, &s.after].into_iter().flatten() {
            named.extend(
                host_files::hook_paths(&s.name, hook)
                    .into_iter()
                    .filter(|p| {
                        plan.services
                            .iter()
                            .any(|o| host_files::names_a_file(&o.name, &o.files, p))
                    }),
            );
        }
    }
    named.sort();
    named.dedup();
    for s in &mut plan.services {
        s.host_files = host_files::needed(&s.name, &s.files, &named);
        s.named = host_files::inside(&s.name, &named);
    }
    for s in &mut plan.services {
        if let Some(def) = compose::service(&doc, &s.name) {
            s.stop_grace = grace_seconds(def.get("stop_grace_period"));
        }
    }
    let slotted: Vec<String> = plan
        .services
        .iter()
        .filter(|s| s.slot.is_some())
        .map(|s| s.name.clone())
        .collect();
    // Only services that share it: compose v1 misreads a file whose
    // `services:` is empty.
    if run.len() > slotted.len() {
        let text = compose::finalize(doc, &images, &keep, &slotted);
        plan.compose = Some(rendered(
            "docker-compose.yml".into(),
            Arc::new(text.into_bytes()),
            None,
            false,
            &vars,
        ));
    }
    Ok(plan)
}

/// A slotted service's own compose file, in its folder on the host.
pub(crate) const SLOT_COMPOSE: &str = ".mesh-compose.yml";

/// Why a service's Traefik labels give no route.
#[derive(Debug, thiserror::Error)]
pub(crate) enum BackendError {
    #[error("host {host}: service \"{service}\": {problem}")]
    Labels {
        host: String,
        service: String,
        problem: Box<routes::RouteError>,
    },
    #[error("host {host}: service \"{service}\" has Traefik routers but no port to route to. Fix: add `ports: [LIVE, STANDBY]` to its mesh.yml, or the label traefik.http.services.{service}.loadbalancer.server.port")]
    NoPort { host: String, service: String },
}

/// The route a compose service publishes, if it has Traefik labels.
fn backend(
    host: &Host,
    name: &str,
    def: &serde_json::Value,
    ports: Option<(u16, u16)>,
    vars: &VarSet,
) -> Result<Option<Backend>, BackendError> {
    let port = ports.map(|p| p.0);
    let Some(labels) = def.get("labels") else {
        return Ok(None);
    };
    // `<< PORT_WEB >>` in a label (as traefik-kop users write the port)
    // renders to compose's `${MESH_PORT_WEB:-8000}`: the live port here,
    // since mesh writes each route's server URL itself.
    let labels = settle_port_refs(labels);
    let labels = routes::traefik_labels(&labels).map_err(|e| BackendError::Labels {
        host: host.name.clone(),
        service: name.to_string(),
        problem: Box::new(e),
    })?;
    if !labels
        .iter()
        .any(|(k, _)| k.starts_with("traefik.http.routers."))
    {
        return Ok(None);
    }
    let port = port
        .or_else(|| routes::label_port(&labels))
        .ok_or_else(|| BackendError::NoPort {
            host: host.name.clone(),
            service: name.to_string(),
        })?;
    let ip = vars.get("OVERLAY_IP").unwrap_or(&host.address);
    Ok(Some(Backend {
        host: host.name.clone(),
        service: name.to_string(),
        labels,
        url: format!("http://{ip}:{port}"),
        ports,
    }))
}

/// Docker's own default grace before SIGKILL.
const DEFAULT_GRACE: u64 = 10;

/// A compose `stop_grace_period` (`30`, `10s`, `1m30s`, `500ms`) in whole
/// seconds, rounded up.
pub(crate) fn grace_seconds(v: Option<&serde_json::Value>) -> u64 {
    let Some(v) = v else {
        return DEFAULT_GRACE;
    };
    if let Some(n) = v.as_u64() {
        return n;
    }
    let Some(text) = v.as_str() else {
        return DEFAULT_GRACE;
    };
    if let Ok(n) = text.trim().parse::<u64>() {
        return n;
    }
    let mut total_ms: u64 = 0;
    let mut num = String::new();
    let mut chars = text.trim().chars().peekable();
    while let Some(c) = chars.next() {
        if c.is_ascii_digit() || c == '.' {
            num.push(c);
            continue;
        }
        let mut unit = c.to_string();
        if c == 'm' && chars.peek() == Some(&'s') {
            unit.push(chars.next().unwrap_or('s'));
        }
        let n: f64 = num.parse().unwrap_or(0.0);
        num.clear();
        let ms = match unit.as_str() {
            "h" => n * 3_600_000.0,
            "m" => n * 60_000.0,
            "s" => n * 1000.0,
            "ms" => n,
            _ => return DEFAULT_GRACE,
        };
        total_ms += ms as u64;
    }
    total_ms.div_ceil(1000)
}

/// Every `${MESH_PORT_<SVC>:-<port>}` in label values replaced by `<port>`.
fn settle_port_refs(labels: &serde_json::Value) -> serde_json::Value {
    use serde_json::Value;
    fn settle(s: &str) -> String {
        let mut out = String::new();
        let mut rest = s;
        while let Some(i) = rest.find("${MESH_PORT_") {
            out.push_str(&rest[..i]);
            let tail = &rest[i..];
            let parsed = tail.find('}').and_then(|end| {
                let inner = &tail[2..end];
                let (_, port) = inner.split_once(":-")?;
                port.parse::<u16>().ok().map(|p| (p, end))
            });
            match parsed {
                Some((port, end)) => {
                    out.push_str(&port.to_string());
                    rest = &tail[end + 1..];
                }
                None => {
                    out.push_str("${");
                    rest = &tail[2..];
                }
            }
        }
        out.push_str(rest);
        out
    }
    match labels {
        Value::String(s) => Value::String(settle(s)),
        Value::Array(a) => Value::Array(a.iter().map(settle_port_refs).collect()),
        Value::Object(o) => Value::Object(
            o.iter()
                .map(|(k, v)| (k.clone(), settle_port_refs(v)))
                .collect(),
        ),
        other => other.clone(),
    }
}

/// Render a service folder for one host and hash the result.
/// Compose `build: { target: T }` (a `build:` string names no target).
fn build_target(def: &serde_json::Value) -> Option<String> {
    def.get("build")?
        .get("target")?
        .as_str()
        .filter(|t| !t.is_empty())
        .map(str::to_string)
}

fn render_service(
    def: &ServiceDef,
    vars: &VarSet,
    arch: Arch,
    target: Option<String>,
) -> Result<ServicePlan, Vec<String>> {
    let mut vars = vars.clone();
    if let Some((live, _)) = def.options.ports {
        vars.add("PORT", live.to_string(), Source::Fact);
    }
    vars.add("SERVICE", &def.name, Source::Fact);
    vars.add(
        "DATA_DIR",
        format!("/containers/data/{}", def.name),
        Source::Fact,
    );
    vars.add(
        "LOG_DIR",
        format!("/containers/log/{}", def.name),
        Source::Fact,
    );
    let mut problems = Vec::new();
    let mut files = Vec::new();
    for f in &def.files {
        match render_one(&def.dir, f, &vars) {
            Ok(r) => files.push(r),
            Err(e) => problems.push(e.to_string()),
        }
    }
    let mut hook = |f: &Option<SourceFile>| {
        f.as_ref()
            .and_then(|f| match render_one(&def.dir, f, &vars) {
                Ok(r) => Some(r.bytes.to_vec()),
                Err(e) => {
                    problems.push(e.to_string());
                    None
                }
            })
    };
    let before = hook(&def.before);
    let after = hook(&def.after);
    if !problems.is_empty() {
        return Err(problems);
    }
    files.sort_by(|a, b| a.rel.cmp(&b.rel));
    let hash = context_hash(&files, arch);
    Ok(ServicePlan {
        name: def.name.clone(),
        tag: format!(
            "mesh/{}:{}{}",
            def.name,
            &hash[..16],
            super::build::tag_suffix(target.as_deref())
        ),
        arch,
        files,
        host_files: Vec::new(),
        named: Vec::new(),
        options: def.options.clone(),
        before,
        after,
        slot: None,
        stop_grace: DEFAULT_GRACE,
        target,
        redactor: vars.redactor(),
    })
}

fn render_one(
    dir: &Path,
    f: &SourceFile,
    vars: &VarSet,
) -> Result<RenderedFile, crate::template::TemplateError> {
    let path = dir.join(&f.rel);
    let (out, bytes) = render_file(&path, &f.bytes, vars)?;
    let rel = out
        .strip_prefix(dir)
        .map(|p| p.to_string_lossy().into_owned())
        .unwrap_or_else(|_| f.rel.clone());
    // Unchanged content keeps sharing the folder's bytes.
    let (bytes, same) = if bytes[..] == f.bytes[..] {
        (f.bytes.clone(), true)
    } else {
        (Arc::new(bytes), false)
    };
    Ok(rendered(rel, bytes, Some(f), same, vars))
}

/// A rendered file with its hash and mode: executable kept, and private
/// (0600/0700) when a secret value ended up in it.
fn rendered(
    rel: String,
    bytes: Arc<Vec<u8>>,
    source: Option<&SourceFile>,
    unchanged: bool,
    vars: &VarSet,
) -> RenderedFile {
    let sha256 = match source {
        Some(s) if unchanged => s.sha256.clone(),
        _ => sha256_hex(&bytes),
    };
    let secret = std::str::from_utf8(&bytes).is_ok_and(|t| vars.redact(t) != t);
    let exec = source.is_some_and(|s| s.executable);
    let mode = match (exec, secret) {
        (true, true) => 0o700,
        (true, false) => 0o755,
        (false, true) => 0o600,
        (false, false) => 0o644,
    };
    RenderedFile {
        rel,
        bytes,
        sha256,
        mode,
    }
}

/// The hash that names an image: every file's path, mode and content.
pub(crate) fn context_hash(files: &[RenderedFile], arch: Arch) -> String {
    let mut h = Sha256::new();
    // The controller's own architecture adds nothing: tags stay stable.
    if arch != Arch::native() {
        h.update(format!("platform {}\n", arch.docker_platform()).as_bytes());
    }
    for f in files {
        h.update(f.rel.as_bytes());
        h.update([0]);
        h.update(format!("{:o}", f.mode & 0o111).as_bytes());
        h.update([0]);
        h.update(f.sha256.as_bytes());
        h.update(b"\n");
    }
    crate::ops::file::hex(&h.finalize())
}

#[cfg(test)]
mod tests {
    use super::*;

    const INV: &str = "groups:
  bastion:
    hosts:
      edge: { address: 10.0.0.1, services: [traefik, redis] }
  web:
    hosts:
      w1: { address: 10.0.0.2, overlay_ip: 10.9.0.2 }
      w2: { address: 10.0.0.3, overlay_ip: 10.9.0.3, traefik_host: edge }
";

    fn folder(dir: &Path) -> Folder {
        let web = dir.join("web");
        std::fs::create_dir_all(&web).unwrap();
        std::fs::write(
            web.join("Dockerfile"),
            "FROM << BASE >>\nCOPY app.py /app.py\n",
        )
        .unwrap();
        std::fs::write(web.join("app.py"), "print('hi')\n").unwrap();
        std::fs::write(web.join("mesh.yml"), "ports: [8000, 8001]\n").unwrap();
        std::fs::write(
            dir.join("web.yml"),
            "services:\n  web:\n    network_mode: host\n    environment: { PORT: \"<< PORT_WEB >>\" }\n    labels:\n      traefik.http.routers.web.rule: Host(`web.example.test`)\n",
        )
        .unwrap();
        Folder::load(dir).unwrap()
    }

    fn vars(inv: &Inventory, host: &str, base: Option<&str>) -> VarSet {
        let h = inv.host(host).unwrap();
        let mut v = VarSet::new();
        v.add("HOSTNAME", &h.name, Source::Fact);
        if let Some(ip) = h.overlay_ip {
            v.add("OVERLAY_IP", ip.to_string(), Source::Fact);
        }
        if let Some(b) = base {
            v.add("BASE", b, Source::Vars);
        }
        v.add_secret("REDIS_PWD", "sekrit-pw-1", Source::SecretsFile);
        v
    }

    #[test]
    fn identical_contexts_share_a_tag_and_compose_points_at_it() {
        let dir = tempfile::tempdir().unwrap();
        let f = folder(dir.path());
        let inv = Inventory::parse(Path::new("i.yml"), INV).unwrap();
        let plan = |h| {
            plan_host(
                &f,
                &inv,
                inv.host(h).unwrap(),
                &vars(&inv, h, Some("debian")),
            )
            .unwrap()
        };
        let (p1, p2) = (plan("w1"), plan("w2"));
        assert_eq!(p1.services[0].tag, p2.services[0].tag);
        assert!(p1.services[0].tag.starts_with("mesh/web:"));
        // web has a port pair: its own compose file (one project per slot),
        // the port and image filled in when a slot starts.
        assert!(
            p1.compose.is_none(),
            "no service shares the host's compose file"
        );
        let slot = p1.services[0].slot.as_ref().unwrap();
        assert_eq!(slot.ports, (8000, 8001));
        let own = String::from_utf8(slot.compose.bytes.to_vec()).unwrap();
        assert!(
            own.contains(&format!("${{MESH_IMAGE:-{}}}", p1.services[0].tag)),
            "{own}"
        );
        assert!(own.contains("${MESH_PORT_WEB:-8000}"), "{own}");
        // Routes: overlay IP and live port; w1's bastion is the only one.
        assert_eq!(p1.backends[0].url, "http://10.9.0.2:8000");
        assert_eq!(p1.bastions, ["edge"]);
        // A different rendered context, a different image.
        let p3 = plan_host(
            &f,
            &inv,
            inv.host("w1").unwrap(),
            &vars(&inv, "w1", Some("ubuntu")),
        )
        .unwrap();
        assert_ne!(p3.services[0].tag, p1.services[0].tag);
    }

    #[test]
    fn a_host_gets_the_files_its_compose_file_and_hooks_read_and_the_tag_hashes_all() {
        let dir = tempfile::tempdir().unwrap();
        folder(dir.path());
        let traefik = dir.path().join("traefik");
        std::fs::create_dir_all(traefik.join("hooks")).unwrap();
        std::fs::create_dir_all(traefik.join("rules")).unwrap();
        std::fs::write(traefik.join("Dockerfile"), "FROM x\nCOPY traefik /\n").unwrap();
        std::fs::write(traefik.join("traefik"), vec![0u8; 4096]).unwrap();
        std::fs::write(traefik.join("traefik.yml"), "pw: << REDIS_PWD >>\n").unwrap();
        std::fs::write(traefik.join("rules/a.yml"), "a\n").unwrap();
        std::fs::write(traefik.join("seed.sql"), "select 1;\n").unwrap();
        std::fs::write(
            traefik.join("hooks/after.sh"),
            "psql < seed.sql\n. /etc/os-release\n",
        )
        .unwrap();
        std::fs::write(
            dir.path().join("bastion.yml"),
            "services:\n  traefik:\n    volumes:\n      - /containers/build/traefik/traefik.yml:/t.yml:ro\n      - ./traefik/rules:/rules\n      - /containers/data/traefik:/data\n",
        )
        .unwrap();
        let f = Folder::load(dir.path()).unwrap();
        let inv = Inventory::parse(Path::new("i.yml"), INV).unwrap();
        let plan =
            |h| plan_host(&f, &inv, inv.host(h).unwrap(), &vars(&inv, h, Some("d"))).unwrap();
        let edge = plan("edge");
        let t = &edge.services[0];
        let rels: Vec<&str> = t.host_files.iter().map(|f| f.rel.as_str()).collect();
        assert_eq!(rels, ["rules/a.yml", "seed.sql", "traefik.yml"]);
        assert_eq!(t.named, ["rules", "seed.sql", "traefik.yml"]);
        // The secret-bearing file keeps its private mode.
        assert_eq!(t.host_files[2].mode, 0o600);
        // The image still hashes the whole context.
        assert_eq!(t.files.len(), 5);
        assert_eq!(
            t.tag,
            format!("mesh/traefik:{}", &context_hash(&t.files, t.arch)[..16])
        );
        // web's compose file mounts nothing of its folder: it gets no file.
        let w1 = plan("w1");
        assert!(w1.services[0].host_files.is_empty());
        assert!(w1.services[0].named.is_empty());
    }

    #[test]
    fn an_arm_host_gets_its_own_image() {
        let dir = tempfile::tempdir().unwrap();
        let f = folder(dir.path());
        let inv = Inventory::parse(
            Path::new("i.yml"),
            "groups:\n  web:\n    hosts:\n      a: { address: 10.0.0.2, arch: aarch64, traefik_host: a }\n",
        )
        .unwrap();
        let plan = plan_host(
            &f,
            &inv,
            inv.host("a").unwrap(),
            &vars(&inv, "a", Some("d")),
        )
        .unwrap();
        let web = &plan.services[0];
        assert_eq!(web.arch, Arch::Aarch64);
        let arm = context_hash(&web.files, Arch::Aarch64);
        assert_ne!(arm, context_hash(&web.files, Arch::X86_64));
        assert_eq!(web.tag, format!("mesh/web:{}", &arm[..16]));
    }

    #[test]
    fn a_missing_variable_names_file_line_and_variable() {
        let dir = tempfile::tempdir().unwrap();
        let f = folder(dir.path());
        let inv = Inventory::parse(Path::new("i.yml"), INV).unwrap();
        let err = plan_host(&f, &inv, inv.host("w1").unwrap(), &vars(&inv, "w1", None))
            .unwrap_err()
            .join("\n");
        assert!(err.contains("web/Dockerfile:1:6"), "{err}");
        assert!(err.contains("<< BASE >>"), "{err}");
    }

    #[test]
    fn secret_bearing_files_are_private() {
        let dir = tempfile::tempdir().unwrap();
        let f = folder(dir.path());
        std::fs::write(dir.path().join("web/conf"), "pw=<< REDIS_PWD >>\n").unwrap();
        let f2 = Folder::load(dir.path()).unwrap();
        let inv = Inventory::parse(Path::new("i.yml"), INV).unwrap();
        let p = plan_host(
            &f2,
            &inv,
            inv.host("w1").unwrap(),
            &vars(&inv, "w1", Some("d")),
        )
        .unwrap();
        let conf = p.services[0]
            .files
            .iter()
            .find(|x| x.rel == "conf")
            .unwrap();
        assert_eq!(conf.mode, 0o600);
        let app = p.services[0]
            .files
            .iter()
            .find(|x| x.rel == "app.py")
            .unwrap();
        assert_eq!(app.mode, 0o644);
        drop(f);
    }

    #[test]
    fn port_refs_in_labels_and_clashing_ports() {
        let dir = tempfile::tempdir().unwrap();
        folder(dir.path());
        // traefik-kop style: the port label names << PORT_WEB >>.
        std::fs::write(
            dir.path().join("web.yml"),
            "services:\n  web:\n    labels:\n      traefik.http.routers.web.rule: Host(`a`)\n      traefik.http.services.web.loadbalancer.server.port: \"<< PORT_WEB >>\"\n  api:\n    labels: { traefik.http.routers.api.rule: Host(`b`) }\n",
        )
        .unwrap();
        let api = dir.path().join("api");
        std::fs::create_dir_all(&api).unwrap();
        std::fs::write(api.join("Dockerfile"), "FROM x\n").unwrap();
        std::fs::write(api.join("mesh.yml"), "# api\nports: [8001, 8002]\n").unwrap();
        let f = Folder::load(dir.path()).unwrap();
        let inv = Inventory::parse(Path::new("i.yml"), INV).unwrap();
        let err = plan_host(
            &f,
            &inv,
            inv.host("w1").unwrap(),
            &vars(&inv, "w1", Some("d")),
        )
        .unwrap_err()
        .join("\n");
        assert!(
            err.contains("web/mesh.yml:1:8: host w1: port 8001 of service \"web\" is also the live port of service \"api\""),
            "{err}"
        );
        assert!(!err.contains("MESH_PORT"), "{err}");
        std::fs::write(api.join("mesh.yml"), "ports: [3900, 9001]\n").unwrap();
        let f = Folder::load(dir.path()).unwrap();
        let err = plan_host(
            &f,
            &inv,
            inv.host("w1").unwrap(),
            &vars(&inv, "w1", Some("d")),
        )
        .unwrap_err()
        .join("\n");
        assert!(
            err.contains("garage S3 (mesh)") && err.contains("Fix:"),
            "{err}"
        );
        std::fs::write(api.join("mesh.yml"), "ports: [9000, 9001]\n").unwrap();
        let f = Folder::load(dir.path()).unwrap();
        let p = plan_host(
            &f,
            &inv,
            inv.host("w1").unwrap(),
            &vars(&inv, "w1", Some("d")),
        )
        .unwrap();
        let web = p.backends.iter().find(|b| b.service == "web").unwrap();
        assert_eq!(web.url, "http://10.9.0.2:8000");
        // Both bastions of an inventory get a worker's routes by default.
        assert_eq!(p.bastions, ["edge"]);
        assert_eq!(grace_seconds(None), 10);
        assert_eq!(grace_seconds(Some(&serde_json::json!("1m30s"))), 90);
        assert_eq!(grace_seconds(Some(&serde_json::json!("500ms"))), 1);
        assert_eq!(grace_seconds(Some(&serde_json::json!(3))), 3);
    }

    #[test]
    fn a_service_no_compose_file_defines_is_an_input_error() {
        let dir = tempfile::tempdir().unwrap();
        let f = folder(dir.path());
        let inv = Inventory::parse(
            Path::new("i.yml"),
            "groups:\n  db:\n    hosts:\n      d1: { address: 10.0.0.5, services: [web] }\n",
        )
        .unwrap();
        let err = plan_host(
            &f,
            &inv,
            inv.host("d1").unwrap(),
            &vars(&inv, "d1", Some("x")),
        )
        .unwrap_err()
        .join("\n");
        assert!(err.contains("host d1") && err.contains("Fix:"), "{err}");
    }
}
