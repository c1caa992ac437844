//! Signing browsers in through an OpenID Connect identity provider: discovery, the
//! authorization code flow with PKCE, state and nonce, ID-token validation (issuer,
//! audience, expiry, signature by the provider's JWKS, nonce), allowed email domains and
//! groups, and a user made at the first sign-in.
//!
//! `GET /auth/login` records the sign-in (state, nonce, PKCE verifier; the database keeps
//! only the state's hash) and binds it to the browser with a short-lived cookie, then
//! sends the browser to the provider. `GET /auth/callback` takes the sign-in once (a state
//! works once, and only in the browser that started it), exchanges the code at the token
//! endpoint with the client secret and the verifier, validates the ID token and starts a
//! session. JWTs are checked by `jsonwebtoken`; the flow's few HTTP calls are reqwest.

use std::collections::HashSet;
use std::sync::RwLock;
use std::time::Duration;

use axum::extract::{Query, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use base64::Engine;
use jsonwebtoken::jwk::JwkSet;
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde::Deserialize;
use sha2::{Digest, Sha256};

use crate::auth::{self, MAX_USER_NAME};
use crate::db::OidcLogin;
use crate::error::ApiError;
use crate::state::AppState;

/// Where a browser starts a sign-in.
pub const LOGIN_PATH: &str = "/auth/login";
/// Where the provider sends the browser back (register `PUBLIC_URL/auth/callback`).
pub const CALLBACK_PATH: &str = "/auth/callback";
/// The cookie binding a sign-in in progress to the browser that started it.
const STATE_COOKIE: &str = "hearth_oidc";
/// How long a sign-in may take at the provider.
const LOGIN_TTL: Duration = Duration::from_secs(600);
/// Each call to the provider, whole.
const HTTP_TIMEOUT: Duration = Duration::from_secs(15);
/// Clock difference allowed between us and the provider on `exp`, `nbf`.
const LEEWAY: Duration = Duration::from_secs(60);
/// A JWKS refetch for an unknown key id at most this often (a token with a made-up `kid`
/// must not make us hammer the provider).
const JWKS_REFRESH_EVERY: Duration = Duration::from_secs(60);

/// `hearth server --oidc-*`.
#[derive(Clone)]
pub struct OidcConfig {
    /// The provider's issuer URL, exactly as its discovery document and tokens say it.
    pub issuer: String,
    pub client_id: String,
    pub client_secret: String,
    /// `PUBLIC_URL/auth/callback`.
    pub redirect_url: String,
    /// Email domains allowed to sign in (lowercase); empty: any.
    pub allowed_domains: Vec<String>,
    /// Groups (the ID token's `groups` claim) of which a user must be in one; empty: any.
    pub allowed_groups: Vec<String>,
}

impl std::fmt::Debug for OidcConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OidcConfig")
            .field("issuer", &self.issuer)
            .field("client_id", &self.client_id)
            .field("redirect_url", &self.redirect_url)
            .field("allowed_domains", &self.allowed_domains)
            .field("allowed_groups", &self.allowed_groups)
            .finish_non_exhaustive()
    }
}

#[derive(Debug, thiserror::Error)]
pub enum OidcError {
    #[error("cannot reach the identity provider at {url}: {message}")]
    Http { url: String, message: String },
    #[error("the identity provider answered {url} with {status}: {body}")]
    Status {
        url: String,
        status: reqwest::StatusCode,
        body: String,
    },
    #[error("the identity provider's discovery document is unusable: {0}")]
    Discovery(String),
    #[error("the identity provider's ID token was refused: {0}")]
    Token(String),
    /// A valid identity that this server does not let in.
    #[error("{0}")]
    Refused(String),
}

#[derive(Debug, Clone, Deserialize)]
struct Discovery {
    issuer: String,
    authorization_endpoint: String,
    token_endpoint: String,
    jwks_uri: String,
    #[serde(default)]
    code_challenge_methods_supported: Option<Vec<String>>,
}

#[derive(Deserialize)]
struct TokenAnswer {
    id_token: Option<String>,
}

