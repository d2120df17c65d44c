//! A PKCS#11 token (an HSM, or SoftHSM in tests) through cryptoki. Coffer's keys are AES-256
//! token objects that are sensitive and not extractable, so they never leave the device;
//! Coffer asks the device to encrypt and decrypt with them (AES-GCM with C_Encrypt, because
//! SoftHSM has no GCM key wrap).
//!
//! The module is loaded once per process and keeps one logged-in session, used under a
//! mutex: operations are rare (start, and one per tenant key load). When the device drops
//! the session (an HSM restart, a network HSM reconnecting), the next operation that fails
//! opens a new session, logs in again and is tried once more.

use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use cryptoki::context::{CInitializeArgs, CInitializeFlags, Pkcs11};
use cryptoki::error::{Error as CkError, RvError};
use cryptoki::mechanism::Mechanism;
use cryptoki::mechanism::aead::GcmParams;
use cryptoki::object::{Attribute, KeyType, ObjectClass, ObjectHandle};
use cryptoki::session::{Session, UserType};
use cryptoki::slot::Slot;
use cryptoki::types::AuthPin;
use zeroize::Zeroizing;

use coffer_seal::{EncryptionContext, ExternalKey, KeyProvider, SealError};

const FORMAT: u8 = 1;
const IV_LEN: usize = 12;
const TAG_BITS: u64 = 128;

#[derive(Clone)]
pub struct Pkcs11Config {
    /// The module, e.g. /usr/lib/softhsm/libsofthsm2.so.
    pub library: PathBuf,
    pub token_label: String,
    pub pin: Zeroizing<String>,
}

impl std::fmt::Debug for Pkcs11Config {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pkcs11Config")
            .field("library", &self.library)
            .field("token_label", &self.token_label)
            .finish_non_exhaustive()
    }
}

/// A logged-in session on one token.
pub struct Hsm {
    token: String,
    slot: Slot,
    pin: Zeroizing<String>,
    /// The token refused the PIN at a re-login: restart with the right one.
    pin_refused: std::sync::atomic::AtomicBool,
    session: Mutex<Session>,
    ctx: Pkcs11,
}

impl std::fmt::Debug for Hsm {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Hsm")
            .field("token", &self.token)
            .finish_non_exhaustive()
    }
}

fn service(what: &str, e: CkError) -> SealError {
    SealError::Service(format!("PKCS#11 {what}: {e}"))
}

impl Hsm {
    /// Load the module, find the token by label and log in as its user.
    pub fn open(cfg: &Pkcs11Config) -> Result<Arc<Self>, SealError> {
        let ctx = module(&cfg.library)?;
        let slot = ctx
            .get_slots_with_token()
            .map_err(|e| service("list slots", e))?
            .into_iter()
            .find(|s| {
                ctx.get_token_info(*s)
                    .is_ok_and(|t| t.label().trim_end() == cfg.token_label)
            })
            .ok_or_else(|| {
                SealError::Config(format!("no PKCS#11 token labelled {}", cfg.token_label))
            })?;
        let session = login(&ctx, slot, &cfg.pin)?;
        Ok(Arc::new(Self {
            token: cfg.token_label.clone(),
            slot,
            pin: cfg.pin.clone(),
            pin_refused: std::sync::atomic::AtomicBool::new(false),
            session: Mutex::new(session),
            ctx,
        }))
    }

    /// Log this process out of the token, as a device restart does. The next operation
    /// logs in again.
    pub fn logout(&self) -> Result<(), SealError> {
        let s = self
            .session
            .lock()
            .map_err(|_| SealError::Service("PKCS#11 session lock poisoned".into()))?;
        s.logout().map_err(|e| service("logout", e))
    }

    /// Run `f` on the session. A failure may mean the session or its login is gone (device
    /// restart): then a new session logs in and `f` runs once more.
    fn with_session<R>(
        &self,
        f: impl Fn(&Session) -> Result<R, SealError>,
    ) -> Result<R, SealError> {
        let mut s = self
            .session
            .lock()
            .map_err(|_| SealError::Service("PKCS#11 session lock poisoned".into()))?;
        match f(&s) {
            // Logged out, the key's objects are invisible and look absent, so a missing key
            // earns a second try as well; if it is really gone, that one fails the same way.
            Err(first @ (SealError::Service(_) | SealError::KeyUnavailable { .. })) => {
                // A PIN the token refused is not tried again: repeated wrong logins can lock
                // the token.
                if self.pin_refused.load(std::sync::atomic::Ordering::Relaxed) {
                    return Err(first);
                }
                tracing::warn!(token = %self.token, error = %first, "PKCS#11 operation failed; logging in again");
                match login(&self.ctx, self.slot, &self.pin) {
                    Ok(fresh) => *s = fresh,
                    Err(e @ SealError::Config(_)) => {
                        self.pin_refused
                            .store(true, std::sync::atomic::Ordering::Relaxed);
                        return Err(e);
                    }
                    Err(e) => return Err(e),
                }
                f(&s)
            }
            other => other,
        }
    }

