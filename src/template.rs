//! Template rendering: one variable set ([`VarSet`]), two kinds of templates.
//!
//! * **Placeholders** `<< NAME >>` ([`render_placeholders`]) are substituted in compose
//!   files, Dockerfiles and service assets. Only `<<`, optional spaces/tabs, an
//!   identifier (`[A-Za-z_][A-Za-z0-9_]*`), optional spaces/tabs and `>>` form a
//!   placeholder; everything else (`cat <<EOF`, `RUN <<EOF`, `<<-EOF`, `$((1 << 2))`,
//!   `a << b`, `<< >>`, `<<1>>`) passes through untouched. Decision: an
//!   identifier-shaped `<<EOF>>` (no spaces) *is* a placeholder, so it must be defined
//!   like any other; a heredoc marker is never followed by `>>`, so real shell is safe.
//!   There is no escape syntax.
//! * **`*.j2` files** ([`render_j2`]) are full MiniJinja templates with strict undefined
//!   variables, no auto-escaping, `trim_blocks` + `lstrip_blocks` (block tags on their own
//!   line leave no blank line) and the trailing newline kept.
//!
//! Every variable reaches both kinds as a string; structured data (host lists, …) is
//! passed to `*.j2` templates as `extra`. A missing variable is an error naming the
//! file, line (and column) and the variable, found before anything is pushed.
//! Secret values never appear in errors, `Debug` output or logs (see [`Redactor`]).

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use minijinja::syntax::SyntaxConfig;
use minijinja::value::ValueKind;
use minijinja::{AutoEscape, Environment, ErrorKind, UndefinedBehavior, Value};

/// Where a variable came from (first source to define a name wins).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    Fact,
    HostVars,
    GroupVars,
    Vars,
    Env,
    SecretsFile,
}

impl fmt::Display for Source {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Source::Fact => "fact",
            Source::HostVars => "host vars",
            Source::GroupVars => "group vars",
            Source::Vars => "inventory vars",
            Source::Env => "environment",
            Source::SecretsFile => "secrets file",
        })
    }
}

/// Names the SPEC lists as secrets (most also match the generic rules below).
const SECRET_NAMES: &[&str] = &[
    "GARAGE_KEY",
    "GARAGE_SECRET",
    "REDIS_PWD",
    "POSTGRES_PWD",
    "SMTP_PWD",
    "RPC_SECRET",
    "WESHER_CLUSTER_KEY",
    "REDIS_PASS",
];

/// Whether a variable name looks like it holds a secret: it contains PWD, PASS,
/// SECRET or TOKEN, ends with `_KEY`, or is one of the SPEC's secret names
/// (case-insensitive). The shell's `PWD`/`OLDPWD` (directories) are not secrets.
pub fn looks_secret(name: &str) -> bool {
    let up = name.to_ascii_uppercase();
    if up == "PWD" || up == "OLDPWD" {
        return false;
    }
    SECRET_NAMES.contains(&up.as_str())
        || ["PWD", "PASS", "SECRET", "TOKEN"]
            .iter()
            .any(|w| up.contains(w))
        || up.ends_with("_KEY")
}

#[derive(Clone)]
struct Entry {
    value: String,
    source: Source,
    secret: bool,
}

/// Every variable a template may use: name -> (value, source, secret).
#[derive(Clone, Default)]
pub struct VarSet {
    vars: BTreeMap<String, Entry>,
}

// Hand-written so that `{:?}` never prints a secret value.
impl fmt::Debug for VarSet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut m = f.debug_map();
        for (k, e) in &self.vars {
            let shown = if e.secret { "***" } else { e.value.as_str() };
            m.entry(k, &format_args!("{shown:?} ({})", e.source));
        }
        m.finish()
    }
}

impl VarSet {
    pub fn new() -> Self {
        Self::default()
    }

    /// Insert only if absent (first wins). Returns whether inserted.
    /// A name that [`looks_secret`] is stored as a secret whatever its source.
    pub fn add(&mut self, name: &str, value: impl Into<String>, source: Source) -> bool {
        self.insert(name, value.into(), source, looks_secret(name))
    }

