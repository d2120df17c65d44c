//! Files that only an offline key opens: the age format (<https://age-encryption.org/v1>,
//! X25519 recipients), so that the standard `age` tool decrypts them too. Archive segments
//! use it now; backups will. The service holds recipients (public keys) only; identities
//! (private keys) are given by the operator to the commands that read such files, and live
//! in memory only while they run.
//!
//! age brings its own primitives (X25519, ChaCha20-Poly1305, HKDF) rather than AWS-LC's:
//! the file format is the point, and re-implementing it on another stack would be the
//! riskier choice.

use std::fmt;
use std::io::{self, BufRead, Read, Write};
use std::str::FromStr;
use std::sync::Arc;

/// The first bytes of an age file, binary or armored.
const MAGIC: &[u8] = b"age-encryption.org/";
const ARMOR: &[u8] = b"-----BEGIN AGE ENCRYPTED FILE-----";

/// One public key: post-quantum hybrid (`age1pq1…`, what new keys should be), or classic
/// X25519 (`age1…`, which the age 1.1 tool that Debian ships reads; age 0.13 marks it
/// deprecated for new keys, and keeps it for compatibility, as this does).
#[derive(Clone)]
enum Key {
    PostQuantum(age::pq::Recipient),
    #[allow(deprecated)]
    Classic(age::x25519::Recipient),
}

impl Key {
    fn as_recipient(&self) -> &dyn age::Recipient {
        match self {
            Key::PostQuantum(r) => r,
            Key::Classic(r) => r,
        }
    }
}

impl fmt::Display for Key {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Key::PostQuantum(r) => r.fmt(f),
            Key::Classic(r) => r.fmt(f),
        }
    }
}

/// Public keys (`age1…`, `age1pq1…`) that files are encrypted to.
#[derive(Clone)]
pub struct Recipients(Vec<Key>);

impl fmt::Debug for Recipients {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_list()
            .entries(self.0.iter().map(ToString::to_string))
            .finish()
    }
}

impl Recipients {
    /// Parse recipients, one per entry; blank entries and `#` comments (as in a
    /// recipients file) are skipped. At least one is required.
    pub fn parse<S: AsRef<str>>(list: &[S]) -> Result<Self, String> {
        let mut out = Vec::new();
        for s in list {
            let s = s.as_ref().trim();
            if s.is_empty() || s.starts_with('#') {
                continue;
            }
            #[allow(deprecated)]
            let key = if s.starts_with("age1pq1") {
                age::pq::Recipient::from_str(s).ok().map(Key::PostQuantum)
            } else {
                age::x25519::Recipient::from_str(s).ok().map(Key::Classic)
            };
            let key = key.ok_or_else(|| {
                format!(
                    "{:.12}…: not an age recipient (a public key that starts with age1 or age1pq1)",
                    s
                )
            })?;
            out.push(key);
        }
        if out.is_empty() {
            return Err("no age recipient given".into());
        }
        let pq = out
            .iter()
            .filter(|k| matches!(k, Key::PostQuantum(_)))
            .count();
        if pq != 0 && pq != out.len() {
            // age refuses to mix them: a classic key would undo the post-quantum ones.
            return Err("age1pq1… and classic age1… recipients cannot be mixed".into());
        }
        Ok(Self(out))
    }

    /// The recipients, as they are written (`age1…`).
    pub fn keys(&self) -> Vec<String> {
        self.0.iter().map(ToString::to_string).collect()
    }

    /// Encrypt what is written to `out`; [`Encrypting::finish`] must be called to end
    /// the file (an unfinished file does not decrypt).
    pub fn encrypt<W: Write>(&self, out: W) -> io::Result<Encrypting<W>> {
        let e = age::Encryptor::with_recipients(self.0.iter().map(Key::as_recipient))
            .map_err(io::Error::other)?;
        Ok(Encrypting(e.wrap_output(out)?))
    }
}

/// A writer that encrypts to [`Recipients`].
pub struct Encrypting<W: Write>(age::stream::StreamWriter<W>);

impl<W: Write> fmt::Debug for Encrypting<W> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Encrypting")
    }
}

impl<W: Write> Encrypting<W> {
    /// Write the last chunk and return the inner writer.
    pub fn finish(self) -> io::Result<W> {
        self.0.finish()
    }
}

impl<W: Write> Write for Encrypting<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.0.write(buf)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.0.flush()
    }
}

/// Private keys (`AGE-SECRET-KEY-1…`, an age identity file) that open files. Clones
/// share the keys.
#[derive(Clone)]
pub struct Identities(Arc<Vec<Box<dyn age::Identity + Send + Sync>>>);

impl fmt::Debug for Identities {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Identities({} keys)", self.0.len())
    }
}

impl Identities {
    /// No identity: encrypted files are refused with a message that says what to give.
    pub fn none() -> Self {
        Self(Arc::new(Vec::new()))
    }

