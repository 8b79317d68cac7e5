//! The replica's side of `Replication/Reconcile`: reads each round of the
//! caller's frames, answers it against the store's range fingerprints,
//! and sends the answer back as frames. A session is bounded: in bytes
//! held per round, in rounds (see the session), and in time.

use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use prost::Message;
use tokio::sync::mpsc;
use tonic::{Status, Streaming};

use super::ResponseStream;
use crate::proto;
use crate::proto::reconcile::{MAX_ROUND_BYTES, frames, parts, scope};
use crate::replica::Replica;
use crate::store::ranges::Scope;
use crate::sync::local::Local;
use crate::sync::reconcile::{Role, Session, SessionLimits};

/// How long one session may take, all rounds together.
pub const SESSION_TIMEOUT: Duration = Duration::from_secs(300);

/// Answers the caller's rounds until it closes the stream.
pub fn serve(
    replica: Arc<Replica>,
    incoming: Streaming<proto::ReconcileFrame>,
) -> ResponseStream<proto::ReconcileFrame> {
    let (tx, rx) = mpsc::channel(4);
    tokio::spawn(async move {
        let ended = tokio::time::timeout(SESSION_TIMEOUT, respond(replica, incoming, &tx)).await;
        let status = match ended {
            Ok(Ok(())) => return,
            Ok(Err(status)) => status,
            Err(_) => Status::deadline_exceeded(format!(
                "a reconcile session may take {} s",
                SESSION_TIMEOUT.as_secs()
            )),
        };
        tracing::info!(error = %status.message(), "reconcile session refused");
        let _ = tx.send(Err(status)).await;
    });
    tokio_stream::wrappers::ReceiverStream::new(rx).boxed()
}

async fn respond(
    replica: Arc<Replica>,
    mut incoming: Streaming<proto::ReconcileFrame>,
    tx: &mpsc::Sender<Result<proto::ReconcileFrame, Status>>,
) -> Result<(), Status> {
    let mut session: Option<Session> = None;
    let mut round = Vec::new();
    let mut round_bytes = 0;
    while let Some(frame) = incoming.message().await? {
        round_bytes += frame.encoded_len();
        if round_bytes > MAX_ROUND_BYTES {
            return Err(Status::resource_exhausted(format!(
                "a reconcile round may hold {MAX_ROUND_BYTES} bytes"
            )));
        }
        let open = match session.take() {
            Some(s) => s,
            None => {
                let namespaces = scope(&frame)?;
                let scope = match namespaces.is_empty() {
                    true => Scope::all(),
                    false => Scope::only(&namespaces),
                };
                Session::new(Role::Responder, scope, SessionLimits::default())
            }
        };
        let end = frame.end_of_round;
        round.extend(parts(frame)?);
        if !end {
            session = Some(open);
            continue;
        }
        let (next, answer) = replica
            .reconcile(open, Some(std::mem::take(&mut round)))
            .await?;
        session = Some(next);
        round_bytes = 0;
        for frame in frames(answer, &[]) {
            tx.send(Ok(frame))
                .await
                .map_err(|_| Status::cancelled("the caller left"))?;
        }
    }
    Ok(())
}
