//! PostgreSQL over TLS with rustls (no system OpenSSL), honouring libpq's
//! `sslmode` and `sslrootcert` in `database.url`.
//!
//! tokio-postgres knows only `disable`, `prefer` and `require`, and rejects
//! `verify-ca`, `verify-full` and `sslrootcert`. So those are taken out of the
//! URL here, tokio-postgres is told `require` (or what was asked), and the
//! checks themselves live in the rustls verifier, as libpq does them:
//!
//! | sslmode | encrypted | certificate |
//! | --- | --- | --- |
//! | `disable` | never | — |
//! | `prefer` (the default) | when the server offers it | not checked |
//! | `require` | always | not checked; with `sslrootcert`, as `verify-ca` |
//! | `verify-ca` | always | chains to `sslrootcert` (or the system roots) |
//! | `verify-full` | always | as `verify-ca`, and names the host |
//!
//! `sslrootcert` is a PEM file of CA certificates; absent or `system`, the
//! operating system's roots are used.

use std::sync::Arc;

use diesel::ConnectionError;
use diesel_async::AsyncPgConnection;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{verify_tls12_signature, verify_tls13_signature, CryptoProvider};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme};
use tokio_postgres_rustls::MakeRustlsConnect;

use super::DbError;

/// Supabase's transaction pooler (Supavisor, and PgBouncer in transaction
/// mode) listens here; the session pooler and the database itself on 5432.
const TRANSACTION_POOLER_PORT: u16 = 6543;

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error(
        "database.url: sslmode `{0}` is not one of disable, prefer, require, verify-ca, verify-full"
    )]
    UnknownSslMode(String),
    #[error("database.url: cannot read sslrootcert {path}: {source}")]
    ReadRootCert {
        path: String,
        source: std::io::Error,
    },
    #[error("database.url: sslrootcert {0} holds no PEM certificate")]
    NoRootCert(String),
    #[error(
        "sslmode={0} found no system root certificates; name the server's CA with sslrootcert=<file>"
    )]
    NoSystemRoots(&'static str),
    #[error("TLS to PostgreSQL: {0}")]
    Config(#[from] rustls::Error),
    /// The handshake failed: the server has no TLS, or its certificate was refused.
    #[error("TLS handshake with PostgreSQL failed (sslmode={mode}{root}): {detail}")]
    Handshake {
        mode: &'static str,
        root: String,
        detail: String,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum SslMode {
    Disable,
    Prefer,
    Require,
    VerifyCa,
    VerifyFull,
}

impl SslMode {
    fn parse(value: &str) -> Result<SslMode, TlsError> {
        Ok(match value {
            "disable" => SslMode::Disable,
            "prefer" => SslMode::Prefer,
            "require" => SslMode::Require,
            "verify-ca" => SslMode::VerifyCa,
            "verify-full" => SslMode::VerifyFull,
            other => return Err(TlsError::UnknownSslMode(other.to_owned())),
        })
    }

    fn name(self) -> &'static str {
        match self {
            SslMode::Disable => "disable",
            SslMode::Prefer => "prefer",
            SslMode::Require => "require",
            SslMode::VerifyCa => "verify-ca",
            SslMode::VerifyFull => "verify-full",
        }
    }

    /// What tokio-postgres is told: it negotiates, the verifier checks.
    fn for_tokio_postgres(self) -> &'static str {
        match self {
            SslMode::Disable => "disable",
            SslMode::Prefer => "prefer",
            SslMode::Require | SslMode::VerifyCa | SslMode::VerifyFull => "require",
        }
    }
}

/// A PostgreSQL `database.url` made ready to connect: the URL tokio-postgres
/// accepts and the TLS configuration the `sslmode` asks for.
#[derive(Clone)]
pub struct PgTarget {
    url: String,
    mode: SslMode,
    root: Option<String>,
    tls: Option<MakeRustlsConnect>,
}

impl PgTarget {
    /// Reads `sslmode`/`sslrootcert` (and the CA file), and refuses a
    /// transaction pooler (see [`transaction_pooler`]).
    pub fn from_url(url: &str) -> Result<PgTarget, DbError> {
        if let Some(reason) = transaction_pooler(url) {
            return Err(DbError::TransactionPooler(reason));
        }
        let (base, params) = split_query(url);
        let mut mode = SslMode::Prefer;
        let mut root = None;
        let mut kept = Vec::new();
        for (key, value) in params {
            match key {
                "sslmode" => mode = SslMode::parse(&percent_decode(value))?,
                "sslrootcert" => root = Some(percent_decode(value)),
                _ => kept.push(format!("{key}={value}")),
            }
        }
        // libpq: "if a root CA file exists, sslmode=require behaves as verify-ca".
        if mode == SslMode::Require && root.is_some() {
            mode = SslMode::VerifyCa;
        }
        kept.push(format!("sslmode={}", mode.for_tokio_postgres()));
        let tls = match mode {
            SslMode::Disable => None,
            _ => Some(MakeRustlsConnect::new(client_config(
                mode,
                root.as_deref(),
            )?)),
        };
        Ok(PgTarget {
            url: format!("{base}?{}", kept.join("&")),
            mode,
            root,
            tls,
        })
    }

    /// One connection, with the TLS the URL asked for.
    pub async fn connect(&self) -> Result<AsyncPgConnection, DbError> {
        let connected = match &self.tls {
            None => {
                let (client, connection) =
                    tokio_postgres::connect(&self.url, tokio_postgres::NoTls)
                        .await
                        .map_err(|e| self.connect_error(e))?;
                AsyncPgConnection::try_from_client_and_connection(client, connection).await
            }
            Some(tls) => {
                let (client, connection) = tokio_postgres::connect(&self.url, tls.clone())
                    .await
                    .map_err(|e| self.connect_error(e))?;
                AsyncPgConnection::try_from_client_and_connection(client, connection).await
            }
        };
        Ok(connected?)
    }

    /// For the pool's setup callback, which speaks diesel's error type.
    pub async fn connect_for_pool(&self) -> Result<AsyncPgConnection, ConnectionError> {
        self.connect().await.map_err(|e| match e {
            DbError::Connection(e) => e,
            other => ConnectionError::BadConnection(other.to_string()),
        })
    }

    /// The URL handed to tokio-postgres (and to the pool manager).
    pub fn url(&self) -> &str {
        &self.url
    }

    fn connect_error(&self, error: tokio_postgres::Error) -> DbError {
        // The server's own words (its Display is only "db error").
        let detail = match error.as_db_error() {
            Some(db) => format!("{}: {}", db.severity(), db.message()),
            None => {
                // Its Display leaves out the cause (the rustls verdict).
                let mut detail = error.to_string();
                let mut source = std::error::Error::source(&error);
                while let Some(cause) = source {
                    detail = format!("{detail}: {cause}");
                    source = cause.source();
                }
                detail
            }
        };
        // tokio-postgres has no public error kind: its TLS failures (the
        // server has no TLS, or the verifier refused its certificate) start so.
        if detail.starts_with("error performing TLS handshake")
            || detail.contains("server does not support TLS")
        {
            let root = match &self.root {
                Some(path) => format!(", sslrootcert={path}"),
                None if matches!(self.mode, SslMode::VerifyCa | SslMode::VerifyFull) => {
                    ", system roots".to_owned()
                }
                None => String::new(),
            };
            TlsError::Handshake {
                mode: self.mode.name(),
                root,
                detail,
            }
            .into()
        } else {
            DbError::Connection(ConnectionError::BadConnection(detail))
        }
    }
}

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::aws_lc_rs::default_provider())
}

