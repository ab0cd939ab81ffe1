//! The dev CA and its leaf certificate in `certs/`, for when no certificate
//! is configured: generated on first run, reused while they are good, and
//! replaced when not. The CA may vouch only for the loopback names (X.509
//! name constraints) and for ten years, so a leaked dev key cannot vouch
//! for any other site even where the CA was imported into a browser.

use std::fs;
use std::net::IpAddr;
use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, CertificateParams, CidrSubnet, DnType, ExtendedKeyUsagePurpose,
    GeneralSubtree, IsCa, Issuer, KeyPair, KeyUsagePurpose, NameConstraints, PublicKeyData,
};
use time::OffsetDateTime;
use x509_parser::certificate::X509Certificate;
use x509_parser::extensions::{GeneralName, ParsedExtension};

use super::{TlsError, file_error, write_file};

/// Names the dev certificate is valid for, and all the dev CA may vouch
/// for.
const DEV_NAMES: [&str; 3] = ["localhost", "127.0.0.1", "::1"];
const DAY: i64 = 86_400;
/// The CA's lifetime: ten years.
const CA_DAYS: i64 = 3650;
/// The leaf's lifetime: browsers and macOS refuse server certificates
/// valid for over 825 days.
const LEAF_DAYS: i64 = 800;
/// Longest lifetimes accepted in kept files (ten years with leap days).
const CA_MAX_DAYS: i64 = 3653;
const LEAF_MAX_DAYS: i64 = 825;
/// A certificate with fewer days left than this is replaced.
const RENEW_DAYS: i64 = 30;

/// Paths of the dev certificate files.
pub struct DevCertificate {
    pub ca: PathBuf,
    pub cert: PathBuf,
    pub key: PathBuf,
}

/// Why a kept file is not used.
#[derive(Debug)]
enum Unusable {
    Missing,
    Bad(String),
}

/// Makes sure `dir` holds a usable dev CA (`dev-ca.pem`, its key in
/// `dev-ca.key`) and a leaf certificate signed by it (`gateway.crt`,
/// `gateway.key`). Kept files are reused unchanged while they are good; a
/// CA without the name constraints, valid for over ten years, or expiring
/// within 30 days is replaced (with a warning: whoever imported the old
/// one needs the new one), and so is a leaf that it did not sign, that
/// lacks a dev name, or that expires within 30 days.
pub fn ensure_dev_certificate(dir: &Path) -> Result<DevCertificate, TlsError> {
    let dev = DevCertificate {
        ca: dir.join("dev-ca.pem"),
        cert: dir.join("gateway.crt"),
        key: dir.join("gateway.key"),
    };
    let ca_key_path = dir.join("dev-ca.key");
    fs::create_dir_all(dir).map_err(|e| file_error(dir, e))?;
    let now = OffsetDateTime::now_utc();
    let (ca_key, ca_not_after) = match kept_ca(&dev.ca, &ca_key_path, now) {
        Ok((key, not_after)) => {
            match kept_leaf(&dev, &key, now) {
                Ok(()) => return Ok(dev),
                Err(Unusable::Missing) => {}
                Err(Unusable::Bad(reason)) => tracing::info!(
                    cert = %dev.cert.display(),
                    reason,
                    "renewing the dev certificate"
                ),
            }
            (key, not_after)
        }
        Err(why) => {
            let key = KeyPair::generate()?;
            let not_before = now - time::Duration::days(1);
            let not_after = not_before + time::Duration::days(CA_DAYS);
            let ca = ca_params(not_before, not_after)?.self_signed(&key)?;
            write_file(&ca_key_path, key.serialize_pem().as_bytes(), 0o600)?;
            write_file(&dev.ca, ca.pem().as_bytes(), 0o644)?;
            match why {
                Unusable::Missing => tracing::info!(
                    ca = %dev.ca.display(),
                    "generated a dev CA for localhost, 127.0.0.1 and ::1 only"
                ),
                Unusable::Bad(reason) => tracing::warn!(
                    ca = %dev.ca.display(),
                    reason,
                    "replaced the dev CA and its certificate; browsers and systems that \
                     imported the old CA must import the new one"
                ),
            }
            (key, not_after)
        }
    };
    sign_leaf(&dev, ca_key, ca_not_after, now)?;
    Ok(dev)
}

