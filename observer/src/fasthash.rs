//! The hasher of the maps looked up for every flow reading (tracker, flow cache).
//!
//! std's SipHash-1-3 costs more than the rest of a cached reading; foldhash is several times
//! faster on small keys. Its `quality` variant, randomly seeded per process, is used rather than
//! `fast`: flow keys carry addresses and ports that hosts outside the cluster choose.

pub type FastHash = foldhash::quality::RandomState;
