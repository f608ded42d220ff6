//! Routes: a compose service's Traefik labels turned into the keys of
//! Traefik's Redis (KV) provider on its bastion, and the one atomic Redis
//! call that makes a bastion's route keys exactly the desired set.
//!
//! Pure logic: the caller reads the compose file, runs `redis-cli` and
//! prints the outcome.
//!
//! - [`traefik_labels`] reads a service's `labels:` (mapping or
//!   `KEY=VALUE` list) and validates the `traefik.*` ones against the shape
//!   of Traefik 3's dynamic configuration. This matters more than with the
//!   docker provider: Traefik's KV provider decodes the whole `traefik/`
//!   tree at once, and ONE unknown field or unparsable number anywhere in it
//!   (`field not found, node: rulez`, `strconv.ParseInt: parsing "abc"`)
//!   stops every route of that bastion from updating, retried with a growing
//!   back-off, until the key is gone (verified with Traefik 3.7.15).
//! - [`backend_keys`] maps labels to keys the way traefik-kop does
//!   (`traefik.http.routers.web.rule` -> `traefik/http/routers/web/rule`),
//!   with the docker provider's defaults (a router without `.service` gets
//!   the only service; no service label means a service named after the
//!   compose service) and the server URL supplied by mesh
//!   (`.../loadbalancer/servers/<index or host>/url`).
//! - [`host_script`] renders `redis-cli` stdin for one host: one `EVAL` of
//!   a Lua script that makes the keys that host publishes exactly the
//!   desired ones (deleting what it no longer publishes unless another host
//!   still does), and returns how many keys it changed; [`parse_changes`]
//!   reads that count.
//!
//! Key layout (all verified to route with Traefik 3.7.15's Redis provider):
//! segments after the router/service/middleware name are written in
//! lower case (Traefik matches field names case-insensitively, even
//! across sibling keys `loadBalancer/…` and `loadbalancer/…`), list values
//! stay comma-separated (`entrypoints = web,websecure` decodes as a list),
//! and `[N]` label indices become a path segment (`domains/0/main`).

use serde_json::Value;
use std::collections::{BTreeMap, BTreeSet};

/// Traefik's default `rootKey` for KV providers.
const ROOT: &str = "traefik";

/// A problem with a service's Traefik labels or the routes of a bastion.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum RouteError {
    /// `labels:` is neither a mapping nor a list.
    #[error("`labels:` is {found}. Fix: write labels as a mapping (KEY: VALUE) or a list of \"KEY=VALUE\" strings")]
    LabelsShape {
        /// The JSON type found.
        found: &'static str,
    },
    /// An item of a `labels:` list is not a string.
    #[error("`labels:` item {item} is {found}, not a \"KEY=VALUE\" string. Fix: quote it")]
    LabelItem {
        /// The item, as JSON.
        item: String,
        /// The JSON type found.
        found: &'static str,
    },
    /// A label's value is a mapping or a list.
    #[error("label {key}: its value is {found}. Fix: give a string, number or boolean")]
    LabelValue {
        /// The label.
        key: String,
        /// The JSON type found.
        found: &'static str,
    },
    /// A `traefik.*` label Traefik's KV provider would reject (which would
    /// freeze every route of the bastion, not just this service's).
    #[error("label {key}: {reason}. Fix: {fix}")]
    Label {
        /// The label, as written.
        key: String,
        /// What is wrong.
        reason: String,
        /// How to fix it.
        fix: String,
    },
    /// The same label given twice (or in two spellings) with different values.
    #[error("label {key} is given twice, as {first:?} and {second:?}. Fix: keep one")]
    Duplicate {
        /// The label, in canonical spelling.
        key: String,
        /// One value.
        first: String,
        /// The other value.
        second: String,
    },
    /// Routers without `.service` while the labels define several services.
    #[error("{proto} routers {routers} name no service, and the labels define several ({services}): Traefik would drop them. Fix: add traefik.{proto}.routers.<router>.service=<one of them>")]
    AmbiguousService {
        /// `http`, `tcp` or `udp`.
        proto: &'static str,
        /// The routers, comma-separated.
        routers: String,
        /// The services, comma-separated.
        services: String,
    },
    /// `redis-cli` printed something other than the script's count.
    #[error("Redis did not apply the routes: {reply}")]
    Reply {
        /// What redis-cli printed (trimmed).
        reply: String,
    },
}

// ---------------------------------------------------------------------------
// Labels
// ---------------------------------------------------------------------------

/// The `traefik.*` labels of a compose service, validated, in canonical
/// spelling (`traefik.<proto>.<kind>.<name>.<fields in lower case>`),
/// sorted by key. `labels` is the service's `labels:` as parsed from YAML:
/// a mapping, or a list of `KEY=VALUE` strings (`KEY` alone means an empty
/// value, like compose). Numbers and booleans become strings, null an empty
/// string. Non-Traefik labels, `traefik.enable`, `traefik.docker.*` and
/// `traefik.swarm.*` are left out (they are the docker provider's, not
/// routes). Every other `traefik.*` label must be a known field of an
/// http/tcp/udp router or service, or an option of a known middleware
/// type, with a value of the right type.
pub(crate) fn traefik_labels(labels: &Value) -> Result<Vec<(String, String)>, RouteError> {
    let mut raw: Vec<(String, String)> = Vec::new();
    match labels {
        Value::Null => {}
        Value::Object(map) => {
            for (key, value) in map {
                let value = match value {
                    Value::String(s) => s.clone(),
                    Value::Number(n) => n.to_string(),
                    Value::Bool(b) => b.to_string(),
                    Value::Null => String::new(),
                    other => {
                        return Err(RouteError::LabelValue {
                            key: key.clone(),
                            found: kind_of(other),
                        })
                    }
                };
                raw.push((key.clone(), value));
            }
        }
        Value::Array(items) => {
            for item in items {
                let Value::String(s) = item else {
                    return Err(RouteError::LabelItem {
                        item: item.to_string(),
                        found: kind_of(item),
                    });
                };
                match s.split_once('=') {
                    Some((k, v)) => raw.push((k.to_string(), v.to_string())),
                    None => raw.push((s.clone(), String::new())),
                }
            }
        }
        other => {
            return Err(RouteError::LabelsShape {
                found: kind_of(other),
            })
        }
    }
    // Later entries win, as in compose; but two spellings of one field with
    // different values is ambiguous for Traefik (it merges case-insensitively).
    let mut by_key: BTreeMap<String, (String, String)> = BTreeMap::new();
    for (key, value) in raw {
        if !is_route_label(&key) {
            continue;
        }
        let label = parse_label(&key)?;
        check_value(&key, &label, &value)?;
        let canonical = label.label_key();
        if let Some((written, old)) = by_key.get(&canonical) {
            if *written != key && *old != value {
                return Err(RouteError::Duplicate {
                    key: canonical,
                    first: old.clone(),
                    second: value,
                });
            }
        }
        by_key.insert(canonical, (key, value));
    }
    let out: Vec<(String, String)> = by_key.into_iter().map(|(k, (_, v))| (k, v)).collect();
    check_services(&out)?;
    Ok(out)
}