    /// Parse an identity file's text (what `age-keygen` writes).
    pub fn parse(text: &str) -> Result<Self, String> {
        let ids = age::IdentityFile::from_buffer(text.as_bytes())
            .and_then(|f| f.into_identities().map_err(io::Error::other))
            .map_err(|_| "not an age identity file (AGE-SECRET-KEY-1… lines)".to_owned())?;
        if ids.is_empty() {
            return Err("the identity file holds no key".into());
        }
        Ok(Self(Arc::new(ids)))
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Open an age file for reading its plaintext.
    pub fn decrypt<'a, R: BufRead + 'a>(&self, input: R) -> Result<Box<dyn Read + 'a>, String> {
        if self.0.is_empty() {
            return Err("encrypted with age: give the identity file that opens it".into());
        }
        let d = age::Decryptor::new_buffered(age::armor::ArmoredReader::new(input))
            .map_err(|e| format!("not a readable age file: {e}"))?;
        let r = d
            .decrypt(self.0.iter().map(|i| i.as_ref() as &dyn age::Identity))
            .map_err(|e| match e {
                age::DecryptError::NoMatchingKeys => {
                    "encrypted with age to none of the identities given".to_owned()
                }
                e => format!("cannot decrypt: {e}"),
            })?;
        Ok(Box::new(r))
    }
}

/// A new post-quantum key pair: the public key (`age1pq1…`) and the identity file's text,
/// which the caller must keep secret (it wipes itself when dropped).
pub fn generate_identity() -> (String, zeroize::Zeroizing<String>) {
    let id = age::pq::Identity::generate();
    let secret = age::secrecy::ExposeSecret::expose_secret(&id.to_string()).to_owned();
    (id.to_public().to_string(), zeroize::Zeroizing::new(secret))
}

/// Whether data that starts with `prefix` is an age file.
pub fn is_age(prefix: &[u8]) -> bool {
    prefix.starts_with(MAGIC) || prefix.starts_with(ARMOR)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pair() -> (String, String) {
        let (public, secret) = generate_identity();
        (public, secret.to_string())
    }

    #[allow(deprecated)]
    fn classic_pair() -> (String, String) {
        let id = age::x25519::Identity::generate();
        let secret = age::secrecy::ExposeSecret::expose_secret(&id.to_string()).to_owned();
        (id.to_public().to_string(), secret)
    }

    #[test]
    fn classic_keys_work_and_do_not_mix_with_post_quantum_ones() {
        let (pc, sc) = classic_pair();
        assert!(pc.starts_with("age1") && !pc.starts_with("age1pq1"));
        let mut w = Recipients::parse(&[pc.as_str()])
            .unwrap()
            .encrypt(Vec::new())
            .unwrap();
        w.write_all(b"classic").unwrap();
        let file = w.finish().unwrap();
        let mut out = Vec::new();
        Identities::parse(&sc)
            .unwrap()
            .decrypt(&file[..])
            .unwrap()
            .read_to_end(&mut out)
            .unwrap();
        assert_eq!(out, b"classic");
        let (pq, _) = pair();
        assert!(pq.starts_with("age1pq1"));
        let e = Recipients::parse(&[pc, pq]).unwrap_err();
        assert!(e.contains("cannot be mixed"), "{e}");
    }

    #[test]
    fn round_trip_to_every_recipient_only() {
        let (pa, sa) = pair();
        let (pb, sb) = pair();
        let (_, sc) = pair();
        let r = Recipients::parse(&[pa.as_str(), "# comment", "", pb.as_str()]).unwrap();
        assert_eq!(r.keys(), vec![pa, pb]);
        let mut w = r.encrypt(Vec::new()).unwrap();
        w.write_all(b"line one\nline two\n").unwrap();
        let file = w.finish().unwrap();
        assert!(is_age(&file));
        assert!(!file.windows(8).any(|x| x == b"line one"));
        for s in [sa, sb] {
            let mut out = Vec::new();
            Identities::parse(&s)
                .unwrap()
                .decrypt(&file[..])
                .unwrap()
                .read_to_end(&mut out)
                .unwrap();
            assert_eq!(out, b"line one\nline two\n");
        }
        let e = Identities::parse(&sc).unwrap().decrypt(&file[..]).err();
        assert_eq!(
            e.as_deref(),
            Some("encrypted with age to none of the identities given")
        );
        assert!(Identities::none().decrypt(&file[..]).is_err());
    }

    #[test]
    fn a_changed_byte_fails_to_decrypt() {
        let (p, s) = pair();
        let mut w = Recipients::parse(&[p])
            .unwrap()
            .encrypt(Vec::new())
            .unwrap();
        w.write_all(&[7u8; 200]).unwrap();
        let mut file = w.finish().unwrap();
        let last = file.len() - 3;
        file[last] ^= 1;
        let ids = Identities::parse(&s).unwrap();
        let read = ids
            .decrypt(&file[..])
            .and_then(|mut r| r.read_to_end(&mut Vec::new()).map_err(|e| e.to_string()));
        assert!(read.is_err());
    }

    #[test]
    fn bad_keys_are_refused_without_echoing_them() {
        let e = Recipients::parse(&["age1notakey0000000000000000000000000"]).unwrap_err();
        assert!(e.contains("not an age recipient"), "{e}");
        assert!(!e.contains("0000000000000000"), "{e}");
        assert!(Recipients::parse::<&str>(&[]).is_err());
        assert!(Identities::parse("AGE-SECRET-KEY-1NOPE").is_err());
        assert!(!is_age(b"{\"type\":\"segment\"}"));
    }
}
