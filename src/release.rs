//! Authenticating a Debian repository index the way apt does.
//!
//! `dists/<codename>/InRelease` is a Release file wrapped in an OpenPGP
//! cleartext signature. mesh checks that signature against the repository's
//! release key — Docker's own, built into the binary, or the one
//! `docker.signing_key` names — and then checks the `Packages` index it is
//! about to parse against the size and SHA256 the signed Release lists for it.
//! Nothing from the mirror is believed before both checks pass.
//!
//! The OpenPGP work is done by the pure-Rust `pgp` crate (rpgp), so no C
//! library or `gpg` binary is needed on the controller.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use pgp::composed::{CleartextSignedMessage, Deserializable, SignedPublicKey};
use pgp::types::KeyDetails;
use sha2::{Digest, Sha256};

/// Docker's Debian repository key ("Docker Release (CE deb)"), as published
/// at https://download.docker.com/linux/debian/gpg.
pub const DOCKER_RELEASE_KEY: &str = include_str!("docker-release-key.asc");

#[cfg(test)]
/// The fingerprint of [`DOCKER_RELEASE_KEY`], as Docker documents it.
pub const DOCKER_KEY_FINGERPRINT: &str = "9DC858229FC7DD38854AE2D88D81803C0EBFCD88";

/// Largest key file mesh reads (a real release key is a few KiB).
const MAX_KEY_BYTES: u64 = 1 << 20;

/// What went wrong; every message ends with what to do about it.
#[derive(Debug, thiserror::Error)]
pub enum ReleaseError {
    /// The signing key file cannot be read.
    #[error(
        "cannot read the signing key {}: {source}. Fix: point docker.signing_key (a path \
         relative to the inventory file) at the mirror's ASCII-armored public key, or remove \
         it to use Docker's own key",
        .path.display()
    )]
    KeyRead {
        path: PathBuf,
        source: std::io::Error,
    },
    /// The key text is not an OpenPGP public key mesh can use.
    #[error(
        "{origin}: not a usable OpenPGP public key ({reason}). Fix: export the mirror's \
         release key with `gpg --armor --export FINGERPRINT > FILE` and set \
         docker.signing_key to that file"
    )]
    BadKey { origin: String, reason: String },
    /// The InRelease file is not a cleartext-signed message.
    #[error(
        "{url}: not an OpenPGP cleartext-signed Release file ({reason}); the index was not \
         trusted and no host was touched. Fix: the mirror must serve \
         dists/<codename>/InRelease signed with its release key, as apt expects"
    )]
    NotSigned { url: String, reason: String },
    /// Signed, but by a key other than the trusted one.
    #[error(
        "{url}: signed by key {issuers}, not by the trusted key {fingerprint} ({origin}); \
         the index was not trusted and no host was touched. Fix: if this mirror signs with \
         its own key, set docker.signing_key in the inventory to that public key; otherwise \
         do not use this mirror"
    )]
    KeyMismatch {
        url: String,
        issuers: String,
        fingerprint: String,
        origin: String,
    },
    /// Signed by the trusted key, but the text or signature was altered.
    #[error(
        "{url}: BAD signature: the text does not match the signature of the trusted key \
         {fingerprint} ({origin}); the index was not trusted and no host was touched. Fix: \
         the file was altered on the mirror or in transit — retry, and if it persists \
         investigate the mirror (use an https:// mirror)"
    )]
    BadSignature {
        url: String,
        fingerprint: String,
        origin: String,
    },
    /// The signed text is not a Release file for what was asked.
    #[error(
        "{url}: not a usable Release file ({reason}); no host was touched. Fix: check that \
         the mirror URL and codename point at a `<mirror>/dists/<codename>/InRelease` file"
    )]
    MalformedRelease { url: String, reason: String },
    /// The Release lists no checksum for the wanted index.
    #[error(
        "{url}: the signed Release lists no SHA256 for {path}, so it cannot be verified; no \
         host was touched. Fix: check the architecture and that the mirror publishes \
         {path} for this codename"
    )]
    NotListed { url: String, path: String },
    /// The index does not match what the signed Release says.
    #[error(
        "{url}: {what} is {got}, but the signed InRelease says {want}; the index was \
         discarded and no host was touched. Fix: the mirror may be mid-update — retry in a \
         few minutes; if it persists the mirror's content was altered, investigate it"
    )]
    IndexMismatch {
        url: String,
        what: &'static str,
        want: String,
        got: String,
    },
}