    /// Same, but the value is a secret (never printed).
    pub fn add_secret(&mut self, name: &str, value: impl Into<String>, source: Source) -> bool {
        self.insert(name, value.into(), source, true)
    }

    fn insert(&mut self, name: &str, value: String, source: Source, secret: bool) -> bool {
        if self.vars.contains_key(name) {
            return false;
        }
        let entry = Entry {
            value,
            source,
            secret,
        };
        self.vars.insert(name.to_string(), entry);
        true
    }

    /// Add many (first wins), e.g. from a `BTreeMap<String, String>`.
    pub fn extend<'a>(
        &mut self,
        vars: impl IntoIterator<Item = (&'a String, &'a String)>,
        source: Source,
    ) {
        for (k, v) in vars {
            self.add(k, v.as_str(), source);
        }
    }

    /// All (UTF-8) environment variables as [`Source::Env`]; secret-looking names
    /// (see [`looks_secret`]) are marked secret.
    pub fn add_env(&mut self) {
        for (k, v) in std::env::vars_os() {
            if let (Some(k), Some(v)) = (k.to_str(), v.to_str()) {
                self.add(k, v, Source::Env);
            }
        }
    }

    pub fn get(&self, name: &str) -> Option<&str> {
        self.vars.get(name).map(|e| e.value.as_str())
    }

    pub fn source(&self, name: &str) -> Option<Source> {
        self.vars.get(name).map(|e| e.source)
    }

    #[cfg(test)]
    pub fn is_secret(&self, name: &str) -> bool {
        self.vars.get(name).is_some_and(|e| e.secret)
    }

    /// Replace every secret value (len >= 4) occurring in `text` with `***` (longest first).
    pub fn redact(&self, text: &str) -> String {
        self.redactor().redact(text)
    }

    /// A snapshot of the secret values, cheap to clone and usable from other threads.
    pub fn redactor(&self) -> Redactor {
        let mut r = Redactor::default();
        for e in self.vars.values().filter(|e| e.secret) {
            r.add(&e.value);
        }
        r
    }

    /// Variable names, sorted.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.vars.keys().map(String::as_str)
    }
}

/// Replaces secret values with `***` in text bound for logs and terminals.
#[derive(Clone, Default)]
pub struct Redactor {
    /// Longest first, so a secret containing another is replaced whole.
    secrets: Arc<Vec<String>>,
}

impl fmt::Debug for Redactor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Redactor({} secrets)", self.secrets.len())
    }
}

impl Redactor {
    pub fn redact(&self, text: &str) -> String {
        let mut out = text.to_string();
        for s in self.secrets.iter() {
            if out.contains(s.as_str()) {
                out = out.replace(s.as_str(), "***");
            }
        }
        out
    }

    /// Add a secret; values shorter than 4 bytes are ignored (redacting them would
    /// mangle ordinary text).
    pub fn add(&mut self, secret: &str) {
        if secret.len() < 4 || self.secrets.iter().any(|s| s == secret) {
            return;
        }
        let v = Arc::make_mut(&mut self.secrets);
        let at = v.partition_point(|s| s.len() >= secret.len());
        v.insert(at, secret.to_string());
    }
}

/// One undefined variable reference.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnknownVar {
    pub name: String,
    pub line: usize,
    pub col: Option<usize>,
}

const DEFINE_FIX: &str = "in the inventory vars, the environment or secrets.env";

#[derive(Debug, thiserror::Error)]
pub enum TemplateError {
    /// One or more variables have no value (`jinja`: in a `*.j2` template).
    #[error("{}", undefined_message(file, vars, *jinja))]
    Undefined {
        file: PathBuf,
        vars: Vec<UnknownVar>,
        jinja: bool,
    },
    #[error(
        "{}:{line}: template syntax error: {detail}. Fix: correct the Jinja syntax at that line",
        file.display()
    )]
    Syntax {
        file: PathBuf,
        line: usize,
        detail: String,
    },
    /// Any other rendering failure; `detail` is already redacted.
    #[error("{}: template error: {detail}. Fix: {fix}", location(file, *line))]
    Render {
        file: PathBuf,
        line: Option<usize>,
        detail: String,
        fix: String,
    },
    #[error(
        "unknown built-in template {name:?}. Fix: use one of: {}",
        builtin_names().collect::<Vec<_>>().join(", ")
    )]
    UnknownBuiltin { name: String },
}

