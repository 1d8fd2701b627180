//! The measurements, one module each: [`rate`] (packets/s and CPU per packet, and the
//! generator's own check), [`cpu`] (the CPU counters they use), [`latency`], [`tcp`],
//! [`newflows`] and [`churn`].
pub mod churn;
pub mod cpu;
pub mod latency;
pub mod newflows;
pub mod rate;
pub mod tcp;
