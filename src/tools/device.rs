//! The client's commands: `doc create|set|edit|show|list|history` on a database on this
//! device (offline, in its own store), and `push` / `pull` to move its
//! entries through a replica. The home and keys are those of
//! [`super::keys`].

use std::path::PathBuf;
use std::time::Duration;

use crate::database::{DEFAULT_SNAPSHOT_EVERY, Database};
use crate::docs::DocId;
use crate::edit::{Edit, set_path};
use crate::entry::Namespace;
use crate::exchange::Exchange;
use crate::log::WriteConcern;
use crate::sync::error::SyncError;
use crate::sync::peer::PeerError;

/// Which database on this device a command works on.
#[derive(Debug, clap::Args)]
pub struct On {
    /// The client's home directory.
    #[arg(long, env = "MINDOO_CLIENT_HOME", default_value = ".mindoo-client")]
    pub home: PathBuf,
    /// The database, as `tenant/db`.
    #[arg(long, short)]
    pub namespace: String,
    /// Write a snapshot of a document with the change that makes this many
    /// since its last one (0: never).
    #[arg(long, env = "MINDOO_SNAPSHOT_EVERY", default_value_t = DEFAULT_SNAPSHOT_EVERY)]
    pub snapshot_every: usize,
}

impl On {
    fn open(&self) -> anyhow::Result<Database> {
        let ns = Namespace::from_path(&self.namespace)?;
        Ok(Database::open(&self.home, ns)?.with_snapshot_every(self.snapshot_every))
    }
}

/// `PATH=JSON`, as `--set` and `--insert` take it.
fn path_value(text: &str) -> Result<(String, serde_json::Value), String> {
    let (path, value) = text
        .split_once('=')
        .ok_or_else(|| format!("{text:?} is not PATH=VALUE"))?;
    Ok((path.to_owned(), json_or_word(value)))
}

/// A JSON value, or a bare word taken as a string.
fn json_or_word(text: &str) -> serde_json::Value {
    serde_json::from_str(text).unwrap_or_else(|_| serde_json::Value::String(text.to_owned()))
}

#[derive(Debug, clap::Subcommand)]
pub enum DocCommand {
    /// Create a document from a JSON object; prints its id.
    Create {
        #[command(flatten)]
        on: On,
        /// The initial value, a JSON object.
        #[arg(long, default_value = "{}")]
        json: String,
    },
    /// Set a field (`a.b`, `list.0`; an index one past the end appends) to
    /// a JSON value, as one change.
    Set {
        #[command(flatten)]
        on: On,
        /// The document id.
        doc: String,
        /// Where: map keys and list indexes joined by dots.
        path: String,
        /// The value, as JSON (a bare word is taken as a string).
        value: String,
    },
    /// Make several edits as one change, in the order given.
    Edit {
        #[command(flatten)]
        on: On,
        /// The document id.
        doc: String,
        /// Set PATH to a JSON value (a bare word is a string).
        #[arg(long, value_name = "PATH=VALUE", value_parser = path_value)]
        set: Vec<(String, serde_json::Value)>,
        /// Insert into a list before the index PATH ends in (the length
        /// appends).
        #[arg(long, value_name = "PATH=VALUE", value_parser = path_value)]
        insert: Vec<(String, serde_json::Value)>,
        /// Remove a map key or a list element.
        #[arg(long, value_name = "PATH")]
        delete: Vec<String>,
    },
    /// A document's changes and snapshots on this device, in arrival order.
    History {
        #[command(flatten)]
        on: On,
        doc: String,
    },
    /// Print a document as JSON.
    Show {
        #[command(flatten)]
        on: On,
        doc: String,
    },
    /// List the documents on this device (from the plaintext envelopes,
    /// decrypting nothing).
    List {
        #[command(flatten)]
        on: On,
    },
}

/// `push` and `pull`.
#[derive(Debug, clap::Args)]
pub struct ExchangeArgs {
    #[command(flatten)]
    pub on: On,
    /// The replica's gRPC address.
    #[arg(long, default_value = "127.0.0.1:7700")]
    pub replica: String,
    /// Seconds the whole exchange may take.
    #[arg(long, default_value_t = 60)]
    pub timeout_secs: u64,
}

/// `push`.
#[derive(Debug, clap::Args)]
pub struct PushArgs {
    #[command(flatten)]
    pub exchange: ExchangeArgs,
    #[command(flatten)]
    pub concern: WriteConcernArgs,
}

/// How many replicas must hold each pushed batch before it counts as sent.
#[derive(Debug, Clone, clap::Args)]
pub struct WriteConcernArgs {
    /// Replicas, the one pushed to included, that must hold each batch
    /// durably before the replica acknowledges it (1: that replica alone).
    #[arg(long, default_value_t = 1)]
    pub min_replicas: u32,
    /// How long the replica waits for the others to confirm a batch (at
    /// most 60s); past it the push fails, and what it sent stays stored
    /// and still replicates.
    #[arg(long, default_value = "5s", value_parser = humantime::parse_duration)]
    pub confirm_timeout: Duration,
}

impl WriteConcernArgs {
    pub fn concern(&self) -> anyhow::Result<WriteConcern> {
        anyhow::ensure!(
            self.min_replicas >= 1,
            "--min-replicas must be at least 1 (the replica pushed to)"
        );
        anyhow::ensure!(
            self.confirm_timeout <= WriteConcern::MAX_TIMEOUT,
            "--confirm-timeout may be at most {}s",
            WriteConcern::MAX_TIMEOUT.as_secs()
        );
        Ok(WriteConcern::replicas(
            self.min_replicas,
            self.confirm_timeout,
        ))
    }
}

