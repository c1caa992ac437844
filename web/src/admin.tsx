import { useState } from "preact/hooks";
import * as api from "./api";
import { QuotaForm, quotaText, type Quota, type UserQuota } from "./audit";
import { ago, bytes, StatusLine, useAction, usePoll } from "./util";

/** Quotas: the default and each user's, with their use (GET /v1/quotas). */
function Quotas() {
  const quotas = usePoll(() => api.get<{ default: Quota; users: UserQuota[] }>("/v1/quotas"), 10000);
  const { p, run, busy } = useAction();
  const [editing, setEditing] = useState<string | undefined>(undefined);
  const save = async (what: string, f: () => Promise<unknown>) => {
    const ok = await run(`Saving ${what}…`, `${what} saved`, f);
    if (ok) setEditing(undefined);
    quotas.reload();
  };
  return (
    <section aria-labelledby="quotas-h">
      <h2 id="quotas-h">Quotas</h2>
      {quotas.error && <p role="alert" class="status error">Cannot read the quotas: {quotas.error}</p>}
      {quotas.data && (
        <>
          <h3>Default (users without their own; empty: no limit)</h3>
          <QuotaForm
            id="q-default"
            label="Default quota"
            initial={quotas.data.default}
            busy={busy}
            onSave={(q) => save("The default quota", () => api.call("PUT", "/v1/quotas/default", q))}
          />
          <ul class="ports">
            {quotas.data.users.map((u) => (
              <li key={u.user}>
                <strong>{u.user}</strong> ({u.source === "user" ? "own quota" : "default"}): {quotaText(u)}{" "}
                <button type="button" class="small secondary" disabled={busy} onClick={() => setEditing(editing === u.user ? undefined : u.user)}>
                  Edit {u.user}'s quota
                </button>
                {u.source === "user" && (
                  <button
                    type="button"
                    class="small secondary"
                    disabled={busy}
                    onClick={() => save(`${u.user}'s quota`, () => api.call("DELETE", `/v1/users/${api.enc(u.user)}/quota`))}
                  >
                    Use the default for {u.user}
                  </button>
                )}
                {editing === u.user && (
                  <QuotaForm
                    id={`q-${u.user}`}
                    label={`${u.user}'s quota`}
                    initial={u.quota}
                    busy={busy}
                    onSave={(q) => save(`${u.user}'s quota`, () => api.call("PUT", `/v1/users/${api.enc(u.user)}/quota`, q))}
                  />
                )}
              </li>
            ))}
          </ul>
        </>
      )}
      <StatusLine p={p} />
    </section>
  );
}

export function AdminUsers({ me }: { me: api.User }) {
  const users = usePoll(() => api.get<api.User[]>("/v1/users"), 10000);
  const { p, run, busy } = useAction();
  const [name, setName] = useState("");
  const [admin, setAdmin] = useState(false);
  const [token, setToken] = useState<{ user: string; token: string } | undefined>(undefined);
  return (
    <>
      <h1>Users</h1>
      {users.error && <p role="alert" class="status error">Cannot list the users: {users.error}</p>}
      {users.data && (
        <div class="table-wrap">
          <table>
            <thead>
              <tr>
                <th scope="col">Name</th>
                <th scope="col">Role</th>
                <th scope="col">Added</th>
                <th scope="col">
                  <span class="sr-only">Actions</span>
                </th>
              </tr>
            </thead>
            <tbody>
              {users.data.map((u) => (
                <tr key={u.name}>
                  <th scope="row" data-label="Name">{u.name}</th>
                  <td data-label="Role">{u.admin ? "admin" : "user"}</td>
                  <td data-label="Added">{ago(u.created_at)}</td>
                  <td class="row-actions">
                    {u.name !== me.name && u.name !== "admin" && (
                      <button
                        type="button"
                        class="small secondary"
                        disabled={busy}
                        onClick={async () => {
                          const role = u.admin ? "a plain user" : "an admin";
                          await run(`Making ${u.name} ${role}…`, `${u.name} is now ${role}`, () =>
                            api.call("PATCH", `/v1/users/${api.enc(u.name)}`, { admin: !u.admin }),
                          );
                          users.reload();
                        }}
                      >
                        {u.admin ? `Make ${u.name} a plain user` : `Make ${u.name} an admin`}
                      </button>
                    )}{" "}
                    {u.name !== me.name && (
                      <button
                        type="button"
                        class="small danger"
                        disabled={busy}
                        aria-label={`Remove user ${u.name}`}
                        onClick={async () => {
                          if (!confirm(`Remove user ${u.name}? Their token and sessions stop working at once. While they own workspaces the server refuses (hearth user rm --reassign-to hands them over).`)) return;
                          await run(`Removing ${u.name}…`, `${u.name} was removed`, () => api.call("DELETE", `/v1/users/${api.enc(u.name)}`));
                          users.reload();
                        }}
                      >
                        Remove
                      </button>
                    )}
                  </td>
                </tr>
              ))}
            </tbody>
          </table>
        </div>
      )}
      <h2>Add a user</h2>
      <form
        class="inline"
        onSubmit={async (e) => {
          e.preventDefault();
          setToken(undefined);
          await run(`Adding ${name}…`, `${name} was added`, async () => {
            const r = await api.call<{ user: api.User; token: string }>("POST", "/v1/users", { name: name.trim(), admin });
            if (r) setToken({ user: r.user.name, token: r.token });
          });
          setName("");
          users.reload();
        }}
      >
        <label for="user-name">Name</label>
        <input id="user-name" value={name} required pattern="[a-z0-9]([a-z0-9-]*[a-z0-9])?" onInput={(e) => setName((e.target as HTMLInputElement).value)} />
        <span class="check">
          <input id="user-admin" type="checkbox" checked={admin} onChange={(e) => setAdmin((e.target as HTMLInputElement).checked)} />
          <label for="user-admin">Admin</label>
        </span>
        <button type="submit" disabled={busy}>
          Add user
        </button>
      </form>
      <StatusLine p={p} />
      <Quotas />
      {token && (
        <div class="card">
          <p>
            {token.user}'s API token (shown once; give it to them for the CLI and the dashboard's sign-in):
          </p>
          <pre class="cmd">{token.token}</pre>
        </div>
      )}
    </>
  );
}