fn client_config(mode: SslMode, root: Option<&str>) -> Result<ClientConfig, TlsError> {
    let provider = provider();
    let builder = ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()?;
    let mut config = match mode {
        SslMode::Disable | SslMode::Prefer | SslMode::Require => builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(Unverified(provider)))
            .with_no_client_auth(),
        SslMode::VerifyCa => builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(ChainOnly {
                roots: Arc::new(roots(mode, root)?),
                provider,
            }))
            .with_no_client_auth(),
        SslMode::VerifyFull => builder
            .with_root_certificates(roots(mode, root)?)
            .with_no_client_auth(),
    };
    // What libpq 17 sends; required by servers that negotiate TLS directly.
    config.alpn_protocols = vec![b"postgresql".to_vec()];
    Ok(config)
}

fn roots(mode: SslMode, root: Option<&str>) -> Result<RootCertStore, TlsError> {
    let mut store = RootCertStore::empty();
    match root {
        Some(path) if path != "system" => {
            let pem = std::fs::read(path).map_err(|source| TlsError::ReadRootCert {
                path: path.to_owned(),
                source,
            })?;
            let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(&pem)
                .filter_map(Result::ok)
                .collect();
            store.add_parsable_certificates(certs);
            if store.is_empty() {
                return Err(TlsError::NoRootCert(path.to_owned()));
            }
        }
        _ => {
            store.add_parsable_certificates(rustls_native_certs::load_native_certs().certs);
            if store.is_empty() {
                return Err(TlsError::NoSystemRoots(mode.name()));
            }
        }
    }
    Ok(store)
}

