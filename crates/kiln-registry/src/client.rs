//! The HTTP side: endpoints, authentication, retries and status-to-error mapping.

use kiln_oci::digest::Digest;
use std::collections::{HashMap, HashSet};
use std::sync::Mutex;
use std::time::Duration;

use ureq::http::Response;
use ureq::Body;

use crate::auth::{base64, parse_challenges, Challenge};
use crate::error::{RegistryError, Result};

/// Attempts per request: the first plus two retries on 5xx, 429 and connection errors.
const ATTEMPTS: u32 = 3;
/// First retry delay; doubled for each further retry.
const BACKOFF: Duration = Duration::from_millis(250);
/// Token responses are small JSON documents; anything larger is not a token service.
const MAX_TOKEN_RESPONSE: u64 = 1 << 20;
/// Error bodies are only used for messages.
const MAX_ERROR_BODY: u64 = 64 << 10;
/// Blobs up to this size are uploaded in one PUT; larger ones in PATCH chunks of this size.
/// 64 MiB keeps each request under the 100 MB body limit common in front of registries
/// (Cloudflare, default proxy setups) while adding few requests for typical layers.
pub const DEFAULT_CHUNK_SIZE: u64 = 64 << 20;

/// A user name and password (or access token used as a password).
#[derive(Clone, PartialEq, Eq)]
pub struct Credentials {
    /// The user name.
    pub username: String,
    /// The password or token.
    pub password: String,
}

impl Credentials {
    /// Credentials from a user name and password.
    pub fn new(username: impl Into<String>, password: impl Into<String>) -> Credentials {
        Credentials {
            username: username.into(),
            password: password.into(),
        }
    }

    fn basic_header(&self) -> String {
        format!(
            "Basic {}",
            base64(format!("{}:{}", self.username, self.password).as_bytes())
        )
    }
}

// Hand-written so a password never lands in a log through `{:?}`.
impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Credentials")
            .field("username", &self.username)
            .field("password", &"<redacted>")
            .finish()
    }
}

/// A registry client. One client may serve many pulls and pushes, from several threads; it
/// remembers tokens per registry and scope so each repository authenticates once.
pub struct Client {
    agent: ureq::Agent,
    insecure: Vec<String>,
    credentials: HashMap<String, Credentials>,
    /// `(host, scope)` → `Authorization` value obtained from a token service.
    tokens: Mutex<HashMap<(String, String), String>>,
    /// Hosts that answered with a Basic challenge: later requests send Basic right away.
    basic_hosts: Mutex<HashSet<String>>,
    backoff: Duration,
    chunk_size: u64,
    progress: Option<crate::ProgressFn>,
}

impl Default for Client {
    fn default() -> Client {
        Client::new()
    }
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client")
            .field("insecure", &self.insecure)
            .field("credentials", &self.credentials)
            .finish_non_exhaustive()
    }
}

/// What a request is for: used to pick the endpoint, the auth scope and the error wording.
pub(crate) struct Target<'a> {
    /// The image as the user named it (for messages).
    pub image: &'a str,
    /// The registry host as written in the reference (`docker.io`, `localhost:5000`).
    pub domain: &'a str,
    /// The repository path, or None for the `/v2/` ping.
    pub repo: Option<&'a str>,
    /// Whether the request needs push rights.
    pub push: bool,
    /// For a cross-repository mount: the repository (path) the blob is mounted from, which
    /// the token must also grant pull on.
    pub mount_from: Option<&'a str>,
}

