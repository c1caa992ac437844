// How the dashboard proves who it is: the one module that knows. A browser session: an
// HttpOnly cookie the server sets at sign-in (the page never sees it) and the session's
// CSRF token, sent back in `X-CSRF-Token` on every request that changes anything. The
// exec WebSocket goes with the cookie alone (the server checks its Origin).

export interface Methods {
  /** `POST /v1/session` takes an API token. */
  token: boolean;
  /** Where to go to sign in through the identity provider, when there is one. */
  oidc_login?: string | null;
}

interface SessionInfo {
  user: { name: string; admin: boolean; created_at: string };
  csrf_token: string;
  expires_at: string;
}

let csrf: string | undefined;

export function signedIn(): boolean {
  return csrf !== undefined;
}

/** Headers for a request; `mutating` adds the CSRF token the session needs. */
export function authHeaders(mutating: boolean): Record<string, string> {
  return mutating && csrf ? { "X-CSRF-Token": csrf } : {};
}

/** Finds the session this browser already has (the cookie survives reloads). */
export async function restore(): Promise<void> {
  csrf = undefined;
  try {
    const r = await fetch("/v1/session", { credentials: "same-origin" });
    if (r.ok) csrf = ((await r.json()) as SessionInfo).csrf_token;
  } catch {
    // the server is unreachable: the sign-in page says so when it is used
  }
}

/** How this server lets a browser sign in. */
export async function methods(): Promise<Methods> {
  const r = await fetch("/v1/auth");
  if (!r.ok) throw new Error(await errorText(r, "cannot ask the server how to sign in"));
  return r.json();
}

/** Opens a session with an API token; throws the server's refusal in words. */
export async function signInWithToken(token: string): Promise<void> {
  token = token.trim();
  if (!token) throw new Error("paste an API token (hearth user add prints one; the admin's is in the data dir's token file)");
  const r = await fetch("/v1/session", {
    method: "POST",
    credentials: "same-origin",
    headers: { "Content-Type": "application/json" },
    body: JSON.stringify({ token }),
  });
  if (!r.ok) throw new Error(await errorText(r, "the server refused the token"));
  csrf = ((await r.json()) as SessionInfo).csrf_token;
}

export async function signOut(): Promise<void> {
  if (csrf) {
    await fetch("/v1/session/logout", {
      method: "POST",
      credentials: "same-origin",
      headers: authHeaders(true),
    }).catch(() => undefined);
  }
  csrf = undefined;
}

/** Forgets a session the server no longer takes (expired, ended, user removed). */
export function forget(): void {
  csrf = undefined;
}

export async function errorText(r: Response, fallback: string): Promise<string> {
  try {
    const body = await r.json();
    if (body?.error?.message) return `${body.error.message} (HTTP ${r.status})`;
  } catch {
    // not JSON
  }
  return `${fallback} (HTTP ${r.status})`;
}
