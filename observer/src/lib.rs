//! The observer agent: capture, attribution, verdicts and export of TCP flows.

pub mod agent;
pub mod architecture;
pub mod attribution;
pub mod capture;
pub mod cgroups;
pub mod check;
pub mod cli;
pub mod dns;
pub mod fasthash;
pub mod flowlog;
pub mod http;
pub mod inventory;
pub mod judge;
pub mod memory;
pub mod metrics;
pub mod names;
pub mod prefetch;
pub mod report;
pub mod scope;
pub mod traces;
