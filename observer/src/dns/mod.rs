//! DNS-aware egress: names for external addresses from the DNS answers each pod received.
//!
//! The kernel hands over every DNS response delivered to a pod (UDP or TCP from port 53) with
//! the receiving network namespace's inode. [`parse`] decodes one into the question name and
//! the addresses its CNAME chain leads to; [`DnsNames`] keeps them per namespace until their
//! TTL (plus a grace) runs out, so a later flow from that namespace to one of the addresses is
//! named by what the pod asked for. Nothing here touches the kernel or blocks: the caller
//! passes the time in, which keeps expiry testable to the instant.
#![forbid(unsafe_code)]

mod cache;
mod parse;

pub use cache::{
    DEFAULT_GRACE, DEFAULT_MAX_ENTRIES, DnsNames, MAX_CHAIN_BYTES, MAX_NAMES_PER_ADDRESS,
};
pub use parse::{Address, Answers, MAX_CNAME_HOPS, MAX_MESSAGE_LEN, ParseError, parse};

#[cfg(test)]
mod tests;

/// Counts since a [`DnsNames`] was created, for export as Prometheus counters.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DnsCounts {
    /// NOERROR responses decoded, with or without addresses.
    pub responses: u64,
    /// Namings dropped to make room (the entry bound, or the per-address name bound).
    pub evictions: u64,
    /// Namings swept after their expiry.
    pub expired: u64,
    rejected: [u64; ParseError::ALL.len()],
}

impl DnsCounts {
    /// Messages that yielded no answers, of one kind.
    pub fn rejected(&self, kind: ParseError) -> u64 {
        self.rejected.get(kind.index()).copied().unwrap_or(0)
    }

    /// Messages that yielded no answers, by kind, in [`ParseError::ALL`] order.
    pub fn rejected_by_kind(&self) -> impl Iterator<Item = (ParseError, u64)> + '_ {
        ParseError::ALL
            .into_iter()
            .map(|kind| (kind, self.rejected(kind)))
    }

    /// Counts one parse outcome.
    pub fn count<T>(&mut self, outcome: &Result<T, ParseError>) {
        let slot = match outcome {
            Ok(_) => &mut self.responses,
            Err(kind) => match self.rejected.get_mut(kind.index()) {
                Some(slot) => slot,
                None => return,
            },
        };
        *slot = slot.saturating_add(1);
    }
}
