// A real OpenID Provider for tests/oidc.rs: npm's `oidc-provider` (the certified
// implementation by panva), with its built-in login form (any email signs in, any
// password). Started by the test with:
//   CLIENT_ID, CLIENT_SECRET, REDIRECT_URI   the one client (hearth), secret basic auth
// It listens on a free 127.0.0.1 port and prints one JSON line {"issuer": URL}.
//
// Accounts are their email; claims: email (verified), preferred_username (the local part),
// groups (["staff"], none for emails starting with "nogroup").
//
// The negative cases need ID tokens a correct provider never issues. For accounts whose
// email starts with one of these prefixes, the token endpoint's ID token is re-signed
// after oidc-provider made it (same key and kid unless said otherwise):
//   wrong-aud...  aud is another client
//   expired...    exp (and iat) an hour in the past
//   bad-sig...    signed by a key the provider does not publish, under the published kid
import http from 'node:http';
import Provider from 'oidc-provider';
import * as jose from 'jose';

const { CLIENT_ID, CLIENT_SECRET, REDIRECT_URI } = process.env;
if (!CLIENT_ID || !CLIENT_SECRET || !REDIRECT_URI) {
  console.error('CLIENT_ID, CLIENT_SECRET and REDIRECT_URI must be set');
  process.exit(2);
}

const KID = 'hearth-test-1';
const { privateKey, publicKey } = await jose.generateKeyPair('RS256', { extractable: true });
const jwk = { ...(await jose.exportJWK(privateKey)), kid: KID, alg: 'RS256', use: 'sig' };
const rogue = (await jose.generateKeyPair('RS256')).privateKey;

const server = http.createServer();
await new Promise((resolve) => server.listen(0, '127.0.0.1', resolve));
const issuer = `http://127.0.0.1:${server.address().port}`;

const provider = new Provider(issuer, {
  clients: [{
    client_id: CLIENT_ID,
    client_secret: CLIENT_SECRET,
    redirect_uris: [REDIRECT_URI],
    grant_types: ['authorization_code'],
    response_types: ['code'],
    token_endpoint_auth_method: 'client_secret_basic',
  }],
  jwks: { keys: [jwk] },
  cookies: { keys: ['hearth-test-cookie-key'] },
  scopes: ['openid', 'email', 'profile', 'groups'],
  claims: {
    openid: ['sub'],
    email: ['email', 'email_verified'],
    profile: ['preferred_username'],
    groups: ['groups'],
  },
  // The scopes' claims go in the ID token itself (hearth reads no userinfo).
  conformIdTokenClaims: false,
  pkce: { required: () => true },
  features: { devInteractions: { enabled: true } },
  async findAccount(ctx, id) {
    return {
      accountId: id,
      async claims() {
        return {
          sub: id,
          email: id,
          email_verified: true,
          preferred_username: id.split('@')[0],
          groups: id.startsWith('nogroup') ? [] : ['staff'],
        };
      },
    };
  },
  // A first-party client: consent is implied, so the login form is the only page.
  async loadExistingGrant(ctx) {
    const grantId = ctx.oidc.result?.consent?.grantId
      || ctx.oidc.session.grantIdFor(ctx.oidc.client.clientId);
    if (grantId) {
      const found = await ctx.oidc.provider.Grant.find(grantId);
      if (found) return found;
    }
    const grant = new ctx.oidc.provider.Grant({
      clientId: ctx.oidc.client.clientId,
      accountId: ctx.oidc.session.accountId,
    });
    grant.addOIDCScope('openid email profile groups');
    await grant.save();
    return grant;
  },
});

async function tamper(idToken) {
  const claims = jose.decodeJwt(idToken);
  const email = String(claims.email || '');
  const now = Math.floor(Date.now() / 1000);
  let key = privateKey;
  if (email.startsWith('wrong-aud')) {
    claims.aud = 'another-client';
  } else if (email.startsWith('expired')) {
    claims.iat = now - 7200;
    claims.exp = now - 3600;
  } else if (email.startsWith('bad-sig')) {
    key = rogue;
  } else {
    return idToken;
  }
  return new jose.SignJWT(claims)
    .setProtectedHeader({ alg: 'RS256', kid: KID, typ: 'JWT' })
    .sign(key);
}

provider.use(async (ctx, next) => {
  await next();
  if (ctx.path === '/token' && ctx.body && typeof ctx.body.id_token === 'string') {
    ctx.body = { ...ctx.body, id_token: await tamper(ctx.body.id_token) };
  }
});

server.on('request', provider.callback());
console.log(JSON.stringify({ issuer, public_key: await jose.exportJWK(publicKey) }));
