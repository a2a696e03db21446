//! The three-master cluster guard.

use std::process::Command;

use tollgate_testkit::{must_have, redis_cli_path, RedisCluster};

#[test]
fn cluster_is_ok_and_accepts_hash_tagged_keys() {
    let Some(cluster) = must_have("Redis Cluster", RedisCluster::start()) else {
        return;
    };
    let ports = cluster.ports();
    assert_eq!(ports.len(), 3);
    assert_eq!(
        cluster.urls(),
        ports
            .iter()
            .map(|p| format!("redis://127.0.0.1:{p}/"))
            .collect::<Vec<_>>()
    );

    for node in cluster.nodes() {
        let info = node
            .command(&["CLUSTER", "INFO"])
            .unwrap()
            .as_text()
            .unwrap();
        assert!(info.contains("cluster_state:ok"), "{info}");
        assert!(info.contains("cluster_slots_assigned:16384"), "{info}");
        assert!(info.contains("cluster_known_nodes:3"), "{info}");
    }

    // redis-cli in cluster mode (-c) follows MOVED from any node.
    let cli = redis_cli_path().unwrap();
    for port in &ports {
        let out = Command::new(&cli)
            .args(["-c", "-p", &port.to_string(), "set", "{x}a", "1"])
            .output()
            .unwrap();
        assert!(out.status.success(), "{out:?}");
        assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "OK", "{out:?}");
    }
    let out = Command::new(&cli)
        .args(["-c", "-p", &ports[0].to_string(), "get", "{x}a"])
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "1", "{out:?}");

    // Exactly one node owns the slot of {x}: the others redirect.
    let owners = cluster
        .nodes()
        .iter()
        .filter(|n| n.command(&["GET", "{x}a"]).unwrap().as_text().as_deref() == Some("1"))
        .count();
    assert_eq!(owners, 1);
}

#[test]
fn drop_kills_every_node() {
    let Some(cluster) = must_have("Redis Cluster", RedisCluster::start()) else {
        return;
    };
    let ports = cluster.ports();
    drop(cluster);
    for port in ports {
        assert!(
            std::net::TcpStream::connect(("127.0.0.1", port)).is_err(),
            "node {port} survived the drop"
        );
    }
}

#[test]
fn a_restarted_node_rejoins() {
    let Some(mut cluster) = must_have("Redis Cluster", RedisCluster::start()) else {
        return;
    };
    cluster.nodes_mut()[1].restart().unwrap();
    cluster
        .wait_until_ok(std::time::Duration::from_secs(60))
        .unwrap();
}
