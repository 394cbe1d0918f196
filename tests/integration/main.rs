//! End-to-end tests: the real `medallion` binary on real files and Delta tables, read back
//! with independent readers. One test binary, a module per area.

mod bad_input;
mod bench;
mod cdc;
mod cluster;
mod evolution;
mod example;
mod fixture;
mod hostile;
mod incremental;
mod integrity;
mod k8s;
mod lake_ops;
mod layers;
mod observability;
mod quality;
mod recovery;
mod schedule;
mod security;
mod serve;
mod sources;
mod storage;
mod streams;
mod ui;