/// The claims of an ID token the sign-in reads (the rest is checked by `jsonwebtoken`).
#[derive(Debug, Clone, Deserialize)]
pub struct Claims {
    pub sub: String,
    #[serde(default)]
    pub nonce: Option<String>,
    #[serde(default)]
    pub azp: Option<String>,
    #[serde(default)]
    pub aud: serde_json::Value,
    #[serde(default)]
    pub email: Option<String>,
    #[serde(default)]
    pub email_verified: Option<bool>,
    #[serde(default)]
    pub preferred_username: Option<String>,
    /// A list, or one group as a string (providers differ).
    #[serde(default)]
    pub groups: Option<serde_json::Value>,
}

/// The provider, discovered at server start.
pub struct Oidc {
    cfg: OidcConfig,
    discovery: Discovery,
    jwks: RwLock<(JwkSet, std::time::Instant)>,
    http: reqwest::Client,
}

impl std::fmt::Debug for Oidc {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Oidc")
            .field("cfg", &self.cfg)
            .field("discovery", &self.discovery)
            .finish_non_exhaustive()
    }
}

/// An HTTP failure with its causes (reqwest's own message leaves out why).
fn http_error(url: &str, e: reqwest::Error) -> OidcError {
    let mut message = e.to_string();
    let mut cause = std::error::Error::source(&e);
    while let Some(c) = cause {
        message.push_str(": ");
        message.push_str(&c.to_string());
        cause = c.source();
    }
    OidcError::Http {
        url: url.to_string(),
        message,
    }
}

async fn get_json<T: serde::de::DeserializeOwned>(
    http: &reqwest::Client,
    url: &str,
) -> Result<T, OidcError> {
    let http_err = |e| http_error(url, e);
    let resp = http.get(url).send().await.map_err(http_err)?;
    let status = resp.status();
    if !status.is_success() {
        let body = resp.text().await.unwrap_or_default();
        return Err(OidcError::Status {
            url: url.to_string(),
            status,
            body: body.chars().take(300).collect(),
        });
    }
    resp.json().await.map_err(http_err)
}

/// `application/x-www-form-urlencoded` of one value (client id and secret are encoded so
/// before HTTP Basic, RFC 6749 2.3.1).
fn form_encode(s: &str) -> String {
    serde_urlencoded::to_string([("", s)])
        .map(|e| e.trim_start_matches('=').to_string())
        .unwrap_or_default()
}

fn b64url(bytes: &[u8]) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

/// The PKCE S256 challenge of `verifier`.
pub fn pkce_challenge(verifier: &str) -> String {
    b64url(&Sha256::digest(verifier.as_bytes()))
}

impl Oidc {
    /// Reads the provider's discovery document and keys; fails if the provider is down
    /// or its document is for another issuer.
    pub async fn discover(cfg: OidcConfig) -> Result<Oidc, OidcError> {
        let http = reqwest::Client::builder()
            .timeout(HTTP_TIMEOUT)
            .redirect(reqwest::redirect::Policy::none())
            // Calls are a few per sign-in: a pooled connection would mostly be one the
            // provider already closed as idle.
            .pool_max_idle_per_host(0)
            .build()
            .map_err(|e| http_error(&cfg.issuer, e))?;
        let url = format!(
            "{}/.well-known/openid-configuration",
            cfg.issuer.trim_end_matches('/')
        );
        let discovery: Discovery = get_json(&http, &url).await?;
        if discovery.issuer.trim_end_matches('/') != cfg.issuer.trim_end_matches('/') {
            return Err(OidcError::Discovery(format!(
                "it is for issuer {}, not {} (give --oidc-issuer exactly as the provider names \
                 itself)",
                discovery.issuer, cfg.issuer
            )));
        }
        if let Some(methods) = &discovery.code_challenge_methods_supported {
            if !methods.iter().any(|m| m == "S256") {
                return Err(OidcError::Discovery(
                    "the provider does not support PKCE with S256".into(),
                ));
            }
        }
        let jwks: JwkSet = get_json(&http, &discovery.jwks_uri).await?;
        tracing::info!(
            issuer = discovery.issuer,
            keys = jwks.keys.len(),
            "identity provider discovered"
        );
        Ok(Oidc {
            cfg,
            discovery,
            jwks: RwLock::new((jwks, std::time::Instant::now())),
            http,
        })
    }

    pub fn config(&self) -> &OidcConfig {
        &self.cfg
    }

    /// The provider's issuer, as its tokens must name it.
    pub fn issuer(&self) -> &str {
        &self.discovery.issuer
    }