fn location(file: &Path, line: Option<usize>) -> String {
    match line {
        Some(l) => format!("{}:{l}", file.display()),
        None => file.display().to_string(),
    }
}

fn undefined_message(file: &Path, vars: &[UnknownVar], jinja: bool) -> String {
    let lines: Vec<String> = vars
        .iter()
        .map(|v| {
            let at = match v.col {
                Some(c) => format!("{}:{}:{c}", file.display(), v.line),
                None => format!("{}:{}", file.display(), v.line),
            };
            let n = &v.name;
            if jinja {
                format!(
                    "{at}: undefined variable {{{{ {n} }}}}. Fix: define {n} {DEFINE_FIX}, \
                     or give it a default: {{{{ {n} | default(\"...\") }}}}"
                )
            } else {
                format!("{at}: unknown variable << {n} >>. Fix: define {n} {DEFINE_FIX}")
            }
        })
        .collect();
    lines.join("\n")
}

/// 1-based (line, column in chars) of a byte offset.
fn line_col(text: &str, offset: usize) -> (usize, usize) {
    let before = &text[..offset];
    let line = before.matches('\n').count() + 1;
    let line_start = before.rfind('\n').map_or(0, |i| i + 1);
    (line, before[line_start..].chars().count() + 1)
}

fn is_ident_start(b: u8) -> bool {
    b.is_ascii_alphabetic() || b == b'_'
}

fn is_ident_char(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b == b'_'
}

fn is_ident(s: &str) -> bool {
    let b = s.as_bytes();
    !b.is_empty() && is_ident_start(b[0]) && b.iter().all(|&c| is_ident_char(c))
}

/// A placeholder found in text: byte range of the whole `<< NAME >>` and of NAME.
struct Hit {
    start: usize,
    end: usize,
    name: std::ops::Range<usize>,
}

/// Placeholder at `s` (where `<<` starts), if the strict grammar matches there.
fn match_at(b: &[u8], s: usize) -> Option<Hit> {
    let skip_blank = |mut i: usize| {
        while i < b.len() && (b[i] == b' ' || b[i] == b'\t') {
            i += 1;
        }
        i
    };
    let name_start = skip_blank(s + 2);
    if name_start >= b.len() || !is_ident_start(b[name_start]) {
        return None;
    }
    let mut name_end = name_start;
    while name_end < b.len() && is_ident_char(b[name_end]) {
        name_end += 1;
    }
    let close = skip_blank(name_end);
    b[close..].starts_with(b">>").then_some(Hit {
        start: s,
        end: close + 2,
        name: name_start..name_end,
    })
}

fn scan(text: &str) -> Vec<Hit> {
    let b = text.as_bytes();
    let mut hits = Vec::new();
    let mut i = 0;
    while let Some(off) = text[i..].find("<<") {
        let s = i + off;
        match match_at(b, s) {
            Some(hit) => {
                i = hit.end;
                hits.push(hit);
            }
            // Retry one byte later: `<<< X >>` still finds `<< X >>`.
            None => i = s + 1,
        }
    }
    hits
}

#[cfg(test)]
/// Names referenced by placeholders in text, with 1-based line and column.
pub fn placeholders(text: &str) -> Vec<(String, usize, usize)> {
    scan(text)
        .into_iter()
        .map(|h| {
            let (line, col) = line_col(text, h.start);
            (text[h.name].to_string(), line, col)
        })
        .collect()
}