/// The port of the first `traefik.http.services.<x>.loadbalancer.server.port`
/// label (labels as returned by [`traefik_labels`]), for a service that has
/// no `ports:` in its mesh.yml.
pub(crate) fn label_port(labels: &[(String, String)]) -> Option<u16> {
    labels.iter().find_map(|(key, value)| {
        let label = parse_label(key).ok()?;
        (label.proto == Proto::Http
            && label.kind == Kind::Services
            && label.server_field() == Some("port"))
        .then(|| value.parse().ok())
        .flatten()
    })
}

/// Is this label one of Traefik's dynamic configuration (not ignored)?
fn is_route_label(key: &str) -> bool {
    let Some(rest) = strip_prefix_ci(key, "traefik.") else {
        return false;
    };
    !(rest.eq_ignore_ascii_case("enable")
        || strip_prefix_ci(rest, "docker.").is_some()
        || strip_prefix_ci(rest, "swarm.").is_some())
}

fn strip_prefix_ci<'a>(s: &'a str, prefix: &str) -> Option<&'a str> {
    let head = s.get(..prefix.len())?;
    head.eq_ignore_ascii_case(prefix)
        .then(|| &s[prefix.len()..])
}

fn kind_of(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "a list",
        Value::Object(_) => "a mapping",
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Proto {
    Http,
    Tcp,
    Udp,
}

impl Proto {
    const ALL: [Proto; 3] = [Proto::Http, Proto::Tcp, Proto::Udp];

    fn name(self) -> &'static str {
        match self {
            Proto::Http => "http",
            Proto::Tcp => "tcp",
            Proto::Udp => "udp",
        }
    }

    /// The field of a load-balancer server mesh fills in.
    fn server_field(self) -> &'static str {
        match self {
            Proto::Http => "url",
            Proto::Tcp | Proto::Udp => "address",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Routers,
    Services,
    Middlewares,
}

impl Kind {
    fn name(self) -> &'static str {
        match self {
            Kind::Routers => "routers",
            Kind::Services => "services",
            Kind::Middlewares => "middlewares",
        }
    }

    fn singular(self) -> &'static str {
        match self {
            Kind::Routers => "router",
            Kind::Services => "service",
            Kind::Middlewares => "middleware",
        }
    }
}

/// What a field's value must parse as (Traefik fails the whole KV tree
/// otherwise).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Leaf {
    /// Any string.
    Str,
    /// A comma-separated list.
    List,
    /// A signed integer.
    Int,
    /// 1..=65535.
    Port,
    /// Go's `strconv.ParseBool`.
    Bool,
    /// Seconds, or a Go duration (`100ms`, `1m30s`).
    Dur,
    /// A section that can be switched on empty (`tls=true`).
    Empty,
    /// Not checked (middleware options, header maps).
    Any,
}

/// One label split up: `traefik.<proto>.<kind>.<name>.<field...>`.
#[derive(Debug, Clone)]
struct Label {
    proto: Proto,
    kind: Kind,
    name: String,
    /// Field path; index segments are plain digits. Schema segments are
    /// lower-cased, free-form ones (map keys, middleware options) kept.
    field: Vec<String>,
    leaf: Leaf,
}

impl Label {
    /// Canonical label spelling, `[N]` for index segments.
    fn label_key(&self) -> String {
        let mut out = format!(
            "{ROOT}.{}.{}.{}",
            self.proto.name(),
            self.kind.name(),
            self.name
        );
        for seg in &self.field {
            if is_index(seg) {
                out.push('[');
                out.push_str(seg);
                out.push(']');
            } else {
                out.push('.');
                out.push_str(seg);
            }
        }
        out
    }

    /// The Redis key.
    fn kv_key(&self) -> String {
        let mut out = format!(
            "{ROOT}/{}/{}/{}",
            self.proto.name(),
            self.kind.name(),
            self.name
        );
        for seg in &self.field {
            out.push('/');
            out.push_str(seg);
        }
        out
    }

    /// `port` for `loadbalancer.server.port` (a service's server field).
    fn server_field(&self) -> Option<&str> {
        match self.field.as_slice() {
            [lb, server, f] if lb == "loadbalancer" && server == "server" => Some(f),
            _ => None,
        }
    }
}

fn is_index(seg: &str) -> bool {
    !seg.is_empty() && seg.bytes().all(|b| b.is_ascii_digit())
}

/// Field patterns: literal segments (lower case), `#` an index, `*` any
/// one segment, `**` one or more segments. Every entry below was loaded
/// into Traefik 3.7.15's Redis provider without a decode error; fields
/// found missing there (`server.weight` of TCP/UDP services,
/// `sticky.cookie.partitioned`) are left out on purpose.
type Schema = &'static [(&'static str, Leaf)];

const HTTP_ROUTER: Schema = &[
    ("rule", Leaf::Str),
    ("rulesyntax", Leaf::Str),
    ("priority", Leaf::Int),
    ("entrypoints", Leaf::List),
    ("middlewares", Leaf::List),
    ("service", Leaf::Str),
    ("tls", Leaf::Empty),
    ("tls.certresolver", Leaf::Str),
    ("tls.options", Leaf::Str),
    ("tls.domains.#.main", Leaf::Str),
    ("tls.domains.#.sans", Leaf::List),
    ("observability.accesslogs", Leaf::Bool),
    ("observability.metrics", Leaf::Bool),
    ("observability.tracing", Leaf::Bool),
    ("observability.traceverbosity", Leaf::Str),
    ("parentrefs", Leaf::List),
];

const TCP_ROUTER: Schema = &[
    ("rule", Leaf::Str),
    ("rulesyntax", Leaf::Str),
    ("priority", Leaf::Int),
    ("entrypoints", Leaf::List),
    ("middlewares", Leaf::List),
    ("service", Leaf::Str),
    ("tls", Leaf::Empty),
    ("tls.passthrough", Leaf::Bool),
    ("tls.certresolver", Leaf::Str),
    ("tls.options", Leaf::Str),
    ("tls.domains.#.main", Leaf::Str),
    ("tls.domains.#.sans", Leaf::List),
];

