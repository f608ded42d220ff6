//! Facts mesh learns from a host in one round trip: CPU architecture, Debian
//! codename, and the port sshd sees this connection on (which is the port
//! the firewall must keep open, even behind NAT port forwarding).

use crate::ops::{field, OpCtx, OpError};
use crate::ssh::Input;

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Facts {
    /// `uname -m`: x86_64, aarch64, …
    pub arch: String,
    /// VERSION_CODENAME from /etc/os-release, e.g. bookworm.
    pub codename: String,
    /// Server-side port of the SSH connection (from SSH_CONNECTION).
    pub ssh_port: Option<u16>,
}

const SCRIPT: &str = r#"echo "arch $(uname -m)"
echo "codename $(. /etc/os-release 2>/dev/null; echo "$VERSION_CODENAME")"
echo "ssh ${MESH_SSH_CONNECTION:-$SSH_CONNECTION}"
"#;

pub async fn gather(ctx: &OpCtx<'_>) -> Result<Facts, OpError> {
    let out = ctx.run_ok("facts", SCRIPT, Input::None).await?;
    Ok(parse(&out.stdout_str()))
}

fn parse(text: &str) -> Facts {
    let value = |key| field(text, key).map(str::trim).unwrap_or_default();
    Facts {
        arch: value("arch").into(),
        codename: value("codename").into(),
        ssh_port: value("ssh")
            .split_whitespace()
            .nth(3)
            .and_then(|p| p.parse().ok()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_facts() {
        let f = parse("arch x86_64\ncodename bookworm\nssh 10.0.0.1 51234 10.0.0.2 2222\n");
        assert_eq!(f.arch, "x86_64");
        assert_eq!(f.codename, "bookworm");
        assert_eq!(f.ssh_port, Some(2222));
        assert_eq!(parse("ssh \n").ssh_port, None);
    }
}