    fn find(s: &Session, label: &str) -> Result<ObjectHandle, SealError> {
        let found = s
            .find_objects(&[
                Attribute::Class(ObjectClass::SECRET_KEY),
                Attribute::Label(label.as_bytes().to_vec()),
            ])
            .map_err(|e| service("find key", e))?;
        match found.as_slice() {
            [one] => Ok(*one),
            [] => Err(unavailable(label, "no such key on the token")),
            _ => Err(SealError::Config(format!(
                "several PKCS#11 keys are labelled {label}"
            ))),
        }
    }

    /// Create the AES-256 key `label` on the token unless it exists. Returns whether it did.
    pub fn ensure_key(&self, label: &str) -> Result<bool, SealError> {
        self.with_session(|s| {
            match Self::find(s, label) {
                Ok(_) => return Ok(false),
                Err(SealError::KeyUnavailable { .. }) => {}
                Err(e) => return Err(e),
            }
            s.generate_key(
                &Mechanism::AesKeyGen,
                &[
                    Attribute::Class(ObjectClass::SECRET_KEY),
                    Attribute::KeyType(KeyType::AES),
                    Attribute::ValueLen(32.into()),
                    Attribute::Token(true),
                    Attribute::Private(true),
                    Attribute::Sensitive(true),
                    Attribute::Extractable(false),
                    Attribute::Encrypt(true),
                    Attribute::Decrypt(true),
                    Attribute::Wrap(false),
                    Attribute::Unwrap(false),
                    Attribute::Label(label.as_bytes().to_vec()),
                ],
            )
            .map_err(|e| service("generate key", e))?;
            Ok(true)
        })
    }

    /// Enable or disable the key for encryption and decryption. Disabling is how an owner
    /// revokes Coffer's use of it; enabling again restores it.
    pub fn set_key_enabled(&self, label: &str, enabled: bool) -> Result<(), SealError> {
        self.with_session(|s| {
            let key = Self::find(s, label)?;
            s.update_attributes(
                key,
                &[Attribute::Encrypt(enabled), Attribute::Decrypt(enabled)],
            )
            .map_err(|e| service("update key", e))
        })
    }

    /// AES-256-GCM under the token key; `aad` is bound to the result.
    pub fn encrypt(&self, label: &str, plaintext: &[u8], aad: &[u8]) -> Result<Vec<u8>, SealError> {
        self.with_session(|s| {
            let key = Self::find(s, label)?;
            let mut iv = [0u8; IV_LEN];
            s.generate_random_slice(&mut iv)
                .map_err(|e| service("random", e))?;
            let params = GcmParams::new(&mut iv, aad, TAG_BITS.into())
                .map_err(|e| service("GCM parameters", e))?;
            let ct = s
                .encrypt(&Mechanism::AesGcm(params), key, plaintext)
                .map_err(|e| key_error(label, "encrypt", e))?;
            let mut out = Vec::with_capacity(1 + IV_LEN + ct.len());
            out.push(FORMAT);
            out.extend_from_slice(&iv);
            out.extend_from_slice(&ct);
            Ok(out)
        })
    }

    pub fn decrypt(
        &self,
        label: &str,
        blob: &[u8],
        aad: &[u8],
    ) -> Result<Zeroizing<Vec<u8>>, SealError> {
        let (&format, rest) = blob
            .split_first()
            .ok_or_else(|| unavailable(label, "empty ciphertext"))?;
        let (iv, ct) = rest
            .split_at_checked(IV_LEN)
            .filter(|_| format == FORMAT)
            .ok_or_else(|| unavailable(label, "malformed ciphertext"))?;
        self.with_session(|s| {
            let key = Self::find(s, label)?;
            let mut iv: [u8; IV_LEN] = iv
                .try_into()
                .map_err(|_| unavailable(label, "malformed ciphertext"))?;
            let params = GcmParams::new(&mut iv, aad, TAG_BITS.into())
                .map_err(|e| service("GCM parameters", e))?;
            s.decrypt(&Mechanism::AesGcm(params), key, ct)
                .map(Zeroizing::new)
                .map_err(|e| match e {
                    // SoftHSM reports a failed GCM tag check as a general error.
                    CkError::Pkcs11(RvError::GeneralError, _) => {
                        unavailable(label, "decryption failed: wrong key, context or data")
                    }
                    other => key_error(label, "decrypt", other),
                })
        })
    }
}

