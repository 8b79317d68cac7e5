//! The `status` and `peers` commands: a running replica's view of itself and
//! of every peer it pulls from, over the Replication API.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::proto;
use crate::proto::replication_client::ReplicationClient;

pub async fn status(addr: &str, with_head: bool) -> anyhow::Result<()> {
    let dial = crate::client::Dial::from_env()?;
    let channel = crate::client::channel(addr, dial.tls).await?;
    let signer = crate::auth::RequestSigner::new(dial.key);
    let s = ReplicationClient::with_interceptor(channel, signer)
        .peer_status(proto::PeerStatusRequest {})
        .await?
        .into_inner();
    if with_head {
        println!(
            "replica {}  at {addr}  incarnation {}  head_seq {}  entries {}",
            s.node,
            hex::encode(&s.incarnation),
            s.head_seq,
            s.entry_count
        );
    }
    println!(
        "{:<28} {:<22} {:<12} {:>12} {:>12} {:>10} {:>12}  last error",
        "peer", "address", "state", "cursor", "peer head", "lag", "last ok"
    );
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or(Duration::ZERO);
    for p in &s.peers {
        let state = match (p.is_self, p.connected) {
            (true, _) => "self".to_owned(),
            (false, true) => p.state.clone(),
            (false, false) => format!("down/{}", p.state),
        };
        let warning = match p.shares_incarnation {
            true => "SHARES THIS REPLICA'S INCARNATION (copied data directory)  ",
            false => "",
        };
        let last_ok = match p.last_success_unix_ms {
            0 => "never".to_owned(),
            ms => format!(
                "{:.1}s ago",
                now.as_millis().saturating_sub(ms as u128) as f64 / 1e3
            ),
        };
        println!(
            "{:<28} {:<22} {:<12} {:>12} {:>12} {:>10} {:>12}  {warning}{}",
            p.peer,
            p.address,
            state,
            p.cursor_seq,
            p.peer_head_seq,
            p.peer_head_seq.saturating_sub(p.cursor_seq),
            last_ok,
            p.last_error
        );
        if p.last_reconcile_unix_ms > 0 {
            println!(
                "{:<28} reconciled {:.0}s ago: {}",
                "",
                now.as_millis()
                    .saturating_sub(p.last_reconcile_unix_ms as u128) as f64
                    / 1e3,
                p.last_reconcile
            );
        }
    }
    if s.peers.is_empty() {
        println!("(no peers configured)");
    }
    Ok(())
}