impl<'a> Target<'a> {
    /// A request on `reference`'s repository; `image` is its name as shown in messages.
    pub(crate) fn repo(
        image: &'a str,
        reference: &'a kiln_oci::reference::Reference,
        push: bool,
    ) -> Target<'a> {
        Target {
            image,
            domain: &reference.domain,
            repo: Some(&reference.path),
            push,
            mount_from: None,
        }
    }

    /// The token scopes this request needs, space-separated (the form a token cache key and
    /// a challenge's `scope` parameter use): `repository:B:pull,push repository:A:pull` for a
    /// mount from A into B.
    fn scope(&self) -> Option<String> {
        let access = if self.push { "pull,push" } else { "pull" };
        let mut scope = format!("repository:{}:{access}", self.repo?);
        if let Some(from) = self.mount_from.filter(|f| Some(*f) != self.repo) {
            scope.push_str(&format!(" repository:{from}:pull"));
        }
        Some(scope)
    }

    fn access(&self) -> &'static str {
        if self.push {
            "push"
        } else {
            "pull"
        }
    }
}

impl Client {
    /// A client with no credentials that uses https for every registry but loopback ones.
    pub fn new() -> Client {
        let agent: ureq::Agent = ureq::Agent::config_builder()
            // Statuses are the protocol here (401 starts auth, 404 on HEAD means "upload it"),
            // so they must come back as responses, not errors.
            .http_status_as_error(false)
            .timeout_connect(Some(Duration::from_secs(30)))
            .timeout_recv_response(Some(Duration::from_secs(120)))
            .user_agent(concat!("kiln/", env!("CARGO_PKG_VERSION")))
            .build()
            .into();
        Client {
            agent,
            insecure: Vec::new(),
            credentials: HashMap::new(),
            tokens: Mutex::new(HashMap::new()),
            basic_hosts: Mutex::new(HashSet::new()),
            backoff: BACKOFF,
            chunk_size: DEFAULT_CHUNK_SIZE,
            progress: None,
        }
    }

    /// Reports every blob download and upload to `f` (for progress bars).
    pub fn with_progress(mut self, f: crate::ProgressFn) -> Client {
        self.progress = Some(f);
        self
    }

    /// A byte counter for blob `digest` that feeds the progress receiver, if there is one.
    pub(crate) fn byte_report(&self, digest: &Digest) -> Option<crate::progress::ByteReport> {
        let f = self.progress.clone()?;
        let digest = digest.clone();
        Some(std::sync::Arc::new(move |done| {
            f(crate::Transfer::Progress {
                digest: &digest,
                done,
            })
        }))
    }

    /// Passes `t` to the progress receiver, if there is one.
    pub(crate) fn report(&self, t: crate::Transfer<'_>) {
        if let Some(f) = &self.progress {
            f(t);
        }
    }

    /// Registries (`host` or `host:port`) to reach over plain http. Loopback hosts always are.
    pub fn with_insecure(mut self, hosts: Vec<String>) -> Client {
        self.insecure = hosts;
        self
    }

    /// Uses `credentials` for registry `domain` (as written in references: `docker.io`,
    /// `localhost:5000`).
    pub fn with_credentials(mut self, domain: &str, credentials: Credentials) -> Client {
        self.credentials.insert(domain.to_owned(), credentials);
        self
    }

    /// Sets the first retry delay (tests shorten it).
    pub fn with_backoff(mut self, first_retry: Duration) -> Client {
        self.backoff = first_retry;
        self
    }

    /// Sets the upload chunk size in bytes (at least 1; default [`DEFAULT_CHUNK_SIZE`]). Blobs up
    /// to this size go up in one PUT, larger ones as PATCH chunks of this size.
    pub fn with_chunk_size(mut self, bytes: u64) -> Client {
        self.chunk_size = bytes.max(1);
        self
    }

    pub(crate) fn chunk_size(&self) -> u64 {
        self.chunk_size
    }

    /// Checks that `domain` speaks the distribution API and accepts our credentials
    /// (`GET /v2/`, authenticating if challenged).
    pub fn ping(&self, domain: &str) -> Result<()> {
        let t = Target {
            image: domain,
            domain,
            repo: None,
            push: false,
            mount_from: None,
        };
        let url = self.url(domain, "/v2/");
        let resp = self.send(&t, |auth| self.get(&url, auth).call())?;
        self.check(&t, resp, "the API version check (/v2/)")
            .map(drop)
    }