/// `prefer` and `require`: encrypted against passive listeners, the
/// certificate taken as it comes (libpq does the same). The handshake's
/// signatures are still checked.
#[derive(Debug)]
struct Unverified(Arc<CryptoProvider>);

impl ServerCertVerifier for Unverified {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// `verify-ca`: the chain must end at a trusted root; the host name is
/// not compared with the certificate.
#[derive(Debug)]
struct ChainOnly {
    roots: Arc<RootCertStore>,
    provider: Arc<CryptoProvider>,
}

impl ServerCertVerifier for ChainOnly {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let cert = rustls::server::ParsedCertificate::try_from(end_entity)?;
        rustls::client::verify_server_cert_signed_by_trust_anchor(
            &cert,
            &self.roots,
            intermediates,
            now,
            self.provider.signature_verification_algorithms.all,
        )?;
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

/// Why a PostgreSQL URL may end up talking plaintext without saying so, for
/// production's start check (`None`: encrypted, plaintext written out as
/// `sslmode=disable`, a Unix socket, or SQLite). A loopback host is not
/// exempt: it may be a tunnel or a pooler that carries the bytes on over the
/// network, and the host alone does not tell.
pub fn plaintext_problem(url: &str) -> Option<String> {
    if !(url.starts_with("postgres://") || url.starts_with("postgresql://")) {
        return None;
    }
    let (base, params) = split_query(url);
    let mut hosts: Vec<String> = authority_hosts(base)
        .into_iter()
        .map(|(host, _)| host)
        .collect();
    let mut sslmode = None;
    for (key, value) in params {
        match key {
            "sslmode" => sslmode = Some(percent_decode(value)),
            "host" => {
                hosts = percent_decode(value)
                    .split(',')
                    .map(str::to_owned)
                    .collect()
            }
            _ => {}
        }
    }
    // A Unix socket never crosses the network (and has no TLS).
    if !hosts.is_empty() && hosts.iter().all(|host| host.starts_with('/')) {
        return None;
    }
    const FIX: &str = "add sslmode=verify-full (sslrootcert=<CA file> for a private CA) or \
                       sslmode=require, or write sslmode=disable to allow plaintext";
    match sslmode.as_deref() {
        None => Some(format!(
            "database.url has no sslmode, so the connection may be plaintext: {FIX}"
        )),
        Some("prefer") => Some(format!(
            "database.url has sslmode=prefer, which falls back to plaintext: {FIX}"
        )),
        _ => None,
    }
}

/// Whether `url` names a transaction pooler: `pgbouncer=true` (Prisma's
/// marker for one) or port 6543 (Supabase's transaction pooler). Refused:
/// migrations hold a session-level advisory lock across statements, and
/// statements are prepared once per connection and reused — a transaction
/// pooler hands each transaction to any server connection, so the lock
/// would not exclude another node and prepared statements would be missing
/// or someone else's. The session pooler (Supabase: port 5432 on the pooler
/// host) and the direct connection keep one server session per client
/// connection, which is all this server assumes.
pub fn transaction_pooler(url: &str) -> Option<String> {
    let (base, params) = split_query(url);
    let mut ports: Vec<Option<u16>> = authority_hosts(base)
        .into_iter()
        .map(|(_, port)| port)
        .collect();
    for (key, value) in params {
        match (key, percent_decode(value).as_str()) {
            ("pgbouncer", "true") => return Some("pgbouncer=true".to_owned()),
            ("port", ports_value) => {
                ports = ports_value
                    .split(',')
                    .map(|port| port.trim().parse().ok())
                    .collect();
            }
            _ => {}
        }
    }
    ports
        .contains(&Some(TRANSACTION_POOLER_PORT))
        .then(|| format!("port {TRANSACTION_POOLER_PORT}"))
}

/// `scheme://authority/db` and the raw `key=value` pairs of the query.
fn split_query(url: &str) -> (&str, Vec<(&str, &str)>) {
    match url.split_once('?') {
        Some((base, query)) => (
            base,
            query
                .split('&')
                .filter(|pair| !pair.is_empty())
                .map(|pair| pair.split_once('=').unwrap_or((pair, "")))
                .collect(),
        ),
        None => (url, Vec::new()),
    }
}

/// The hosts of `postgres://user:pass@h1:5432,[::1]:5433/db`, decoded, with
/// their ports.
fn authority_hosts(base: &str) -> Vec<(String, Option<u16>)> {
    let rest = base.split_once("://").map_or(base, |(_, rest)| rest);
    let authority = rest.split('/').next().unwrap_or("");
    let hosts = authority.rsplit_once('@').map_or(authority, |(_, h)| h);
    if hosts.is_empty() {
        return Vec::new();
    }
    hosts
        .split(',')
        .map(|host| {
            let (name, port) = if let Some(v6) = host.strip_prefix('[') {
                let (name, after) = v6.split_once(']').unwrap_or((v6, ""));
                (name, after.strip_prefix(':'))
            } else {
                match host.rsplit_once(':') {
                    Some((name, port)) => (name, Some(port)),
                    None => (host, None),
                }
            };
            (percent_decode(name), port.and_then(|p| p.parse().ok()))
        })
        .collect()
}

fn percent_decode(raw: &str) -> String {
    let bytes = raw.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = |at: usize| bytes.get(at).and_then(|b| (*b as char).to_digit(16));
        if bytes[i] == b'%' {
            if let (Some(high), Some(low)) = (hex(i + 1), hex(i + 2)) {
                out.push((high * 16 + low) as u8);
                i += 3;
                continue;
            }
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn libpq_modes_become_what_tokio_postgres_knows() {
        let target = PgTarget::from_url(
            "postgres://u:p%40ss@db.example.com:5432/app?sslmode=verify-ca&sslrootcert=%2Fnowhere%2Fca.pem",
        );
        assert!(
            matches!(target, Err(DbError::Tls(TlsError::ReadRootCert { ref path, .. })) if path == "/nowhere/ca.pem"),
            "the CA file is read at once"
        );
        let target =
            PgTarget::from_url("postgres://u@h/db?application_name=x&sslmode=require").unwrap();
        assert_eq!(
            target.url(),
            "postgres://u@h/db?application_name=x&sslmode=require"
        );
        assert_eq!(target.mode, SslMode::Require);
        let target = PgTarget::from_url("postgres://u@h/db").unwrap();
        assert_eq!(target.url(), "postgres://u@h/db?sslmode=prefer");
        let target = PgTarget::from_url("postgres://u@h/db?sslmode=disable").unwrap();
        assert!(target.tls.is_none());
        assert!(matches!(
            PgTarget::from_url("postgres://u@h/db?sslmode=verify"),
            Err(DbError::Tls(TlsError::UnknownSslMode(_)))
        ));
    }

    #[test]
    fn production_names_urls_that_may_be_plaintext() {
        for url in [
            "postgres://u@db.example.com/app",
            "postgres://u@127.0.0.1:5432/app",
            "postgresql://u@localhost/app?sslmode=prefer",
        ] {
            let problem = plaintext_problem(url).expect(url);
            assert!(problem.starts_with("database.url has "), "{problem}");
        }
        for url in [
            "sqlite://data/mixroom.db",
            "postgres://u@db.example.com/app?sslmode=disable",
            "postgres://u@db.example.com/app?sslmode=require",
            "postgres://u@db.example.com/app?sslmode=verify-full&sslrootcert=/ca.pem",
            "postgres://u@%2Fvar%2Frun%2Fpostgresql/app",
            "postgres://u@x/app?host=/var/run/postgresql",
        ] {
            assert_eq!(plaintext_problem(url), None, "{url}");
        }
    }

    #[test]
    fn transaction_poolers_are_recognised() {
        for url in [
            "postgres://u.ref:pw@aws-0-eu-central-1.pooler.supabase.com:6543/postgres",
            "postgres://u@h:5432/db?pgbouncer=true",
            "postgres://u@h/db?port=6543",
            "postgres://u@[::1]:6543/db",
        ] {
            assert!(transaction_pooler(url).is_some(), "{url}");
            assert!(matches!(
                PgTarget::from_url(url),
                Err(DbError::TransactionPooler(_))
            ));
        }
        for url in [
            "postgres://u.ref:pw@aws-0-eu-central-1.pooler.supabase.com:5432/postgres",
            "postgres://postgres:pw@db.ref.supabase.co:5432/postgres",
            "postgres://u:65%3A43@h/db",
        ] {
            assert_eq!(transaction_pooler(url), None, "{url}");
        }
    }

    #[test]
    fn percent_decoding() {
        assert_eq!(percent_decode("%2Ftmp%2Fa%20b"), "/tmp/a b");
        assert_eq!(percent_decode("100%"), "100%");
        assert_eq!(percent_decode("%zz"), "%zz");
    }
}