/// A repository release key: a primary key and its signing subkeys.
#[derive(Debug, Clone)]
pub struct ReleaseKey {
    key: SignedPublicKey,
    /// Where it came from, for messages ("Docker's built-in key" or a path).
    origin: String,
}

impl ReleaseKey {
    /// Docker's key, built into the binary.
    pub fn docker() -> ReleaseKey {
        ReleaseKey::from_armored(DOCKER_RELEASE_KEY, "Docker's built-in release key")
            .expect("the built-in Docker release key parses (guarded by a unit test)")
    }

    /// The ASCII-armored public key in the file at `path`.
    pub fn load(path: &Path) -> Result<ReleaseKey, ReleaseError> {
        use std::io::Read as _;
        let read_err = |source| ReleaseError::KeyRead {
            path: path.to_path_buf(),
            source,
        };
        let mut text = String::new();
        std::fs::File::open(path)
            .and_then(|f| f.take(MAX_KEY_BYTES).read_to_string(&mut text))
            .map_err(read_err)?;
        ReleaseKey::from_armored(&text, &path.display().to_string())
    }

    /// Parses an ASCII-armored public key; `origin` names it in messages.
    pub fn from_armored(text: &str, origin: &str) -> Result<ReleaseKey, ReleaseError> {
        let bad = |reason: String| ReleaseError::BadKey {
            origin: origin.to_string(),
            reason,
        };
        if text.contains("PRIVATE KEY BLOCK") {
            return Err(bad("this is a private key; give the public key only".into()));
        }
        let (key, _) = SignedPublicKey::from_string(text).map_err(|e| bad(e.to_string()))?;
        // A key whose own user-id signatures do not verify is not the key it claims to be.
        key.details
            .verify_bindings(&key.primary_key)
            .map_err(|e| bad(format!("its self-signatures do not verify: {e}")))?;
        Ok(ReleaseKey {
            key,
            origin: origin.to_string(),
        })
    }

    /// The primary key's fingerprint, upper-case hex without spaces.
    pub fn fingerprint(&self) -> String {
        upper_hex(self.key.fingerprint().as_bytes())
    }

    /// Verifies the cleartext-signed `text` fetched from `url` and returns
    /// the signed Release. `codename` is what was asked for: a validly signed
    /// Release of another distribution is refused too.
    pub fn verify_inrelease(
        &self,
        url: &str,
        text: &str,
        codename: &str,
    ) -> Result<Release, ReleaseError> {
        let (msg, _) =
            CleartextSignedMessage::from_string(text).map_err(|e| ReleaseError::NotSigned {
                url: url.to_string(),
                reason: e.to_string(),
            })?;
        if msg.signatures().is_empty() {
            return Err(ReleaseError::NotSigned {
                url: url.to_string(),
                reason: "it carries no signature".into(),
            });
        }
        if !self.verifies(&msg) {
            return Err(self.why_not(url, &msg));
        }
        let release = Release::parse(url, &msg.signed_text())?;
        match release.codename.as_deref() {
            Some(c) if c != codename => Err(ReleaseError::MalformedRelease {
                url: url.to_string(),
                reason: format!("it is signed for codename `{c}`, not `{codename}`"),
            }),
            _ => Ok(release),
        }
    }

    /// Whether the primary key or a properly bound subkey made a signature.
    fn verifies(&self, msg: &CleartextSignedMessage) -> bool {
        if msg.verify(&self.key.primary_key).is_ok() {
            return true;
        }
        self.key.public_subkeys.iter().any(|sub| {
            sub.verify_bindings(&self.key.primary_key).is_ok() && msg.verify(&sub.key).is_ok()
        })
    }

