//! `Replication/Scrub` and `Replication/Repair`: an operator's scrub of a
//! running replica (see `crate::replica::scrub`) and reconciliation with
//! its peers on demand (see `crate::sync::repair`).

use std::time::Duration;

use tonic::Status;

use crate::proto;
use crate::proto::convert;
use crate::replica::Replica;
use crate::sync::repair::Repairs;
use crate::sync::status::{PeerStatus, StatusBoard};

/// How long a repair waits for the peers when the caller does not say.
const REPAIR_TIMEOUT: Duration = Duration::from_secs(600);
/// How often a repair looks at the workers' answers.
const REPAIR_POLL: Duration = Duration::from_millis(50);

/// One pass now; when it took entries out of service, every peer is asked
/// for good copies.
pub async fn scrub(
    replica: &Replica,
    repairs: &Repairs,
    request: proto::ScrubRequest,
) -> Result<proto::ScrubResponse, Status> {
    let rate = request.mb_per_second.saturating_mul(1 << 20);
    // The pass stops when the caller goes away (this future is dropped) or
    // the replica stops.
    let cancel = replica.shutdown_token().child_token();
    let _stop = cancel.clone().drop_guard();
    let report = replica.scrub(rate, &cancel).await.map_err(Status::from)?;
    if report.stopped {
        return Err(Status::unavailable(
            "the replica is stopping; the scrub was cut short",
        ));
    }
    if !report.corrupt.is_empty() {
        repairs.request(None);
    }
    Ok(proto::ScrubResponse {
        entries: report.checked,
        bytes: report.bytes,
        corrupt: report
            .corrupt
            .iter()
            .map(|f| proto::CorruptEntry {
                seq: f.seq,
                namespace: Some(convert::namespace_to_proto(&f.namespace)),
                id: convert::id_bytes(&f.id),
                problem: f.problem.clone(),
            })
            .collect(),
        took_ms: report.took.as_millis() as u64,
    })
}

/// Asks `request.peer` (or every connected peer) to compare sets now and
/// waits for the answers.
pub async fn repair(
    board: &StatusBoard,
    repairs: &Repairs,
    request: proto::RepairRequest,
) -> Result<proto::RepairResponse, Status> {
    let peers: Vec<PeerStatus> = board
        .snapshot()
        .into_iter()
        .filter(|s| !s.is_self)
        .collect();
    let targets: Vec<&PeerStatus> = match request.peer.as_str() {
        "" => peers.iter().collect(),
        name => {
            let one: Vec<&PeerStatus> = peers
                .iter()
                .filter(|s| s.peer == name || s.address == name)
                .collect();
            if one.is_empty() {
                let known: Vec<&str> = peers.iter().map(|s| s.peer.as_str()).collect();
                return Err(Status::not_found(format!(
                    "no peer named {name}; this replica's peers: {}",
                    known.join(", ")
                )));
            }
            one
        }
    };
    let number = match request.peer.as_str() {
        "" => repairs.request(None),
        _ => {
            let node = targets[0].peer.clone();
            repairs.request(Some(&node))
        }
    };
    let timeout = match request.timeout_ms {
        0 => REPAIR_TIMEOUT,
        ms => Duration::from_millis(ms),
    };
    let waiting: Vec<(String, bool)> = targets
        .iter()
        .map(|s| (s.address.clone(), s.connected))
        .collect();
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        let now: Vec<PeerStatus> = board.snapshot();
        let of = |address: &str| now.iter().find(|s| s.address == address);
        let pending = waiting.iter().any(|(address, connected)| {
            *connected && of(address).is_some_and(|s| s.repaired < number)
        });
        if !pending || tokio::time::Instant::now() >= deadline {
            let peers = waiting
                .iter()
                .map(|(address, connected)| {
                    answer(of(address), address, *connected, number, timeout)
                })
                .collect();
            return Ok(proto::RepairResponse { peers });
        }
        tokio::time::sleep(REPAIR_POLL).await;
    }
}

/// What to say of one peer asked for repair `number`.
fn answer(
    status: Option<&PeerStatus>,
    address: &str,
    connected: bool,
    number: u64,
    timeout: Duration,
) -> proto::PeerRepair {
    let Some(s) = status else {
        return proto::PeerRepair {
            peer: address.to_owned(),
            done: false,
            result: "the peer left the topology".into(),
        };
    };
    let (done, result) = match (s.repaired >= number, connected) {
        (true, _) => (true, s.last_repair_result.clone().unwrap_or_default()),
        (false, false) => (
            false,
            format!(
                "not connected ({}); it is compared once it is back",
                s.last_error.as_deref().unwrap_or(s.state)
            ),
        ),
        (false, true) => (
            false,
            format!(
                "no answer within {} s (state {}); the comparison goes on",
                timeout.as_secs(),
                s.state
            ),
        ),
    };
    proto::PeerRepair {
        peer: s.peer.clone(),
        done,
        result,
    }
}
