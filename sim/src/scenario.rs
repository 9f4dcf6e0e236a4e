//! Scenario files: cluster, clients, workload, fault mix and durations, read from TOML (being built).