    /// Where to send the browser to sign in.
    pub fn authorize_url(
        &self,
        state: &str,
        nonce: &str,
        verifier: &str,
    ) -> Result<String, OidcError> {
        let mut url = reqwest::Url::parse(&self.discovery.authorization_endpoint)
            .map_err(|e| OidcError::Discovery(format!("authorization_endpoint: {e}")))?;
        let scope = if self.cfg.allowed_groups.is_empty() {
            "openid email profile"
        } else {
            "openid email profile groups"
        };
        url.query_pairs_mut()
            .append_pair("response_type", "code")
            .append_pair("client_id", &self.cfg.client_id)
            .append_pair("redirect_uri", &self.cfg.redirect_url)
            .append_pair("scope", scope)
            .append_pair("state", state)
            .append_pair("nonce", nonce)
            .append_pair("code_challenge", &pkce_challenge(verifier))
            .append_pair("code_challenge_method", "S256");
        Ok(url.into())
    }

    /// Trades the callback's code for an ID token and validates it (and the nonce).
    pub async fn exchange(
        &self,
        code: &str,
        verifier: &str,
        nonce: &str,
    ) -> Result<Claims, OidcError> {
        let url = &self.discovery.token_endpoint;
        let http_err = |e| http_error(url, e);
        let resp = self
            .http
            .post(url)
            .basic_auth(
                form_encode(&self.cfg.client_id),
                Some(form_encode(&self.cfg.client_secret)),
            )
            .form(&[
                ("grant_type", "authorization_code"),
                ("code", code),
                ("redirect_uri", &self.cfg.redirect_url),
                ("code_verifier", verifier),
            ])
            .send()
            .await
            .map_err(http_err)?;
        let status = resp.status();
        if !status.is_success() {
            let body = resp.text().await.unwrap_or_default();
            return Err(OidcError::Status {
                url: url.clone(),
                status,
                body: body.chars().take(300).collect(),
            });
        }
        let answer: TokenAnswer = resp.json().await.map_err(http_err)?;
        let Some(id_token) = answer.id_token else {
            return Err(OidcError::Token(
                "the token endpoint answered no id_token".into(),
            ));
        };
        self.validate(&id_token, nonce).await
    }

    /// The key that signed a token with key id `kid`, refetching the provider's keys once
    /// (at most every [`JWKS_REFRESH_EVERY`]) for an id it does not know: keys rotate.
    async fn key(&self, kid: Option<&str>) -> Result<jsonwebtoken::jwk::Jwk, OidcError> {
        let find = |set: &JwkSet| match kid {
            Some(kid) => set.find(kid).cloned(),
            None if set.keys.len() == 1 => set.keys.first().cloned(),
            None => None,
        };
        let stale = {
            let g = self.jwks.read().unwrap_or_else(|p| p.into_inner());
            if let Some(k) = find(&g.0) {
                return Ok(k);
            }
            g.1.elapsed() >= JWKS_REFRESH_EVERY
        };
        if stale {
            let fresh: JwkSet = get_json(&self.http, &self.discovery.jwks_uri).await?;
            let mut g = self.jwks.write().unwrap_or_else(|p| p.into_inner());
            *g = (fresh, std::time::Instant::now());
            if let Some(k) = find(&g.0) {
                return Ok(k);
            }
        }
        Err(OidcError::Token(format!(
            "it is signed with key {:?}, which the provider does not publish",
            kid.unwrap_or("(none named)")
        )))
    }