/// Substitute `<< NAME >>` placeholders. Every unknown name in the file is reported
/// at once (file:line:col each).
pub fn render_placeholders(
    file: &Path,
    text: &str,
    vars: &VarSet,
) -> Result<String, TemplateError> {
    let hits = scan(text);
    let unknown: Vec<UnknownVar> = hits
        .iter()
        .filter(|h| vars.get(&text[h.name.clone()]).is_none())
        .map(|h| {
            let (line, col) = line_col(text, h.start);
            UnknownVar {
                name: text[h.name.clone()].to_string(),
                line,
                col: Some(col),
            }
        })
        .collect();
    if !unknown.is_empty() {
        return Err(TemplateError::Undefined {
            file: file.to_path_buf(),
            vars: unknown,
            jinja: false,
        });
    }
    let mut out = String::with_capacity(text.len());
    let mut last = 0;
    for h in &hits {
        out.push_str(&text[last..h.start]);
        out.push_str(vars.get(&text[h.name.clone()]).unwrap_or_default());
        last = h.end;
    }
    out.push_str(&text[last..]);
    Ok(out)
}

fn jinja_env() -> Environment<'static> {
    let mut env = Environment::new();
    env.set_undefined_behavior(UndefinedBehavior::Strict);
    // Debug mode makes undefined errors name the expression ("`X` is undefined").
    env.set_debug(true);
    // Config files, not HTML: never escape.
    env.set_auto_escape_callback(|_| AutoEscape::None);
    let syntax = SyntaxConfig::builder()
        .trim_blocks(true)
        .lstrip_blocks(true)
        .keep_trailing_newline(true)
        .build()
        .expect("default delimiters are valid");
    env.set_syntax(syntax);
    env
}

/// The top-level variable name of a strict-undefined error, with the line it came
/// from when MiniJinja reports a different origin ("… is undefined (from line N)").
fn undefined_name(e: &minijinja::Error) -> Option<(String, Option<usize>)> {
    if e.kind() != ErrorKind::UndefinedError {
        return None;
    }
    let detail = e.detail()?;
    let end = detail.find("` is undefined")?;
    let start = detail[..end].rfind('`')? + 1;
    let name = &detail[start..end];
    let from_line = detail[end..]
        .split("from line ")
        .nth(1)
        .and_then(|r| r.split(|c: char| !c.is_ascii_digit()).next())
        .and_then(|n| n.parse().ok());
    is_ident(name).then(|| (name.to_string(), from_line))
}

/// Convert a MiniJinja error, redacting anything that might quote a value.
fn convert(file: &Path, vars: &VarSet, e: &minijinja::Error) -> TemplateError {
    let detail = vars.redact(
        &e.detail()
            .map_or_else(|| e.kind().to_string(), str::to_string),
    );
    match e.kind() {
        ErrorKind::SyntaxError => TemplateError::Syntax {
            file: file.to_path_buf(),
            line: e.line().unwrap_or(0),
            detail,
        },
        kind => TemplateError::Render {
            file: file.to_path_buf(),
            line: e.line(),
            detail: format!("{kind}: {detail}"),
            fix: "check the expression at that line (inventory values are strings; \
                  structured data comes from mesh itself)"
                .to_string(),
        },
    }
}

/// How many undefined names one render reports before giving up looking for more.
const MAX_UNDEFINED: usize = 32;

