import { useState } from "preact/hooks";
import * as api from "./api";
import { quotaText, type UserQuota } from "./audit";
import { StatusLine, useAction, usePoll } from "./util";

/** The signed-in user's page: an API token for the CLI, made here and shown once. */
export function Account({ me }: { me: api.User }) {
  const { p, run, busy } = useAction();
  const [token, setToken] = useState<string | undefined>(undefined);
  const quota = usePoll(() => api.get<UserQuota>(`/v1/users/${api.enc(me.name)}/quota`), 10000, [me.name]);
  return (
    <>
      <h1>Your account</h1>
      <p>
        Signed in as <strong>{me.name}</strong>
        {me.admin ? ", an admin" : ""}.
      </p>
      <p>
        {quota.data ? `Your quota: ${quotaText(quota.data)}.` : quota.error ? `Your quota cannot be read: ${quota.error}` : ""}{" "}
        <a href="#/audit">Your activity</a>
      </p>
      <section class="card" aria-labelledby="token-h">
        <h2 id="token-h">API token for the CLI</h2>
        <p>
          A new token replaces your previous one (it stops working at once). It is shown only here, once.
        </p>
        <button
          type="button"
          disabled={busy}
          onClick={async () => {
            if (!confirm("Make a new API token? Your previous token stops working.")) return;
            setToken(undefined);
            await run("Making a new token…", "New token made", async () => {
              const r = await api.call<{ token: string }>("POST", "/v1/me/token");
              setToken(r?.token);
            });
          }}
        >
          Make a new token
        </button>
        <StatusLine p={p} />
        {token && (
          <>
            <p>Use it with the CLI:</p>
            <pre class="cmd" aria-label="Your new API token">
              export HEARTH_URL={location.origin} HEARTH_TOKEN={token}
            </pre>
          </>
        )}
      </section>
    </>
  );
}
