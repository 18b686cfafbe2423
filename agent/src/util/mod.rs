//! Small helpers that several domain modules need: clocks and timestamps, random ids,
//! hex, error chains, text safe to show people, TLS client setup and names read back
//! from saved state. Domain modules import them from here rather
//! than from each other. Device numbers live in `agent_common::dev`, because the kernel
//! programs encode them too.

pub mod error;
pub mod hex;
pub mod intern;
pub mod random;
pub mod text;
pub mod time;
pub mod tls;
