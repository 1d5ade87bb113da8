//! Signed checkpoints in the C2SP formats (`signed-note`, `tlog-checkpoint`,
//! `tlog-cosignature`), and the Ed25519 keys that sign them.
//!
//! A checkpoint's body is three lines, `origin`, tree size, and the root hash in
//! base64; a note is the body, an empty line, and one line per signature, `— name
//! base64(key id ‖ signature)`. A key's id is the first four bytes of
//! `SHA-256(name ‖ "\n" ‖ 0x01 ‖ public key)`. Keys are written as the Go
//! `golang.org/x/mod/sumdb/note` tools write them (`PRIVATE+KEY+name+id+key`,
//! and `name+id+key` for the verifier key), so they can check our notes too.
//!
//! The signing key is never in the database: it is read from SIGNING_KEY_FILE,
//! created on first start with mode 0600 as an SSH host key would be.

use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use ed25519_dalek::{Signer, Verifier};
use sha2::{Digest, Sha256};

use super::tree::Hash;

/// The signature algorithm byte of an Ed25519 note key.
const ALG_ED25519: u8 = 0x01;
/// The algorithm byte of a witness's timestamped cosignature key.
const ALG_COSIGNATURE: u8 = 0x04;

#[derive(Debug, thiserror::Error)]
pub enum NoteError {
    #[error("not a key: {0}")]
    BadKey(&'static str),
    #[error("not a signed note: {0}")]
    Malformed(&'static str),
    #[error("no signature by {0} on the note")]
    Unsigned(String),
    #[error("the signature by {0} does not verify")]
    BadSignature(String),
    #[error("not a checkpoint: {0}")]
    BadCheckpoint(&'static str),
}

/// A key name: not empty, no whitespace, no `+`.
fn valid_name(name: &str) -> bool {
    !name.is_empty() && !name.chars().any(|c| c.is_whitespace() || c == '+')
}

fn key_id(name: &str, alg: u8, public: &[u8; 32]) -> [u8; 4] {
    let mut h = Sha256::new();
    h.update(name.as_bytes());
    h.update(b"\n");
    h.update([alg]);
    h.update(public);
    let d = h.finalize();
    [d[0], d[1], d[2], d[3]]
}

/// The key that signs checkpoints.
pub struct SigningKey {
    name: String,
    key: ed25519_dalek::SigningKey,
}

impl std::fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "SigningKey({})", self.verifier().encode())
    }
}

impl SigningKey {
    /// A new key from the system's random source.
    pub fn generate(name: &str) -> Result<Self, NoteError> {
        if !valid_name(name) {
            return Err(NoteError::BadKey(
                "the name is empty or holds a space or '+'",
            ));
        }
        let mut seed = [0u8; 32];
        getrandom::fill(&mut seed).expect("the system has a random source");
        Ok(SigningKey {
            name: name.to_string(),
            key: ed25519_dalek::SigningKey::from_bytes(&seed),
        })
    }

    /// Reads `PRIVATE+KEY+name+id+base64(0x01 ‖ seed)`.
    pub fn parse(text: &str) -> Result<Self, NoteError> {
        let rest = text
            .trim()
            .strip_prefix("PRIVATE+KEY+")
            .ok_or(NoteError::BadKey("a private key starts with PRIVATE+KEY+"))?;
        let (name, id, key) = split_key(rest)?;
        let seed: [u8; 32] = key
            .try_into()
            .map_err(|_| NoteError::BadKey("an Ed25519 seed is 32 bytes"))?;
        let key = ed25519_dalek::SigningKey::from_bytes(&seed);
        let this = SigningKey {
            name: name.to_string(),
            key,
        };
        if this.verifier().id != id {
            return Err(NoteError::BadKey("the key id does not match the key"));
        }
        Ok(this)
    }

