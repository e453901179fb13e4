//! Empty on purpose: the kernel program is the `observer-ebpf` binary of this crate, built for
//! `bpfel-unknown-none` by the agent's build script. This library target only lets the agent
//! declare a build-dependency on the crate, so cargo rebuilds the agent when it changes.
#![no_std]
