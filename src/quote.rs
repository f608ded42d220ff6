//! The one shell-quoting helper. Every command mesh sends to a host is built
//! here, so no phase ever glues user-controlled text into a shell string.

use std::fmt::Write as _;

/// Quote one word for a POSIX shell: safe words pass through, anything else
/// is wrapped in single quotes with embedded quotes escaped.
pub fn quote(word: &str) -> String {
    let safe = !word.is_empty()
        && word
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_./:=@%+,".contains(&b));
    if safe {
        return word.to_string();
    }
    let mut out = String::with_capacity(word.len() + 2);
    out.push('\'');
    for c in word.chars() {
        if c == '\'' {
            out.push_str("'\\''");
        } else {
            out.push(c);
        }
    }
    out.push('\'');
    out
}

/// Test helper: `script` parses as POSIX shell (`sh -n`).
#[cfg(test)]
pub(crate) fn assert_valid_sh(script: &Script) {
    let out = std::process::Command::new("sh")
        .args(["-n", "-c", script.as_str()])
        .output()
        .expect("running sh -n");
    assert!(
        out.status.success(),
        "{}\n{}",
        String::from_utf8_lossy(&out.stderr),
        script.as_str()
    );
}

/// A shell command line built word by word; every word is quoted.
#[derive(Debug, Clone, Default)]
pub struct Cmd(String);

impl Cmd {
    /// Start a command with its program name.
    pub fn new(program: &str) -> Self {
        Cmd(quote(program))
    }

    /// Append one argument.
    pub fn arg(mut self, arg: impl AsRef<str>) -> Self {
        self.0.push(' ');
        self.0.push_str(&quote(arg.as_ref()));
        self
    }

    /// Append several arguments.
    pub fn args<I, S>(mut self, args: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: AsRef<str>,
    {
        for a in args {
            self = self.arg(a);
        }
        self
    }

    /// The finished command line.
    pub fn build(self) -> String {
        self.0
    }
}

impl std::fmt::Display for Cmd {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// A multi-line script assembled from fixed shell text and quoted values.
///
/// `line` takes a template where every `{}` is replaced, in order, by the
/// quoted value, so values can never break out of their word.
#[derive(Debug, Clone, Default)]
pub struct Script(String);

impl Script {
    /// An empty script.
    pub fn new() -> Self {
        Script(String::new())
    }

    /// Append `template` with each `{}` replaced by the next quoted value.
    ///
    /// Panics if the number of `{}` and values differ: that is a bug in mesh.
    pub fn line(&mut self, template: &str, values: &[&str]) -> &mut Self {
        let mut parts = template.split("{}");
        let first = parts.next().unwrap_or_default();
        self.0.push_str(first);
        let mut used = 0;
        for part in parts {
            let v = values
                .get(used)
                .unwrap_or_else(|| panic!("script template {template:?} needs more values"));
            self.0.push_str(&quote(v));
            self.0.push_str(part);
            used += 1;
        }
        assert_eq!(
            used,
            values.len(),
            "script template {template:?} has fewer slots than values"
        );
        self.0.push('\n');
        self
    }

    /// Append a ready command.
    pub fn cmd(&mut self, cmd: Cmd) -> &mut Self {
        let _ = writeln!(self.0, "{cmd}");
        self
    }

    /// Append fixed shell text (no values): for constant snippets only.
    pub fn raw(&mut self, text: &str) -> &mut Self {
        self.0.push_str(text);
        if !text.ends_with('\n') {
            self.0.push('\n');
        }
        self
    }

    /// Append another script.
    pub fn append(&mut self, other: &Script) -> &mut Self {
        self.0.push_str(&other.0);
        self
    }

    /// Replace `path` with `content` atomically: a temp file beside it made
    /// by `mktemp` (exclusive, never through a symlink), then renamed.
    pub fn write_file(&mut self, path: &str, content: &str) -> &mut Self {
        let dir = match path.rsplit_once('/') {
            Some(("", _)) => "/",
            Some((dir, _)) => dir,
            None => ".",
        };
        self.line(
            "w=$(mktemp -p {} .mesh-tmp.XXXXXXXX) && printf '%s' {} > \"$w\" && mv -f -- \"$w\" {}",
            &[dir, content, path],
        )
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    pub fn into_string(self) -> String {
        self.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::process::Command;

    fn echo_through_sh(word: &str) -> String {
        let out = Command::new("sh")
            .arg("-c")
            .arg(format!("printf %s {}", quote(word)))
            .output()
            .unwrap();
        String::from_utf8(out.stdout).unwrap()
    }

    #[test]
    fn safe_words_are_untouched() {
        assert_eq!(quote("abc-1.2_x/y:z"), "abc-1.2_x/y:z");
    }

    #[test]
    fn empty_and_special_words_are_quoted() {
        assert_eq!(quote(""), "''");
        assert_eq!(quote("a b"), "'a b'");
        assert_eq!(quote("it's"), "'it'\\''s'");
    }

    #[test]
    fn quoted_words_survive_a_real_shell() {
        for w in [
            "",
            "plain",
            "two words",
            "it's",
            "$(rm -rf /)",
            "`id`",
            "a\nb",
            "\\",
            "*",
            "'''",
            "ünïcode",
            "; echo pwned",
        ] {
            assert_eq!(echo_through_sh(w), w, "word {w:?}");
        }
    }

    #[test]
    fn cmd_quotes_every_argument() {
        let c = Cmd::new("apt-get")
            .arg("install")
            .args(["-y", "a b"])
            .build();
        assert_eq!(c, "apt-get install -y 'a b'");
    }

    #[test]
    fn script_line_fills_slots_in_order() {
        let mut s = Script::new();
        s.line("mv -f {} {}", &["/tmp/a b", "/etc/x"]);
        assert_eq!(s.as_str(), "mv -f '/tmp/a b' /etc/x\n");
    }

    #[test]
    fn write_file_goes_through_a_fresh_temp_file_and_a_rename() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("it's here");
        let mut s = Script::new();
        s.write_file(path.to_str().unwrap(), "line one\n$HOME `x`\n");
        let out = std::process::Command::new("sh")
            .args(["-c", s.as_str()])
            .output()
            .unwrap();
        assert!(out.status.success(), "{out:?}");
        assert_eq!(
            std::fs::read_to_string(&path).unwrap(),
            "line one\n$HOME `x`\n"
        );
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
    }

    #[test]
    #[should_panic]
    fn script_line_with_missing_value_panics() {
        Script::new().line("echo {} {}", &["one"]);
    }
}
