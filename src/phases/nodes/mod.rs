//! `mesh nodes`: bootstrap hosts. Steps, in order: basic (packages,
//! logrotate, journald, firewall). Docker, wesher and garage follow.

mod basic;
mod firewall;

pub use basic::Basic;
pub use firewall::{Firewall, FIREWALL_PORTS};

use super::Phase;
use crate::inventory::Inventory;

/// Default apt cache window: a warm run within an hour stays off the network.
pub const APT_CACHE_VALID_SECONDS: u64 = 3600;

/// The `nodes` phase for this inventory.
pub fn phase(inv: &Inventory) -> Phase {
    Phase::of_steps(
        "nodes",
        vec![Box::new(Basic {
            apt_cache_valid_seconds: inv
                .apt
                .cache_valid_seconds
                .unwrap_or(APT_CACHE_VALID_SECONDS),
        })],
    )
}