    /// `scheme://endpoint` + `path` for registry `domain`.
    pub(crate) fn url(&self, domain: &str, path: &str) -> String {
        let scheme = if self.is_plain_http(domain) {
            "http"
        } else {
            "https"
        };
        format!("{scheme}://{}{path}", endpoint(domain))
    }

    fn is_plain_http(&self, domain: &str) -> bool {
        is_loopback(domain)
            || self
                .insecure
                .iter()
                .any(|h| h == domain || h == host_without_port(domain))
    }

    pub(crate) fn get(
        &self,
        url: &str,
        auth: Option<&str>,
    ) -> ureq::RequestBuilder<ureq::typestate::WithoutBody> {
        with_auth(self.agent.get(url), auth)
    }

    pub(crate) fn head(
        &self,
        url: &str,
        auth: Option<&str>,
    ) -> ureq::RequestBuilder<ureq::typestate::WithoutBody> {
        with_auth(self.agent.head(url), auth)
    }

    pub(crate) fn post(
        &self,
        url: &str,
        auth: Option<&str>,
    ) -> ureq::RequestBuilder<ureq::typestate::WithBody> {
        with_auth(self.agent.post(url), auth)
    }

    pub(crate) fn put(
        &self,
        url: &str,
        auth: Option<&str>,
    ) -> ureq::RequestBuilder<ureq::typestate::WithBody> {
        with_auth(self.agent.put(url), auth)
    }

    pub(crate) fn patch(
        &self,
        url: &str,
        auth: Option<&str>,
    ) -> ureq::RequestBuilder<ureq::typestate::WithBody> {
        with_auth(self.agent.patch(url), auth)
    }

    /// Sends a request built by `make` (called again for each attempt, so bodies are rebuilt),
    /// handling authentication and retries. Returns the final response whatever its status;
    /// [`Client::check`] turns error statuses into errors.
    pub(crate) fn send(
        &self,
        t: &Target<'_>,
        mut make: impl FnMut(Option<&str>) -> std::result::Result<Response<Body>, ureq::Error>,
    ) -> Result<Response<Body>> {
        let scope = t.scope();
        let mut auth = self.cached_auth(t.domain, scope.as_deref());
        let mut authenticated = false;
        let mut failures = 0;
        loop {
            let resp = match make(auth.as_deref()) {
                Ok(r) => r,
                Err(e) => {
                    failures += 1;
                    if failures < ATTEMPTS && retryable(&e) {
                        self.pause(failures);
                        continue;
                    }
                    return Err(RegistryError::Transport {
                        image: t.image.to_owned(),
                        host: t.domain.to_owned(),
                        source: Box::new(e),
                    });
                }
            };
            let status = resp.status().as_u16();
            // A 401 once means "authenticate"; a 401 after authenticating is a real refusal,
            // which check() reports.
            if status == 401 && !authenticated {
                authenticated = true;
                auth = Some(self.authenticate(t, scope.as_deref(), &resp)?);
                continue;
            }
            if (status == 429 || status >= 500) && failures + 1 < ATTEMPTS {
                failures += 1;
                self.pause(failures);
                continue;
            }
            return Ok(resp);
        }
    }

    fn pause(&self, failures: u32) {
        std::thread::sleep(self.backoff * 2u32.saturating_pow(failures.saturating_sub(1)));
    }

