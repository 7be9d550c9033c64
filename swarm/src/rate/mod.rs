//! Rate decisions, pure: a token bucket ([`TokenBucket`]) that the node's
//! transport wraps around every TCP connection (one bucket per direction,
//! shared by all connections), and the adaptive controller ([`Adaptive`])
//! that sets the upload bucket's rate from RTT and loss samples.
//!
//! Neither reads a clock: every call takes `now`, so both are unit-tested
//! with virtual time and run unchanged under the simulator.

mod adaptive;
mod bucket;

pub use adaptive::{Adaptive, AdaptiveConfig, Phase, Sample};
pub use bucket::{Rate, Reservation, TokenBucket, default_burst};
