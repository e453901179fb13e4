//! The observer kernel program.
//!
//! One raw tracepoint program on `sock/inet_sock_set_state` (`TP_PROTO(const struct sock *sk,
//! const int oldstate, const int newstate)`), which the kernel calls on every TCP state change.
//! It counts every TCP connection in a plain hash map keyed by flow, in the kernel, and announces
//! only flows it has never seen through a ring buffer that never wakes the agent per record.
//!
//! - CLOSE -> SYN_SENT runs in the connecting task's context (inside `connect()`): the task's
//!   cgroup, pid and command are kept per socket until the handshake ends.
//! - SYN_SENT -> ESTABLISHED / CLOSE ends an active open; a failed one is classified by `sk_err`.
//! - SYN_RECV -> ESTABLISHED is a passive open (an accepted connection), in softirq: only the
//!   socket's own fields are meaningful there, never the current task.
//!
//! Every other transition (7 of the 10 a connection goes through) returns after comparing two
//! integers from the context. Struct field offsets come from the running kernel's BTF through
//! the `OFFSETS` global, which the agent sets at load time.
//!
//! Two `cgroup_skb` programs (`dns.rs`) see DNS: responses delivered to any socket, handed to
//! the agent with the receiving network namespace, and UDP queries, counted per flow.
#![cfg_attr(target_arch = "bpf", no_std, no_main)]
// Atomic adds on map values: the BPF target has no atomic read-modify-write types.
#![cfg_attr(target_arch = "bpf", feature(core_intrinsics))]
#![cfg_attr(target_arch = "bpf", expect(internal_features, reason = "atomic_xadd"))]

#[cfg(target_arch = "bpf")]
mod dns;
#[cfg(target_arch = "bpf")]
mod program;

#[cfg(not(target_arch = "bpf"))]
fn main() {}