/// Render a full MiniJinja template (strict undefined). Context: every variable of
/// `vars` as a string, with `extra` (a map, e.g. `Value::from(BTreeMap)`) merged on top.
/// Undefined variables are all reported (each with its line).
pub fn render_j2(
    file: &Path,
    text: &str,
    vars: &VarSet,
    extra: Option<&Value>,
) -> Result<String, TemplateError> {
    let env = jinja_env();
    let name = file.display().to_string();
    let tmpl = env
        .template_from_named_str(&name, text)
        .map_err(|e| convert(file, vars, &e))?;

    let mut ctx: BTreeMap<String, Value> = vars
        .vars
        .iter()
        .map(|(k, e)| (k.clone(), Value::from(e.value.as_str())))
        .collect();
    if let Some(extra) = extra {
        merge_extra(file, vars, &mut ctx, extra)?;
    }

    // Strict mode stops at the first undefined name: define it as "" and render
    // again to find the others, so one run reports them all.
    let mut missing: Vec<UnknownVar> = Vec::new();
    while missing.len() < MAX_UNDEFINED {
        let err = match tmpl.render(Value::from(ctx.clone())) {
            Ok(out) if missing.is_empty() => return Ok(out),
            Ok(_) => break,
            Err(e) => e,
        };
        match undefined_name(&err) {
            Some((n, from_line)) if !ctx.contains_key(&n) => {
                let (line, col) = match (from_line, err.range()) {
                    (Some(l), _) => (l, None),
                    (None, Some(r)) if r.start <= text.len() && text.is_char_boundary(r.start) => {
                        let (l, c) = line_col(text, r.start);
                        (l, Some(c))
                    }
                    _ => (err.line().unwrap_or(0), None),
                };
                ctx.insert(n.clone(), Value::from(""));
                missing.push(UnknownVar { name: n, line, col });
            }
            _ if missing.is_empty() => return Err(convert(file, vars, &err)),
            _ => break,
        }
    }
    Err(TemplateError::Undefined {
        file: file.to_path_buf(),
        vars: missing,
        jinja: true,
    })
}

fn merge_extra(
    file: &Path,
    vars: &VarSet,
    ctx: &mut BTreeMap<String, Value>,
    extra: &Value,
) -> Result<(), TemplateError> {
    match extra.kind() {
        ValueKind::Undefined | ValueKind::None => Ok(()),
        ValueKind::Map => {
            let keys = extra.try_iter().map_err(|e| convert(file, vars, &e))?;
            for key in keys {
                let v = extra.get_item(&key).map_err(|e| convert(file, vars, &e))?;
                let k = key.as_str().map_or_else(|| key.to_string(), str::to_string);
                ctx.insert(k, v);
            }
            Ok(())
        }
        kind => Err(TemplateError::Render {
            file: file.to_path_buf(),
            line: None,
            detail: format!("extra template context is a {kind}, not a map"),
            fix: "pass a map (e.g. Value::from(BTreeMap<String, Value>)) as extra".to_string(),
        }),
    }
}

/// Render a file by name: `*.j2` -> [`render_j2`] and the output name drops `.j2`;
/// anything else -> [`render_placeholders`], except binary content (not UTF-8, or
/// containing NUL) which passes through unchanged. Returns (output path, bytes).
pub fn render_file(
    file: &Path,
    bytes: &[u8],
    vars: &VarSet,
) -> Result<(PathBuf, Vec<u8>), TemplateError> {
    if file.extension().is_some_and(|e| e == "j2") {
        let text = std::str::from_utf8(bytes).map_err(|e| {
            let valid = &bytes[..e.valid_up_to()];
            TemplateError::Render {
                file: file.to_path_buf(),
                line: Some(valid.iter().filter(|&&b| b == b'\n').count() + 1),
                detail: "the template is not valid UTF-8".to_string(),
                fix: "save it as UTF-8, or drop the .j2 suffix to copy it verbatim".to_string(),
            }
        })?;
        let out = render_j2(file, text, vars, None)?;
        return Ok((file.with_extension(""), out.into_bytes()));
    }
    match std::str::from_utf8(bytes) {
        Ok(text) if !text.contains('\0') => Ok((
            file.to_path_buf(),
            render_placeholders(file, text, vars)?.into_bytes(),
        )),
        _ => Ok((file.to_path_buf(), bytes.to_vec())),
    }
}

/// Embed `templates/<name>` under its file name.
macro_rules! builtin {
    ($name:literal) => {
        (
            $name,
            include_str!(concat!(env!("CARGO_MANIFEST_DIR"), "/templates/", $name)),
        )
    };
}

