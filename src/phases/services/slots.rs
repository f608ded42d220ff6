//! Slots: a service with a port pair (`ports: [A, B]` in its mesh.yml) runs
//! as compose project `mesh-<service>-a` on port A or `mesh-<service>-b` on
//! port B. Which one is live, with its image and the images `--rollback`
//! can go back to, is recorded on the host in one file,
//! `/var/lib/mesh/deploy/<service>.state` (replaced atomically);
//! `services-up` starts the live one, `deploy` starts the other beside it
//! and switches.

use crate::quote::Script;
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

/// A slot name other than `a` or `b`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown slot {0:?}")]
pub(crate) struct UnknownSlot(pub String);

impl FromStr for Slot {
    type Err = UnknownSlot;

    fn from_str(s: &str) -> Result<Self, UnknownSlot> {
        match s.trim() {
            "a" => Ok(Slot::A),
            "b" => Ok(Slot::B),
            other => Err(UnknownSlot(other.to_string())),
        }
    }
}

/// Images of a service kept as "previous" on each host (the rollback stack).
pub(crate) const KEEP_PREVIOUS: usize = 3;

/// A host's record of one service: live slot (services with a port pair),
/// live image, and the earlier images, most recent first.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct State {
    pub slot: Option<Slot>,
    pub image: Option<String>,
    pub previous: Vec<String>,
}

impl State {
    /// Read `slot X` / `image X` / `previous X` lines.
    pub fn parse(text: &str) -> State {
        let mut st = State::default();
        for line in text.lines() {
            let (key, value) = line.split_once(' ').unwrap_or((line, ""));
            let value = value.trim();
            match key {
                "slot" => st.slot = value.parse().ok(),
                "image" if !value.is_empty() => st.image = Some(value.to_string()),
                "previous" if !value.is_empty() => st.previous.push(value.to_string()),
                _ => {}
            }
        }
        st
    }

    /// The file's text.
    pub fn text(&self) -> String {
        let mut out = String::new();
        if let Some(slot) = self.slot {
            out.push_str(&format!("slot {slot}\n"));
        }
        if let Some(image) = &self.image {
            out.push_str(&format!("image {image}\n"));
        }
        for p in &self.previous {
            out.push_str(&format!("previous {p}\n"));
        }
        out
    }

    /// The live slot (a service never deployed runs in `a`).
    pub fn live(&self) -> Slot {
        self.slot.unwrap_or(Slot::A)
    }

    /// After a deploy to `image` in `slot`: the image it replaces goes on
    /// top of the rollback stack.
    pub fn rolled_forward(&self, slot: Option<Slot>, image: &str) -> State {
        let mut previous: Vec<String> = Vec::new();
        if let Some(old) = self.image.as_ref().filter(|o| *o != image) {
            previous.push(old.clone());
        }
        for p in &self.previous {
            if p != image && !previous.contains(p) {
                previous.push(p.clone());
            }
        }
        previous.truncate(KEEP_PREVIOUS);
        State {
            slot,
            image: Some(image.to_string()),
            previous,
        }
    }

    /// After a rollback to the top of the stack: it is popped, and the
    /// build rolled away from is not pushed (a second rollback goes
    /// further back).
    pub fn rolled_back(&self, slot: Option<Slot>) -> Option<State> {
        let (top, rest) = self.previous.split_first()?;
        Some(State {
            slot,
            image: Some(top.clone()),
            previous: rest.to_vec(),
        })
    }
}

/// The state file of a service.
pub(crate) fn state_file(service: &str) -> String {
    format!("{SLOT_DIR}/{service}.state")
}

/// Shell function `mesh_state SVC`: prints the service's record (also from
/// the separate `.slot`/`.image`/`.previous` files older mesh versions wrote).
pub(crate) fn state_fn() -> String {
    let mut s = Script::new();
    s.line(
        "mesh_state() { f={}/$1; if [ -f \"$f.state\" ]; then cat \"$f.state\"; else",
        &[SLOT_DIR],
    );
    s.raw(
        r#"  [ ! -f "$f.slot" ] || echo "slot $(cat "$f.slot")"
  [ ! -f "$f.image" ] || echo "image $(cat "$f.image")"
  [ ! -f "$f.previous" ] || sed 's/^/previous /' "$f.previous"
fi; }"#,
    );
    s.as_str().to_string()
}

/// Shell that lists the services with a record, one per line.
pub(crate) fn recorded_services() -> String {
    format!("ls {SLOT_DIR} 2>/dev/null | sed -n 's/\\.\\(state\\|slot\\|image\\)$//p' | sort -u")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn state_reads_back_and_the_rollback_stack_pops() {
        let st = State::parse(
            "slot b\nimage mesh/web:2\nprevious mesh/web:1\nprevious mesh/web:0\nlock \n",
        );
        assert_eq!(st.slot, Some(Slot::B));
        assert_eq!(st.image.as_deref(), Some("mesh/web:2"));
        assert_eq!(st.previous, ["mesh/web:1", "mesh/web:0"]);
        assert_eq!(State::parse(&st.text()), st);
        assert_eq!(State::parse("slot \nimage \n"), State::default());
        let fwd = st.rolled_forward(Some(Slot::A), "mesh/web:3");
        assert_eq!(fwd.previous, ["mesh/web:2", "mesh/web:1", "mesh/web:0"]);
        let fwd = fwd.rolled_forward(Some(Slot::B), "mesh/web:4");
        assert_eq!(fwd.previous.len(), KEEP_PREVIOUS);
        // Rollback twice: 4 -> 3 -> 2, never back to 4.
        let back = fwd.rolled_back(Some(Slot::A)).unwrap();
        assert_eq!(back.image.as_deref(), Some("mesh/web:3"));
        let back = back.rolled_back(Some(Slot::B)).unwrap();
        assert_eq!(back.image.as_deref(), Some("mesh/web:2"));
        assert_eq!(back.previous, ["mesh/web:1"]);
        assert!(State::default().rolled_back(None).is_none());
    }

    #[test]
    fn the_state_shell_is_valid() {
        let mut s = Script::new();
        s.raw(&state_fn());
        s.raw(&recorded_services());
        crate::quote::assert_valid_sh(&s);
    }

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
