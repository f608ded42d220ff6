//! A transport for unit tests: records every script it is asked to run and
//! answers with a caller-supplied function. No host, no network.

use super::{BoxFut, CommandKind, Input, Output, SshError, Transport};
use std::sync::{Arc, Mutex};

type Responder = dyn Fn(&str, &Input) -> Output + Send + Sync;

/// Every byte `input` would put on the command's stdin, in order.
pub fn input_bytes(input: &Input) -> Vec<u8> {
    fn flatten(input: &Input, out: &mut Vec<u8>) {
        match input {
            Input::None => {}
            Input::Bytes(b) => out.extend_from_slice(b),
            Input::File(p) => out.extend(std::fs::read(p).expect("reading an input file")),
            Input::Chain(parts) => parts.iter().for_each(|p| flatten(p, out)),
            // As the real feed: the line SENT only while the file is the one hashed.
            Input::Stamped(s) => {
                out.extend(std::fs::read(&s.path).expect("reading an input file"));
                let meta = std::fs::metadata(&s.path).expect("reading an input file");
                if super::FileStamp::of(&meta) == s.stamp {
                    out.extend_from_slice(&super::sent_line());
                }
            }
        }
    }
    let mut out = Vec::new();
    flatten(input, &mut out);
    out
}

/// Records calls; `respond` decides each command's output.
pub struct RecordingTransport {
    dest: String,
    respond: Box<Responder>,
    calls: Arc<Mutex<Vec<String>>>,
    fresh_ok: bool,
}

impl RecordingTransport {
    pub fn new(respond: impl Fn(&str, &Input) -> Output + Send + Sync + 'static) -> Self {
        RecordingTransport {
            dest: "recording".into(),
            respond: Box::new(respond),
            calls: Arc::default(),
            fresh_ok: true,
        }
    }

    /// Runs every command with the local `sh`, its stdin fed as ssh would;
    /// `keep` bytes of stdin arrive (all when `None`), as a broken link would cut it.
    pub fn local_sh(keep: Option<usize>) -> Self {
        RecordingTransport::new(move |script, input| {
            use std::io::Write as _;
            let mut bytes = input_bytes(input);
            bytes.truncate(keep.unwrap_or(bytes.len()));
            let mut child = std::process::Command::new("sh")
                .args(["-c", script])
                .stdin(std::process::Stdio::piped())
                .stdout(std::process::Stdio::piped())
                .stderr(std::process::Stdio::piped())
                .spawn()
                .expect("local sh");
            let mut stdin = child.stdin.take().expect("piped stdin");
            let feeder = std::thread::spawn(move || {
                let _ = stdin.write_all(&bytes);
            });
            let out = child.wait_with_output().expect("local sh output");
            let _ = feeder.join();
            Output {
                code: out.status.code(),
                stdout: out.stdout,
                stderr: out.stderr,
            }
        })
    }

    /// Make [`Transport::check_fresh`] fail, as a firewall lock-out would.
    pub fn with_fresh_failing(mut self) -> Self {
        self.fresh_ok = false;
        self
    }

    /// Scripts run so far, in order.
    pub fn calls(&self) -> Vec<String> {
        self.calls.lock().unwrap().clone()
    }
}

/// An [`Output`] with exit code 0 and `stdout`.
pub fn ok(stdout: &str) -> Output {
    Output {
        code: Some(0),
        stdout: stdout.as_bytes().to_vec(),
        stderr: Vec::new(),
    }
}

impl Transport for RecordingTransport {
    fn exec_as<'a>(
        &'a self,
        script: &'a str,
        input: Input,
        _kind: CommandKind,
    ) -> BoxFut<'a, Result<Output, SshError>> {
        self.calls.lock().unwrap().push(script.to_string());
        let out = (self.respond)(script, &input);
        Box::pin(async move { Ok(out) })
    }

    fn check_fresh(&self) -> BoxFut<'_, Result<(), SshError>> {
        self.calls.lock().unwrap().push("<fresh ssh>".into());
        let ok = self.fresh_ok;
        let dest = self.dest.clone();
        Box::pin(async move {
            if ok {
                Ok(())
            } else {
                Err(SshError::Connect {
                    dest,
                    reason: "recorded lock-out".into(),
                })
            }
        })
    }

    fn close(&self) -> BoxFut<'_, ()> {
        Box::pin(async {})
    }
}
