//! Who is asking through the port proxy: Hearth's bearer token, or the proxy's login
//! cookie; both are removed before a request goes on to the workspace.
//!
//! The cookie is set by `POST /_hearth/login` (a form posting the API token, so the token
//! never appears in a URL, a log or a Referer). It holds the user's name, an expiry and an
//! HMAC-SHA256 over them and the exact workspace-port host, with a key kept in the data
//! dir (`proxy.key`); it is host-only (no `Domain`), `HttpOnly`, `SameSite=Lax`, `Secure`
//! under TLS, so it is sent to that one port URL and readable by no page script. The
//! user is looked up again on every request, so removing a user ends their cookies too.
//! The login form is refused when posted from another origin (login CSRF).
//!
//! A browser signed in to the dashboard logs in without a token: the API answers its
//! `POST .../ports/{port}/login` with a link to `/_hearth/ticket?t=TICKET` on the port's
//! host, the ticket signed like a cookie (another kind, so neither passes for the other)
//! for that host and user, good for [`TICKET_TTL`].

use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::Context;
use hmac::{Hmac, Mac};
use hyper::header::{self, HeaderMap, HeaderValue};
use sha2::Sha256;

use crate::auth::Caller;
use crate::manager::Manager;

/// The proxy's cookie.
pub const COOKIE: &str = "hearth_port";
/// How long a login lasts.
pub const COOKIE_TTL: Duration = Duration::from_secs(12 * 3600);
/// How long a login link from the dashboard may take to be opened.
pub const TICKET_TTL: Duration = Duration::from_secs(60);
const KEY_FILE: &str = "proxy.key";

/// Signs and checks login cookies.
#[derive(Clone)]
pub struct CookieKey([u8; 32]);

impl CookieKey {
    /// Reads `<data>/proxy.key`, creating it (random, 0600) on first use, so logins
    /// survive a server restart.
    pub fn load(data_dir: &Path) -> anyhow::Result<CookieKey> {
        let path = data_dir.join(KEY_FILE);
        match std::fs::read(&path) {
            Ok(b) if b.len() == 32 => {
                let mut k = [0u8; 32];
                k.copy_from_slice(&b);
                return Ok(CookieKey(k));
            }
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(e).with_context(|| format!("cannot read {}", path.display())),
        }
        let mut k = [0u8; 32];
        rand::RngCore::fill_bytes(&mut rand::thread_rng(), &mut k);
        let tmp = data_dir.join(format!("{KEY_FILE}.tmp"));
        let mut f = std::fs::OpenOptions::new()
            .create(true)
            .truncate(true)
            .write(true)
            .mode(0o600)
            .open(&tmp)
            .with_context(|| format!("cannot create {}", tmp.display()))?;
        f.write_all(&k)
            .and_then(|_| f.sync_all())
            .with_context(|| format!("cannot write {}", tmp.display()))?;
        std::fs::rename(&tmp, &path).with_context(|| format!("cannot write {}", path.display()))?;
        Ok(CookieKey(k))
    }

    /// The MAC of a `kind` (`v1`: a cookie, `t1`: a ticket) for `user` on `host`.
    fn mac(&self, kind: &str, host: &str, user: &str, expires: u64) -> Hmac<Sha256> {
        let mut m =
            Hmac::<Sha256>::new_from_slice(&self.0).expect("hmac takes a key of any length");
        m.update(format!("{kind}\n{host}\n{user}\n{expires}").as_bytes());
        m
    }

    fn sign(&self, kind: &str, host: &str, user: &str, ttl: Duration) -> String {
        let expires = unix_now() + ttl.as_secs();
        let sig = hex::encode(self.mac(kind, host, user, expires).finalize().into_bytes());
        format!("{kind}.{user}.{expires}.{sig}")
    }

    fn check(&self, kind: &str, host: &str, value: &str) -> Option<String> {
        let mut parts = value.split('.');
        let (v, user, expires, sig) = (parts.next()?, parts.next()?, parts.next()?, parts.next()?);
        if v != kind || parts.next().is_some() {
            return None;
        }
        let expires: u64 = expires.parse().ok()?;
        let sig = hex::decode(sig).ok()?;
        // verify_slice compares in constant time.
        self.mac(kind, host, user, expires)
            .verify_slice(&sig)
            .ok()?;
        (expires > unix_now()).then(|| user.to_string())
    }

