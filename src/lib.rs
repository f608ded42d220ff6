//! mesh: turn a fleet of plain Debian hosts into one private service mesh,
//! over nothing but SSH.
//!
//! Layout: [`cli`] parses arguments; [`inventory`] loads and validates the
//! hosts file; [`template`] renders `<< VAR >>` and `.j2` files; [`ssh`] is
//! the transport; [`ops`] are idempotent building blocks; [`phases`] compose
//! ops into the commands (`nodes`, `services`, …); [`run`] fans a phase out
//! over hosts and reports.

pub mod app;
pub mod atomic;
pub mod cli;
pub mod deb;
pub mod inventory;
pub mod log;
pub mod mirror;
pub mod ops;
pub mod overlay;
pub mod phases;
pub mod quote;
pub mod release;
pub mod run;
pub mod runlock;
pub mod secrets;
pub mod ssh;
pub mod template;
