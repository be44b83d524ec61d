//! The Tollgate controller: gRPC services for agents and managers, the store, the scheduler
//! loop, the lease watchdog and reports.
//!
//! [`run`] receives its listener and a shutdown future, so tests bind `127.0.0.1:0` and stop
//! it at will.

pub mod clock;
pub mod config;
pub mod report;
pub mod store;

pub use config::ControllerConfig;
