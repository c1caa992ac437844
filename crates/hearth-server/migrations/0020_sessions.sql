-- Browser sessions (the dashboard's cookie). Only a SHA-256 of the cookie's random id is
-- kept; the CSRF token is bound to the session and sent back in X-CSRF-Token.
CREATE TABLE sessions (
    id_hash TEXT PRIMARY KEY NOT NULL,
    user_name TEXT NOT NULL,
    csrf_token TEXT NOT NULL,
    created_at TEXT NOT NULL,
    -- Unix seconds, compared as numbers on both backends.
    expires_at BIGINT NOT NULL
);
CREATE INDEX sessions_user ON sessions (user_name);
CREATE INDEX sessions_expiry ON sessions (expires_at);
-- OpenID Connect sign-ins started at /auth/login and not yet back at /auth/callback: each
-- is taken (deleted) once, so a state is never used twice.
CREATE TABLE oidc_logins (
    state_hash TEXT PRIMARY KEY NOT NULL,
    nonce TEXT NOT NULL,
    pkce_verifier TEXT NOT NULL,
    return_to TEXT NOT NULL,
    expires_at BIGINT NOT NULL
);
CREATE INDEX oidc_logins_expiry ON oidc_logins (expires_at);
-- Which user an identity provider's subject signs in as (made at the first sign-in).
CREATE TABLE oidc_identities (
    issuer TEXT NOT NULL,
    subject TEXT NOT NULL,
    user_name TEXT NOT NULL,
    email TEXT,
    created_at TEXT NOT NULL,
    PRIMARY KEY (issuer, subject)
);
CREATE INDEX oidc_identities_user ON oidc_identities (user_name);
