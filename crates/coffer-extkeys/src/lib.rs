//! The key services behind Coffer's KMS and HSM seals and behind organisations' own keys:
//! AWS KMS ([`kms`]) and PKCS#11 tokens ([`pkcs11`]). Both implement
//! [`coffer_seal::KeyProvider`]; the binary wires them in, so the domain never links HTTP
//! or a PKCS#11 module itself.

pub mod kms;
pub mod pkcs11;

pub use kms::{AwsCredentials, KmsClient, KmsConfig};
pub use pkcs11::{Hsm, HsmProvider, Pkcs11Config};
