//! `alertbridge check`: what can be known about a configuration before running it.
//!
//! Loading the config already validates every key (topic filter syntax, `admin.listen`, the log
//! filter, the mapping, ...). On top, [`offline`] looks at the files and directories it names:
//! the secrets are readable, the store directory is a writable directory or can be created
//! (nothing is created), `mqtt.ca_file` exists and holds at least one usable PEM certificate.
//! [`online`] (`check --online`) fetches a token and verifies the target without launching
//! anything (see `alertbridge_genesys::GenesysClient::verify_target`).
//!
//! Each problem is one line naming the key and the fix; any problem makes `check` exit 2 (a
//! configuration error, which restarting cannot fix).

use std::path::Path;

use alertbridge_genesys::TargetCheck;

use crate::config::Config;

/// The problems [`offline`] finds, each one line naming the key and the fix; empty = usable.
pub fn offline(cfg: &Config) -> Vec<String> {
    let mut problems = Vec::new();
    if let Err(e) = cfg.genesys.secret.load() {
        problems.push(format!(
            "genesys client secret: {e}{}",
            credential_hint(&cfg.genesys.secret)
        ));
    }
    if let Some(src) = &cfg.mqtt.password {
        if let Err(e) = src.load() {
            problems.push(format!("mqtt password: {e}{}", credential_hint(src)));
        }
    }
    problems.extend(store_dir_problem(cfg.store.dir()));
    if let Some(path) = &cfg.mqtt.ca_file {
        problems.extend(ca_file_problem(path));
    }
    problems
}

/// The usual cause of an unreadable credential outside the unit: a relative `*_file` name is
/// looked up in `$CREDENTIALS_DIRECTORY`, which only systemd's `LoadCredential=` sets, so from
/// a shell it names a file in the current directory.
fn credential_hint(src: &alertbridge_genesys::SecretSource) -> &'static str {
    let relative = matches!(src, alertbridge_genesys::SecretSource::File(p) if p.is_relative());
    if relative && std::env::var_os(crate::config::ENV_CREDENTIALS_DIRECTORY).is_none() {
        " (fix: a relative name is looked up in $CREDENTIALS_DIRECTORY, which the unit's \
         LoadCredential= sets; from a shell run `CREDENTIALS_DIRECTORY=/etc/alertbridge/credentials \
         alertbridge check ...` or name the file by its absolute path)"
    } else {
        ""
    }
}

/// Whether this process could create or write the store at `dir`, without creating anything:
/// an existing directory must be writable; a missing one needs its nearest existing ancestor
/// to be a writable directory.
pub fn store_dir_problem(dir: &Path) -> Option<String> {
    use rustix::fs::{access, Access};
    let fix = "set store.dir to a directory on persistent storage that the service user may \
               write (under systemd, StateDirectory= creates /var/lib/alertbridge when the unit \
               starts: run check as the service user or root)";
    let writable = |p: &Path| access(p, Access::WRITE_OK | Access::EXEC_OK).is_ok();
    if dir.exists() {
        if !dir.is_dir() {
            return Some(format!(
                "store.dir {} exists and is not a directory (fix: {fix})",
                dir.display()
            ));
        }
        if !writable(dir) {
            return Some(format!(
                "store.dir {} is not writable by this user (fix: {fix})",
                dir.display()
            ));
        }
        return None;
    }
    let ancestor = dir.ancestors().skip(1).find(|a| a.exists());
    match ancestor {
        Some(a) if a.is_dir() && writable(a) => None,
        Some(a) => Some(format!(
            "store.dir {} does not exist and cannot be created: {} is not a writable directory \
             (fix: {fix})",
            dir.display(),
            a.display()
        )),
        None => Some(format!(
            "store.dir {} cannot be created (no existing parent directory) (fix: {fix})",
            dir.display()
        )),
    }
}

