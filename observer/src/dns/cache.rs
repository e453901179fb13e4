//! Per-pod memory of DNS answers: which names each address was given for, until when.

use std::{
    collections::{BTreeMap, HashMap},
    net::IpAddr,
    sync::Arc,
    time::{Duration, Instant},
};

use super::{
    DnsCounts,
    parse::{Answers, ParseError, parse},
};

/// Default bound on stored namings (one per scope, address and question name). A node runs
/// at most a few hundred pods, and a pod talks to far fewer than a few hundred external names
/// at once, so this leaves room for every pod. Measured full (release build, 100 scopes):
/// about 20 MiB with one short name per naming (some 320 bytes each), about 65 MiB when every
/// naming carries its own chain near [`MAX_CHAIN_BYTES`] (the worst a hostile pod can force).
pub const DEFAULT_MAX_ENTRIES: usize = 65_536;

/// Default time an answer outlives its TTL. Clients keep using an address after the TTL
/// runs out: libcurl caches answers for 60 s and the JVM for 30 s whatever the TTL says, and
/// inside a cluster CoreDNS's `cache 30` hands out TTLs of 30 s or less, so TTL alone would
/// leave such clients' connections unnamed. Twice libcurl's 60 s covers those caches, plus
/// the delay between an answer, the connect and its event. Keeping a naming longer costs only
/// memory, which the entry bound caps. (Cilium's toFQDNs keeps IPs past their TTL for the
/// same reason, while connections still use them.)
pub const DEFAULT_GRACE: Duration = Duration::from_secs(120);

/// Most names kept for one address in one scope; a newer name pushes out the least recent.
/// Shared front-ends (CDNs, cloud load balancers) answer for many names, but a pod asks
/// for few of them within one TTL.
pub const MAX_NAMES_PER_ADDRESS: usize = 4;

/// Most bytes of chain names kept per answer, question included (the question is always
/// kept). Typical CDN chains are 100-250 bytes; the bound keeps an answer with sixteen
/// 250-byte CNAMEs from costing 4 KiB in every naming.
pub const MAX_CHAIN_BYTES: usize = 512;

/// Names of addresses, per scope (the receiving pod's network-namespace inode): a flow from
/// scope N to address A is named by the DNS answers delivered into N, and no other pod's.
///
/// Each (scope, address, question) is one naming and one entry. Its expiry is the receipt time
/// plus the answer's TTL plus the grace; it is gone at exactly that instant. Expired namings
/// are swept in expiry order by [`DnsNames::expire`] (also run by every record), costing
/// O(log n) per naming swept; lookups skip expired namings without scanning anything.
///
/// When the bound is reached, the naming closest to expiry is evicted (and counted). That is
/// the order the sweep already keeps, so no second index is needed; lookups stay read-only,
/// where LRU would write on every lookup from the flow path; and the naming dropped is the one
/// the sweep would have dropped next. The cost: one pod resolving many long-TTL names can
/// push out other pods' short-TTL namings; the evictions counter shows when that happens.
#[derive(Debug)]
pub struct DnsNames {
    scopes: HashMap<u32, HashMap<IpAddr, Vec<Naming>>>,
    /// Every naming by (expiry, sequence): the sequence keeps keys unique and identifies the
    /// naming inside its address's list.
    by_expiry: BTreeMap<(Instant, u64), (u32, IpAddr)>,
    entries: usize,
    max_entries: usize,
    grace: Duration,
    next_seq: u64,
    counts: DnsCounts,
}

/// One question name an address was given for, with the CNAME chain that led to it.
#[derive(Debug)]
struct Naming {
    /// The answer's chain, shared by all of its addresses; the question first.
    chain: Arc<[Box<str>]>,
    /// How many names of `chain` lead to this address (at least the question).
    len: usize,
    expires: Instant,
    seq: u64,
}

impl Naming {
    fn question(&self) -> &str {
        self.chain.first().map_or("", |name| name)
    }

    fn names(&self) -> impl Iterator<Item = &str> {
        self.chain.iter().take(self.len).map(|name| &**name)
    }
}

impl Default for DnsNames {
    fn default() -> Self {
        DnsNames::new(DEFAULT_MAX_ENTRIES, DEFAULT_GRACE)
    }
}

