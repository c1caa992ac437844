import { useEffect, useState } from "preact/hooks";
import * as auth from "./auth";
import { StatusLine, useAction } from "./util";

export function SignIn({ onSignedIn, error }: { onSignedIn: () => Promise<void>; error?: string }) {
  const [token, setToken] = useState("");
  const [methods, setMethods] = useState<auth.Methods | undefined>(undefined);
  const [methodsError, setMethodsError] = useState<string | undefined>(undefined);
  const { p, run, busy } = useAction();
  useEffect(() => {
    auth.methods().then(setMethods, (e) => setMethodsError((e as Error).message));
  }, []);
  // The identity provider sends the browser back with ?error=... when a login failed.
  const providerError = new URLSearchParams(location.search).get("error");
  return (
    <main id="main" class="signin">
      <h1>Sign in to Hearth</h1>
      {error && <p role="alert" class="status error">{error}</p>}
      {providerError && <p role="alert" class="status error">Signing in through the identity provider failed: {providerError}</p>}
      {methodsError && <p role="alert" class="status error">{methodsError}</p>}
      {methods?.oidc_login && (
        <p>
          <a class="button" href={methods.oidc_login}>
            Sign in with your identity provider
          </a>
        </p>
      )}
      {methods?.token && (
        <form
          onSubmit={async (e) => {
            e.preventDefault();
            const ok = await run("Signing in…", "Signed in", () => auth.signInWithToken(token));
            if (ok) {
              setToken("");
              await onSignedIn();
            }
          }}
        >
          {methods.oidc_login && <h2>Or with an API token</h2>}
          <label for="token">API token</label>
          <input
            id="token"
            name="token"
            type="password"
            autoComplete="off"
            spellcheck={false}
            value={token}
            onInput={(e) => setToken((e.target as HTMLInputElement).value)}
            aria-describedby="token-help"
          />
          <p id="token-help" class="help">
            <code>hearth user add NAME</code> prints a user's token; the first admin's is the server's data dir's{" "}
            <code>token</code> file.
          </p>
          <button type="submit" disabled={busy}>
            Sign in
          </button>
        </form>
      )}
      <StatusLine p={p} />
    </main>
  );
}
