//! A device's keys for one database, kept in a key file only its owner can
//! read: the author's ed25519 signing key, which signs every entry the
//! device writes, and the database's symmetric keys (XChaCha20-Poly1305,
//! 256-bit). Each database key has a random id that every ciphertext names,
//! so after a rotation new entries use the newest key while older entries
//! stay readable to whoever holds the older one.
//!
//! Keys leave the device only sealed: [`KeyRing::export`] writes them under
//! a passphrase stretched by Argon2id (memory-hard), for another device or
//! person to [`import`](KeyRing::import). Nothing here prints a secret:
//! `Debug` shows key ids and the author's public key only. Replicas never
//! see any of it.

use std::fmt;
use std::io::Write;
use std::path::{Path, PathBuf};

use argon2::{Algorithm, Argon2, Params, Version};
use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use chacha20poly1305::{XChaCha20Poly1305, XNonce};
use ed25519_dalek::{SigningKey, VerifyingKey};
use serde::{Deserialize, Serialize};
use zeroize::Zeroizing;

/// Where the key file of `ns` lives under a client's `home`.
pub fn key_path(home: &Path, ns: &crate::entry::Namespace) -> PathBuf {
    home.join("keys")
        .join(ns.tenant())
        .join(format!("{}.toml", ns.db()))
}

/// The databases `home` holds key files for, in order.
pub fn keyed_namespaces(home: &Path) -> Result<Vec<crate::entry::Namespace>, KeyError> {
    let dir = home.join("keys");
    let mut out = Vec::new();
    let tenants = match std::fs::read_dir(&dir) {
        Ok(tenants) => tenants,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(out),
        Err(e) => return Err(io(&dir)(e)),
    };
    for tenant in tenants {
        let tenant = tenant.map_err(io(&dir))?.path();
        for file in std::fs::read_dir(&tenant).map_err(io(&tenant))? {
            let file = file.map_err(io(&tenant))?.path();
            let (Some(t), Some(d)) = (tenant.file_name(), file.file_stem()) else {
                continue;
            };
            if file.extension().is_none_or(|e| e != "toml") {
                continue;
            }
            let named = format!("{}/{}", t.to_string_lossy(), d.to_string_lossy());
            let ns =
                crate::entry::Namespace::from_path(&named).map_err(|e| KeyError::Malformed {
                    path: file.clone(),
                    why: e.to_string(),
                })?;
            out.push(ns);
        }
    }
    out.sort();
    Ok(out)
}

/// Bytes of a database key id.
pub const KEY_ID_LEN: usize = 16;

/// Names a database key; carried (authenticated) by every ciphertext.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct KeyId(pub [u8; KEY_ID_LEN]);

impl fmt::Display for KeyId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&hex::encode(self.0))
    }
}

impl fmt::Debug for KeyId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "KeyId({self})")
    }
}

/// What can go wrong with keys, each saying what to do about it.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error("no key file at {0}: create one with `mindoo-replica keys init`, or import one")]
    NotFound(PathBuf),
    #[error("a key file already exists at {0}; keys are never overwritten")]
    Exists(PathBuf),
    #[error(
        "key file {path} can be read by others (mode {mode:o}); run `chmod 600 {path}` if it is yours"
    )]
    Exposed { path: PathBuf, mode: u32 },
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("key file {path} is damaged: {why}")]
    Malformed { path: PathBuf, why: String },
    #[error("not a key export of this program (or an unknown version)")]
    NotAnExport,
    #[error("the export asks for {0}, more than this program allows; it was not made here")]
    ExportTooCostly(String),
    #[error("wrong passphrase, or the export file was altered")]
    WrongPassphrase,
    #[error("no database key with id {0}")]
    UnknownKey(KeyId),
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> KeyError + '_ {
    move |source| KeyError::Io {
        path: path.to_owned(),
        source,
    }
}

/// A database key: a 256-bit XChaCha20-Poly1305 key and its id.
#[derive(Clone)]
pub struct DatabaseKey {
    pub id: KeyId,
    secret: Zeroizing<[u8; 32]>,
    /// When it was made (ms since the Unix epoch).
    pub created_ms: u64,
}