    /// A failed verification: the signature is another key's, or ours over altered text.
    fn why_not(&self, url: &str, msg: &CleartextSignedMessage) -> ReleaseError {
        let ours: Vec<String> = std::iter::once(self.key.fingerprint())
            .chain(self.key.public_subkeys.iter().map(|s| s.key.fingerprint()))
            .map(|f| upper_hex(f.as_bytes()))
            .collect();
        let mut issuers: Vec<String> = Vec::new();
        for sig in msg.signatures() {
            issuers.extend(
                sig.issuer_fingerprint()
                    .into_iter()
                    .map(|f| upper_hex(f.as_bytes())),
            );
            issuers.extend(
                sig.issuer_key_id()
                    .into_iter()
                    .map(|id| upper_hex(id.as_ref())),
            );
        }
        // A key id is the fingerprint's last 16 hex digits (v4 keys).
        let by_us = issuers
            .iter()
            .any(|i| ours.iter().any(|o| o == i || o.ends_with(i.as_str())));
        if by_us {
            ReleaseError::BadSignature {
                url: url.to_string(),
                fingerprint: self.fingerprint(),
                origin: self.origin.clone(),
            }
        } else {
            issuers.sort();
            issuers.dedup();
            ReleaseError::KeyMismatch {
                url: url.to_string(),
                issuers: if issuers.is_empty() {
                    "(unnamed)".into()
                } else {
                    issuers.join(" / ")
                },
                fingerprint: self.fingerprint(),
                origin: self.origin.clone(),
            }
        }
    }
}

fn upper_hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02X}")).collect()
}

/// The parts of a signed Release file mesh uses.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Release {
    pub codename: Option<String>,
    /// Path relative to `dists/<codename>/` → (size, lower-case sha256).
    pub sha256: BTreeMap<String, (u64, String)>,
}

impl Release {
    /// Reads the `Codename` field and the `SHA256:` section (` <sha256> <size> <path>` lines).
    pub fn parse(url: &str, text: &str) -> Result<Release, ReleaseError> {
        let malformed = |reason: String| ReleaseError::MalformedRelease {
            url: url.to_string(),
            reason,
        };
        let mut release = Release::default();
        let mut in_sha256 = false;
        for (n, line) in text.lines().enumerate() {
            let line = line.trim_end_matches('\r');
            if let Some(entry) = line.strip_prefix([' ', '\t']) {
                if !in_sha256 || entry.trim().is_empty() {
                    continue;
                }
                let fields: Vec<&str> = entry.split_whitespace().collect();
                let [hash, size, path] = fields[..] else {
                    return Err(malformed(format!(
                        "line {}: a SHA256 entry is not `<sha256> <size> <path>`",
                        n + 1
                    )));
                };
                let size = size.parse::<u64>().map_err(|_| {
                    malformed(format!("line {}: size `{size}` is not a number", n + 1))
                })?;
                if hash.len() != 64 || !hash.bytes().all(|b| b.is_ascii_hexdigit()) {
                    return Err(malformed(format!(
                        "line {}: `{hash}` is not a sha256",
                        n + 1
                    )));
                }
                release
                    .sha256
                    .insert(path.to_string(), (size, hash.to_ascii_lowercase()));
                continue;
            }
            in_sha256 = false;
            let Some((field, value)) = line.split_once(':') else {
                continue;
            };
            match field.trim() {
                f if f.eq_ignore_ascii_case("SHA256") => in_sha256 = true,
                f if f.eq_ignore_ascii_case("Codename") => {
                    release.codename = Some(value.trim().to_string())
                }
                _ => {}
            }
        }
        if release.sha256.is_empty() {
            return Err(malformed("it has no SHA256 section".into()));
        }
        Ok(release)
    }

    /// Checks `bytes`, fetched from `url`, against the entry for `path`
    /// (e.g. `stable/binary-amd64/Packages`).
    pub fn check(&self, url: &str, path: &str, bytes: &[u8]) -> Result<(), ReleaseError> {
        let Some((size, sha256)) = self.sha256.get(path) else {
            return Err(ReleaseError::NotListed {
                url: url.to_string(),
                path: path.to_string(),
            });
        };
        if bytes.len() as u64 != *size {
            return Err(ReleaseError::IndexMismatch {
                url: url.to_string(),
                what: "the size",
                want: format!("{size} bytes"),
                got: format!("{} bytes", bytes.len()),
            });
        }
        let got: String = Sha256::digest(bytes)
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        if &got != sha256 {
            return Err(ReleaseError::IndexMismatch {
                url: url.to_string(),
                what: "the sha256",
                want: sha256.clone(),
                got,
            });
        }
        Ok(())
    }
}