/// Signs a new leaf for `DEV_NAMES` with the CA's key, valid until the CA
/// is at the latest.
fn sign_leaf(
    dev: &DevCertificate,
    ca_key: KeyPair,
    ca_not_after: OffsetDateTime,
    now: OffsetDateTime,
) -> Result<(), TlsError> {
    // Only the name, key identifier and key usages of these parameters
    // matter to the issuer; they are the same for every dev CA.
    let issuer = Issuer::new(ca_params(now, now)?, ca_key);
    let leaf_key = KeyPair::generate()?;
    let mut leaf = CertificateParams::new(DEV_NAMES.map(String::from).to_vec())?;
    leaf.distinguished_name
        .push(DnType::CommonName, "localhost");
    leaf.use_authority_key_identifier_extension = true;
    leaf.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    leaf.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    leaf.not_before = now - time::Duration::days(1);
    leaf.not_after = (leaf.not_before + time::Duration::days(LEAF_DAYS)).min(ca_not_after);
    let cert = leaf.signed_by(&leaf_key, &issuer)?;
    write_file(&dev.key, leaf_key.serialize_pem().as_bytes(), 0o600)?;
    write_file(&dev.cert, cert.pem().as_bytes(), 0o644)?;
    tracing::info!(
        cert = %dev.cert.display(),
        valid_until = %leaf.not_after.date(),
        "signed a new dev certificate"
    );
    Ok(())
}

/// The dev CA's parameters, name constraints included. Regenerated with
/// the CA's key they give the same issuer name and key identifier, so a
/// kept CA can sign a new leaf.
fn ca_params(
    not_before: OffsetDateTime,
    not_after: OffsetDateTime,
) -> Result<CertificateParams, TlsError> {
    let mut params = CertificateParams::new(Vec::<String>::new())?;
    // No intermediate below it: it signs leaves only.
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    params
        .distinguished_name
        .push(DnType::CommonName, "fngate dev CA");
    params
        .distinguished_name
        .push(DnType::OrganizationName, "fngate");
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    // rcgen marks the extension critical, as RFC 5280 asks.
    params.name_constraints = Some(NameConstraints {
        permitted_subtrees: DEV_NAMES.iter().map(|name| permitted(name)).collect(),
        excluded_subtrees: Vec::new(),
    });
    params.not_before = not_before;
    params.not_after = not_after;
    Ok(params)
}

/// A permitted subtree of exactly `name`: a DNS name, or one address
/// (address and an all-ones mask).
fn permitted(name: &str) -> GeneralSubtree {
    match name.parse::<IpAddr>() {
        Ok(ip @ IpAddr::V4(_)) => GeneralSubtree::IpAddress(CidrSubnet::from_addr_prefix(ip, 32)),
        Ok(ip @ IpAddr::V6(_)) => GeneralSubtree::IpAddress(CidrSubnet::from_addr_prefix(ip, 128)),
        Err(_) => GeneralSubtree::DnsName(name.to_owned()),
    }
}

/// The kept CA's key and end of validity, when the CA is good.
fn kept_ca(
    ca_path: &Path,
    key_path: &Path,
    now: OffsetDateTime,
) -> Result<(KeyPair, OffsetDateTime), Unusable> {
    if !ca_path.exists() {
        return Err(Unusable::Missing);
    }
    let der = read_certificate(ca_path)?;
    let (_, ca) = x509_parser::parse_x509_certificate(&der)
        .map_err(|e| Unusable::Bad(format!("it is not a readable certificate: {e}")))?;
    let key = read_key(key_path)?;
    if ca.public_key().raw != key.subject_public_key_info() {
        return Err(Unusable::Bad(format!(
            "{} is not its key",
            key_path.display()
        )));
    }
    if !ca.is_ca() {
        return Err(Unusable::Bad("it is not a CA certificate".to_owned()));
    }
    check_constraints(&ca).map_err(Unusable::Bad)?;
    let not_after = check_validity(&ca, CA_MAX_DAYS, now).map_err(Unusable::Bad)?;
    Ok((key, not_after))
}

