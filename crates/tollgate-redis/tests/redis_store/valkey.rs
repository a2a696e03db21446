//! When scripts/test runs this suite against Valkey (`TOLLGATE_EXPECT_VALKEY=1` with
//! `TOLLGATE_REDIS_SERVER` pointing at a `valkey-server`), proves the servers the suite
//! started really are Valkey, so a green run means the store works on Valkey.

use crate::common::standalone;

#[test]
fn the_servers_are_valkey_when_expected() {
    if std::env::var_os("TOLLGATE_EXPECT_VALKEY").is_none() {
        return;
    }
    let server = standalone().expect("a server");
    let info = server.command(&["INFO", "server"]).unwrap();
    let text = info.as_text().unwrap();
    assert!(
        text.contains("valkey_version:"),
        "TOLLGATE_EXPECT_VALKEY is set but the server is not Valkey:\n{text}"
    );
}