export function AdminImages() {
  const images = usePoll(() => api.get<api.Image[]>("/v1/images"), 10000);
  const { p, run, busy } = useAction();
  const [ref, setRef] = useState("");
  const [log, setLog] = useState<string[]>([]);
  return (
    <>
      <h1>Images</h1>
      {images.error && <p role="alert" class="status error">Cannot list the images: {images.error}</p>}
      {images.data && (
        <div class="table-wrap">
          <table>
            <thead>
              <tr>
                <th scope="col">Name</th>
                <th scope="col">Id</th>
                <th scope="col">Size</th>
                <th scope="col">Layers</th>
                <th scope="col">Loaded</th>
                <th scope="col">
                  <span class="sr-only">Actions</span>
                </th>
              </tr>
            </thead>
            <tbody>
              {images.data.map((i) => (
                <tr key={i.id}>
                  <th scope="row" data-label="Name">{i.names.join(", ") || "(unnamed)"}</th>
                  <td data-label="Id"><code>{i.id.slice(0, 12)}</code></td>
                  <td data-label="Size">{bytes(i.size)}</td>
                  <td data-label="Layers">{i.layers}</td>
                  <td data-label="Loaded">{ago(i.loaded_at)}</td>
                  <td>
                    <button
                      type="button"
                      class="small danger"
                      disabled={busy}
                      aria-label={`Remove image ${i.names[0] ?? i.id.slice(0, 12)}`}
                      onClick={async () => {
                        if (!confirm(`Remove image ${i.names[0] ?? i.id}?`)) return;
                        await run("Removing the image…", "Image removed", () => api.call("DELETE", `/v1/images/${api.enc(i.names[0] ?? i.id)}`));
                        images.reload();
                      }}
                    >
                      Remove
                    </button>
                  </td>
                </tr>
              ))}
            </tbody>
          </table>
        </div>
      )}
      <h2>Pull an image</h2>
      <form
        class="inline"
        onSubmit={async (e) => {
          e.preventDefault();
          setLog([]);
          await run(`Pulling ${ref}…`, `${ref} pulled`, () =>
            api.stream("POST", "/v1/images/pull", { reference: ref.trim() }, (l) => setLog((x) => [...x.slice(-200), l])),
          );
          images.reload();
        }}
      >
        <label for="pull-ref">Reference</label>
        <input id="pull-ref" value={ref} required placeholder="docker.io/library/debian:12" onInput={(e) => setRef((e.target as HTMLInputElement).value)} />
        <button type="submit" disabled={busy}>
          Pull
        </button>
      </form>
      <StatusLine p={p} />
      {log.length > 0 && <pre class="log">{log.join("\n")}</pre>}
    </>
  );
}