/// mesh's built-in templates (templates/*.j2), embedded in the binary.
const BUILTINS: &[(&str, &str)] = &[
    builtin!("crowdsec/acquis-traefik.yaml"),
    builtin!("crowdsec/config.yaml.local"),
    builtin!("crowdsec/crowdsec-firewall-bouncer.yaml.local.j2"),
    builtin!("crowdsec/online_api_credentials.yaml"),
    builtin!("crowdsec/setup.sh"),
    builtin!("garage.service.j2"),
    builtin!("garage.toml.j2"),
    builtin!("journald.conf.j2"),
    builtin!("logrotate-containers.j2"),
    builtin!("redis.conf.j2"),
    builtin!("traefik-kop.service.j2"),
    builtin!("wesher.env.j2"),
    builtin!("wesher.service.j2"),
];

/// A built-in template's source, by file name (the `.j2` suffix may be omitted).
pub fn builtin(name: &str) -> Option<&'static str> {
    BUILTINS
        .iter()
        .find(|(n, _)| *n == name || n.strip_suffix(".j2") == Some(name))
        .map(|(_, src)| *src)
}

/// Names of the built-in templates.
pub fn builtin_names() -> impl Iterator<Item = &'static str> {
    BUILTINS.iter().map(|(n, _)| *n)
}

