//! `scrub` and `repair`.
//!
//! - `scrub --addr` asks a running replica to read every entry back and
//!   check it now (`Replication/Scrub`): what is not as stored is taken
//!   out of service and fetched again from its peers. `scrub --data`
//!   checks a stopped replica's store in place (see `crate::store::scrub`)
//!   and changes nothing. Each prints every entry that is not as stored and
//!   exits non-zero when there is one.
//! - `repair` asks a running replica to compare its set with one peer's or
//!   every peer's now (`Replication/Repair`), and prints what each found
//!   and moved.

use std::path::PathBuf;
use std::time::Instant;

use tonic::codegen::InterceptedService;
use tonic::transport::Channel;

use crate::auth::RequestSigner;
use crate::proto;
use crate::proto::replication_client::ReplicationClient;
use crate::store::rocks::{RocksConfig, RocksStore};
use crate::store::scrub::scrub_all;

/// Log records checked per page.
const PAGE: usize = 1000;

/// `scrub`.
#[derive(Debug, clap::Args)]
pub struct ScrubArgs {
    /// A running replica's gRPC address: it scrubs itself while it serves.
    #[arg(long, conflicts_with = "data", required_unless_present = "data")]
    pub addr: Option<String>,
    /// A stopped replica's `storage.path`: checked here, nothing changed.
    #[arg(long)]
    pub data: Option<PathBuf>,
    /// With `--addr`: entry bytes read per second at most (0: no limit).
    #[arg(long, default_value_t = 0)]
    pub mb_per_second: u64,
}

/// `repair`.
#[derive(Debug, clap::Args)]
pub struct RepairArgs {
    /// The replica's gRPC address.
    #[arg(long, default_value = "127.0.0.1:7700")]
    pub addr: String,
    /// Only this peer (its node identity, as `peers` lists it).
    #[arg(long)]
    pub peer: Option<String>,
    /// Seconds to wait for the peers' answers.
    #[arg(long, default_value_t = 600)]
    pub timeout_secs: u64,
}

/// The Replication API of the replica at `addr`, as the operator.
async fn operator(
    addr: &str,
) -> anyhow::Result<ReplicationClient<InterceptedService<Channel, RequestSigner>>> {
    let dial = crate::client::Dial::from_env()?;
    let channel = crate::client::channel(addr, dial.tls).await?;
    Ok(ReplicationClient::with_interceptor(
        channel,
        RequestSigner::new(dial.key),
    ))
}

pub async fn scrub(args: ScrubArgs) -> anyhow::Result<()> {
    let (checked, bytes, found, secs, what) = match (&args.addr, &args.data) {
        (Some(addr), _) => {
            let answer = operator(addr)
                .await?
                .scrub(proto::ScrubRequest {
                    mb_per_second: args.mb_per_second,
                })
                .await?
                .into_inner();
            for c in &answer.corrupt {
                let ns = c
                    .namespace
                    .as_ref()
                    .map_or(String::new(), |n| format!("{}/{}", n.tenant, n.db));
                println!(
                    "corrupt, taken out of service: seq {} in {ns} id {}: {}",
                    c.seq,
                    hex::encode(&c.id),
                    c.problem
                );
            }
            let secs = answer.took_ms as f64 / 1000.0;
            (
                answer.entries,
                answer.bytes,
                answer.corrupt.len(),
                secs,
                addr.clone(),
            )
        }
        (None, Some(data)) => {
            anyhow::ensure!(
                data.join("CURRENT").is_file(),
                "{} holds no database",
                data.display()
            );
            let store = RocksStore::open(&RocksConfig::new(data))?;
            let started = Instant::now();
            let totals = scrub_all(&store, PAGE, |f| {
                println!(
                    "corrupt: seq {} in {} id {}: {}",
                    f.seq, f.namespace, f.id, f.problem
                )
            })?;
            let secs = started.elapsed().as_secs_f64();
            let found = totals.findings.len();
            (
                totals.checked,
                totals.bytes,
                found,
                secs,
                data.display().to_string(),
            )
        }
        (None, None) => anyhow::bail!("give --addr (a running replica) or --data (a stopped one)"),
    };
    println!(
        "scrub of {what}: {checked} entries, {:.1} MB checked in {secs:.1} s ({:.0} entries/s); {found} corrupt",
        bytes as f64 / 1e6,
        checked as f64 / secs.max(1e-9)
    );
    match (found, &args.addr) {
        (0, _) => Ok(()),
        (_, Some(_)) => anyhow::bail!(
            "{found} entries were not as stored: taken out of service, good copies are being \
             fetched from the peers (`mindoo-replica repair` shows what moved)"
        ),
        (_, None) => anyhow::bail!(
            "{found} entries are not as stored; copies are on the replica's peers, and a \
             running replica's scrub (`scrub --addr`) replaces them"
        ),
    }
}

pub async fn repair(args: RepairArgs) -> anyhow::Result<()> {
    let answer = operator(&args.addr)
        .await?
        .repair(proto::RepairRequest {
            peer: args.peer.unwrap_or_default(),
            timeout_ms: args.timeout_secs.saturating_mul(1000),
        })
        .await?
        .into_inner();
    anyhow::ensure!(
        !answer.peers.is_empty(),
        "the replica has no peers to compare with"
    );
    let mut unanswered = 0;
    for p in &answer.peers {
        let mark = if p.done { "done" } else { "PENDING" };
        unanswered += usize::from(!p.done);
        println!("{:<28} {mark:<8} {}", p.peer, p.result);
    }
    anyhow::ensure!(
        unanswered == 0,
        "{unanswered} peer(s) did not answer in time"
    );
    Ok(())
}
