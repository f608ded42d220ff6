//! Backups into the fleet's own garage: `mesh backup`, `mesh snapshots`,
//! `mesh restore` and each host's backup timer.
//!
//! One restic repository for the fleet (`s3:http://<overlay ip>:3900/mesh-backups`,
//! reached through the host's own garage node), snapshots tagged `mesh`,
//! `host=<host>` and `service=<service>`. Every host gets one script,
//! `/usr/local/sbin/mesh-backup`, rendered by mesh from the services it runs
//! ([`script`]); `mesh backup` runs it over SSH and the timer runs the same
//! script on the host, agentless. The repository password and the bucket key
//! reach a host only in `/etc/mesh/restic.env` (0600), which the script
//! sources: never an argument, never a log line.

mod spec;

pub(crate) use spec::{read_spec, BackupSpec};