impl DatabaseKey {
    /// A new random key.
    pub fn generate(created_ms: u64) -> Self {
        Self {
            id: KeyId(rand::random()),
            secret: Zeroizing::new(rand::random()),
            created_ms,
        }
    }

    /// The secret in hex, for a command that was asked to show it.
    pub fn secret_hex(&self) -> String {
        hex::encode(*self.secret)
    }

    /// The cipher of this key.
    pub fn cipher(&self) -> XChaCha20Poly1305 {
        XChaCha20Poly1305::new((&*self.secret).into())
    }
}

impl fmt::Debug for DatabaseKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DatabaseKey")
            .field("id", &self.id)
            .field("created_ms", &self.created_ms)
            .finish_non_exhaustive()
    }
}

/// A device's author key and the database keys it holds, newest last.
#[derive(Clone)]
pub struct KeyRing {
    author: SigningKey,
    keys: Vec<DatabaseKey>,
}

impl fmt::Debug for KeyRing {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KeyRing")
            .field("author", &hex::encode(self.author_public().to_bytes()))
            .field("keys", &self.keys)
            .finish()
    }
}

/// The key file's text (TOML), secrets in hex.
#[derive(Serialize, Deserialize)]
struct KeyFile {
    version: u32,
    /// The author's ed25519 secret key; absent in an export made without it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    author: Option<String>,
    #[serde(default, rename = "database_key")]
    keys: Vec<KeyFileEntry>,
}

#[derive(Serialize, Deserialize)]
struct KeyFileEntry {
    id: String,
    secret: String,
    created_ms: u64,
}

const KEY_FILE_VERSION: u32 = 1;
const KEY_FILE_HEADER: &str =
    "# mindoo-replica keys: private to this device (mode 0600); never copy it in the clear\n";

/// What an export holds once opened.
#[derive(Debug)]
pub struct Exported {
    /// The author key, when the export carried it (a person's other device).
    pub author: Option<VerifyingKey>,
    /// Database key ids, oldest first.
    pub keys: Vec<KeyId>,
    ring: Option<SigningKey>,
    database_keys: Vec<DatabaseKey>,
}

/// Argon2id cost of an export: 64 MiB, 3 passes, one lane.
const KDF_MEMORY_KIB: u32 = 64 * 1024;
const KDF_PASSES: u32 = 3;
/// The most an export may ask for when opened (a file made elsewhere must
/// not make this device spend unbounded memory or time).
const KDF_MEMORY_KIB_MAX: u32 = 1024 * 1024;
const KDF_PASSES_MAX: u32 = 16;
const EXPORT_MAGIC: &[u8; 12] = b"MINDOO-KEYS1";
const SALT_LEN: usize = 16;
const NONCE_LEN: usize = 24;
/// magic ‖ memory KiB ‖ passes ‖ salt ‖ nonce: authenticated with the body.
const EXPORT_HEADER_LEN: usize = EXPORT_MAGIC.len() + 4 + 4 + SALT_LEN + NONCE_LEN;

fn stretch(passphrase: &str, salt: &[u8], memory_kib: u32, passes: u32) -> Zeroizing<[u8; 32]> {
    let params = Params::new(memory_kib, passes, 1, Some(32)).expect("valid Argon2id parameters");
    let mut key = Zeroizing::new([0u8; 32]);
    Argon2::new(Algorithm::Argon2id, Version::V0x13, params)
        .hash_password_into(passphrase.as_bytes(), salt, &mut *key)
        .expect("Argon2id output of 32 bytes");
    key
}

fn from_hex<const N: usize>(text: &str, what: &str) -> Result<[u8; N], String> {
    let bytes = hex::decode(text).map_err(|e| format!("{what}: {e}"))?;
    bytes
        .try_into()
        .map_err(|b: Vec<u8>| format!("{what}: {} bytes, expected {N}", b.len()))
}

impl KeyRing {
    /// A new author key and a first database key.
    pub fn generate(now_ms: u64) -> Self {
        Self {
            author: SigningKey::from_bytes(&rand::random()),
            keys: vec![DatabaseKey::generate(now_ms)],
        }
    }