/// Render a built-in template; errors name it as `mesh:templates/<name>`.
pub fn render_builtin(
    name: &str,
    vars: &VarSet,
    extra: Option<&Value>,
) -> Result<String, TemplateError> {
    let src = builtin(name).ok_or_else(|| TemplateError::UnknownBuiltin {
        name: name.to_string(),
    })?;
    render_j2(
        Path::new(&format!("mesh:templates/{name}")),
        src,
        vars,
        extra,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vars() -> VarSet {
        let mut v = VarSet::new();
        v.add("REDIS_IP", "10.1.2.3", Source::Fact);
        v.add("HOSTNAME", "web1", Source::Fact);
        v.add_secret("REDIS_PWD", "s3cr3t-value", Source::SecretsFile);
        v
    }

    fn p(s: &str) -> &Path {
        Path::new(s)
    }

    #[test]
    fn placeholders_substitute_with_and_without_spaces() {
        let out = render_placeholders(
            p("a.yml"),
            "ip: << REDIS_IP >>\nh=<<HOSTNAME>>;\t<<\tHOSTNAME  >>\n",
            &vars(),
        )
        .unwrap();
        assert_eq!(out, "ip: 10.1.2.3\nh=web1;\tweb1\n");
    }

    #[test]
    fn shell_syntax_is_untouched() {
        let text = "cat <<EOF\nx\nEOF\necho $((1 << 2))\nRUN <<EOF\ncat <<-EOF\na << b\n<< >>\n<<1>>\n<<'EOF'\n";
        assert!(placeholders(text).is_empty());
        assert_eq!(
            render_placeholders(p("Dockerfile"), text, &vars()).unwrap(),
            text
        );
    }

    #[test]
    fn identifier_shaped_without_spaces_is_a_placeholder() {
        assert_eq!(
            placeholders("x <<EOF>> <<<HOSTNAME>>>"),
            vec![("EOF".to_string(), 1, 3), ("HOSTNAME".to_string(), 1, 12)]
        );
        assert_eq!(
            render_placeholders(p("f"), "<<<HOSTNAME>>>", &vars()).unwrap(),
            "<web1>"
        );
    }

    #[test]
    fn unknown_names_reported_with_file_line_col() {
        let text = "a: << REDIS_IP >>\nb: << NOPE >> and <<ALSO_NOPE>>\n\n  << NOPE >>\n";
        let err = render_placeholders(p("dockerfiles/web.yml"), text, &vars()).unwrap_err();
        let msg = err.to_string();
        assert!(msg.contains("dockerfiles/web.yml:2:4: unknown variable << NOPE >>. Fix: define NOPE in the inventory vars, the environment or secrets.env"), "{msg}");
        assert!(msg.contains("dockerfiles/web.yml:2:19: unknown variable << ALSO_NOPE >>"));
        assert!(msg.contains("dockerfiles/web.yml:4:3: unknown variable << NOPE >>"));
        match err {
            TemplateError::Undefined { vars, jinja, .. } => {
                assert_eq!(vars.len(), 3);
                assert!(!jinja);
            }
            e => panic!("{e}"),
        }
        assert!(!msg.contains("s3cr3t"));
    }

    #[test]
    fn non_utf8_and_binary_pass_through() {
        let bin = [0xffu8, 0xfe, b'<', b'<', b'X', b'>', b'>'];
        let (name, out) = render_file(p("assets/blob"), &bin, &vars()).unwrap();
        assert_eq!(name, p("assets/blob"));
        assert_eq!(out, bin);
        let nul = b"\0<<X>>";
        assert_eq!(render_file(p("b"), nul, &vars()).unwrap().1, nul);
        let (_, out) = render_file(p("c.env"), b"H=<<HOSTNAME>>", &vars()).unwrap();
        assert_eq!(out, b"H=web1");
    }

    fn hosts_extra() -> Value {
        let hosts: Vec<Value> = ["a", "b"]
            .iter()
            .map(|n| {
                let mut m = BTreeMap::new();
                m.insert("name".to_string(), Value::from(*n));
                m.insert("ip".to_string(), Value::from(format!("10.0.0.{}", n.len())));
                Value::from(m)
            })
            .collect();
        let mut extra = BTreeMap::new();
        extra.insert("hosts".to_string(), Value::from(hosts));
        extra.insert("HOSTNAME".to_string(), Value::from("override"));
        Value::from(extra)
    }

    #[test]
    fn j2_loops_and_conditionals_over_extra() {
        let text = "# {{ HOSTNAME }}\n{% for h in hosts %}\n{% if h.name != 'b' %}\nhost {{ h.name }} {{ h.ip }}\n{% endif %}\n{% endfor %}\nredis={{ REDIS_IP }}\n";
        let out = render_j2(p("x.conf.j2"), text, &vars(), Some(&hosts_extra())).unwrap();
        assert_eq!(out, "# override\nhost a 10.0.0.1\nredis=10.1.2.3\n");
    }

    #[test]
    fn j2_strict_undefined_names_variable_and_line() {
        let text = "ok {{ REDIS_IP }}\nport={{ REDIS_PORT }}\n{% if USE_TLS %}x{% endif %}\n{{ REDIS_PORT }}\n";
        let err = render_j2(p("svc/redis.conf.j2"), text, &vars(), None).unwrap_err();
        let msg = err.to_string();
        assert!(
            msg.contains("svc/redis.conf.j2:2:9: undefined variable {{ REDIS_PORT }}. Fix: define REDIS_PORT"),
            "{msg}"
        );
        assert!(msg.contains("svc/redis.conf.j2:3"), "{msg}");
        assert!(msg.contains("USE_TLS"), "{msg}");
        match err {
            TemplateError::Undefined { vars, jinja, .. } => {
                assert_eq!(vars.len(), 2, "{vars:?}");
                assert!(jinja);
            }
            e => panic!("{e}"),
        }
    }

    #[test]
    fn j2_undefined_through_set_reports_origin_line() {
        let text = "{% set a = MISSING %}\n\n{{ a }}\n";
        let err = render_j2(p("t.j2"), text, &vars(), None).unwrap_err();
        let msg = err.to_string();
        assert!(msg.contains("MISSING"), "{msg}");
    }

    #[test]
    fn j2_syntax_and_render_errors_never_leak_secrets() {
        let err = render_j2(p("s.j2"), "a\n{% if %}\n", &vars(), None).unwrap_err();
        assert!(
            matches!(err, TemplateError::Syntax { line: 2, .. }),
            "{err}"
        );
        assert!(err.to_string().starts_with("s.j2:2: template syntax error"));
        let err = render_j2(p("r.j2"), "{{ REDIS_PWD + 1 }}\n", &vars(), None).unwrap_err();
        let msg = err.to_string();
        assert!(!msg.contains("s3cr3t-value"), "{msg}");
        assert!(msg.starts_with("r.j2:1: template error"), "{msg}");
    }

    #[test]
    fn j2_file_output_name_drops_suffix() {
        let (name, out) = render_file(
            p("assets/garage.toml.j2"),
            b"n = \"{{ HOSTNAME }}\"\n",
            &vars(),
        )
        .unwrap();
        assert_eq!(name, p("assets/garage.toml"));
        assert_eq!(out, b"n = \"web1\"\n");
        // Placeholders are not special in .j2 files.
        let (_, out) = render_file(p("a.j2"), b"<< X >>", &vars()).unwrap();
        assert_eq!(out, b"<< X >>");
    }

    #[test]
    fn builtin_journald_renders_with_and_without_var() {
        assert!(builtin("journald.conf.j2").is_some());
        assert!(builtin("journald.conf").is_some());
        let out = render_builtin("journald.conf.j2", &VarSet::new(), None).unwrap();
        assert!(out.starts_with("# Managed by mesh"));
        assert!(out.contains("[Journal]\nSystemMaxUse=100M\n"), "{out}");
        let mut v = VarSet::new();
        v.add("JOURNALD_MAX_USE", "250M", Source::Vars);
        let out = render_builtin("journald.conf.j2", &v, None).unwrap();
        assert!(out.contains("SystemMaxUse=250M\n"));
        let err = render_builtin("nope.j2", &v, None).unwrap_err();
        assert!(err.to_string().contains("journald.conf.j2"));
    }

    #[test]
    fn varset_first_wins_and_secret_detection() {
        let mut v = VarSet::new();
        assert!(v.add("A", "fact", Source::Fact));
        assert!(!v.add("A", "vars", Source::Vars));
        assert_eq!(v.get("A"), Some("fact"));
        assert_eq!(v.source("A"), Some(Source::Fact));
        let mut m = BTreeMap::new();
        m.insert("A".to_string(), "x".to_string());
        m.insert("B".to_string(), "y".to_string());
        v.extend(&m, Source::GroupVars);
        assert_eq!(v.get("A"), Some("fact"));
        assert_eq!(v.source("B"), Some(Source::GroupVars));
        assert_eq!(v.names().collect::<Vec<_>>(), ["A", "B"]);
        for s in [
            "REDIS_PWD",
            "db_password",
            "RPC_SECRET",
            "GH_TOKEN",
            "SSH_KEY",
            "REDIS_PASS",
            "GARAGE_KEY",
        ] {
            assert!(looks_secret(s), "{s}");
        }
        for s in ["PWD", "OLDPWD", "HOME", "KEYBOARD", "REDIS_IP"] {
            assert!(!looks_secret(s), "{s}");
        }
        assert!(v.add("SMTP_PWD", "hunter22", Source::Vars));
        assert!(v.is_secret("SMTP_PWD"));
        assert!(!format!("{v:?}").contains("hunter22"));
    }

    #[test]
    fn add_env_marks_secrets() {
        std::env::set_var("MESH_TEST_API_TOKEN", "tok-123456");
        std::env::set_var("MESH_TEST_PLAIN", "plain");
        let mut v = VarSet::new();
        v.add("MESH_TEST_PLAIN", "from-vars", Source::Vars);
        v.add_env();
        assert_eq!(v.get("MESH_TEST_API_TOKEN"), Some("tok-123456"));
        assert_eq!(v.source("MESH_TEST_API_TOKEN"), Some(Source::Env));
        assert!(v.is_secret("MESH_TEST_API_TOKEN"));
        assert_eq!(v.get("MESH_TEST_PLAIN"), Some("from-vars"));
        assert!(!v.is_secret("MESH_TEST_PLAIN"));
    }

    #[test]
    fn redact_longest_first_and_threads() {
        let mut v = VarSet::new();
        v.add_secret("A", "abcd", Source::SecretsFile);
        v.add_secret("B", "abcdefgh", Source::SecretsFile);
        v.add_secret("C", "xyz", Source::SecretsFile); // too short to redact
        assert_eq!(v.redact("k=abcdefgh j=abcd xyz"), "k=*** j=*** xyz");
        let mut r = v.redactor();
        r.add("later-secret");
        let handle = std::thread::spawn(move || r.redact("x later-secret abcd"));
        assert_eq!(handle.join().unwrap(), "x *** ***");
        assert_eq!(v.redact("later-secret"), "later-secret");
    }
}