impl DnsNames {
    /// A cache holding at most `max_entries` namings (at least one), each kept `grace` past its
    /// TTL. See [`DEFAULT_MAX_ENTRIES`] and [`DEFAULT_GRACE`].
    pub fn new(max_entries: usize, grace: Duration) -> Self {
        DnsNames {
            scopes: HashMap::new(),
            by_expiry: BTreeMap::new(),
            entries: 0,
            max_entries: max_entries.max(1),
            grace,
            next_seq: 0,
            counts: DnsCounts::default(),
        }
    }

    /// Parses one DNS message delivered into scope `netns` at `now`, counts its outcome and
    /// records its addresses. The answers are returned for logging.
    pub fn ingest(
        &mut self,
        netns: u32,
        message: &[u8],
        now: Instant,
    ) -> Result<Answers, ParseError> {
        let answers = parse(message);
        self.counts.count(&answers);
        let answers = answers?;
        self.record(netns, &answers, now);
        Ok(answers)
    }

    /// Records every address of `answers` for its question name in scope `netns`, received at
    /// `now`. A naming already held for the same scope, address and question is refreshed:
    /// its expiry becomes the later of the two, its chain the new one, and it becomes the
    /// address's most recent name.
    pub fn record(&mut self, netns: u32, answers: &Answers, now: Instant) {
        self.expire(now);
        let chain = kept_chain(&answers.names);
        if chain.is_empty() {
            return;
        }
        for address in &answers.addresses {
            let lifetime = Duration::from_secs(u64::from(address.ttl)).saturating_add(self.grace);
            // None only past the clock's range (centuries on Linux): nothing to keep then.
            let Some(expires) = now.checked_add(lifetime) else {
                continue;
            };
            if expires <= now {
                continue;
            }
            let len = address.hops.saturating_add(1).min(chain.len());
            self.insert(netns, address.addr.to_canonical(), &chain, len, expires);
        }
    }

    fn insert(
        &mut self,
        netns: u32,
        addr: IpAddr,
        chain: &Arc<[Box<str>]>,
        len: usize,
        mut expires: Instant,
    ) {
        let question = chain.first().map_or("", |name| &**name);
        let held = self.scopes.get(&netns).and_then(|scope| scope.get(&addr));
        let known = held.and_then(|names| names.iter().position(|n| n.question() == question));
        match known {
            Some(_) => {}
            None if held.is_some_and(|names| names.len() >= MAX_NAMES_PER_ADDRESS) => {
                // The address's least recent name makes room; the total stays the same.
                if let Some(seq) = held.and_then(|names| names.last()).map(|n| n.seq) {
                    self.remove_by_seq(netns, addr, seq);
                    self.counts.evictions = self.counts.evictions.saturating_add(1);
                }
            }
            None => {
                if self.entries >= self.max_entries {
                    self.evict_oldest();
                }
            }
        }
        let seq = self.next_seq;
        self.next_seq = self.next_seq.wrapping_add(1);
        let names = self
            .scopes
            .entry(netns)
            .or_default()
            .entry(addr)
            // Most addresses only ever get one name; the default capacity of 4 would triple
            // the list's memory.
            .or_insert_with(|| Vec::with_capacity(1));
        if let Some(pos) = known
            && pos < names.len()
        {
            let old = names.remove(pos);
            self.by_expiry.remove(&(old.expires, old.seq));
            expires = expires.max(old.expires);
        } else {
            self.entries += 1;
        }
        names.insert(
            0,
            Naming {
                chain: Arc::clone(chain),
                len,
                expires,
                seq,
            },
        );
        self.by_expiry.insert((expires, seq), (netns, addr));
    }

    /// The name the pod in `netns` most recently asked for and was answered `addr`, while that
    /// answer lasts.
    pub fn name_for(&self, netns: u32, addr: IpAddr, now: Instant) -> Option<&str> {
        self.live(netns, addr, now).next().map(Naming::question)
    }

    /// Every name leading to `addr` in `netns` while its answer lasts, for wildcard matching:
    /// per question, most recent first, the question then its CNAME targets. A name shared by
    /// two chains appears twice.
    pub fn names_for(&self, netns: u32, addr: IpAddr, now: Instant) -> impl Iterator<Item = &str> {
        self.live(netns, addr, now).flat_map(Naming::names)
    }

    fn live(&self, netns: u32, addr: IpAddr, now: Instant) -> impl Iterator<Item = &Naming> {
        self.scopes
            .get(&netns)
            .and_then(|scope| scope.get(&addr.to_canonical()))
            .into_iter()
            .flatten()
            .filter(move |naming| naming.expires > now)
    }