    /// Checks an ID token's signature (the provider's published keys, asymmetric
    /// algorithms only), issuer, audience, expiry and nonce.
    pub async fn validate(&self, id_token: &str, nonce: &str) -> Result<Claims, OidcError> {
        let head = jsonwebtoken::decode_header(id_token)
            .map_err(|e| OidcError::Token(format!("it is not a JWT: {e}")))?;
        if matches!(
            head.alg,
            Algorithm::HS256 | Algorithm::HS384 | Algorithm::HS512
        ) {
            return Err(OidcError::Token(format!(
                "it is signed with {:?}; only the provider's published (asymmetric) keys are \
                 accepted",
                head.alg
            )));
        }
        let jwk = self.key(head.kid.as_deref()).await?;
        let key = DecodingKey::from_jwk(&jwk)
            .map_err(|e| OidcError::Token(format!("the provider's key is unusable: {e}")))?;
        let mut v = Validation::new(head.alg);
        v.set_audience(&[&self.cfg.client_id]);
        v.set_issuer(&[&self.discovery.issuer]);
        v.set_required_spec_claims(&["exp", "iss", "aud", "sub"]);
        v.leeway = LEEWAY.as_secs();
        v.validate_nbf = true;
        let data = jsonwebtoken::decode::<Claims>(id_token, &key, &v).map_err(|e| {
            use jsonwebtoken::errors::ErrorKind as K;
            OidcError::Token(match e.kind() {
                K::ExpiredSignature => "it has expired".into(),
                K::InvalidAudience => format!(
                    "it is for another client (its audience is not {})",
                    self.cfg.client_id
                ),
                K::InvalidIssuer => format!("it is not from issuer {}", self.discovery.issuer),
                K::InvalidSignature => "its signature does not verify".into(),
                K::ImmatureSignature => "it is not valid yet".into(),
                _ => e.to_string(),
            })
        })?;
        let claims = data.claims;
        // Several audiences: the one it was issued to (azp) must be us (OIDC Core 3.1.3.7).
        if claims.aud.as_array().is_some_and(|a| a.len() > 1)
            && claims.azp.as_deref() != Some(self.cfg.client_id.as_str())
        {
            return Err(OidcError::Token(format!(
                "it has several audiences and was not issued to {} (azp)",
                self.cfg.client_id
            )));
        }
        match &claims.nonce {
            Some(n) if auth::same_secret(n, nonce) => {}
            _ => {
                return Err(OidcError::Token(
                    "its nonce is not this sign-in's (a replayed token?)".into(),
                ))
            }
        }
        Ok(claims)
    }

    /// Whether this identity may sign in: its email's domain is allowed (and the email
    /// verified), and it is in an allowed group, for whichever of the two is configured.
    pub fn admit(&self, claims: &Claims) -> Result<(), OidcError> {
        if !self.cfg.allowed_domains.is_empty() {
            let Some(email) = &claims.email else {
                return Err(OidcError::Refused(
                    "the identity provider gave no email, and this server admits only some \
                     email domains"
                        .into(),
                ));
            };
            if claims.email_verified == Some(false) {
                return Err(OidcError::Refused(format!(
                    "email {email} is not verified at the identity provider"
                )));
            }
            let domain = email
                .rsplit_once('@')
                .map(|(_, d)| d.to_ascii_lowercase())
                .unwrap_or_default();
            if !self.cfg.allowed_domains.contains(&domain) {
                return Err(OidcError::Refused(format!(
                    "email domain {domain:?} may not sign in to this server (allowed: {})",
                    self.cfg.allowed_domains.join(", ")
                )));
            }
        }
        if !self.cfg.allowed_groups.is_empty() {
            let groups: HashSet<&str> = match &claims.groups {
                Some(serde_json::Value::Array(a)) => a.iter().filter_map(|g| g.as_str()).collect(),
                Some(serde_json::Value::String(g)) => std::iter::once(g.as_str()).collect(),
                _ => HashSet::new(),
            };
            if !self
                .cfg
                .allowed_groups
                .iter()
                .any(|g| groups.contains(g.as_str()))
            {
                return Err(OidcError::Refused(format!(
                    "you are in none of the groups allowed to sign in to this server ({})",
                    self.cfg.allowed_groups.join(", ")
                )));
            }
        }
        Ok(())
    }
}

/// A user name made from `raw`: lowercase letters, digits and single '-', at most `max`
/// bytes; empty if nothing usable is left.
fn sanitize(raw: &str, max: usize) -> String {
    let mut out = String::new();
    for c in raw.chars().flat_map(char::to_lowercase) {
        if c.is_ascii_lowercase() || c.is_ascii_digit() {
            out.push(c);
        } else if !out.is_empty() && !out.ends_with('-') {
            out.push('-');
        }
        if out.len() >= max {
            break;
        }
    }
    out.truncate(max);
    out.trim_end_matches('-').to_string()
}