/// Whether the kept leaf is good and signed by the CA of `ca_key`.
fn kept_leaf(dev: &DevCertificate, ca_key: &KeyPair, now: OffsetDateTime) -> Result<(), Unusable> {
    if !dev.cert.exists() || !dev.key.exists() {
        return Err(Unusable::Missing);
    }
    let der = read_certificate(&dev.cert)?;
    let (_, leaf) = x509_parser::parse_x509_certificate(&der)
        .map_err(|e| Unusable::Bad(format!("it is not a readable certificate: {e}")))?;
    let key = read_key(&dev.key)?;
    if leaf.public_key().raw != key.subject_public_key_info() {
        return Err(Unusable::Bad(format!(
            "{} is not its key",
            dev.key.display()
        )));
    }
    let ca_key_id = ca_params(now, now)
        .map_err(|e| Unusable::Bad(e.to_string()))?
        .key_identifier(ca_key);
    let signed_by_ca = leaf.extensions().iter().any(|ext| {
        matches!(ext.parsed_extension(), ParsedExtension::AuthorityKeyIdentifier(aki)
            if aki.key_identifier.as_ref().is_some_and(|id| id.0 == ca_key_id.as_slice()))
    });
    if !signed_by_ca {
        return Err(Unusable::Bad("the dev CA did not sign it".to_owned()));
    }
    let names = leaf
        .subject_alternative_name()
        .ok()
        .flatten()
        .map(|san| {
            san.value
                .general_names
                .iter()
                .filter_map(name_text)
                .collect::<Vec<_>>()
        })
        .unwrap_or_default();
    if let Some(missing) = DEV_NAMES.iter().find(|n| !names.contains(&n.to_string())) {
        return Err(Unusable::Bad(format!("it is not valid for {missing}")));
    }
    check_validity(&leaf, LEAF_MAX_DAYS, now).map_err(Unusable::Bad)?;
    Ok(())
}

/// The CA must permit exactly `DEV_NAMES`, exclude nothing, and say so in
/// a critical extension.
fn check_constraints(ca: &X509Certificate<'_>) -> Result<(), String> {
    let constraints = match ca.name_constraints() {
        Ok(Some(constraints)) => constraints,
        Ok(None) => return Err("it has no name constraints, so it could vouch for any site".into()),
        Err(e) => return Err(format!("its name constraints are unreadable: {e}")),
    };
    let mut permitted: Vec<String> = constraints
        .value
        .permitted_subtrees
        .iter()
        .flatten()
        .filter_map(|subtree| name_text(&subtree.base).map(|name| name.replace("/full", "")))
        .collect();
    permitted.sort();
    let mut wanted: Vec<String> = DEV_NAMES.map(String::from).to_vec();
    wanted.sort();
    if !constraints.critical || permitted != wanted || constraints.value.excluded_subtrees.is_some()
    {
        return Err(format!(
            "its name constraints permit {permitted:?}, not exactly {wanted:?}"
        ));
    }
    Ok(())
}

/// A DNS name or IP address as text; an address with a mask (in name
/// constraints) gets "/full" when the mask is all ones, "/partial" else.
fn name_text(name: &GeneralName<'_>) -> Option<String> {
    match name {
        GeneralName::DNSName(dns) => Some(dns.to_string()),
        GeneralName::IPAddress(bytes) => {
            let (address, mask) = match bytes.len() {
                4 | 16 => (*bytes, None),
                8 | 32 => {
                    let (address, mask) = bytes.split_at(bytes.len() / 2);
                    (address, Some(mask))
                }
                _ => return None,
            };
            let ip = match address.len() {
                4 => IpAddr::from(<[u8; 4]>::try_from(address).ok()?),
                _ => IpAddr::from(<[u8; 16]>::try_from(address).ok()?),
            };
            Some(match mask {
                None => ip.to_string(),
                Some(mask) if mask.iter().all(|b| *b == 0xff) => format!("{ip}/full"),
                Some(_) => format!("{ip}/partial"),
            })
        }
        _ => None,
    }
}

/// Valid now, for at most `max_days`, and for `RENEW_DAYS` more at least;
/// returns the end of validity.
fn check_validity(
    cert: &X509Certificate<'_>,
    max_days: i64,
    now: OffsetDateTime,
) -> Result<OffsetDateTime, String> {
    let validity = cert.validity();
    let not_before = validity.not_before.timestamp();
    let not_after = validity.not_after.timestamp();
    let now_s = now.unix_timestamp();
    if not_after - not_before > max_days * DAY {
        return Err(format!(
            "it is valid for {} days, more than {max_days}",
            (not_after - not_before) / DAY
        ));
    }
    if not_before > now_s {
        return Err("it is not valid yet".to_owned());
    }
    if not_after < now_s + RENEW_DAYS * DAY {
        return Err(format!(
            "it expires within {RENEW_DAYS} days ({})",
            validity.not_after
        ));
    }
    Ok(validity.not_after.to_datetime())
}

