//! mesh: turn a fleet of plain Debian hosts into one private service mesh,
//! over nothing but SSH.
//!
//! Layout: [`cli`] parses arguments, [`app`] loads the inventory and hands a
//! session to the command's module in [`command`] (errors: [`error`]); [`inventory`] loads and validates the
//! hosts file; [`template`] renders `<< VAR >>` and `.j2` files; [`ssh`] is
//! the transport; [`ops`] are idempotent building blocks; [`phases`] compose
//! ops into the commands (`nodes`, `services`, …); [`run`] fans a phase out
//! over hosts and reports.

pub mod app;
pub(crate) mod atomic;
pub mod cli;
pub(crate) mod command;
pub(crate) mod deb;
pub mod error;
pub(crate) mod inventory;
pub(crate) mod log;
pub(crate) mod mirror;
pub(crate) mod ops;
pub(crate) mod overlay;
pub(crate) mod phases;
pub(crate) mod quote;
pub(crate) mod release;
pub(crate) mod run;
pub(crate) mod runlock;
pub(crate) mod s3;
pub(crate) mod secrets;
pub(crate) mod ssh;
pub(crate) mod template;
