//! `mindoo-replica keys …`: a database's keys on this device. The key file
//! lives in the client's home (`--home`, default `.mindoo-client`) at
//! `keys/<tenant>/<db>.toml`, mode 0600. Nothing printed here is secret
//! unless `show --secrets` asks for it; passphrases come from the
//! environment or standard input, never from the command line.

use std::io::BufRead;
use std::path::PathBuf;

use crate::entry::Namespace;
use crate::keys::{KeyError, KeyRing, key_path};
use crate::sync::env::{Clock, SystemClock};

/// The environment variable a passphrase may come from.
pub const PASSPHRASE_ENV: &str = "MINDOO_PASSPHRASE";

#[derive(Debug, clap::Subcommand)]
pub enum KeysCommand {
    /// Make an author key and a first database key for a namespace.
    Init(Target),
    /// Print the key ids and the author's public key (no secrets unless asked).
    Show {
        #[command(flatten)]
        target: Target,
        /// Print the secret keys too.
        #[arg(long)]
        secrets: bool,
    },
    /// Make a new database key the one new entries are encrypted with; older
    /// keys stay, so what they encrypted stays readable.
    Rotate(Target),
    /// Write the database keys to a file sealed with a passphrase (Argon2id),
    /// for another device or person.
    Export {
        #[command(flatten)]
        target: Target,
        /// Where to write the sealed keys.
        #[arg(long)]
        out: PathBuf,
        /// Include the author key (for the same person's other device).
        #[arg(long)]
        with_author: bool,
    },
    /// Add the keys of a sealed file to this device's key file (made if
    /// missing).
    Import {
        #[command(flatten)]
        target: Target,
        /// The sealed file from `keys export`.
        file: PathBuf,
    },
}

/// Which key file a command works on.
#[derive(Debug, clap::Args)]
pub struct Target {
    /// The client's home directory.
    #[arg(long, env = "MINDOO_CLIENT_HOME", default_value = ".mindoo-client")]
    pub home: PathBuf,
    /// The database, as `tenant/db`.
    #[arg(long, short)]
    pub namespace: String,
}

impl Target {
    fn path(&self) -> anyhow::Result<PathBuf> {
        let ns = Namespace::from_path(&self.namespace)?;
        Ok(key_path(&self.home, &ns))
    }
}

/// The passphrase from [`PASSPHRASE_ENV`], else the first line of stdin.
fn passphrase() -> anyhow::Result<String> {
    if let Ok(p) = std::env::var(PASSPHRASE_ENV) {
        anyhow::ensure!(!p.is_empty(), "{PASSPHRASE_ENV} is empty");
        return Ok(p);
    }
    let mut line = String::new();
    std::io::stdin().lock().read_line(&mut line)?;
    let p = line.trim_end_matches(['\r', '\n']).to_owned();
    anyhow::ensure!(
        !p.is_empty(),
        "no passphrase: set {PASSPHRASE_ENV} or give it on standard input"
    );
    Ok(p)
}

fn describe(ring: &KeyRing) {
    println!("author {}", hex::encode(ring.author_public().to_bytes()));
    let current = ring.current().id;
    for k in ring.keys() {
        let mark = if k.id == current { " (current)" } else { "" };
        println!("database key {} created_ms {}{mark}", k.id, k.created_ms);
    }
}

/// Writes a new key file and says what it holds.
fn create(target: &Target, path: &std::path::Path, ring: &KeyRing) -> anyhow::Result<()> {
    ring.create(path)?;
    println!(
        "keys for {} written to {}",
        target.namespace,
        path.display()
    );
    describe(ring);
    Ok(())
}

/// Runs one `keys` command.
pub fn run(command: KeysCommand) -> anyhow::Result<()> {
    match command {
        KeysCommand::Init(target) => {
            let path = target.path()?;
            create(&target, &path, &KeyRing::generate(SystemClock.unix_ms()))?;
        }
        KeysCommand::Show { target, secrets } => {
            let path = target.path()?;
            let ring = KeyRing::load(&path)?;
            describe(&ring);
            if secrets {
                println!("author secret {}", hex::encode(ring.author().to_bytes()));
                for k in ring.keys() {
                    println!("database key {} secret {}", k.id, k.secret_hex());
                }
            }
        }
        KeysCommand::Rotate(target) => {
            let path = target.path()?;
            let mut ring = KeyRing::load(&path)?;
            let id = ring.rotate(SystemClock.unix_ms());
            ring.save(&path)?;
            println!(
                "new entries of {} are encrypted with {id}",
                target.namespace
            );
        }
        KeysCommand::Export {
            target,
            out,
            with_author,
        } => {
            let ring = KeyRing::load(&target.path()?)?;
            let sealed = ring.export(&passphrase()?, with_author);
            std::fs::write(&out, sealed)?;
            println!(
                "{} database key(s){} of {} sealed into {}",
                ring.keys().len(),
                if with_author {
                    " and the author key"
                } else {
                    ""
                },
                target.namespace,
                out.display()
            );
        }
        KeysCommand::Import { target, file } => {
            let path = target.path()?;
            let sealed = std::fs::read(&file)?;
            let exported = KeyRing::open_export(&sealed, &passphrase()?)?;
            match KeyRing::load(&path) {
                Ok(mut ring) => {
                    let added = ring.import(exported);
                    ring.save(&path)?;
                    println!(
                        "{} database key(s) added to {}",
                        added.len(),
                        path.display()
                    );
                }
                Err(KeyError::NotFound(_)) => {
                    create(&target, &path, &KeyRing::from_export(exported)?)?;
                }
                Err(e) => return Err(e.into()),
            }
        }
    }
    Ok(())
}