    /// The same database keys for another device of the same user, with
    /// an author key of its own: what `keys export` then `keys import` on
    /// a new device gives, without the passphrase round trip.
    pub fn for_another_device(&self) -> Self {
        Self {
            author: SigningKey::from_bytes(&rand::random()),
            keys: self.keys.clone(),
        }
    }

    /// The author's signing key.
    pub fn author(&self) -> &SigningKey {
        &self.author
    }

    pub fn author_public(&self) -> VerifyingKey {
        self.author.verifying_key()
    }

    /// The key new entries are encrypted with: the newest.
    pub fn current(&self) -> &DatabaseKey {
        self.keys.last().expect("a key ring holds at least one key")
    }

    /// Every database key, oldest first.
    pub fn keys(&self) -> &[DatabaseKey] {
        &self.keys
    }

    /// The key with `id`, to decrypt what it encrypted.
    pub fn key(&self, id: &KeyId) -> Result<&DatabaseKey, KeyError> {
        self.keys
            .iter()
            .find(|k| k.id == *id)
            .ok_or(KeyError::UnknownKey(*id))
    }

    /// Makes a new database key the current one; older keys stay, so what
    /// they encrypted stays readable. Returns the new key's id.
    pub fn rotate(&mut self, now_ms: u64) -> KeyId {
        let key = DatabaseKey::generate(now_ms);
        let id = key.id;
        self.keys.push(key);
        id
    }

    fn to_file(&self, with_author: bool) -> Zeroizing<String> {
        let file = KeyFile {
            version: KEY_FILE_VERSION,
            author: with_author.then(|| hex::encode(self.author.to_bytes())),
            keys: self
                .keys
                .iter()
                .map(|k| KeyFileEntry {
                    id: k.id.to_string(),
                    secret: hex::encode(*k.secret),
                    created_ms: k.created_ms,
                })
                .collect(),
        };
        let body = toml::to_string(&file).expect("a key file serialises");
        Zeroizing::new(format!("{KEY_FILE_HEADER}{body}"))
    }

    /// Parses a key file's text: its author key (if present) and keys.
    fn parse(text: &str) -> Result<(Option<SigningKey>, Vec<DatabaseKey>), String> {
        let file: KeyFile = toml::from_str(text).map_err(|e| e.message().to_owned())?;
        if file.version != KEY_FILE_VERSION {
            return Err(format!("version {} is not known here", file.version));
        }
        let author = match &file.author {
            Some(hex) => Some(SigningKey::from_bytes(&from_hex::<32>(hex, "author")?)),
            None => None,
        };
        let mut keys = Vec::with_capacity(file.keys.len());
        for k in &file.keys {
            let key = DatabaseKey {
                id: KeyId(from_hex(&k.id, "database key id")?),
                secret: Zeroizing::new(from_hex(&k.secret, "database key")?),
                created_ms: k.created_ms,
            };
            if keys.iter().any(|other: &DatabaseKey| other.id == key.id) {
                return Err(format!("database key {} appears twice", key.id));
            }
            keys.push(key);
        }
        Ok((author, keys))
    }

