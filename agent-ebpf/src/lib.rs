//! Empty library target: it lets the agent's build script depend on this crate, so
//! cargo rebuilds the agent when the kernel programs change.
#![no_std]