/// The names a first sign-in may get, best first: from `preferred_username`, else the
/// email's local part, else `user`; then with `-2`, `-3`... and a random suffix.
pub fn user_names(claims: &Claims) -> Vec<String> {
    let from = claims
        .preferred_username
        .as_deref()
        .map(|u| u.split('@').next().unwrap_or(u))
        .map(|u| sanitize(u, MAX_USER_NAME - 7))
        .filter(|s| !s.is_empty())
        .or_else(|| {
            claims
                .email
                .as_deref()
                .and_then(|e| e.split('@').next())
                .map(|u| sanitize(u, MAX_USER_NAME - 7))
                .filter(|s| !s.is_empty())
        })
        .unwrap_or_else(|| "user".to_string());
    let mut names = vec![from.clone()];
    names.extend((2..=20).map(|n| format!("{from}-{n}")));
    names.push(format!("{from}-{}", &auth::new_token()[..6]));
    names.retain(|n| auth::is_valid_user_name(n));
    names
}

pub(crate) fn routes() -> Router<AppState> {
    Router::new()
        .route(LOGIN_PATH, get(login))
        .route(CALLBACK_PATH, get(callback))
}

/// Query of `GET /auth/login`.
#[derive(Debug, Deserialize)]
pub struct LoginQuery {
    /// Where to go once signed in: a path on this server (default `/`).
    next: Option<String>,
}

/// Query of `GET /auth/callback`, as the provider sends it.
#[derive(Debug, Deserialize)]
pub struct CallbackQuery {
    code: Option<String>,
    state: Option<String>,
    error: Option<String>,
    error_description: Option<String>,
}

fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
        .replace('\'', "&#39;")
}

/// A sign-in failure as a page a person reads (this is a browser route).
fn failure(status: StatusCode, message: &str) -> Response {
    tracing::info!(status = status.as_u16(), message, "sign-in refused");
    let page = format!(
        "<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\
         <title>Hearth: sign-in failed</title>\
         <meta name=\"viewport\" content=\"width=device-width\"></head><body>\
         <h1>Sign-in failed</h1><p id=\"error\">{}</p>\
         <p><a href=\"{LOGIN_PATH}\">Sign in again</a></p></body></html>\n",
        esc(message)
    );
    (
        status,
        [(header::CONTENT_TYPE, "text/html; charset=utf-8")],
        page,
    )
        .into_response()
}

fn state_cookie(value: Option<&str>, secure: bool) -> HeaderValue {
    let secure = if secure { "; Secure" } else { "" };
    let v = match value {
        Some(v) => format!(
            "{STATE_COOKIE}={v}; Path=/auth; HttpOnly; SameSite=Lax; Max-Age={}{secure}",
            LOGIN_TTL.as_secs()
        ),
        None => format!("{STATE_COOKIE}=; Path=/auth; HttpOnly; SameSite=Lax; Max-Age=0{secure}"),
    };
    HeaderValue::from_str(&v).unwrap_or_else(|_| HeaderValue::from_static(""))
}

fn redirect(to: &str, cookies: Vec<HeaderValue>) -> Response {
    let mut resp = StatusCode::SEE_OTHER.into_response();
    if let Ok(loc) = HeaderValue::from_str(to) {
        resp.headers_mut().insert(header::LOCATION, loc);
    }
    for c in cookies {
        resp.headers_mut().append(header::SET_COOKIE, c);
    }
    resp
}

/// Starts a sign-in: records it and sends the browser to the provider.
async fn login(
    State(st): State<AppState>,
    headers: HeaderMap,
    Query(q): Query<LoginQuery>,
) -> Response {
    let Some(oidc) = st.auth.oidc().cloned() else {
        return ApiError::not_found(
            "this server has no identity provider (hearth server --oidc-issuer)",
        )
        .into_response();
    };
    let state = auth::new_token();
    let login = OidcLogin {
        nonce: auth::new_token(),
        pkce_verifier: auth::new_token(),
        return_to: crate::proxy::login::safe_next(q.next.as_deref()),
    };
    let url = match oidc.authorize_url(&state, &login.nonce, &login.pkce_verifier) {
        Ok(u) => u,
        Err(e) => return failure(StatusCode::BAD_GATEWAY, &e.to_string()),
    };
    if let Err(e) = st.manager.begin_oidc_login(&state, &login, LOGIN_TTL).await {
        return failure(e.status, &e.message);
    }
    let secure = st.auth.secure(&headers);
    redirect(&url, vec![state_cookie(Some(&state), secure)])
}