    pub fn encode(&self) -> String {
        let v = self.verifier();
        let mut raw = vec![ALG_ED25519];
        raw.extend_from_slice(self.key.as_bytes());
        format!(
            "PRIVATE+KEY+{}+{}+{}",
            self.name,
            crate::model::hex::encode(&v.id),
            B64.encode(raw)
        )
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn verifier(&self) -> VerifierKey {
        let public = self.key.verifying_key();
        VerifierKey {
            name: self.name.clone(),
            id: key_id(&self.name, ALG_ED25519, public.as_bytes()),
            key: public,
        }
    }

    /// A bare Ed25519 signature of `message` (for the tree's key leaves).
    pub fn sign_raw(&self, message: &[u8]) -> [u8; 64] {
        self.key.sign(message).to_bytes()
    }

    /// The signed note of `body` (which ends with a newline).
    pub fn sign(&self, body: &str) -> String {
        let sig = self.key.sign(body.as_bytes());
        let mut raw = self.verifier().id.to_vec();
        raw.extend_from_slice(&sig.to_bytes());
        format!("{body}\n\u{2014} {} {}\n", self.name, B64.encode(raw))
    }

    /// A witness's cosignature line for a checkpoint body at `time` (Unix seconds),
    /// as `tlog-cosignature` defines it.
    pub fn cosign(&self, body: &str, time: u64) -> String {
        let public = self.key.verifying_key();
        let id = key_id(&self.name, ALG_COSIGNATURE, public.as_bytes());
        let message = format!("cosignature/v1\ntime {time}\n{body}");
        let sig = self.key.sign(message.as_bytes());
        let mut raw = id.to_vec();
        raw.extend_from_slice(&time.to_be_bytes());
        raw.extend_from_slice(&sig.to_bytes());
        format!("\u{2014} {} {}\n", self.name, B64.encode(raw))
    }
}

/// `name+id+base64(0x01 ‖ key)` split and checked.
fn split_key(text: &str) -> Result<(&str, [u8; 4], Vec<u8>), NoteError> {
    let mut parts = text.splitn(3, '+');
    let (Some(name), Some(id), Some(key)) = (parts.next(), parts.next(), parts.next()) else {
        return Err(NoteError::BadKey("a key is name+id+key"));
    };
    if !valid_name(name) {
        return Err(NoteError::BadKey(
            "the name is empty or holds a space or '+'",
        ));
    }
    let id = crate::model::hex::decode(id)
        .ok()
        .and_then(|b| <[u8; 4]>::try_from(b).ok())
        .ok_or(NoteError::BadKey("the key id is 8 hex digits"))?;
    let raw = B64
        .decode(key)
        .map_err(|_| NoteError::BadKey("the key is not base64"))?;
    match raw.split_first() {
        Some((&ALG_ED25519, key)) => Ok((name, id, key.to_vec())),
        _ => Err(NoteError::BadKey(
            "only Ed25519 keys (algorithm 1) are known",
        )),
    }
}

/// The public half: checks notes.
#[derive(Clone)]
pub struct VerifierKey {
    name: String,
    id: [u8; 4],
    key: ed25519_dalek::VerifyingKey,
}

impl std::fmt::Debug for VerifierKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.encode())
    }
}

impl PartialEq for VerifierKey {
    fn eq(&self, other: &Self) -> bool {
        self.encode() == other.encode()
    }
}

impl VerifierKey {
    /// Reads `name+id+base64(0x01 ‖ public key)`.
    pub fn parse(text: &str) -> Result<Self, NoteError> {
        let (name, id, key) = split_key(text.trim())?;
        let public: [u8; 32] = key
            .try_into()
            .map_err(|_| NoteError::BadKey("an Ed25519 public key is 32 bytes"))?;
        let key = ed25519_dalek::VerifyingKey::from_bytes(&public)
            .map_err(|_| NoteError::BadKey("not an Ed25519 public key"))?;
        if key_id(name, ALG_ED25519, &public) != id {
            return Err(NoteError::BadKey("the key id does not match the key"));
        }
        Ok(VerifierKey {
            name: name.to_string(),
            id,
            key,
        })
    }