/// Test helpers: the checked-in test-only keys and signing with them.
#[cfg(test)]
pub(crate) mod testing {
    use pgp::composed::{CleartextSignedMessage, Deserializable, SignedSecretKey};
    use pgp::crypto::hash::HashAlgorithm;
    use pgp::packet::{SignatureConfig, SignatureType, Subpacket, SubpacketData};
    use pgp::types::{KeyDetails, Password};

    /// The test release key (public half), TEST-ONLY.
    pub const TEST_PUBLIC: &str = include_str!("../tests/fixtures/release-test-key.pub.asc");
    /// Its secret half, TEST-ONLY.
    pub const TEST_SECRET: &str = include_str!("../tests/fixtures/release-test-key.sec.asc");
    /// An unrelated key, TEST-ONLY.
    pub const OTHER_SECRET: &str = include_str!("../tests/fixtures/other-test-key.sec.asc");

    /// `text` cleartext-signed with the armored secret key `secret`.
    pub fn clearsign(secret: &str, text: &str) -> String {
        let (key, _) = SignedSecretKey::from_string(secret).unwrap();
        let mut config = SignatureConfig::v4(
            SignatureType::Text,
            key.primary_key.algorithm(),
            HashAlgorithm::Sha256,
        );
        config.hashed_subpackets = vec![Subpacket::regular(SubpacketData::IssuerFingerprint(
            key.primary_key.fingerprint(),
        ))
        .unwrap()];
        config.unhashed_subpackets =
            vec![
                Subpacket::regular(SubpacketData::IssuerKeyId(key.primary_key.legacy_key_id()))
                    .unwrap(),
            ];
        CleartextSignedMessage::new(text, config, &key.primary_key, &Password::empty())
            .unwrap()
            .to_armored_string(Default::default())
            .unwrap()
    }
}

#[cfg(test)]
mod tests {
    use super::testing::*;
    use super::*;

    const URL: &str = "http://mirror.test/dists/bookworm/InRelease";
    const PACKAGES: &[u8] = b"Package: docker-ce\nVersion: 1\n";

    fn release_text(packages: &[u8]) -> String {
        let sha: String = Sha256::digest(packages)
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        format!(
            "Origin: Docker\nLabel: Docker CE\nSuite: bookworm\nCodename: bookworm\n\
             Architectures: amd64 arm64\nComponents: stable\nMD5Sum:\n \
             d41d8cd98f00b204e9800998ecf8427e {len} stable/binary-amd64/Packages\n\
             SHA256:\n {sha} {len} stable/binary-amd64/Packages\n \
             e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855 0 \
             stable/binary-arm64/Packages\n",
            len = packages.len()
        )
    }

    fn test_key() -> ReleaseKey {
        ReleaseKey::from_armored(TEST_PUBLIC, "test key").unwrap()
    }

    #[test]
    fn the_built_in_docker_key_is_dockers() {
        let key = ReleaseKey::docker();
        assert_eq!(key.fingerprint(), DOCKER_KEY_FINGERPRINT);
        assert_eq!(
            DOCKER_KEY_FINGERPRINT,
            "9DC8 5822 9FC7 DD38 854A E2D8 8D81 803C 0EBF CD88".replace(' ', "")
        );
        // Its signing subkey is bound to it, so InRelease signed by it verifies.
        assert_eq!(key.key.public_subkeys.len(), 1);
        key.key.public_subkeys[0]
            .verify_bindings(&key.key.primary_key)
            .unwrap();
    }

    #[test]
    fn a_correctly_signed_inrelease_verifies_and_checks_packages() {
        let signed = clearsign(TEST_SECRET, &release_text(PACKAGES));
        let release = test_key()
            .verify_inrelease(URL, &signed, "bookworm")
            .unwrap();
        assert_eq!(release.codename.as_deref(), Some("bookworm"));
        assert_eq!(release.sha256.len(), 2, "{release:?}");
        release
            .check(URL, "stable/binary-amd64/Packages", PACKAGES)
            .unwrap();
        // CRLF in transit does not change what was signed.
        let crlf = signed.replace('\n', "\r\n");
        test_key().verify_inrelease(URL, &crlf, "bookworm").unwrap();
    }