    /// Turns a non-2xx response into the matching error; `what` names the request in messages.
    pub(crate) fn check(
        &self,
        t: &Target<'_>,
        mut resp: Response<Body>,
        what: &str,
    ) -> Result<Response<Body>> {
        let status = resp.status().as_u16();
        if (200..300).contains(&status) {
            return Ok(resp);
        }
        let image = t.image.to_owned();
        let host = t.domain.to_owned();
        Err(match status {
            // Token registries answer a valid token that lacks the scope with 401, not 403.
            // With credentials that means the account lacks the rights (the token service
            // already accepted the password); without, logging in is still the answer.
            401 if self.credentials.contains_key(t.domain) && insufficient_scope(&resp) => {
                RegistryError::Denied {
                    image,
                    host,
                    access: t.access(),
                }
            }
            401 => RegistryError::Unauthorized {
                hint: self.unauthorized_hint(t.domain),
                image,
                host,
            },
            403 => RegistryError::Denied {
                image,
                host,
                access: t.access(),
            },
            404 => RegistryError::NotFound {
                image,
                host,
                what: what.to_owned(),
            },
            429 => RegistryError::TooManyRequests { image, host },
            _ => RegistryError::Status {
                image,
                host,
                what: what.to_owned(),
                status,
                message: error_message(&mut resp),
            },
        })
    }

    fn unauthorized_hint(&self, domain: &str) -> String {
        if self.credentials.contains_key(domain) {
            format!(
                "the registry refused the credentials; check the user name and password \
                 (kiln login {domain})"
            )
        } else {
            format!("the registry requires credentials; run kiln login {domain}")
        }
    }

    /// The `Authorization` value to send before any challenge, if we already know one.
    fn cached_auth(&self, domain: &str, scope: Option<&str>) -> Option<String> {
        if let Ok(tokens) = self.tokens.lock() {
            let key = (domain.to_owned(), scope.unwrap_or_default().to_owned());
            if let Some(v) = tokens.get(&key) {
                return Some(v.clone());
            }
        }
        let basic = self
            .basic_hosts
            .lock()
            .map(|h| h.contains(domain))
            .unwrap_or(false);
        if basic {
            return self.credentials.get(domain).map(Credentials::basic_header);
        }
        None
    }

    /// Answers a 401: a Bearer challenge fetches a token for the scope (with our Basic
    /// credentials if we have any); a Basic challenge uses our credentials directly.
    fn authenticate(
        &self,
        t: &Target<'_>,
        scope: Option<&str>,
        resp: &Response<Body>,
    ) -> Result<String> {
        let challenges: Vec<Challenge> = resp
            .headers()
            .get_all("www-authenticate")
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(parse_challenges)
            .collect();
        let creds = self.credentials.get(t.domain);
        let unauthorized = || RegistryError::Unauthorized {
            image: t.image.to_owned(),
            host: t.domain.to_owned(),
            hint: self.unauthorized_hint(t.domain),
        };
        if let Some(bearer) = challenges.iter().find(|c| c.scheme == "bearer") {
            let token = self.fetch_token(t, bearer, scope, creds)?;
            let value = format!("Bearer {token}");
            if let Ok(mut tokens) = self.tokens.lock() {
                let key = (t.domain.to_owned(), scope.unwrap_or_default().to_owned());
                tokens.insert(key, value.clone());
            }
            return Ok(value);
        }
        if challenges.iter().any(|c| c.scheme == "basic") {
            let creds = creds.ok_or_else(unauthorized)?;
            if let Ok(mut hosts) = self.basic_hosts.lock() {
                hosts.insert(t.domain.to_owned());
            }
            return Ok(creds.basic_header());
        }
        Err(unauthorized())
    }