    /// Drops every naming whose expiry is at or before `now`, counting them; returns how many.
    pub fn expire(&mut self, now: Instant) -> usize {
        let mut swept = 0;
        while let Some(first) = self.by_expiry.first_entry() {
            if first.key().0 > now {
                break;
            }
            let ((_, seq), (netns, addr)) = first.remove_entry();
            self.remove_by_seq(netns, addr, seq);
            swept += 1;
        }
        self.counts.expired = self.counts.expired.saturating_add(swept as u64);
        swept
    }

    /// Drops everything recorded for `netns`, for when its pod is gone: the kernel reuses a
    /// freed namespace's inode number, and a new pod must not inherit the old one's names.
    /// Returns how many namings were dropped; they count neither as expired nor as evicted.
    pub fn forget(&mut self, netns: u32) -> usize {
        let Some(scope) = self.scopes.remove(&netns) else {
            return 0;
        };
        let mut dropped = 0;
        for naming in scope.values().flatten() {
            self.by_expiry.remove(&(naming.expires, naming.seq));
            dropped += 1;
        }
        self.entries = self.entries.saturating_sub(dropped);
        dropped
    }

    fn evict_oldest(&mut self) {
        if let Some(((_, seq), (netns, addr))) = self.by_expiry.pop_first() {
            self.remove_by_seq(netns, addr, seq);
            self.counts.evictions = self.counts.evictions.saturating_add(1);
        }
    }

    /// Removes one naming: from its address's list (dropping an emptied list and scope) and
    /// from the expiry index.
    fn remove_by_seq(&mut self, netns: u32, addr: IpAddr, seq: u64) {
        let Some(scope) = self.scopes.get_mut(&netns) else {
            return;
        };
        if let Some(names) = scope.get_mut(&addr) {
            if let Some(pos) = names.iter().position(|n| n.seq == seq) {
                let naming = names.remove(pos);
                self.by_expiry.remove(&(naming.expires, naming.seq));
                self.entries = self.entries.saturating_sub(1);
            }
            if names.is_empty() {
                scope.remove(&addr);
            }
        }
        if scope.is_empty() {
            self.scopes.remove(&netns);
        }
    }

    /// Namings held now, expired ones not yet swept included.
    pub fn entries(&self) -> usize {
        self.entries
    }

    /// Namings dropped to make room, since creation.
    pub fn evictions(&self) -> u64 {
        self.counts.evictions
    }

    /// Namings swept after their expiry, since creation.
    pub fn expired(&self) -> u64 {
        self.counts.expired
    }

    /// Every count since creation: messages by outcome, evictions and expiries.
    pub fn counts(&self) -> DnsCounts {
        self.counts
    }
}

#[cfg(test)]
impl DnsNames {
    /// Panics unless the lists, the expiry index and the count agree and every bound holds.
    pub(crate) fn assert_consistent(&self) {
        let mut total = 0;
        for (netns, scope) in &self.scopes {
            assert!(!scope.is_empty(), "empty scope {netns} kept");
            for (addr, names) in scope {
                assert!(!names.is_empty(), "empty list for {addr} kept");
                assert!(names.len() <= MAX_NAMES_PER_ADDRESS);
                for (i, naming) in names.iter().enumerate() {
                    assert!(naming.len >= 1 && naming.len <= naming.chain.len());
                    assert_eq!(
                        self.by_expiry.get(&(naming.expires, naming.seq)),
                        Some(&(*netns, *addr))
                    );
                    let question = naming.question();
                    assert!(!names[..i].iter().any(|n| n.question() == question));
                }
                total += names.len();
            }
        }
        assert_eq!(total, self.entries);
        assert_eq!(self.by_expiry.len(), self.entries);
        assert!(self.entries <= self.max_entries);
    }
}

/// The answer's names as stored: the question always, then CNAME targets while the total
/// stays within [`MAX_CHAIN_BYTES`].
fn kept_chain(names: &[String]) -> Arc<[Box<str>]> {
    let mut bytes = 0usize;
    names
        .iter()
        .enumerate()
        .take_while(|(i, name)| {
            bytes = bytes.saturating_add(name.len());
            *i == 0 || bytes <= MAX_CHAIN_BYTES
        })
        .map(|(_, name)| Box::from(name.as_str()))
        .collect()
}