fn read_certificate(path: &Path) -> Result<Vec<u8>, Unusable> {
    use rustls_pki_types::CertificateDer;
    use rustls_pki_types::pem::PemObject;
    CertificateDer::from_pem_file(path)
        .map(|der| der.to_vec())
        .map_err(|e| Unusable::Bad(format!("{}: {e}", path.display())))
}

fn read_key(path: &Path) -> Result<KeyPair, Unusable> {
    let pem = fs::read_to_string(path)
        .map_err(|e| Unusable::Bad(format!("its key {}: {e}", path.display())))?;
    KeyPair::from_pem(&pem).map_err(|e| Unusable::Bad(format!("its key {}: {e}", path.display())))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(path: &Path) -> Vec<u8> {
        read_certificate(path).unwrap_or_else(|_| panic!("{} is a certificate", path.display()))
    }

    #[test]
    fn a_new_ca_is_constrained_and_short_lived() {
        let dir = tempfile::tempdir().unwrap();
        let dev = ensure_dev_certificate(dir.path()).unwrap();
        let der = parse(&dev.ca);
        let (_, ca) = x509_parser::parse_x509_certificate(&der).unwrap();
        check_constraints(&ca).unwrap();
        check_validity(&ca, CA_MAX_DAYS, OffsetDateTime::now_utc()).unwrap();
        let der = parse(&dev.cert);
        let (_, leaf) = x509_parser::parse_x509_certificate(&der).unwrap();
        check_validity(&leaf, LEAF_MAX_DAYS, OffsetDateTime::now_utc()).unwrap();
    }

    #[test]
    fn good_files_are_kept_and_a_leaf_near_its_end_is_renewed() {
        let dir = tempfile::tempdir().unwrap();
        let dev = ensure_dev_certificate(dir.path()).unwrap();
        let ca = fs::read(&dev.ca).unwrap();
        let leaf = fs::read(&dev.cert).unwrap();
        ensure_dev_certificate(dir.path()).unwrap();
        assert_eq!(fs::read(&dev.ca).unwrap(), ca, "CA kept");
        assert_eq!(fs::read(&dev.cert).unwrap(), leaf, "leaf kept");

        // A leaf from the same CA that ends in 20 days.
        let ca_key = read_key(&dir.path().join("dev-ca.key")).unwrap();
        let now = OffsetDateTime::now_utc();
        let soon = now + time::Duration::days(20);
        sign_leaf(&dev, ca_key, soon, now).unwrap();
        let short = fs::read(&dev.cert).unwrap();
        ensure_dev_certificate(dir.path()).unwrap();
        assert_eq!(fs::read(&dev.ca).unwrap(), ca, "CA kept");
        assert_ne!(fs::read(&dev.cert).unwrap(), short, "leaf renewed");
    }

    #[test]
    fn a_ca_without_name_constraints_is_replaced() {
        let dir = tempfile::tempdir().unwrap();
        let key = KeyPair::generate().unwrap();
        let mut params = ca_params(
            OffsetDateTime::now_utc() - time::Duration::days(1),
            OffsetDateTime::now_utc() + time::Duration::days(365),
        )
        .unwrap();
        params.name_constraints = None;
        let old = params.self_signed(&key).unwrap();
        fs::write(dir.path().join("dev-ca.pem"), old.pem()).unwrap();
        fs::write(dir.path().join("dev-ca.key"), key.serialize_pem()).unwrap();
        let dev = ensure_dev_certificate(dir.path()).unwrap();
        assert_ne!(fs::read_to_string(&dev.ca).unwrap(), old.pem());
        let der = parse(&dev.ca);
        let (_, ca) = x509_parser::parse_x509_certificate(&der).unwrap();
        check_constraints(&ca).unwrap();
    }

    #[test]
    fn name_constraint_addresses_read_with_their_mask() {
        assert_eq!(
            name_text(&GeneralName::IPAddress(&[127, 0, 0, 1, 255, 255, 255, 255])).as_deref(),
            Some("127.0.0.1/full")
        );
        assert_eq!(
            name_text(&GeneralName::IPAddress(&[127, 0, 0, 0, 255, 0, 0, 0])).as_deref(),
            Some("127.0.0.0/partial")
        );
        assert_eq!(
            name_text(&GeneralName::IPAddress(&[127, 0, 0, 1])).as_deref(),
            Some("127.0.0.1")
        );
    }
}