    /// A cookie value for `user` on `host`, valid for [`COOKIE_TTL`].
    pub fn issue(&self, host: &str, user: &str) -> String {
        self.sign("v1", host, user, COOKIE_TTL)
    }

    /// The user a cookie value was issued to for `host`, if it is genuine and unexpired.
    pub fn verify(&self, host: &str, value: &str) -> Option<String> {
        self.check("v1", host, value)
    }

    /// A login ticket for `user` on `host`, valid for [`TICKET_TTL`].
    pub fn ticket(&self, host: &str, user: &str) -> String {
        self.sign("t1", host, user, TICKET_TTL)
    }

    /// The user a ticket was issued to for `host`, if it is genuine and unexpired.
    pub fn verify_ticket(&self, host: &str, value: &str) -> Option<String> {
        self.check("t1", host, value)
    }
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// What the request carried: who it authenticates (if anyone), and whether it carried
/// anything of Hearth's at all.
pub struct Credentials {
    pub caller: Option<Caller>,
    /// A Hearth credential was presented (valid or not).
    pub presented: bool,
}

/// Finds the caller from a Hearth bearer token or the login cookie for `host`, and strips
/// both from `headers`. An `Authorization` header that is not a Hearth token is left for
/// the workspace's own app.
pub async fn take_credentials(
    manager: &Manager,
    key: &CookieKey,
    host: &str,
    headers: &mut HeaderMap,
) -> Credentials {
    let mut out = Credentials {
        caller: None,
        presented: false,
    };
    let bearer = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::to_string);
    if let Some(token) = bearer {
        if let Ok(Some(caller)) = manager.authenticate(&token).await {
            headers.remove(header::AUTHORIZATION);
            out.presented = true;
            out.caller = Some(caller);
        }
    }
    let mut cookie_user = None;
    let mut kept = Vec::new();
    let mut had_ours = false;
    for v in headers.get_all(header::COOKIE) {
        let Ok(v) = v.to_str() else {
            // Not text: not ours; pass it on unchanged.
            kept.push(v.clone());
            continue;
        };
        let mut rest = Vec::new();
        for pair in v.split(';') {
            let pair = pair.trim();
            match pair.split_once('=') {
                Some((name, value)) if name.trim() == COOKIE => {
                    had_ours = true;
                    if cookie_user.is_none() {
                        cookie_user = key.verify(host, value.trim());
                    }
                }
                _ if !pair.is_empty() => rest.push(pair),
                _ => {}
            }
        }
        if !rest.is_empty() {
            if let Ok(h) = HeaderValue::from_str(&rest.join("; ")) {
                kept.push(h);
            }
        }
    }
    if had_ours {
        out.presented = true;
        headers.remove(header::COOKIE);
        for h in kept {
            headers.append(header::COOKIE, h);
        }
        if out.caller.is_none() {
            if let Some(name) = cookie_user {
                if let Ok(Some(caller)) = manager.caller(&name).await {
                    out.caller = Some(caller);
                }
            }
        }
    }
    out
}

/// The `Set-Cookie` value for a login (`value`) or a logout (`None`).
pub fn set_cookie(value: Option<&str>, secure: bool) -> String {
    let secure = if secure { "; Secure" } else { "" };
    match value {
        Some(v) => format!(
            "{COOKIE}={v}; Path=/; HttpOnly; SameSite=Lax; Max-Age={}{secure}",
            COOKIE_TTL.as_secs()
        ),
        None => format!("{COOKIE}=; Path=/; HttpOnly; SameSite=Lax; Max-Age=0{secure}"),
    }
}

/// Where to go after login: a local path only (never `//host` or a scheme), else `/`.
pub fn safe_next(next: Option<&str>) -> String {
    match next {
        Some(n)
            if n.starts_with('/')
                && !n.starts_with("//")
                && !n.starts_with("/\\")
                && !n.chars().any(|c| c.is_control()) =>
        {
            n.to_string()
        }
        _ => "/".to_string(),
    }
}

