//! The observer agent: capture, attribution, verdicts and export of TCP flows.

pub mod inventory;