const UDP_ROUTER: Schema = &[("entrypoints", Leaf::List), ("service", Leaf::Str)];

const HTTP_SERVICE: Schema = &[
    ("loadbalancer.server.port", Leaf::Port),
    ("loadbalancer.server.scheme", Leaf::Str),
    ("loadbalancer.server.url", Leaf::Str),
    ("loadbalancer.server.weight", Leaf::Int),
    ("loadbalancer.server.preservepath", Leaf::Bool),
    ("loadbalancer.passhostheader", Leaf::Bool),
    ("loadbalancer.serverstransport", Leaf::Str),
    ("loadbalancer.strategy", Leaf::Str),
    ("loadbalancer.responseforwarding.flushinterval", Leaf::Dur),
    ("loadbalancer.sticky.cookie", Leaf::Empty),
    ("loadbalancer.sticky.cookie.name", Leaf::Str),
    ("loadbalancer.sticky.cookie.secure", Leaf::Bool),
    ("loadbalancer.sticky.cookie.httponly", Leaf::Bool),
    ("loadbalancer.sticky.cookie.samesite", Leaf::Str),
    ("loadbalancer.sticky.cookie.maxage", Leaf::Int),
    ("loadbalancer.sticky.cookie.path", Leaf::Str),
    ("loadbalancer.sticky.cookie.domain", Leaf::Str),
    ("loadbalancer.sticky.cookie.expires", Leaf::Int),
    ("loadbalancer.healthcheck.scheme", Leaf::Str),
    ("loadbalancer.healthcheck.mode", Leaf::Str),
    ("loadbalancer.healthcheck.path", Leaf::Str),
    ("loadbalancer.healthcheck.method", Leaf::Str),
    ("loadbalancer.healthcheck.status", Leaf::Int),
    ("loadbalancer.healthcheck.port", Leaf::Int),
    ("loadbalancer.healthcheck.interval", Leaf::Dur),
    ("loadbalancer.healthcheck.unhealthyinterval", Leaf::Dur),
    ("loadbalancer.healthcheck.timeout", Leaf::Dur),
    ("loadbalancer.healthcheck.hostname", Leaf::Str),
    ("loadbalancer.healthcheck.followredirects", Leaf::Bool),
    ("loadbalancer.healthcheck.headers.*", Leaf::Any),
    ("loadbalancer.passivehealthcheck.failurewindow", Leaf::Dur),
    (
        "loadbalancer.passivehealthcheck.maxfailedattempts",
        Leaf::Int,
    ),
];

const TCP_SERVICE: Schema = &[
    ("loadbalancer.server.port", Leaf::Port),
    ("loadbalancer.server.tls", Leaf::Bool),
    ("loadbalancer.serverstransport", Leaf::Str),
    ("loadbalancer.proxyprotocol.version", Leaf::Int),
    ("loadbalancer.terminationdelay", Leaf::Int),
];

const UDP_SERVICE: Schema = &[("loadbalancer.server.port", Leaf::Port)];

/// HTTP middleware types of Traefik 3 (their options are not checked).
const HTTP_MIDDLEWARES: &[&str] = &[
    "addprefix",
    "basicauth",
    "buffering",
    "chain",
    "circuitbreaker",
    "compress",
    "contenttype",
    "digestauth",
    "errors",
    "forwardauth",
    "grpcweb",
    "headers",
    "inflightreq",
    "ipallowlist",
    "passtlsclientcert",
    "plugin",
    "ratelimit",
    "redirectregex",
    "redirectscheme",
    "replacepath",
    "replacepathregex",
    "retry",
    "stripprefix",
    "stripprefixregex",
];

/// TCP middleware types of Traefik 3.
const TCP_MIDDLEWARES: &[&str] = &["inflightconn", "ipallowlist"];

fn schema(proto: Proto, kind: Kind) -> Schema {
    match (proto, kind) {
        (Proto::Http, Kind::Routers) => HTTP_ROUTER,
        (Proto::Tcp, Kind::Routers) => TCP_ROUTER,
        (Proto::Udp, Kind::Routers) => UDP_ROUTER,
        (Proto::Http, Kind::Services) => HTTP_SERVICE,
        (Proto::Tcp, Kind::Services) => TCP_SERVICE,
        (Proto::Udp, Kind::Services) => UDP_SERVICE,
        (_, Kind::Middlewares) => &[],
    }
}

/// Split `a.b[0].c` into `a`, `b`, `0`, `c`; `None` on an empty segment or
/// a malformed index.
fn split_label(key: &str) -> Option<Vec<String>> {
    let mut out = Vec::new();
    for part in key.split('.') {
        let (head, mut rest) = match part.find('[') {
            Some(i) => (&part[..i], &part[i..]),
            None => (part, ""),
        };
        if head.is_empty() {
            return None;
        }
        out.push(head.to_string());
        while !rest.is_empty() {
            let close = rest.find(']')?;
            let index = &rest[1..close];
            if !is_index(index) || !rest.starts_with('[') {
                return None;
            }
            out.push(index.to_string());
            rest = &rest[close + 1..];
        }
    }
    Some(out)
}