    /// Reads the key file at `path`, refusing one that others can read.
    pub fn load(path: &Path) -> Result<Self, KeyError> {
        let meta = match std::fs::metadata(path) {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(KeyError::NotFound(path.to_owned()));
            }
            other => other.map_err(io(path))?,
        };
        let mode = permissions(&meta);
        if mode & 0o077 != 0 {
            return Err(KeyError::Exposed {
                path: path.to_owned(),
                mode: mode & 0o777,
            });
        }
        let text = Zeroizing::new(std::fs::read_to_string(path).map_err(io(path))?);
        let malformed = |why: String| KeyError::Malformed {
            path: path.to_owned(),
            why,
        };
        let (author, keys) = Self::parse(&text).map_err(malformed)?;
        let author = author.ok_or_else(|| malformed("no author key".into()))?;
        if keys.is_empty() {
            return Err(malformed("no database key".into()));
        }
        Ok(Self { author, keys })
    }

    /// Writes a new key file at `path`, readable by its owner only; never
    /// replaces an existing one.
    pub fn create(&self, path: &Path) -> Result<(), KeyError> {
        if path.exists() {
            return Err(KeyError::Exists(path.to_owned()));
        }
        self.write(path)
    }

    /// Replaces the key file at `path` with this ring (after a rotation or
    /// an import): written beside it, synced, then renamed over it.
    pub fn save(&self, path: &Path) -> Result<(), KeyError> {
        self.write(path)
    }

    fn write(&self, path: &Path) -> Result<(), KeyError> {
        let dir = path.parent().filter(|d| !d.as_os_str().is_empty());
        if let Some(dir) = dir {
            std::fs::create_dir_all(dir).map_err(io(dir))?;
        }
        let mut name = path.file_name().unwrap_or_default().to_owned();
        name.push(".new");
        let temp = path.with_file_name(name);
        let _ = std::fs::remove_file(&temp);
        let mut file = private_file(&temp).map_err(io(&temp))?;
        file.write_all(self.to_file(true).as_bytes())
            .and_then(|()| file.sync_all())
            .map_err(io(&temp))?;
        std::fs::rename(&temp, path).map_err(io(path))?;
        if let Some(dir) = dir {
            // The rename itself survives a crash once the directory is synced.
            std::fs::File::open(dir)
                .and_then(|d| d.sync_all())
                .map_err(io(dir))?;
        }
        Ok(())
    }

    /// The database keys (and, with `with_author`, the author key, for a
    /// person's own other device) sealed under `passphrase`.
    pub fn export(&self, passphrase: &str, with_author: bool) -> Vec<u8> {
        let salt: [u8; SALT_LEN] = rand::random();
        let nonce: [u8; NONCE_LEN] = rand::random();
        let mut out = Vec::with_capacity(EXPORT_HEADER_LEN + 512);
        out.extend_from_slice(EXPORT_MAGIC);
        out.extend_from_slice(&KDF_MEMORY_KIB.to_le_bytes());
        out.extend_from_slice(&KDF_PASSES.to_le_bytes());
        out.extend_from_slice(&salt);
        out.extend_from_slice(&nonce);
        let key = stretch(passphrase, &salt, KDF_MEMORY_KIB, KDF_PASSES);
        let body = self.to_file(with_author);
        let sealed = XChaCha20Poly1305::new((&*key).into())
            .encrypt(
                XNonce::from_slice(&nonce),
                Payload {
                    msg: body.as_bytes(),
                    aad: &out,
                },
            )
            .expect("XChaCha20-Poly1305 seals any length this program writes");
        out.extend_from_slice(&sealed);
        out
    }

    /// Opens an export made by [`Self::export`].
    pub fn open_export(sealed: &[u8], passphrase: &str) -> Result<Exported, KeyError> {
        if sealed.len() < EXPORT_HEADER_LEN || !sealed.starts_with(EXPORT_MAGIC) {
            return Err(KeyError::NotAnExport);
        }
        let (header, body) = sealed.split_at(EXPORT_HEADER_LEN);
        let word = |at: usize| u32::from_le_bytes(header[at..at + 4].try_into().expect("4 bytes"));
        let (memory_kib, passes) = (word(EXPORT_MAGIC.len()), word(EXPORT_MAGIC.len() + 4));
        if memory_kib > KDF_MEMORY_KIB_MAX || passes > KDF_PASSES_MAX {
            return Err(KeyError::ExportTooCostly(format!(
                "{memory_kib} KiB × {passes} passes"
            )));
        }
        if Params::new(memory_kib, passes, 1, Some(32)).is_err() {
            return Err(KeyError::NotAnExport);
        }
        let salt = &header[EXPORT_MAGIC.len() + 8..EXPORT_MAGIC.len() + 8 + SALT_LEN];
        let nonce = &header[EXPORT_HEADER_LEN - NONCE_LEN..];
        let key = stretch(passphrase, salt, memory_kib, passes);
        let text = XChaCha20Poly1305::new((&*key).into())
            .decrypt(
                XNonce::from_slice(nonce),
                Payload {
                    msg: body,
                    aad: header,
                },
            )
            .map_err(|_| KeyError::WrongPassphrase)?;
        let text = Zeroizing::new(String::from_utf8(text).map_err(|_| KeyError::NotAnExport)?);
        let (author, database_keys) = Self::parse(&text).map_err(|why| KeyError::Malformed {
            path: PathBuf::from("(export)"),
            why,
        })?;
        Ok(Exported {
            author: author.as_ref().map(SigningKey::verifying_key),
            keys: database_keys.iter().map(|k| k.id).collect(),
            ring: author,
            database_keys,
        })
    }

    /// A ring made from an export, for a device that has no key file yet:
    /// the export's author key if it carried one, else a new one.
    pub fn from_export(exported: Exported) -> Result<Self, KeyError> {
        if exported.database_keys.is_empty() {
            return Err(KeyError::Malformed {
                path: PathBuf::from("(export)"),
                why: "no database key".into(),
            });
        }
        Ok(Self {
            author: exported
                .ring
                .unwrap_or_else(|| SigningKey::from_bytes(&rand::random())),
            keys: exported.database_keys,
        })
    }

    /// Adds an export's database keys this ring lacks, oldest first, before
    /// its own current key (the key this device writes with stays current).
    /// This device's author key stays its own. Returns the ids added.
    pub fn import(&mut self, exported: Exported) -> Vec<KeyId> {
        let mut added = Vec::new();
        for key in exported.database_keys {
            if self.keys.iter().all(|k| k.id != key.id) {
                added.push(key.id);
                let at = self.keys.len() - 1;
                self.keys.insert(at, key);
            }
        }
        added
    }
}

