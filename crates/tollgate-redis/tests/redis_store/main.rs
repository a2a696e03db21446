//! tollgate-redis against real redis-server processes (started by tollgate-testkit): one
//! standalone server and one 3-master Cluster, each shared by the whole binary.

mod cluster_failover;
mod common;
mod concurrency;
mod faults;
mod features;
mod late;
mod log;
mod long_quotas;
mod multi_key;
mod network;
mod outage;
mod sharing;
mod under_load;
mod valkey;
mod vectors;