/// Parse and validate one `traefik.*` label key (not `enable`/`docker.*`).
fn parse_label(key: &str) -> Result<Label, RouteError> {
    let bad = |reason: String, fix: &str| RouteError::Label {
        key: key.to_string(),
        reason,
        fix: fix.to_string(),
    };
    if let Some(c) = key
        .chars()
        .find(|c| *c == '/' || c.is_whitespace() || c.is_control())
    {
        return Err(bad(
            format!(
                "{c:?} cannot appear in a label that becomes a Redis key (`/` separates its parts)"
            ),
            "use letters, digits, `-` and `_` in names",
        ));
    }
    let segs = split_label(key).ok_or_else(|| {
        bad(
            "empty part or malformed [N] index".into(),
            "write it as traefik.<http|tcp|udp>.<routers|services|middlewares>.<name>.<field>",
        )
    })?;
    let shape = "write it as traefik.<http|tcp|udp>.<routers|services|middlewares>.<name>.<field>";
    if segs.len() < 5 {
        return Err(bad("too short for a Traefik route label".into(), shape));
    }
    let proto = match segs[1].to_ascii_lowercase().as_str() {
        "http" => Proto::Http,
        "tcp" => Proto::Tcp,
        "udp" => Proto::Udp,
        other => {
            return Err(bad(
                format!("`{other}` is not published (only http, tcp and udp routes are)"),
                shape,
            ))
        }
    };
    let kind = match segs[2].to_ascii_lowercase().as_str() {
        "routers" => Kind::Routers,
        "services" => Kind::Services,
        "middlewares" if proto != Proto::Udp => Kind::Middlewares,
        other => {
            return Err(bad(
                format!(
                    "`{other}` is not something a {} label can define",
                    proto.name()
                ),
                shape,
            ))
        }
    };
    if key.split('.').take(4).any(|part| part.contains('[')) {
        return Err(bad("`[N]` indices belong after the name".into(), shape));
    }
    let name = segs[3].clone();
    if name.contains('@') {
        return Err(bad(
            format!(
                "`{name}` is not a valid {} name (`@` names a provider)",
                kind.singular()
            ),
            "drop the `@…` part from the name",
        ));
    }
    let rest = &segs[4..];
    let what = format!("{} {}", proto.name(), kind.singular());
    if kind == Kind::Middlewares {
        let types = if proto == Proto::Http {
            HTTP_MIDDLEWARES
        } else {
            TCP_MIDDLEWARES
        };
        let ty = rest[0].to_ascii_lowercase();
        if !types.contains(&ty.as_str()) {
            return Err(bad(
                format!(
                    "`{}` is not a Traefik {what} type. Traefik's Redis provider stops updating every route of the bastion on one unknown field",
                    rest[0]
                ),
                &format!("use one of: {}", types.join(", ")),
            ));
        }
        let mut field = vec![ty];
        field.extend(rest[1..].iter().cloned());
        return Ok(Label {
            proto,
            kind,
            name,
            field,
            leaf: Leaf::Any,
        });
    }
    let lower: Vec<String> = rest.iter().map(|s| s.to_ascii_lowercase()).collect();
    for (pattern, leaf) in schema(proto, kind) {
        if let Some(field) = match_pattern(pattern, rest, &lower) {
            return Ok(Label {
                proto,
                kind,
                name,
                field,
                leaf: *leaf,
            });
        }
    }
    let known: Vec<&str> = schema(proto, kind).iter().map(|(p, _)| *p).collect();
    Err(bad(
        format!(
            "`{}` is not a field of a Traefik {what}. Traefik's Redis provider stops updating every route of the bastion on one unknown field",
            rest.join(".")
        ),
        &format!("use one of: {}", known.join(", ")),
    ))
}

/// Match a field path against a pattern; the canonical field on success
/// (literal segments lower case, free-form ones as written).
fn match_pattern(pattern: &str, segs: &[String], lower: &[String]) -> Option<Vec<String>> {
    let pats: Vec<&str> = pattern.split('.').collect();
    let mut out = Vec::new();
    for (i, pat) in pats.iter().enumerate() {
        match *pat {
            "**" => {
                if i >= segs.len() {
                    return None;
                }
                out.extend(segs[i..].iter().cloned());
                return Some(out);
            }
            "*" => out.push(segs.get(i)?.clone()),
            "#" => {
                let s = segs.get(i)?;
                if !is_index(s) {
                    return None;
                }
                out.push(s.clone());
            }
            lit => {
                if lower.get(i)? != lit {
                    return None;
                }
                out.push(lit.to_string());
            }
        }
    }
    (out.len() == segs.len()).then_some(out)
}

/// Check a label's value parses as Traefik will parse it.
fn check_value(key: &str, label: &Label, value: &str) -> Result<(), RouteError> {
    let ok = match label.leaf {
        Leaf::Str | Leaf::List | Leaf::Any => true,
        Leaf::Int => value.parse::<i64>().is_ok(),
        Leaf::Port => value.parse::<u16>().is_ok_and(|p| p > 0),
        Leaf::Bool => go_bool(value),
        Leaf::Empty => value.is_empty() || go_bool(value),
        Leaf::Dur => value.parse::<i64>().is_ok() || go_duration(value),
    };
    if ok {
        return Ok(());
    }
    let (want, fix) = match label.leaf {
        Leaf::Int => ("an integer", "write a whole number"),
        Leaf::Port => ("a port (1-65535)", "write a port number"),
        Leaf::Bool | Leaf::Empty => ("a boolean", "write true or false"),
        _ => (
            "a duration",
            "write seconds or a Go duration like 100ms or 1m30s",
        ),
    };
    Err(RouteError::Label {
        key: key.to_string(),
        reason: format!("{value:?} is not {want}; Traefik's Redis provider would stop updating every route of the bastion"),
        fix: fix.to_string(),
    })
}

/// Go's `strconv.ParseBool`.
fn go_bool(v: &str) -> bool {
    matches!(
        v,
        "1" | "t" | "T" | "true" | "TRUE" | "True" | "0" | "f" | "F" | "false" | "FALSE" | "False"
    )
}

/// Go's `time.ParseDuration` syntax: `[-+]?(\d*\.?\d+ unit)+` or `0`.
fn go_duration(v: &str) -> bool {
    let s = v.strip_prefix(['-', '+']).unwrap_or(v);
    if s == "0" {
        return true;
    }
    let mut rest = s;
    if rest.is_empty() {
        return false;
    }
    while !rest.is_empty() {
        let num_len = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(rest.len());
        let num = &rest[..num_len];
        if num.is_empty() || num == "." || num.matches('.').count() > 1 {
            return false;
        }
        rest = &rest[num_len..];
        let Some(unit) = ["ns", "us", "µs", "μs", "ms", "s", "m", "h"]
            .into_iter()
            .filter(|u| rest.starts_with(u))
            .max_by_key(|u| u.len())
        else {
            return false;
        };
        rest = &rest[unit.len()..];
    }
    true
}

/// Routers without `.service` need exactly one service to default to.
fn check_services(labels: &[(String, String)]) -> Result<(), RouteError> {
    let parsed: Vec<Label> = labels
        .iter()
        .filter_map(|(k, _)| parse_label(k).ok())
        .collect();
    for proto in Proto::ALL {
        let (routers, services) = routers_and_services(&parsed, proto);
        let orphans: Vec<&str> = routers
            .iter()
            .filter(|(_, has_service)| !**has_service)
            .map(|(name, _)| name.as_str())
            .collect();
        if !orphans.is_empty() && services.len() > 1 {
            return Err(RouteError::AmbiguousService {
                proto: proto.name(),
                routers: orphans.join(", "),
                services: services
                    .iter()
                    .map(String::as_str)
                    .collect::<Vec<_>>()
                    .join(", "),
            });
        }
    }
    Ok(())
}