    pub fn encode(&self) -> String {
        let mut raw = vec![ALG_ED25519];
        raw.extend_from_slice(self.key.as_bytes());
        format!(
            "{}+{}+{}",
            self.name,
            crate::model::hex::encode(&self.id),
            B64.encode(raw)
        )
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// The body of `note` when this key signed it.
    pub fn open<'n>(&self, note: &'n str) -> Result<&'n str, NoteError> {
        let (body, signatures) = split_note(note)?;
        for line in signatures.lines() {
            let Some((name, sig)) = line
                .strip_prefix("\u{2014} ")
                .and_then(|l| l.rsplit_once(' '))
            else {
                return Err(NoteError::Malformed(
                    "a signature line is '— name signature'",
                ));
            };
            let raw = B64
                .decode(sig)
                .map_err(|_| NoteError::Malformed("a signature is not base64"))?;
            if name != self.name || raw.len() != 68 || raw[..4] != self.id {
                continue;
            }
            let sig = ed25519_dalek::Signature::from_slice(&raw[4..])
                .map_err(|_| NoteError::BadSignature(self.name.clone()))?;
            return self
                .key
                .verify(body.as_bytes(), &sig)
                .map(|()| body)
                .map_err(|_| NoteError::BadSignature(self.name.clone()));
        }
        Err(NoteError::Unsigned(self.name.clone()))
    }

    /// Checks a bare signature made with [`SigningKey::sign_raw`].
    pub fn verify_raw(&self, message: &[u8], signature: &[u8]) -> bool {
        ed25519_dalek::Signature::from_slice(signature)
            .is_ok_and(|sig| self.key.verify(message, &sig).is_ok())
    }

    /// Checks a witness's cosignature line on a checkpoint body; returns its time.
    pub fn check_cosignature(&self, body: &str, line: &str) -> Result<u64, NoteError> {
        let unsigned = || NoteError::Unsigned(self.name.clone());
        let (name, sig) = line
            .trim_end()
            .strip_prefix("\u{2014} ")
            .and_then(|l| l.rsplit_once(' '))
            .ok_or(NoteError::Malformed(
                "a signature line is '— name signature'",
            ))?;
        let raw = B64
            .decode(sig)
            .map_err(|_| NoteError::Malformed("a signature is not base64"))?;
        let id = key_id(&self.name, ALG_COSIGNATURE, self.key.as_bytes());
        if name != self.name || raw.len() != 76 || raw[..4] != id {
            return Err(unsigned());
        }
        let time = u64::from_be_bytes(raw[4..12].try_into().expect("8 bytes"));
        let sig = ed25519_dalek::Signature::from_slice(&raw[12..])
            .map_err(|_| NoteError::BadSignature(self.name.clone()))?;
        let message = format!("cosignature/v1\ntime {time}\n{body}");
        self.key
            .verify(message.as_bytes(), &sig)
            .map(|()| time)
            .map_err(|_| NoteError::BadSignature(self.name.clone()))
    }
}

/// A note's body (with its final newline) and its signature lines.
pub fn split_note(note: &str) -> Result<(&str, &str), NoteError> {
    let at = note
        .find("\n\n")
        .ok_or(NoteError::Malformed("no empty line before the signatures"))?;
    let (body, signatures) = note.split_at(at + 1);
    let signatures = &signatures[1..];
    if signatures.is_empty() || !signatures.ends_with('\n') {
        return Err(NoteError::Malformed("no signature lines"));
    }
    Ok((body, signatures))
}

/// What a checkpoint says: the log, the tree's size and its root.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Checkpoint {
    pub origin: String,
    pub size: u64,
    pub root: Hash,
}

impl Checkpoint {
    /// The body the note signs.
    pub fn body(&self) -> String {
        format!(
            "{}\n{}\n{}\n",
            self.origin,
            self.size,
            B64.encode(self.root)
        )
    }