    #[test]
    fn a_gpg_signed_inrelease_verifies() {
        // Made by `gpg --clearsign` with the test key, as a repository would.
        let signed = include_str!("../tests/fixtures/InRelease.gpg");
        let release = test_key()
            .verify_inrelease(URL, signed, "bookworm")
            .unwrap();
        release
            .check(URL, "stable/binary-amd64/Packages", PACKAGES)
            .unwrap();
    }

    #[test]
    fn tampered_text_is_a_bad_signature() {
        let signed = clearsign(TEST_SECRET, &release_text(PACKAGES));
        let tampered = signed.replacen("Suite: bookworm", "Suite: bookwork", 1);
        assert_ne!(tampered, signed);
        let err = test_key()
            .verify_inrelease(URL, &tampered, "bookworm")
            .unwrap_err();
        assert!(matches!(err, ReleaseError::BadSignature { .. }), "{err}");
        let msg = err.to_string();
        assert!(msg.contains(URL) && msg.contains("BAD signature"), "{msg}");
        assert!(msg.contains("no host was touched"), "{msg}");
    }

    #[test]
    fn another_keys_signature_is_a_key_mismatch() {
        let signed = clearsign(OTHER_SECRET, &release_text(PACKAGES));
        let err = test_key()
            .verify_inrelease(URL, &signed, "bookworm")
            .unwrap_err();
        assert!(matches!(err, ReleaseError::KeyMismatch { .. }), "{err}");
        let msg = err.to_string();
        assert!(msg.contains("docker.signing_key"), "{msg}");
        assert!(msg.contains(&test_key().fingerprint()), "{msg}");
        // Docker's key refuses the test key's signature the same way.
        let signed = clearsign(TEST_SECRET, &release_text(PACKAGES));
        let err = ReleaseKey::docker()
            .verify_inrelease(URL, &signed, "bookworm")
            .unwrap_err();
        assert!(err.to_string().contains(DOCKER_KEY_FINGERPRINT), "{err}");
    }

    #[test]
    fn unsigned_or_foreign_releases_are_refused() {
        let err = test_key()
            .verify_inrelease(URL, &release_text(PACKAGES), "bookworm")
            .unwrap_err();
        assert!(matches!(err, ReleaseError::NotSigned { .. }), "{err}");
        let err = test_key()
            .verify_inrelease(URL, "<html>404</html>", "bookworm")
            .unwrap_err();
        assert!(matches!(err, ReleaseError::NotSigned { .. }), "{err}");
        // Validly signed, but for another distribution (a replayed file).
        let signed = clearsign(TEST_SECRET, &release_text(PACKAGES));
        let err = test_key()
            .verify_inrelease(URL, &signed, "trixie")
            .unwrap_err();
        assert!(err.to_string().contains("codename `bookworm`"), "{err}");
    }

    #[test]
    fn a_packages_index_that_differs_is_refused() {
        let release = Release::parse(URL, &release_text(PACKAGES)).unwrap();
        let mut altered = PACKAGES.to_vec();
        altered[0] = b'p';
        let err = release
            .check(URL, "stable/binary-amd64/Packages", &altered)
            .unwrap_err();
        assert!(
            matches!(
                err,
                ReleaseError::IndexMismatch {
                    what: "the sha256",
                    ..
                }
            ),
            "{err}"
        );
        assert!(err.to_string().contains("no host was touched"), "{err}");
        let err = release
            .check(URL, "stable/binary-amd64/Packages", b"short")
            .unwrap_err();
        assert!(err.to_string().contains("the size is 5 bytes"), "{err}");
        let err = release
            .check(URL, "stable/binary-s390x/Packages", PACKAGES)
            .unwrap_err();
        assert!(matches!(err, ReleaseError::NotListed { .. }), "{err}");
    }

    #[test]
    fn keys_that_cannot_be_used_are_clear_errors() {
        let err = ReleaseKey::from_armored("not a key", "k.asc").unwrap_err();
        assert!(
            err.to_string().starts_with("k.asc: not a usable OpenPGP"),
            "{err}"
        );
        let err = ReleaseKey::from_armored(TEST_SECRET, "k.asc").unwrap_err();
        assert!(err.to_string().contains("private key"), "{err}");
        let err = ReleaseKey::load(Path::new("/nonexistent/k.asc")).unwrap_err();
        assert!(matches!(err, ReleaseError::KeyRead { .. }), "{err}");
        assert!(err.to_string().contains("/nonexistent/k.asc"), "{err}");
    }
}