/// Routers of one protocol (name -> has an explicit `.service`) and the
/// services the labels define.
fn routers_and_services(
    labels: &[Label],
    proto: Proto,
) -> (BTreeMap<String, bool>, BTreeSet<String>) {
    let mut routers = BTreeMap::new();
    let mut services = BTreeSet::new();
    for l in labels.iter().filter(|l| l.proto == proto) {
        match l.kind {
            Kind::Routers => {
                let explicit = routers.entry(l.name.clone()).or_insert(false);
                *explicit |= l.field == ["service"];
            }
            Kind::Services => {
                services.insert(l.name.clone());
            }
            Kind::Middlewares => {}
        }
    }
    (routers, services)
}

// ---------------------------------------------------------------------------
// Keys
// ---------------------------------------------------------------------------

/// The Redis keys one backend publishes, sorted: every label as a key under
/// `traefik/` (`traefik.http.routers.web.rule` -> `traefik/http/routers/web/rule`)
/// plus the backend's server in each service the labels define, at
/// `traefik/<proto>/services/<svc>/loadbalancer/servers/<server>/<url|address>`.
///
/// As with Traefik's docker provider: labels that define no service of a
/// protocol that has routers get a service named `service` (the compose
/// service); a router without `.service` gets the only service. The
/// `loadbalancer.server.port`/`.url` labels are not copied (`url`, from
/// mesh, is `http://<overlay ip>:<live port>`); `.scheme` replaces the
/// URL's scheme; other `server.*` fields (weight, …) go to the server.
/// TCP and UDP servers get `address` = the URL's `host:port`.
///
/// `labels` come from [`traefik_labels`] (others are skipped).
/// `server` names the backend's entry under `servers/`: it must differ
/// between the hosts serving one service and stay stable across runs —
/// an index (the host's position among them) or the host name (Traefik
/// takes any path segment there as a list item; verified with 3.7.15).
/// It must not contain `/`.
pub(crate) fn backend_keys(
    service: &str,
    labels: &[(String, String)],
    server: impl std::fmt::Display,
    url: &str,
) -> Vec<(String, String)> {
    let server_index = server.to_string();
    let parsed: Vec<(Label, &str)> = labels
        .iter()
        .filter_map(|(k, v)| parse_label(k).ok().map(|l| (l, v.as_str())))
        .collect();
    let only_labels: Vec<Label> = parsed.iter().map(|(l, _)| l.clone()).collect();
    let mut out: BTreeMap<String, String> = BTreeMap::new();
    for proto in Proto::ALL {
        let (routers, mut services) = routers_and_services(&only_labels, proto);
        if services.is_empty() {
            if routers.is_empty() {
                continue;
            }
            services.insert(service.to_string());
        }
        if services.len() == 1 {
            let only = services.iter().next().expect("one service");
            for (router, _) in routers.iter().filter(|(_, explicit)| !**explicit) {
                out.insert(
                    format!("{ROOT}/{}/routers/{router}/service", proto.name()),
                    only.clone(),
                );
            }
        }
        for svc in &services {
            let server = format!(
                "{ROOT}/{}/services/{svc}/loadbalancer/servers/{server_index}",
                proto.name()
            );
            let scheme = parsed.iter().find_map(|(l, v)| {
                (l.proto == proto
                    && l.kind == Kind::Services
                    && l.name == *svc
                    && l.server_field() == Some("scheme"))
                .then_some(*v)
            });
            let value = match proto {
                Proto::Http => with_scheme(url, scheme),
                Proto::Tcp | Proto::Udp => authority(url).to_string(),
            };
            out.insert(format!("{server}/{}", proto.server_field()), value);
        }
    }
    for (label, value) in &parsed {
        if label.kind == Kind::Services {
            match label.server_field() {
                Some("port" | "scheme" | "url") => continue,
                Some(field) => {
                    out.insert(
                        format!(
                            "{ROOT}/{}/services/{}/loadbalancer/servers/{server_index}/{field}",
                            label.proto.name(),
                            label.name
                        ),
                        value.to_string(),
                    );
                    continue;
                }
                None => {}
            }
        }
        out.insert(label.kv_key(), value.to_string());
    }
    out.into_iter().collect()
}

/// `url` with its scheme replaced by `scheme`, if any.
fn with_scheme(url: &str, scheme: Option<&str>) -> String {
    match (scheme, url.split_once("://")) {
        (Some(s), Some((_, rest))) if !s.is_empty() => format!("{s}://{rest}"),
        _ => url.to_string(),
    }
}

/// `host:port` of a URL (`http://10.1.2.3:8080/x` -> `10.1.2.3:8080`).
fn authority(url: &str) -> &str {
    let rest = url.split_once("://").map_or(url, |(_, r)| r);
    rest.split('/').next().unwrap_or(rest)
}

// ---------------------------------------------------------------------------
// Redis
// ---------------------------------------------------------------------------