    /// GETs a token from the challenge's realm (the "docker token" flow every public registry
    /// uses). Anonymous when we have no credentials: public images still get a pull token.
    fn fetch_token(
        &self,
        t: &Target<'_>,
        challenge: &Challenge,
        scope: Option<&str>,
        creds: Option<&Credentials>,
    ) -> Result<String> {
        let protocol = |message: String| RegistryError::Protocol {
            image: t.image.to_owned(),
            host: t.domain.to_owned(),
            message,
        };
        let realm = challenge
            .param("realm")
            .ok_or_else(|| protocol("Bearer challenge without a realm".to_owned()))?;
        if !(realm.starts_with("https://") || realm.starts_with("http://")) {
            return Err(protocol(format!(
                "token realm {realm:?} is not an http(s) URL"
            )));
        }
        let service = challenge.param("service");
        // Our scope says exactly what we are about to do; fall back to the server's. Several
        // scopes (a mount needs two repositories) go as repeated `scope` parameters.
        let scope = scope.or(challenge.param("scope"));
        let mut resp = retry_transport(self, t, || {
            let mut req = self.agent.get(realm);
            if let Some(service) = service {
                req = req.query("service", service);
            }
            for s in scope.into_iter().flat_map(str::split_whitespace) {
                req = req.query("scope", s);
            }
            if let Some(c) = creds {
                req = req.header("Authorization", c.basic_header());
            }
            req.call()
        })?;
        match resp.status().as_u16() {
            200..=299 => {}
            401 => {
                return Err(RegistryError::Unauthorized {
                    image: t.image.to_owned(),
                    host: t.domain.to_owned(),
                    hint: self.unauthorized_hint(t.domain),
                })
            }
            403 => {
                return Err(RegistryError::Denied {
                    image: t.image.to_owned(),
                    host: t.domain.to_owned(),
                    access: t.access(),
                })
            }
            s => {
                return Err(protocol(format!(
                    "token service {realm} answered {s}: {}",
                    error_message(&mut resp)
                )))
            }
        }
        #[derive(serde::Deserialize)]
        struct TokenResponse {
            token: Option<String>,
            access_token: Option<String>,
        }
        let body = resp
            .body_mut()
            .with_config()
            .limit(MAX_TOKEN_RESPONSE)
            .read_to_vec()
            .map_err(|e| protocol(format!("reading the token response: {e}")))?;
        let parsed: TokenResponse = serde_json::from_slice(&body)
            .map_err(|e| protocol(format!("token response is not JSON: {e}")))?;
        parsed
            .token
            .or(parsed.access_token)
            .filter(|t| !t.is_empty())
            .ok_or_else(|| protocol("token response has no token".to_owned()))
    }
}

/// True when a 401 carries a Bearer challenge with `error="insufficient_scope"`: the token was
/// valid but did not grant what the request needs (RFC 6750 section 3.1).
fn insufficient_scope(resp: &Response<Body>) -> bool {
    resp.headers()
        .get_all("www-authenticate")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(parse_challenges)
        .any(|c| c.scheme == "bearer" && c.param("error") == Some("insufficient_scope"))
}

/// Retries `call` on connection errors only (used where auth handling must not recurse).
fn retry_transport(
    client: &Client,
    t: &Target<'_>,
    mut call: impl FnMut() -> std::result::Result<Response<Body>, ureq::Error>,
) -> Result<Response<Body>> {
    let mut failures = 0;
    loop {
        match call() {
            Ok(r) => return Ok(r),
            Err(e) => {
                failures += 1;
                if failures < ATTEMPTS && retryable(&e) {
                    client.pause(failures);
                    continue;
                }
                return Err(RegistryError::Transport {
                    image: t.image.to_owned(),
                    host: t.domain.to_owned(),
                    source: Box::new(e),
                });
            }
        }
    }
}

fn with_auth<B>(req: ureq::RequestBuilder<B>, auth: Option<&str>) -> ureq::RequestBuilder<B> {
    match auth {
        Some(a) => req.header("Authorization", a),
        None => req,
    }
}

/// Connection-level failures worth another try; TLS, URL and protocol errors are not.
fn retryable(e: &ureq::Error) -> bool {
    matches!(
        e,
        ureq::Error::Io(_) | ureq::Error::ConnectionFailed | ureq::Error::Timeout(_)
    )
}