/// The login page: a form that posts the API token to `/_hearth/login`.
pub fn login_page(workspace: &str, port: u16, next: &str, message: Option<&str>) -> String {
    let esc = |s: &str| {
        s.replace('&', "&amp;")
            .replace('<', "&lt;")
            .replace('>', "&gt;")
            .replace('"', "&quot;")
            .replace('\'', "&#39;")
    };
    let message = message
        .map(|m| format!("<p class=\"err\">{}</p>", esc(m)))
        .unwrap_or_default();
    format!(
        "<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\
         <title>Hearth: log in</title>\
         <meta name=\"viewport\" content=\"width=device-width\">\
         <style>body{{font-family:sans-serif;max-width:32em;margin:4em auto;padding:0 1em}}\
         input{{width:100%;padding:.4em}}label{{font-weight:bold}}.err{{color:#a00}}</style>\
         </head><body><main>\
         <h1>Port {port} of workspace {ws} is private</h1>{message}\
         <p>Log in with your Hearth API token: make one on the dashboard's account page \
         (or <code>hearth user add</code> printed it; the first admin's is in the server's \
         data dir).</p>\
         <form method=\"post\" action=\"/_hearth/login\">\
         <input type=\"hidden\" name=\"next\" value=\"{next}\">\
         <p><label for=\"token\">API token</label>\
         <input type=\"password\" id=\"token\" name=\"token\" \
         autocomplete=\"current-password\" autofocus required></p>\
         <p><button type=\"submit\">Log in</button></p></form></main></body></html>\n",
        ws = esc(workspace),
        next = esc(next),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cookies_are_bound_to_host_and_expire() {
        let dir = tempfile::tempdir().unwrap();
        let k = CookieKey::load(dir.path()).unwrap();
        let again = CookieKey::load(dir.path()).unwrap();
        let v = k.issue("8080-web.localhost", "alice");
        assert_eq!(
            again.verify("8080-web.localhost", &v).as_deref(),
            Some("alice"),
            "the key survives a restart"
        );
        assert_eq!(k.verify("8081-web.localhost", &v), None, "other host");
        let forged = v.replacen("alice", "admin", 1);
        assert_eq!(k.verify("8080-web.localhost", &forged), None, "other user");
        let other = CookieKey::load(tempfile::tempdir().unwrap().path()).unwrap();
        assert_eq!(other.verify("8080-web.localhost", &v), None, "other key");
        // An expired one, signed properly.
        let sig = hex::encode(k.mac("v1", "h", "alice", 1).finalize().into_bytes());
        assert_eq!(k.verify("h", &format!("v1.alice.1.{sig}")), None);
        // Tickets: bound to the host, and no ticket is a cookie nor the other way round.
        let t = k.ticket("8080-web.localhost", "alice");
        assert_eq!(
            k.verify_ticket("8080-web.localhost", &t).as_deref(),
            Some("alice")
        );
        assert_eq!(k.verify_ticket("8081-web.localhost", &t), None);
        assert_eq!(k.verify("8080-web.localhost", &t), None);
        assert_eq!(k.verify_ticket("8080-web.localhost", &v), None);
        let sig = hex::encode(k.mac("t1", "h", "alice", 1).finalize().into_bytes());
        assert_eq!(k.verify_ticket("h", &format!("t1.alice.1.{sig}")), None);
        for junk in [
            "",
            "v1",
            "v1.a.b.c",
            "v2.alice.99999999999.00",
            "v1.a.1.zz.extra",
        ] {
            assert_eq!(k.verify("h", junk), None, "{junk}");
        }
    }

    #[test]
    fn next_is_a_local_path() {
        assert_eq!(safe_next(Some("/app?x=1")), "/app?x=1");
        for bad in [
            "//evil.com/",
            "https://evil.com/",
            "/\\evil.com",
            "evil",
            "/a\nb",
        ] {
            assert_eq!(safe_next(Some(bad)), "/", "{bad}");
        }
        assert_eq!(safe_next(None), "/");
    }

    #[test]
    fn login_page_escapes() {
        let p = login_page("web", 80, "/\"><script>", Some("<b>"));
        assert!(!p.contains("<script>") && !p.contains("<b>"));
    }
}