/// The per-host reconcile script. ARGV[1] is the host, then key/value
/// pairs. Each host owns the set `mesh:routes:<host>` of keys it publishes;
/// `mesh:hosts` lists the hosts that publish any. Reads first, then writes,
/// so nothing is half-applied; `pcall(GET)` makes a key of another type
/// count as different (SET replaces it). Sets only what differs, so a
/// converged bastion sees no write to `traefik/` (and Traefik no reload).
/// A key the host no longer publishes is deleted unless another host still
/// does (routers shared by the hosts of one service). Returns the number of
/// keys set plus keys deleted.
const RECONCILE_LUA: &str = r#"local host = ARGV[1]
local owner = 'mesh:routes:' .. host
local want = {}
for i = 2, #ARGV, 2 do want[ARGV[i]] = ARGV[i + 1] end
local others = {}
for _, h in ipairs(redis.call('SMEMBERS', 'mesh:hosts')) do
  if h ~= host then others[#others + 1] = 'mesh:routes:' .. h end
end
local stale = {}
for _, k in ipairs(redis.call('SMEMBERS', owner)) do
  if want[k] == nil then
    local shared = false
    for _, o in ipairs(others) do
      if redis.call('SISMEMBER', o, k) == 1 then shared = true; break end
    end
    if not shared then stale[#stale + 1] = k end
  end
end
local set = {}
for i = 2, #ARGV, 2 do
  local cur = redis.pcall('GET', ARGV[i])
  if type(cur) ~= 'string' or cur ~= ARGV[i + 1] then set[#set + 1] = i end
end
local changed = 0
for _, k in ipairs(stale) do changed = changed + redis.call('DEL', k) end
for _, i in ipairs(set) do
  redis.call('SET', ARGV[i], ARGV[i + 1])
  changed = changed + 1
end
redis.call('DEL', owner)
if #ARGV > 1 then
  for i = 2, #ARGV, 2 do redis.call('SADD', owner, ARGV[i]) end
  redis.call('SADD', 'mesh:hosts', host)
else
  redis.call('SREM', 'mesh:hosts', host)
end
return changed"#;

/// `redis-cli` stdin that makes the keys `host` publishes exactly
/// `desired`, atomically: one line, `EVAL <lua> 0 <host> k1 v1 k2 v2 …`.
/// It replies with the number of keys it set or deleted (0 on a converged
/// bastion; read it with [`parse_changes`]). Keys and values travel as
/// arguments, quoted for redis-cli, so nothing is interpreted. The
/// password goes in `REDISCLI_AUTH`, never in this text. Redis must run
/// with `notify-keyspace-events KEA` for Traefik to see the change.
pub(crate) fn host_script(host: &str, desired: &BTreeMap<String, String>) -> String {
    let mut out = String::from("EVAL ");
    out.push_str(&redis_quote(RECONCILE_LUA));
    out.push_str(" 0 ");
    out.push_str(&redis_quote(host));
    for (key, value) in desired {
        out.push(' ');
        out.push_str(&redis_quote(key));
        out.push(' ');
        out.push_str(&redis_quote(value));
    }
    out.push('\n');
    out
}

/// Drops owners and their keys (a key stays while another owner kept
/// here still publishes it). ARGV[1] is the mode: `host` drops the owners
/// of host ARGV[2] (`<host>` alone, as older mesh versions wrote, and
/// `<host>/<service>` for a service not in ARGV[3..]); `fleet` drops every
/// owner whose host is not in ARGV[2..]. Returns the number of keys deleted.
const PRUNE_LUA: &str = r#"local mode = ARGV[1]
local keep = {}
local first = 3
if mode ~= 'host' then first = 2 end
for i = first, #ARGV do keep[ARGV[i]] = true end
local drop, stay = {}, {}
for _, o in ipairs(redis.call('SMEMBERS', 'mesh:hosts')) do
  local h, s = string.match(o, '^([^/]*)/(.*)$')
  if h == nil then h = o end
  local gone
  if mode == 'host' then
    gone = (h == ARGV[2]) and (s == nil or not keep[s])
  else
    gone = not keep[h]
  end
  if gone then drop[#drop + 1] = o else stay[#stay + 1] = o end
end
local changed = 0
for _, o in ipairs(drop) do
  for _, k in ipairs(redis.call('SMEMBERS', 'mesh:routes:' .. o)) do
    local shared = false
    for _, s in ipairs(stay) do
      if redis.call('SISMEMBER', 'mesh:routes:' .. s, k) == 1 then shared = true; break end
    end
    if not shared then changed = changed + redis.call('DEL', k) end
  end
  redis.call('DEL', 'mesh:routes:' .. o)
  redis.call('SREM', 'mesh:hosts', o)
end
return changed"#;

fn eval_line(lua: &str, args: &[&str]) -> String {
    let mut out = String::from("EVAL ");
    out.push_str(&redis_quote(lua));
    out.push_str(" 0");
    for a in args {
        out.push(' ');
        out.push_str(&redis_quote(a));
    }
    out.push('\n');
    out
}

/// `redis-cli` stdin that withdraws every owner of `host` except its
/// services `keep` (an empty `keep`: the whole host leaves the load balancer).
pub(crate) fn prune_host_script(host: &str, keep: &[String]) -> String {
    let mut args = vec!["host", host];
    args.extend(keep.iter().map(String::as_str));
    eval_line(PRUNE_LUA, &args)
}

/// `redis-cli` stdin that removes the keys of every host not in `hosts`
/// (hosts removed from the inventory).
pub(crate) fn forget_hosts_script(hosts: &[String]) -> String {
    let mut args = vec!["fleet"];
    args.extend(hosts.iter().map(String::as_str));
    eval_line(PRUNE_LUA, &args)
}

/// The number of keys changed, from what `redis-cli` printed for
/// [`host_script`] (stdin not a terminal: a bare integer, or an error).
pub(crate) fn parse_changes(stdout: &str) -> Result<u64, RouteError> {
    let text = stdout.trim();
    let last = text.lines().last().unwrap_or("").trim();
    let last = last.strip_prefix("(integer)").map_or(last, str::trim);
    last.parse().map_err(|_| RouteError::Reply {
        reply: text.to_string(),
    })
}

/// One argument for redis-cli's line parser: in double quotes, `\` and `"`
/// escaped, newline/CR/tab as `\n`/`\r`/`\t`, every other byte outside
/// printable ASCII as `\xHH` (so the line is pure ASCII and byte-exact).
pub(crate) fn redis_quote(arg: &str) -> String {
    let mut out = String::with_capacity(arg.len() + 2);
    out.push('"');
    for &b in arg.as_bytes() {
        match b {
            b'\\' => out.push_str("\\\\"),
            b'"' => out.push_str("\\\""),
            b'\n' => out.push_str("\\n"),
            b'\r' => out.push_str("\\r"),
            b'\t' => out.push_str("\\t"),
            0x20..=0x7e => out.push(b as char),
            _ => out.push_str(&format!("\\x{b:02x}")),
        }
    }
    out.push('"');
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn kv(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn labels_as_mapping() {
        let labels = json!({
            "traefik.http.routers.web.rule": "Host(`web.example.test`)",
            "traefik.enable": true,
            "traefik.http.routers.web.priority": 10,
            "traefik.http.routers.web.tls": true,
            "com.example.owner": "me",
        });
        assert_eq!(
            traefik_labels(&labels).unwrap(),
            kv(&[
                ("traefik.http.routers.web.priority", "10"),
                ("traefik.http.routers.web.rule", "Host(`web.example.test`)"),
                ("traefik.http.routers.web.tls", "true"),
            ])
        );
    }

    #[test]
    fn labels_as_list() {
        let labels = json!([
            "traefik.enable=true",
            "traefik.http.routers.web.rule=Host(`x`) && Query(`a=b`)",
            "traefik.docker.network=proxy",
            "maintainer=someone",
            "traefik.http.routers.web.tls",
        ]);
        assert_eq!(
            traefik_labels(&labels).unwrap(),
            kv(&[
                ("traefik.http.routers.web.rule", "Host(`x`) && Query(`a=b`)"),
                ("traefik.http.routers.web.tls", ""),
            ])
        );
    }

    #[test]
    fn non_traefik_labels_ignored() {
        let labels = json!({ "a": "1", "traefik": "x", "traefikx.http.routers.a.rule": "y",
            "traefik.enable": "false", "traefik.docker.network": "n", "traefik.docker.lbswarm": "true", "traefik.swarm.network": "n" });
        assert_eq!(traefik_labels(&labels).unwrap(), vec![]);
        assert_eq!(traefik_labels(&Value::Null).unwrap(), vec![]);
    }

    #[test]
    fn label_shapes_refused() {
        assert!(matches!(
            traefik_labels(&json!("x")),
            Err(RouteError::LabelsShape { .. })
        ));
        assert!(matches!(
            traefik_labels(&json!([1])),
            Err(RouteError::LabelItem { .. })
        ));
        assert!(matches!(
            traefik_labels(&json!({ "traefik.http.routers.a.rule": ["x"] })),
            Err(RouteError::LabelValue { .. })
        ));
    }

    #[test]
    fn canonical_spelling_and_indices() {
        let labels = json!([
            "traefik.HTTP.Routers.Web.Rule=Host(`a`)",
            "traefik.http.routers.Web.EntryPoints=web,websecure",
            "traefik.http.routers.Web.tls.domains[0].main=example.test",
            "traefik.http.services.Web.loadBalancer.passHostHeader=false",
            "traefik.http.middlewares.hdr.headers.customRequestHeaders.X-Foo=bar",
        ]);
        let labels = traefik_labels(&labels).unwrap();
        assert_eq!(
            labels,
            kv(&[
                (
                    "traefik.http.middlewares.hdr.headers.customRequestHeaders.X-Foo",
                    "bar"
                ),
                ("traefik.http.routers.Web.entrypoints", "web,websecure"),
                ("traefik.http.routers.Web.rule", "Host(`a`)"),
                (
                    "traefik.http.routers.Web.tls.domains[0].main",
                    "example.test"
                ),
                (
                    "traefik.http.services.Web.loadbalancer.passhostheader",
                    "false"
                ),
            ])
        );
        let keys = backend_keys("web", &labels, 0, "http://10.0.0.1:8080");
        assert_eq!(
            keys,
            kv(&[
                (
                    "traefik/http/middlewares/hdr/headers/customRequestHeaders/X-Foo",
                    "bar"
                ),
                ("traefik/http/routers/Web/entrypoints", "web,websecure"),
                ("traefik/http/routers/Web/rule", "Host(`a`)"),
                ("traefik/http/routers/Web/service", "Web"),
                (
                    "traefik/http/routers/Web/tls/domains/0/main",
                    "example.test"
                ),
                (
                    "traefik/http/services/Web/loadbalancer/passhostheader",
                    "false"
                ),
                (
                    "traefik/http/services/Web/loadbalancer/servers/0/url",
                    "http://10.0.0.1:8080"
                ),
            ])
        );
    }

    #[test]
    fn unknown_fields_and_bad_values_refused() {
        for bad in [
            json!({ "traefik.http.routers.web.rulez": "x" }),
            json!({ "traefik.http.routers.web.priority": "high" }),
            json!({ "traefik.http.services.web.loadbalancer.server.port": "http" }),
            json!({ "traefik.http.services.web.loadbalancer.server.port": 0 }),
            json!({ "traefik.http.services.web.loadbalancer.passhostheader": "yes" }),
            json!({ "traefik.http.services.web.loadbalancer.healthcheck.interval": "5 s" }),
            json!({ "traefik.http.middlewares.m.stripprefixes.prefixes": "/a" }),
            json!({ "traefik.udp.middlewares.m.ipallowlist.sourcerange": "10.0.0.0/8" }),
            json!({ "traefik.http.routers.a/b.rule": "x" }),
            json!({ "traefik.http.routers.a@docker.rule": "x" }),
            json!({ "traefik.http.routers..rule": "x" }),
            json!({ "traefik.http.routers[0].rule": "x" }),
            json!({ "traefik.http.routers.web.tls.domains[x].main": "x" }),
            json!({ "traefik.tls.options.o.minversion": "x" }),
            json!({ "traefik.tcp.services.db.loadbalancer.server.weight": 2 }),
            json!({ "traefik.http.services.web.loadbalancer.sticky.cookie.partitioned": true }),
            json!({ "traefik.http.routers.web": "x" }),
        ] {
            let err = traefik_labels(&bad).unwrap_err();
            assert!(matches!(err, RouteError::Label { .. }), "{bad}: {err:?}");
            assert!(err.to_string().contains("Fix:"), "{err}");
        }
        for good in [
            json!({ "traefik.http.services.web.loadbalancer.healthcheck.interval": "1m30s" }),
            json!({ "traefik.http.services.web.loadbalancer.responseforwarding.flushinterval": 1 }),
            json!({ "traefik.http.routers.web.tls": "true" }),
            json!({ "traefik.http.middlewares.m.plugin.my-plugin.anyThing": "x" }),
        ] {
            traefik_labels(&good).unwrap_or_else(|e| panic!("{good}: {e}"));
        }
    }

    #[test]
    fn duplicate_spellings_refused() {
        let labels = json!({ "traefik.http.routers.web.rule": "Host(`a`)", "traefik.http.routers.web.Rule": "Host(`b`)" });
        assert!(matches!(
            traefik_labels(&labels),
            Err(RouteError::Duplicate { .. })
        ));
        // In a list, a later entry wins (as in compose).
        let labels = json!([
            "traefik.http.routers.web.rule=Host(`a`)",
            "traefik.http.routers.web.rule=Host(`b`)"
        ]);
        assert_eq!(
            traefik_labels(&labels).unwrap(),
            kv(&[("traefik.http.routers.web.rule", "Host(`b`)")])
        );
    }

    #[test]
    fn router_without_service_gets_the_compose_service() {
        let labels = traefik_labels(&json!({
            "traefik.http.routers.web.rule": "Host(`web.example.test`)",
            "traefik.http.routers.web.entrypoints": "web",
        }))
        .unwrap();
        assert_eq!(
            backend_keys("webapp", &labels, 0, "http://10.0.0.7:8080"),
            kv(&[
                ("traefik/http/routers/web/entrypoints", "web"),
                ("traefik/http/routers/web/rule", "Host(`web.example.test`)"),
                ("traefik/http/routers/web/service", "webapp"),
                (
                    "traefik/http/services/webapp/loadbalancer/servers/0/url",
                    "http://10.0.0.7:8080"
                ),
            ])
        );
    }

    #[test]
    fn explicit_port_label_replaced_by_url() {
        let labels = traefik_labels(&json!([
            "traefik.http.routers.web.rule=Host(`web.example.test`)",
            "traefik.http.routers.web.service=front",
            "traefik.http.routers.admin.rule=Host(`admin.example.test`)",
            "traefik.http.services.front.loadbalancer.server.port=8080",
            "traefik.http.services.front.loadbalancer.server.scheme=h2c",
            "traefik.http.services.front.loadbalancer.server.weight=3",
        ]))
        .unwrap();
        assert_eq!(label_port(&labels), Some(8080));
        assert_eq!(
            backend_keys("webapp", &labels, 2, "http://10.0.0.7:9090"),
            kv(&[
                (
                    "traefik/http/routers/admin/rule",
                    "Host(`admin.example.test`)"
                ),
                ("traefik/http/routers/admin/service", "front"),
                ("traefik/http/routers/web/rule", "Host(`web.example.test`)"),
                ("traefik/http/routers/web/service", "front"),
                (
                    "traefik/http/services/front/loadbalancer/servers/2/url",
                    "h2c://10.0.0.7:9090"
                ),
                (
                    "traefik/http/services/front/loadbalancer/servers/2/weight",
                    "3"
                ),
            ])
        );
    }

    #[test]
    fn ambiguous_default_service_refused() {
        let labels = json!({
            "traefik.http.routers.web.rule": "Host(`a`)",
            "traefik.http.services.a.loadbalancer.server.port": 1,
            "traefik.http.services.b.loadbalancer.server.port": 2,
        });
        assert!(matches!(
            traefik_labels(&labels),
            Err(RouteError::AmbiguousService { .. })
        ));
        let labels = json!({
            "traefik.http.routers.web.rule": "Host(`a`)",
            "traefik.http.routers.web.service": "b",
            "traefik.http.services.a.loadbalancer.server.port": 1,
            "traefik.http.services.b.loadbalancer.server.port": 2,
        });
        let labels = traefik_labels(&labels).unwrap();
        let keys = backend_keys("x", &labels, 0, "http://h:1");
        assert!(keys.contains(&(
            "traefik/http/services/a/loadbalancer/servers/0/url".into(),
            "http://h:1".into()
        )));
        assert!(keys.contains(&(
            "traefik/http/services/b/loadbalancer/servers/0/url".into(),
            "http://h:1".into()
        )));
        assert_eq!(label_port(&labels), Some(1));
    }

    #[test]
    fn tcp_and_udp_servers_get_an_address() {
        let labels = traefik_labels(&json!({
            "traefik.tcp.routers.db.rule": "HostSNI(`*`)",
            "traefik.tcp.routers.db.entrypoints": "pg",
            "traefik.udp.routers.dns.entrypoints": "dns",
        }))
        .unwrap();
        assert_eq!(
            backend_keys("db", &labels, 1, "http://10.0.0.9:5432"),
            kv(&[
                ("traefik/tcp/routers/db/entrypoints", "pg"),
                ("traefik/tcp/routers/db/rule", "HostSNI(`*`)"),
                ("traefik/tcp/routers/db/service", "db"),
                (
                    "traefik/tcp/services/db/loadbalancer/servers/1/address",
                    "10.0.0.9:5432"
                ),
                ("traefik/udp/routers/dns/entrypoints", "dns"),
                ("traefik/udp/routers/dns/service", "db"),
                (
                    "traefik/udp/services/db/loadbalancer/servers/1/address",
                    "10.0.0.9:5432"
                ),
            ])
        );
    }

    #[test]
    fn services_only_labels_publish_a_server() {
        let labels = traefik_labels(
            &json!({ "traefik.http.services.api.loadbalancer.passhostheader": false }),
        )
        .unwrap();
        assert_eq!(
            backend_keys("x", &labels, 0, "http://h:1"),
            kv(&[
                (
                    "traefik/http/services/api/loadbalancer/passhostheader",
                    "false"
                ),
                (
                    "traefik/http/services/api/loadbalancer/servers/0/url",
                    "http://h:1"
                ),
            ])
        );
        assert_eq!(backend_keys("x", &[], 0, "http://h:1"), vec![]);
    }

    #[test]
    fn quoting() {
        assert_eq!(redis_quote("Host(`a`)"), "\"Host(`a`)\"");
        assert_eq!(redis_quote("a\"b\\c"), "\"a\\\"b\\\\c\"");
        assert_eq!(redis_quote("l1\nl2\r\t"), "\"l1\\nl2\\r\\t\"");
        assert_eq!(redis_quote("\u{1}é"), "\"\\x01\\xc3\\xa9\"");
        assert_eq!(redis_quote(""), "\"\"");
        assert_eq!(redis_quote("'single' $x"), "\"'single' $x\"");
    }

    #[test]
    fn script_shape() {
        let mut desired = BTreeMap::new();
        desired.insert(
            "traefik/http/routers/web/rule".to_string(),
            "Host(`a\"b`)\n".to_string(),
        );
        desired.insert(
            "traefik/http/routers/web/service".to_string(),
            "web".to_string(),
        );
        let script = host_script("w1", &desired);
        assert!(
            script.starts_with("EVAL \"local host = ARGV[1]\\n"),
            "{script}"
        );
        assert!(script.ends_with(
            " 0 \"w1\" \"traefik/http/routers/web/rule\" \"Host(`a\\\"b`)\\n\" \"traefik/http/routers/web/service\" \"web\"\n"
        ));
        // One line: the only raw newline ends it.
        assert_eq!(script.matches('\n').count(), 1);
        assert!(script.is_ascii());
        // Nothing desired: still one call, which withdraws the host's keys.
        assert!(host_script("w1", &BTreeMap::new()).ends_with(" 0 \"w1\"\n"));
    }

    #[test]
    fn replies() {
        assert_eq!(parse_changes("3\n"), Ok(3));
        assert_eq!(parse_changes("(integer) 0\n"), Ok(0));
        assert!(matches!(
            parse_changes("NOAUTH Authentication required.\n"),
            Err(RouteError::Reply { .. })
        ));
        assert!(parse_changes("").is_err());
    }

    #[test]
    fn durations_and_bools() {
        for ok in ["0", "1s", "100ms", "1m30s", "1.5h", "-2us", "3µs"] {
            assert!(go_duration(ok), "{ok}");
        }
        for bad in ["", "1", "s", "1x", "1.2.3s", "5 s"] {
            assert!(!go_duration(bad), "{bad}");
        }
        assert!(go_bool("True") && go_bool("0") && !go_bool("yes") && !go_bool(""));
    }
}