#[cfg(unix)]
fn permissions(meta: &std::fs::Metadata) -> u32 {
    use std::os::unix::fs::PermissionsExt;
    meta.permissions().mode()
}

#[cfg(not(unix))]
fn permissions(_: &std::fs::Metadata) -> u32 {
    0o600
}

/// A new file only its owner can read or write.
fn private_file(path: &Path) -> std::io::Result<std::fs::File> {
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    options.open(path)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ring() -> KeyRing {
        KeyRing::generate(1)
    }

    #[test]
    fn a_key_file_is_private_and_reads_back_the_same_keys() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("keys").join("acme-notes.toml");
        let mut keys = ring();
        keys.rotate(2);
        keys.create(&path).unwrap();
        let mode = permissions(&std::fs::metadata(&path).unwrap()) & 0o777;
        assert_eq!(mode, 0o600);
        let back = KeyRing::load(&path).unwrap();
        assert_eq!(back.author().to_bytes(), keys.author().to_bytes());
        let ids = |r: &KeyRing| r.keys().iter().map(|k| k.id).collect::<Vec<_>>();
        assert_eq!(ids(&back), ids(&keys));
        assert_eq!(*back.current().secret, *keys.current().secret);
        assert!(matches!(keys.create(&path), Err(KeyError::Exists(_))));
    }

    #[test]
    fn a_key_file_others_can_read_is_refused_and_a_missing_one_says_what_to_do() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("keys.toml");
        let err = KeyRing::load(&path).unwrap_err();
        assert!(err.to_string().contains("keys init"), "{err}");
        ring().create(&path).unwrap();
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
            let err = KeyRing::load(&path).unwrap_err();
            assert!(
                matches!(err, KeyError::Exposed { mode: 0o644, .. }),
                "{err}"
            );
            assert!(err.to_string().contains("chmod 600"), "{err}");
        }
    }

    #[test]
    fn a_damaged_key_file_is_named_with_what_is_wrong() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("keys.toml");
        ring().create(&path).unwrap();
        let text = std::fs::read_to_string(&path).unwrap();
        let damaged = text.replacen("secret = \"", "secret = \"zz", 1);
        std::fs::write(&path, damaged).unwrap();
        let err = KeyRing::load(&path).unwrap_err();
        assert!(matches!(err, KeyError::Malformed { .. }), "{err}");
        assert!(err.to_string().contains("database key"), "{err}");
    }

    #[test]
    fn rotation_keeps_older_keys_reachable_by_id() {
        let mut keys = ring();
        let first = keys.current().id;
        let second = keys.rotate(5);
        assert_ne!(first, second);
        assert_eq!(keys.current().id, second);
        assert_eq!(keys.key(&first).unwrap().id, first);
        let unknown = KeyId([9; KEY_ID_LEN]);
        assert!(matches!(keys.key(&unknown), Err(KeyError::UnknownKey(_))));
    }

    #[test]
    fn an_export_opens_with_its_passphrase_only_and_imports_its_keys() {
        let mut mine = ring();
        mine.rotate(2);
        let sealed = mine.export("correct horse battery staple", false);
        assert!(matches!(
            KeyRing::open_export(&sealed, "wrong"),
            Err(KeyError::WrongPassphrase)
        ));
        let mut altered = sealed.clone();
        let last = altered.len() - 1;
        altered[last] ^= 1;
        assert!(matches!(
            KeyRing::open_export(&altered, "correct horse battery staple"),
            Err(KeyError::WrongPassphrase)
        ));
        assert!(matches!(
            KeyRing::open_export(b"not an export at all, just text", "x"),
            Err(KeyError::NotAnExport)
        ));

        // Another person: their own author key, this database's keys.
        let opened = KeyRing::open_export(&sealed, "correct horse battery staple").unwrap();
        assert!(opened.author.is_none(), "exported without the author key");
        let mut theirs = ring();
        let own = theirs.current().id;
        let added = theirs.import(opened);
        assert_eq!(added, mine.keys().iter().map(|k| k.id).collect::<Vec<_>>());
        assert_eq!(
            theirs.current().id,
            own,
            "the importer keeps writing with its key"
        );
        for k in mine.keys() {
            assert_eq!(*theirs.key(&k.id).unwrap().secret, *k.secret);
        }
        assert_ne!(theirs.author_public(), mine.author_public());

        // The same person's new device: the author key comes along.
        let sealed = mine.export("pw", true);
        let device = KeyRing::from_export(KeyRing::open_export(&sealed, "pw").unwrap()).unwrap();
        assert_eq!(device.author_public(), mine.author_public());
        assert_eq!(device.current().id, mine.current().id);
    }

    #[test]
    fn an_export_that_asks_too_much_of_the_kdf_is_refused_before_running_it() {
        let mut sealed = ring().export("pw", false);
        let at = EXPORT_MAGIC.len();
        sealed[at..at + 4].copy_from_slice(&u32::MAX.to_le_bytes());
        assert!(matches!(
            KeyRing::open_export(&sealed, "pw"),
            Err(KeyError::ExportTooCostly(_))
        ));
    }

    #[test]
    fn another_device_gets_the_database_keys_and_an_author_of_its_own() {
        let ring = KeyRing::generate(1);
        let other = ring.for_another_device();
        assert_ne!(other.author_public(), ring.author_public());
        assert_eq!(other.current().id, ring.current().id);
        assert_eq!(other.current().secret_hex(), ring.current().secret_hex());
    }

    #[test]
    fn the_keyed_databases_of_a_home_are_listed_from_its_key_files() {
        let home = tempfile::tempdir().unwrap();
        assert!(keyed_namespaces(home.path()).unwrap().is_empty());
        let ns = |t, d| crate::entry::Namespace::new(t, d).unwrap();
        for n in [ns("b", "x"), ns("a", "y"), ns("a", "x")] {
            KeyRing::generate(1)
                .create(&key_path(home.path(), &n))
                .unwrap();
        }
        std::fs::write(home.path().join("keys/a/notes.txt"), "").unwrap();
        assert_eq!(
            keyed_namespaces(home.path()).unwrap(),
            [ns("a", "x"), ns("a", "y"), ns("b", "x")]
        );
    }

    #[test]
    fn nothing_secret_is_printed() {
        let keys = ring();
        let shown = format!("{keys:?}");
        assert!(!shown.contains(&hex::encode(keys.author().to_bytes())));
        assert!(!shown.contains(&hex::encode(*keys.current().secret)));
        assert!(shown.contains(&keys.current().id.to_string()));
    }
}
