//! Region ids and domains → login and API hosts.
//!
//! Genesys Cloud runs one deployment per region; an OAuth client exists only in its org's region,
//! so a wrong region shows up as `invalid_client` at the token endpoint, not as a 404. The login
//! host is derived from the API host (`api.` → `login.`), as the SDKs do; it is never listed
//! separately. New regions keep being added, so any domain is accepted and the table below is a
//! convenience for region ids only.

/// Region id → domain, from the SDKs' region tables (reference section 3).
/// `eusc-de-east-1` is so far only in the generator's CLI and .NET tables.
const REGIONS: &[(&str, &str)] = &[
    ("us-east-1", "mypurecloud.com"),
    ("us-east-2", "use2.us-gov-pure.cloud"),
    ("us-west-2", "usw2.pure.cloud"),
    ("ca-central-1", "cac1.pure.cloud"),
    ("sa-east-1", "sae1.pure.cloud"),
    ("mx-central-1", "mxc1.pure.cloud"),
    ("eu-west-1", "mypurecloud.ie"),
    ("eu-west-2", "euw2.pure.cloud"),
    ("eu-central-1", "mypurecloud.de"),
    ("eu-central-2", "euc2.pure.cloud"),
    ("me-central-1", "mec1.pure.cloud"),
    ("ap-south-1", "aps1.pure.cloud"),
    ("ap-southeast-1", "apse1.pure.cloud"),
    ("ap-southeast-2", "mypurecloud.com.au"),
    ("ap-northeast-1", "mypurecloud.jp"),
    ("ap-northeast-2", "apne2.pure.cloud"),
    ("ap-northeast-3", "apne3.pure.cloud"),
    ("eusc-de-east-1", "edee1.eusc-pure.cloud"),
];

/// Why a region setting could not be turned into hosts. The caller treats it as a
/// configuration error (exit 2): nothing can be delivered until the setting is fixed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RegionError {
    /// The setting is empty.
    #[error("region is empty: give a region id such as \"eu-west-1\" or a domain such as \"mypurecloud.ie\"")]
    Empty,
    /// No dot, so it is meant as a region id, but the table does not know it.
    #[error("unknown region id {input:?}: give a known region id ({known}) or the region's domain such as \"mypurecloud.ie\"")]
    UnknownRegion {
        /// The setting as given.
        input: String,
        /// The known region ids, comma separated.
        known: String,
    },
    /// It looks like a domain but is not a valid host name.
    #[error("invalid region domain {input:?}: {reason}")]
    InvalidDomain {
        /// The setting as given.
        input: String,
        /// What is wrong with it.
        reason: &'static str,
    },
}

/// Turns a region id (`"eu-west-1"`) or a region domain (`"mypurecloud.ie"`) into
/// `(login_url, api_url)`, e.g. `("https://login.mypurecloud.ie", "https://api.mypurecloud.ie")`.
///
/// Leniently also accepts a pasted host or URL (`"api.mypurecloud.ie"`,
/// `"https://login.mypurecloud.ie/"`): the scheme, a trailing `/` and a leading `api.`/`login.`
/// are stripped. Case is ignored.
pub fn region_hosts(region: &str) -> Result<(String, String), RegionError> {
    let domain = domain_of(region)?;
    Ok((
        format!("https://login.{domain}"),
        format!("https://api.{domain}"),
    ))
}

fn domain_of(region: &str) -> Result<String, RegionError> {
    let trimmed = region.trim().to_ascii_lowercase();
    let mut rest = trimmed.as_str();
    rest = rest.strip_prefix("https://").unwrap_or(rest);
    rest = rest.trim_end_matches('/');
    if rest.is_empty() {
        return Err(RegionError::Empty);
    }
    if let Some((_, domain)) = REGIONS.iter().find(|(id, _)| *id == rest) {
        return Ok((*domain).to_owned());
    }
    if !rest.contains('.') {
        return Err(RegionError::UnknownRegion {
            input: region.to_owned(),
            known: REGIONS
                .iter()
                .map(|(id, _)| *id)
                .collect::<Vec<_>>()
                .join(", "),
        });
    }
    let domain = rest
        .strip_prefix("api.")
        .or_else(|| rest.strip_prefix("login."))
        .unwrap_or(rest);
    let invalid = |reason| RegionError::InvalidDomain {
        input: region.to_owned(),
        reason,
    };
    if domain.contains("://") || domain.contains('/') {
        return Err(invalid(
            "give only the domain, without scheme other than https:// or a path",
        ));
    }
    for label in domain.split('.') {
        if label.is_empty() {
            return Err(invalid(
                "empty label (two dots in a row, or a leading/trailing dot)",
            ));
        }
        if label.len() > 63 {
            return Err(invalid("a label is longer than 63 characters"));
        }
        if !label
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-')
        {
            return Err(invalid("only letters, digits, '-' and '.' are allowed"));
        }
        if label.starts_with('-') || label.ends_with('-') {
            return Err(invalid("a label starts or ends with '-'"));
        }
    }
    if !domain.contains('.') {
        return Err(invalid(
            "a region domain has at least two labels, e.g. \"mypurecloud.ie\"",
        ));
    }
    Ok(domain.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hosts(d: &str) -> (String, String) {
        (format!("https://login.{d}"), format!("https://api.{d}"))
    }

    #[test]
    fn every_region_id_maps_to_its_domain() {
        for (id, domain) in REGIONS {
            assert_eq!(region_hosts(id), Ok(hosts(domain)), "{id}");
        }
    }

    #[test]
    fn region_ids_and_domains_are_accepted_in_several_spellings() {
        let cases = [
            ("eu-west-1", "mypurecloud.ie"),
            ("  EU-West-1 ", "mypurecloud.ie"),
            ("mypurecloud.ie", "mypurecloud.ie"),
            ("api.mypurecloud.ie", "mypurecloud.ie"),
            ("login.mypurecloud.ie", "mypurecloud.ie"),
            ("https://api.usw2.pure.cloud/", "usw2.pure.cloud"),
            ("us-east-1", "mypurecloud.com"),
            ("ap-southeast-2", "mypurecloud.com.au"),
            // A region newer than the table: any domain is accepted.
            ("xyz9.pure.cloud", "xyz9.pure.cloud"),
        ];
        for (input, domain) in cases {
            assert_eq!(region_hosts(input), Ok(hosts(domain)), "{input:?}");
        }
    }

    #[test]
    fn bad_region_settings_are_named_errors() {
        assert_eq!(region_hosts(""), Err(RegionError::Empty));
        assert_eq!(region_hosts("  "), Err(RegionError::Empty));
        assert!(matches!(
            region_hosts("eu-west-9"),
            Err(RegionError::UnknownRegion { .. })
        ));
        for bad in [
            "mypurecloud..ie",
            ".mypurecloud.ie",
            "my purecloud.ie",
            "http://api.mypurecloud.ie",
            "mypurecloud.ie/api",
            "-bad.pure.cloud",
        ] {
            assert!(
                matches!(region_hosts(bad), Err(RegionError::InvalidDomain { .. })),
                "{bad:?} → {:?}",
                region_hosts(bad)
            );
        }
    }

    #[test]
    fn unknown_region_error_lists_known_ids() {
        let err = region_hosts("mars-north-1").unwrap_err().to_string();
        assert!(
            err.contains("eu-west-1") && err.contains("mars-north-1"),
            "{err}"
        );
    }
}
