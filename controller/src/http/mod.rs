//! The controller's HTTP routes.

pub mod metrics;