/// The module at `library`, loaded and initialised once per process. C_Initialize must
/// not run twice at once, and a module unloaded while another handle still has sessions
/// would take them (and the login) with it: every token of a process shares one context,
/// which is never unloaded. (SoftHSM lists the tokens that exist when it is initialised:
/// create tokens before the server starts.)
fn module(library: &std::path::Path) -> Result<Pkcs11, SealError> {
    static LOADED: std::sync::OnceLock<Mutex<std::collections::HashMap<PathBuf, Pkcs11>>> =
        std::sync::OnceLock::new();
    let mut loaded = LOADED
        .get_or_init(Mutex::default)
        .lock()
        .map_err(|_| SealError::Service("PKCS#11 module lock poisoned".into()))?;
    if let Some(ctx) = loaded.get(library) {
        return Ok(ctx.clone());
    }
    let ctx = Pkcs11::new(library).map_err(|e| {
        SealError::Config(format!("load PKCS#11 module {}: {e}", library.display()))
    })?;
    match ctx.initialize(CInitializeArgs::new(CInitializeFlags::OS_LOCKING_OK)) {
        Ok(()) | Err(CkError::Pkcs11(RvError::CryptokiAlreadyInitialized, _)) => {}
        Err(e) => return Err(service("initialise", e)),
    }
    loaded.insert(library.to_owned(), ctx.clone());
    Ok(ctx)
}

/// A new read-write session on `slot`, logged in as the user.
fn login(ctx: &Pkcs11, slot: Slot, pin: &Zeroizing<String>) -> Result<Session, SealError> {
    let session = ctx
        .open_rw_session(slot)
        .map_err(|e| service("open session", e))?;
    let pin = AuthPin::from(pin.as_str().to_owned());
    match session.login(UserType::User, Some(&pin)) {
        Ok(()) | Err(CkError::Pkcs11(RvError::UserAlreadyLoggedIn, _)) => Ok(session),
        Err(CkError::Pkcs11(RvError::PinIncorrect, _)) => {
            Err(SealError::Config("the PKCS#11 PIN is wrong".into()))
        }
        Err(e) => Err(service("login", e)),
    }
}

fn unavailable(label: &str, reason: &str) -> SealError {
    SealError::KeyUnavailable {
        key: format!("pkcs11:{label}"),
        reason: reason.to_owned(),
    }
}

/// Errors that mean the key may not be used (disabled, wrong data) versus device failures.
fn key_error(label: &str, what: &str, e: CkError) -> SealError {
    match e {
        CkError::Pkcs11(
            rv @ (RvError::KeyFunctionNotPermitted
            | RvError::EncryptedDataInvalid
            | RvError::EncryptedDataLenRange
            | RvError::KeyHandleInvalid),
            _,
        ) => unavailable(label, &format!("{what}: {rv}")),
        other => service(what, other),
    }
}

/// The token as a key service: keys are named by label.
#[derive(Debug, Clone)]
pub struct HsmProvider(pub Arc<Hsm>);

impl KeyProvider for HsmProvider {
    fn scheme(&self) -> &'static str {
        "pkcs11"
    }
    fn key(&self, name: &str) -> Result<Arc<dyn ExternalKey>, SealError> {
        Ok(Arc::new(HsmKey {
            hsm: self.0.clone(),
            label: name.to_owned(),
        }))
    }
}

/// One AES key on the token.
#[derive(Debug, Clone)]
pub struct HsmKey {
    hsm: Arc<Hsm>,
    label: String,
}

#[async_trait::async_trait]
impl ExternalKey for HsmKey {
    fn reference(&self) -> String {
        format!("pkcs11:{}", self.label)
    }
    async fn wrap(
        &self,
        plaintext: &[u8],
        context: &EncryptionContext,
    ) -> Result<Vec<u8>, SealError> {
        let (hsm, label) = (self.hsm.clone(), self.label.clone());
        let pt = Zeroizing::new(plaintext.to_vec());
        let aad = context_aad(context);
        blocking(move || hsm.encrypt(&label, &pt, &aad)).await
    }
    async fn unwrap(
        &self,
        blob: &[u8],
        context: &EncryptionContext,
    ) -> Result<Zeroizing<Vec<u8>>, SealError> {
        let (hsm, label, blob) = (self.hsm.clone(), self.label.clone(), blob.to_vec());
        let aad = context_aad(context);
        blocking(move || hsm.decrypt(&label, &blob, &aad)).await
    }
}

/// PKCS#11 calls block: run them off the async workers.
async fn blocking<R: Send + 'static>(
    f: impl FnOnce() -> Result<R, SealError> + Send + 'static,
) -> Result<R, SealError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|_| SealError::Service("PKCS#11 task failed".into()))?
}

/// The context as GCM additional data: length-prefixed names and values in name order, so
/// that no two contexts encode alike.
fn context_aad(context: &EncryptionContext) -> Vec<u8> {
    let mut out = b"coffer/external/v1".to_vec();
    for (k, v) in context {
        for part in [k, v] {
            out.extend_from_slice(&u32::try_from(part.len()).unwrap_or(u32::MAX).to_be_bytes());
            out.extend_from_slice(part.as_bytes());
        }
    }
    out
}