/// Whether `mqtt.ca_file` exists and holds at least one PEM certificate usable as a trust anchor.
pub fn ca_file_problem(path: &Path) -> Option<String> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::CertificateDer;
    let fix = "point mqtt.ca_file at the PEM file of the CA that signed the broker's certificate";
    let certs = match CertificateDer::pem_file_iter(path) {
        Ok(iter) => iter.collect::<Result<Vec<_>, _>>(),
        Err(e) => {
            return Some(format!(
                "mqtt.ca_file {}: cannot read it: {e} (fix: {fix})",
                path.display()
            ))
        }
    };
    let certs = match certs {
        Ok(c) => c,
        Err(e) => {
            return Some(format!(
                "mqtt.ca_file {}: not valid PEM: {e} (fix: {fix})",
                path.display()
            ))
        }
    };
    let mut roots = rustls::RootCertStore::empty();
    let (added, _ignored) = roots.add_parsable_certificates(certs);
    (added == 0).then(|| {
        format!(
            "mqtt.ca_file {}: holds no usable certificate (fix: {fix})",
            path.display()
        )
    })
}

/// `check --online`: fetch a token and verify the target. `Ok` says what was verified; `Err` is
/// one line naming the problem and the fix.
pub async fn online(cfg: &Config) -> Result<String, String> {
    let client = crate::genesys_client(cfg).map_err(|e| format!("genesys client: {e}"))?;
    match client.verify_target().await {
        TargetCheck::Ready(what) => Ok(what),
        TargetCheck::Problem { problem, fix } => Err(format!("{problem} (fix: {fix})")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use alertbridge_genesys::SecretSource;

    #[test]
    fn a_relative_credential_outside_the_unit_gets_the_credentials_directory_hint() {
        if std::env::var_os(crate::config::ENV_CREDENTIALS_DIRECTORY).is_some() {
            return; // the hint is for a shell without it; this test runs without it in CI
        }
        let hint = credential_hint(&SecretSource::File("genesys-client-secret".into()));
        assert!(
            hint.contains("$CREDENTIALS_DIRECTORY") && hint.contains("fix:"),
            "{hint}"
        );
        assert_eq!(
            credential_hint(&SecretSource::File("/etc/x/secret".into())),
            ""
        );
        assert_eq!(credential_hint(&SecretSource::Env("X".into())), "");
    }

    #[test]
    fn a_store_dir_must_be_a_directory_or_creatable_and_nothing_is_created() {
        let d = tempfile::tempdir().expect("tempdir");
        assert_eq!(store_dir_problem(d.path()), None);
        let missing = d.path().join("a").join("b");
        assert_eq!(store_dir_problem(&missing), None);
        assert!(!d.path().join("a").exists(), "check created a directory");
        let file = d.path().join("file");
        std::fs::write(&file, "x").expect("write");
        let p = store_dir_problem(&file).expect("a file is no store dir");
        assert!(p.contains("not a directory") && p.contains("fix:"), "{p}");
        let under_file = file.join("store");
        let p = store_dir_problem(&under_file).expect("cannot create under a file");
        assert!(p.contains("cannot be created"), "{p}");
    }

    #[test]
    fn a_ca_file_must_exist_and_hold_a_pem_certificate() {
        let d = tempfile::tempdir().expect("tempdir");
        let p = ca_file_problem(&d.path().join("missing.pem")).expect("missing");
        assert!(p.contains("cannot read it"), "{p}");
        let garbage = d.path().join("garbage.pem");
        std::fs::write(&garbage, "not a certificate\n").expect("write");
        let p = ca_file_problem(&garbage).expect("garbage");
        assert!(p.contains("no usable certificate"), "{p}");
        // The system bundle, where the machine has one, is a usable CA file.
        let bundle = Path::new("/etc/ssl/certs/ca-certificates.crt");
        if bundle.is_file() {
            assert_eq!(ca_file_problem(bundle), None);
        }
    }
}
