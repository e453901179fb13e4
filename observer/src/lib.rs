//! The observer agent: capture, attribution, verdicts and export of TCP flows.

pub mod architecture;
pub mod capture;
pub mod cli;
pub mod flowlog;
pub mod http;
pub mod metrics;
pub mod report;
pub mod run;
pub mod scope;