/// The provider sent the browser back: check, exchange, validate, admit, start a session.
async fn callback(
    State(st): State<AppState>,
    headers: HeaderMap,
    Query(q): Query<CallbackQuery>,
) -> Response {
    let Some(oidc) = st.auth.oidc().cloned() else {
        return ApiError::not_found(
            "this server has no identity provider (hearth server --oidc-issuer)",
        )
        .into_response();
    };
    if let Some(err) = &q.error {
        let status = if err == "access_denied" {
            StatusCode::FORBIDDEN
        } else {
            StatusCode::BAD_REQUEST
        };
        let why = q.error_description.as_deref().unwrap_or("");
        return failure(
            status,
            &format!("the identity provider refused the sign-in: {err} {why}"),
        );
    }
    let (Some(code), Some(state)) = (q.code.as_deref(), q.state.as_deref()) else {
        return failure(
            StatusCode::BAD_REQUEST,
            "the identity provider sent no code or state",
        );
    };
    // Only the browser that started this sign-in may finish it (else a forged callback
    // could sign a victim in as the forger).
    match auth::cookie(&headers, STATE_COOKIE) {
        Some(c) if auth::same_secret(c, state) => {}
        _ => {
            return failure(
                StatusCode::BAD_REQUEST,
                "this sign-in was not started in this browser (or its cookie expired): start \
                 again",
            )
        }
    }
    let login = match st.manager.take_oidc_login(state).await {
        Ok(Some(l)) => l,
        Ok(None) => {
            return failure(
                StatusCode::BAD_REQUEST,
                "this sign-in expired or was already used: start again",
            )
        }
        Err(e) => return failure(e.status, &e.message),
    };
    let claims = match oidc
        .exchange(code, &login.pkce_verifier, &login.nonce)
        .await
        .and_then(|c| oidc.admit(&c).map(|()| c))
    {
        Ok(c) => c,
        Err(e) => {
            let status = match e {
                OidcError::Token(_) => StatusCode::UNAUTHORIZED,
                OidcError::Refused(_) => StatusCode::FORBIDDEN,
                _ => StatusCode::BAD_GATEWAY,
            };
            return failure(status, &e.to_string());
        }
    };
    let names = user_names(&claims);
    let caller = match st
        .manager
        .oidc_caller(oidc.issuer(), &claims.sub, claims.email.as_deref(), &names)
        .await
    {
        Ok(c) => c,
        Err(e) => return failure(e.status, &e.message),
    };
    let (id, _) = match st
        .manager
        .create_session(&caller, st.auth.settings().ttl)
        .await
    {
        Ok(s) => s,
        Err(e) => return failure(e.status, &e.message),
    };
    let secure = st.auth.secure(&headers);
    redirect(
        &login.return_to,
        vec![
            st.auth.session_cookie(Some(&id), &headers),
            state_cookie(None, secure),
        ],
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn claims(preferred: Option<&str>, email: Option<&str>) -> Claims {
        Claims {
            sub: "s".into(),
            nonce: None,
            azp: None,
            aud: serde_json::Value::Null,
            email: email.map(Into::into),
            email_verified: None,
            preferred_username: preferred.map(Into::into),
            groups: None,
        }
    }

    #[test]
    fn user_names_are_sanitized_and_unique_candidates() {
        let n = user_names(&claims(Some("Jane.Doe"), Some("x@example.com")));
        assert_eq!(n[0], "jane-doe");
        assert_eq!(n[1], "jane-doe-2");
        assert!(n.iter().all(|n| auth::is_valid_user_name(n)), "{n:?}");
        assert_eq!(
            user_names(&claims(None, Some("Bob_Smith+x@corp.io")))[0],
            "bob-smith-x"
        );
        assert_eq!(user_names(&claims(Some("--__--"), None))[0], "user");
        assert_eq!(user_names(&claims(Some("ÉMILE"), None))[0], "mile");
        let long = "a".repeat(100);
        let n = user_names(&claims(Some(&long), None));
        assert!(n.iter().all(|x| x.len() <= MAX_USER_NAME), "{n:?}");
        // A unicode-only name still gets a valid one.
        assert_eq!(user_names(&claims(Some("日本"), None))[0], "user");
    }

    #[test]
    fn pkce_challenge_is_rfc7636s() {
        // RFC 7636 appendix B.
        assert_eq!(
            pkce_challenge("dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXk"),
            "E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM"
        );
    }
}
