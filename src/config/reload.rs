//! Applying a changed configuration to a running replica: on SIGHUP, and
//! when the config file's content changes (read every
//! `replication.config_poll_ms`; Kubernetes updates a mounted ConfigMap in
//! place and sends no signal). The replication settings (peers, topology,
//! filters) and the access policy (`[auth]`: who may read and write what)
//! apply without a restart; a file that does not load or validate is
//! reported and the running settings kept.

use std::path::{Path, PathBuf};

use tokio::sync::watch;

use super::RawConfig;
use crate::access::AccessPolicy;
use crate::replication::settings::ReplicationSettings;

/// Follows SIGHUP and the file at `path` until aborted, sending changed
/// replication settings to `replication`.
pub async fn follow(
    path: Option<PathBuf>,
    replication: watch::Sender<ReplicationSettings>,
    access: watch::Sender<AccessPolicy>,
) {
    use tokio::signal::unix::{SignalKind, signal};
    let mut hup = signal(SignalKind::hangup())
        .inspect_err(|e| tracing::warn!(error = %e, "cannot install a SIGHUP handler"))
        .ok();
    let poll = match path {
        Some(_) => replication.borrow().config_poll,
        None => None,
    };
    let mut seen = content(path.as_deref()).await;
    loop {
        let why = tokio::select! {
            Some(()) = async { hup.as_mut()?.recv().await } => "SIGHUP",
            _ = async { tokio::time::sleep(poll?).await; Some(()) }, if poll.is_some() => {
                let now = content(path.as_deref()).await;
                if now == seen {
                    continue;
                }
                seen = now;
                "the config file changed"
            }
            else => return,
        };
        apply(path.as_deref(), &replication, &access, why);
    }
}

async fn content(path: Option<&Path>) -> Option<Vec<u8>> {
    tokio::fs::read(path?).await.ok()
}

fn apply(
    path: Option<&Path>,
    replication: &watch::Sender<ReplicationSettings>,
    access: &watch::Sender<AccessPolicy>,
    why: &str,
) {
    match RawConfig::load(path).and_then(|raw| raw.validate()) {
        Ok(settings) => {
            let policy = settings.auth.access;
            if access.send_if_modified(|current| {
                let changed = *current != policy;
                *current = policy;
                changed
            }) {
                tracing::info!(why, "access policy reloaded");
            }
            let new = settings.replication;
            let peers = new.peers.clone();
            let changed = replication.send_if_modified(|current| {
                let changed = *current != new;
                *current = new;
                changed
            });
            match changed {
                true => tracing::info!(why, ?peers, "replication settings reloaded"),
                false => tracing::info!(why, "configuration read again; replication unchanged"),
            }
        }
        Err(e) => tracing::error!(
            why,
            error = %e,
            "configuration rejected; keeping the running settings"
        ),
    }
}
