//! The nemesis: a fault schedule drawn from the seed and a scenario, applied to the simulation (being built).