    /// Reads a body (extension lines after the root are allowed and ignored).
    pub fn parse(body: &str) -> Result<Self, NoteError> {
        let mut lines = body.split_terminator('\n');
        let origin = lines
            .next()
            .filter(|o| !o.is_empty())
            .ok_or(NoteError::BadCheckpoint("no origin line"))?;
        let size = lines
            .next()
            .filter(|s| {
                s.bytes().all(|b| b.is_ascii_digit()) && !(s.len() > 1 && s.starts_with('0'))
            })
            .and_then(|s| s.parse::<u64>().ok())
            .ok_or(NoteError::BadCheckpoint(
                "the second line is not a tree size",
            ))?;
        let root = lines
            .next()
            .and_then(|r| B64.decode(r).ok())
            .and_then(|r| <[u8; 32]>::try_from(r).ok())
            .ok_or(NoteError::BadCheckpoint(
                "the third line is not a base64 SHA-256 hash",
            ))?;
        Ok(Checkpoint {
            origin: origin.to_string(),
            size,
            root,
        })
    }
}

/// Why the signing key file could not be used.
#[derive(Debug, thiserror::Error)]
pub enum KeyFileError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("cannot create {path}: {source}")]
    Create {
        path: String,
        source: std::io::Error,
    },
    #[error("{path} holds no signing key: {source}")]
    Parse { path: String, source: NoteError },
    #[error("{path} is readable by others (mode {mode:o}); make it 0600")]
    Mode { path: String, mode: u32 },
    #[error("{path} signs as {found:?}, not as the origin {expected:?}")]
    Name {
        path: String,
        found: String,
        expected: String,
    },
}

