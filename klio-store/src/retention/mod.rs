//! Retention: which backups a cluster keeps, and which of its WAL they still need.
//!
//! Two pure decisions, applied by the server's retention worker:
//!
//! - [`decide`] (the `policy` module): one [`Verdict`] per backup under a [`RetentionPolicy`]
//!   (`keep_backups`, `recovery_window`, the `min_backups` floor and pins), each kept backup
//!   with every [`RetainedBecause`] that keeps it.
//! - [`plan_wal`] (the `wal_plan` module): given the backups retained, which completed WAL
//!   segments and history files of the archive no retained backup can need, per timeline
//!   ([`WalPlan`]), judged by LSN and timeline through the timeline histories, never by file
//!   name. [`crate::wal_archive::WalPruner`] carries a plan out.
//!
//! Removing the backups themselves is [`crate::backup::BackupStore::delete`] (which refuses a
//! pinned one); reclaiming their blocks is the block store's mark and sweep.

mod policy;
mod wal_plan;

#[cfg(test)]
mod tests_policy;
#[cfg(test)]
mod tests_wal_plan;

pub use policy::{RetentionPolicy, Verdict, decide};
pub use wal_plan::{TimelinePlan, WalPlan, plan_listing, plan_wal};
