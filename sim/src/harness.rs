//! The simulation harness: real nodes and natter-client clients as turmoil hosts, a workload, a nemesis, and the checkers (being built).
