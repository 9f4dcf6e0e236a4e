//! The workload the simulated clients run (being built).