impl ExchangeArgs {
    fn exchange(&self, db: &Database) -> anyhow::Result<Exchange> {
        let timeout = Duration::from_secs(self.timeout_secs);
        // Requests are signed with this device's author key for the database.
        let dial = crate::client::Dial::from_env()?.signed_by(db.keys().author().clone());
        Ok(Exchange::grpc_with(&self.replica, timeout, &dial)?.only(db.namespace().clone()))
    }
}

fn doc_id(text: &str) -> anyhow::Result<DocId> {
    DocId::parse(text)
        .ok_or_else(|| anyhow::anyhow!("{text:?} is not a document id (32 hex digits)"))
}

/// Runs one `doc` command.
pub async fn doc(command: DocCommand) -> anyhow::Result<()> {
    match command {
        DocCommand::Create { on, json } => {
            let value: serde_json::Value = serde_json::from_str(&json)
                .map_err(|e| anyhow::anyhow!("--json is not JSON: {e}"))?;
            let doc = on.open()?.create(&value).await?;
            println!("{}", doc.id());
        }
        DocCommand::Set {
            on,
            doc,
            path,
            value,
        } => {
            let db = on.open()?;
            let mut doc = db.load(doc_id(&doc)?).await?;
            set_path(&mut doc, &path, &json_or_word(&value))?;
            db.save(&mut doc).await?;
        }
        DocCommand::Edit {
            on,
            doc,
            set,
            insert,
            delete,
        } => {
            let edits: Vec<Edit> = set
                .into_iter()
                .map(|(p, v)| Edit::Set(p, v))
                .chain(insert.into_iter().map(|(p, v)| Edit::Insert(p, v)))
                .chain(delete.into_iter().map(Edit::Delete))
                .collect();
            anyhow::ensure!(
                !edits.is_empty(),
                "no edits: give --set, --insert or --delete"
            );
            let db = on.open()?;
            let mut doc = db.load(doc_id(&doc)?).await?;
            for edit in &edits {
                edit.apply(&mut doc)?;
            }
            db.save(&mut doc).await?;
        }
        DocCommand::History { on, doc } => {
            for h in on.open()?.history(doc_id(&doc)?).await? {
                let what = match (&h.actor, h.ops) {
                    (Some(actor), Some(ops)) => format!("change by actor {actor}, {ops} ops"),
                    _ => format!("snapshot covering {} heads", h.deps),
                };
                let at = std::time::UNIX_EPOCH + Duration::from_millis(h.created_ms);
                println!(
                    "{} {} author {} {what}",
                    humantime::format_rfc3339_millis(at),
                    h.entry.to_hex(),
                    hex::encode(&h.author[..8]),
                );
            }
        }
        DocCommand::Show { on, doc } => {
            let doc = on.open()?.load(doc_id(&doc)?).await?;
            println!("{}", serde_json::to_string_pretty(&doc.to_json())?);
        }
        DocCommand::List { on } => {
            for d in on.open()?.list().await? {
                println!(
                    "{} changes {} snapshots {} last_ms {}",
                    d.id, d.changes, d.snapshots, d.last_ms
                );
            }
        }
    }
    Ok(())
}

/// What to do when a replica cannot be reached.
fn reach(replica: &str, e: SyncError) -> anyhow::Error {
    let why = match &e {
        SyncError::Peer(PeerError::Unavailable(why)) => why.clone(),
        SyncError::Peer(PeerError::Timeout(what)) => format!("no answer to {what} in time"),
        _ => return e.into(),
    };
    anyhow::anyhow!(
        "cannot reach the replica at {replica} ({why}): is it running, and is the address right? \
         This device keeps working offline; push or pull again once it is up"
    )
}

/// `push`: sends what the replica lacks of this database.
pub async fn push(push: PushArgs) -> anyhow::Result<()> {
    let concern = push.concern.concern()?;
    let args = push.exchange;
    let db = args.on.open()?;
    let done = args
        .exchange(&db)?
        .with_write_concern(concern)
        .push(db.store())
        .await
        .map_err(|e| match e {
            SyncError::Peer(PeerError::NotConfirmed(why)) => anyhow::anyhow!(
                "{}: {why}. Pushing again waits for the confirmations again",
                args.replica
            ),
            e => reach(&args.replica, e),
        })?;
    let held = match concern.replicas {
        k if k > 1 && done.sent > 0 => format!(", each batch held by at least {k} replicas"),
        _ => String::new(),
    };
    println!(
        "pushed to {} ({}): {} records read, {} sent, {} stored, {} already there, {} refused{held}",
        args.replica,
        done.node,
        done.records,
        done.sent,
        done.stored,
        done.duplicate,
        done.rejected
    );
    if done.rejected > 0 {
        anyhow::bail!(
            "{} refused {} entries ({}); they stay on this device. If this device's author is not \
             trusted there, ask its operator to add {} to {}'s trusted_authors",
            args.replica,
            done.rejected,
            done.last_rejection.as_deref().unwrap_or("no reason given"),
            hex::encode(db.keys().author_public().to_bytes()),
            args.on.namespace
        );
    }
    anyhow::ensure!(
        done.unserved == 0,
        "{} does not serve {}: {} entries stay on this device",
        args.replica,
        args.on.namespace,
        done.unserved
    );
    Ok(())
}

/// `pull`: fetches what this device lacks of this database.
pub async fn pull(args: ExchangeArgs) -> anyhow::Result<()> {
    let db = args.on.open()?;
    let done = args
        .exchange(&db)?
        .pull(db.store())
        .await
        .map_err(|e| reach(&args.replica, e))?;
    println!(
        "pulled from {}: {} new entries, through its log position {}",
        args.replica, done.stored, done.through
    );
    Ok(())
}