/// Reads the signing key at `path`, or creates one named `origin` there (mode
/// 0600, never overwriting) when the file does not exist. Returns the key and
/// whether it was created.
pub fn load_or_create(
    path: &std::path::Path,
    origin: &str,
) -> Result<(SigningKey, bool), KeyFileError> {
    use std::io::Write;
    use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
    let shown = path.display().to_string();
    match std::fs::read_to_string(path) {
        Ok(text) => {
            let mode = std::fs::metadata(path)
                .map_err(|source| KeyFileError::Read {
                    path: shown.clone(),
                    source,
                })?
                .permissions()
                .mode();
            if mode & 0o077 != 0 {
                return Err(KeyFileError::Mode {
                    path: shown,
                    mode: mode & 0o777,
                });
            }
            let key = SigningKey::parse(&text).map_err(|source| KeyFileError::Parse {
                path: shown.clone(),
                source,
            })?;
            if key.name() != origin {
                return Err(KeyFileError::Name {
                    path: shown,
                    found: key.name().to_string(),
                    expected: origin.to_string(),
                });
            }
            Ok((key, false))
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let key = SigningKey::generate(origin).map_err(|source| KeyFileError::Parse {
                path: shown.clone(),
                source,
            })?;
            let create = |source| KeyFileError::Create {
                path: shown.clone(),
                source,
            };
            if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
                std::fs::create_dir_all(dir).map_err(create)?;
            }
            let mut file = std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(path)
                .map_err(create)?;
            file.write_all(format!("{}\n", key.encode()).as_bytes())
                .and_then(|()| file.sync_all())
                .map_err(create)?;
            Ok((key, true))
        }
        Err(source) => Err(KeyFileError::Read {
            path: shown,
            source,
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn checkpoint() -> Checkpoint {
        Checkpoint {
            origin: "candystore.test/log".into(),
            size: 42,
            root: [7; 32],
        }
    }

    #[test]
    fn a_signed_checkpoint_opens_with_its_key_and_not_with_another() {
        let key = SigningKey::generate("candystore.test/log").unwrap();
        let note = key.sign(&checkpoint().body());
        let body = key.verifier().open(&note).unwrap();
        assert_eq!(Checkpoint::parse(body).unwrap(), checkpoint());

        let other = SigningKey::generate("candystore.test/log").unwrap();
        assert!(matches!(
            other.verifier().open(&note),
            Err(NoteError::Unsigned(_))
        ));
        // The body changed under the signature.
        let forged = note.replace("\n42\n", "\n41\n");
        assert!(matches!(
            key.verifier().open(&forged),
            Err(NoteError::BadSignature(_))
        ));
    }

    #[test]
    fn keys_round_trip_through_their_text_and_a_wrong_id_is_refused() {
        let key = SigningKey::generate("example.com/log").unwrap();
        let again = SigningKey::parse(&key.encode()).unwrap();
        assert_eq!(again.verifier(), key.verifier());
        let v = VerifierKey::parse(&key.verifier().encode()).unwrap();
        assert_eq!(v, key.verifier());
        let text = key.verifier().encode();
        let (name, rest) = text.split_once('+').unwrap();
        let bad = format!("{name}+00000000+{}", rest.split_once('+').unwrap().1);
        assert!(VerifierKey::parse(&bad).is_err());
        assert!(SigningKey::generate("has space").is_err());
    }

    #[test]
    fn the_go_note_packages_test_key_gives_its_known_id() {
        // golang.org/x/mod/sumdb/note's example key "PeterNeumann".
        let v = VerifierKey::parse(
            "PeterNeumann+c74f20a3+ARpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TW",
        )
        .unwrap();
        assert_eq!(v.name(), "PeterNeumann");
        let note = "If you think cryptography is the answer to your problem,\n\
                    then you don't know what your problem is.\n\
                    \n\
                    \u{2014} PeterNeumann x08go/ZJkuBS9UG/SffcvIAQxVBtiFupLLr8pAcElZInNIuGUgYN1FFYC2pZSNXgKvqfqdngotpRZb6KE6RyyBwJnAM=\n";
        assert_eq!(
            v.open(note).unwrap(),
            "If you think cryptography is the answer to your problem,\nthen you don't know what your problem is.\n"
        );
    }

    #[test]
    fn a_cosignature_checks_for_its_body_and_time_only() {
        let witness = SigningKey::generate("witness.test").unwrap();
        let body = checkpoint().body();
        let line = witness.cosign(&body, 1_700_000_000);
        assert_eq!(
            witness.verifier().check_cosignature(&body, &line).unwrap(),
            1_700_000_000
        );
        let other = Checkpoint {
            size: 43,
            ..checkpoint()
        };
        assert!(
            witness
                .verifier()
                .check_cosignature(&other.body(), &line)
                .is_err()
        );
    }

    #[test]
    fn a_checkpoint_body_is_three_strict_lines() {
        assert!(Checkpoint::parse("o\n042\nAAAA\n").is_err());
        assert!(Checkpoint::parse("o\n+1\nAAAA\n").is_err());
        assert!(Checkpoint::parse("\n1\nAAAA\n").is_err());
        let ok = checkpoint().body();
        assert_eq!(Checkpoint::parse(&ok).unwrap(), checkpoint());
    }

    #[test]
    fn the_key_file_is_created_once_with_mode_0600_and_a_shared_one_is_refused() {
        use std::os::unix::fs::PermissionsExt;
        let dir = std::env::temp_dir().join(format!("cs-key-{}", uuid::Uuid::new_v4().simple()));
        let path = dir.join("signing.key");
        let (first, created) = load_or_create(&path, "o.test/log").unwrap();
        assert!(created);
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        let (again, created) = load_or_create(&path, "o.test/log").unwrap();
        assert!(!created);
        assert_eq!(again.verifier(), first.verifier());
        assert!(matches!(
            load_or_create(&path, "other/log"),
            Err(KeyFileError::Name { .. })
        ));
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        assert!(matches!(
            load_or_create(&path, "o.test/log"),
            Err(KeyFileError::Mode { .. })
        ));
        std::fs::remove_dir_all(dir).unwrap();
    }
}
