//! Slots: a service with a port pair (`ports: [A, B]` in its mesh.yml) runs
//! as compose project `mesh-<service>-a` on port A or `mesh-<service>-b` on
//! port B. Which one is live is recorded on the host, in
//! `/var/lib/mesh/deploy/<service>.slot`; `services-up` starts the live one,
//! `deploy` starts the other beside it and switches.

use std::fmt;
use std::str::FromStr;

/// Where each host records its services' live slots.
pub(crate) const SLOT_DIR: &str = "/var/lib/mesh/deploy";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Slot {
    A,
    B,
}

impl Slot {
    /// The slot's port out of the pair.
    pub fn port(self, ports: (u16, u16)) -> u16 {
        match self {
            Slot::A => ports.0,
            Slot::B => ports.1,
        }
    }

    /// The other slot (where the next copy starts).
    pub fn other(self) -> Slot {
        match self {
            Slot::A => Slot::B,
            Slot::B => Slot::A,
        }
    }

    /// The slot's compose project.
    pub fn project(self, service: &str) -> String {
        format!("mesh-{service}-{self}")
    }
}

impl fmt::Display for Slot {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Slot::A => "a",
            Slot::B => "b",
        })
    }
}

impl FromStr for Slot {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        match s.trim() {
            "a" => Ok(Slot::A),
            "b" => Ok(Slot::B),
            other => Err(format!("unknown slot {other:?}")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_pick_ports_and_projects() {
        assert_eq!(Slot::A.port((8000, 8001)), 8000);
        assert_eq!(Slot::B.port((8000, 8001)), 8001);
        assert_eq!(Slot::A.other(), Slot::B);
        assert_eq!(Slot::B.project("web"), "mesh-web-b");
        assert_eq!("b\n".parse::<Slot>(), Ok(Slot::B));
        assert!("c".parse::<Slot>().is_err());
    }
}