/// The registry's own error text: the distribution spec's `{"errors":[{code,message}]}` when
/// present, else the start of the body.
pub(crate) fn error_message(resp: &mut Response<Body>) -> String {
    let body = resp
        .body_mut()
        .with_config()
        .limit(MAX_ERROR_BODY)
        .read_to_vec()
        .unwrap_or_default();
    #[derive(serde::Deserialize)]
    struct Errors {
        errors: Vec<ErrorItem>,
    }
    #[derive(serde::Deserialize)]
    struct ErrorItem {
        code: Option<String>,
        message: Option<String>,
    }
    if let Ok(e) = serde_json::from_slice::<Errors>(&body) {
        let parts: Vec<String> = e
            .errors
            .into_iter()
            .map(|i| match (i.code, i.message) {
                (Some(c), Some(m)) => format!("{c}: {m}"),
                (Some(c), None) => c,
                (None, Some(m)) => m,
                (None, None) => String::new(),
            })
            .filter(|s| !s.is_empty())
            .collect();
        if !parts.is_empty() {
            return parts.join("; ");
        }
    }
    let text = String::from_utf8_lossy(&body);
    let text: String = text.trim().chars().take(200).collect();
    if text.is_empty() {
        "(no details)".to_owned()
    } else {
        text
    }
}

/// Docker Hub's references say `docker.io` but its API lives on another host.
fn endpoint(domain: &str) -> &str {
    if domain == "docker.io" {
        "registry-1.docker.io"
    } else {
        domain
    }
}

/// `host:port` → `host`; `[::1]:5000` → `[::1]`.
fn host_without_port(domain: &str) -> &str {
    if let Some(end) = domain.find(']') {
        return &domain[..=end];
    }
    match domain.rsplit_once(':') {
        Some((h, _)) => h,
        None => domain,
    }
}

/// Loopback registries are reached over plain http: a local test registry has no certificate,
/// and the traffic never leaves the machine.
fn is_loopback(domain: &str) -> bool {
    let host = host_without_port(domain);
    if host == "localhost" || host == "[::1]" {
        return true;
    }
    match host.parse::<std::net::Ipv4Addr>() {
        Ok(ip) => ip.is_loopback(),
        Err(_) => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loopback_and_insecure_hosts_use_plain_http() {
        let c = Client::new().with_insecure(vec!["reg.lan:5000".into(), "other.lan".into()]);
        assert_eq!(c.url("127.0.0.1:5000", "/v2/"), "http://127.0.0.1:5000/v2/");
        assert_eq!(c.url("127.8.9.1", "/v2/"), "http://127.8.9.1/v2/");
        assert_eq!(c.url("localhost:5000", "/v2/"), "http://localhost:5000/v2/");
        assert_eq!(c.url("[::1]:5000", "/v2/"), "http://[::1]:5000/v2/");
        assert_eq!(c.url("reg.lan:5000", "/v2/"), "http://reg.lan:5000/v2/");
        assert_eq!(c.url("other.lan:443", "/v2/"), "http://other.lan:443/v2/");
        assert_eq!(c.url("reg.lan:5001", "/v2/"), "https://reg.lan:5001/v2/");
        assert_eq!(c.url("128.0.0.1", "/v2/"), "https://128.0.0.1/v2/");
        assert_eq!(
            c.url("localhost.evil.com", "/v2/"),
            "https://localhost.evil.com/v2/"
        );
        assert_eq!(
            c.url("docker.io", "/v2/"),
            "https://registry-1.docker.io/v2/"
        );
    }

    #[test]
    fn mount_scope_adds_pull_on_the_source_repository() {
        let mut t = Target {
            image: "i",
            domain: "r",
            repo: Some("team/app"),
            push: true,
            mount_from: None,
        };
        assert_eq!(t.scope().as_deref(), Some("repository:team/app:pull,push"));
        t.mount_from = Some("team/base");
        assert_eq!(
            t.scope().as_deref(),
            Some("repository:team/app:pull,push repository:team/base:pull")
        );
        t.mount_from = Some("team/app");
        assert_eq!(t.scope().as_deref(), Some("repository:team/app:pull,push"));
    }

    #[test]
    fn credentials_debug_hides_the_password() {
        let c = Credentials::new("me", "s3cret");
        assert!(!format!("{c:?}").contains("s3cret"));
        assert_eq!(c.basic_header(), "Basic bWU6czNjcmV0");
    }
}
