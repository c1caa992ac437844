import { useState } from "preact/hooks";
import * as api from "./api";
import { ago, bytes, Card, duration, repoDir, StatusLine, useAction, usePoll } from "./util";
import { StateBadge } from "./workspaces";

export function WorkspacePage({ name, me }: { name: string; me: api.User }) {
  const path = `/v1/workspaces/${api.enc(name)}`;
  const ws = usePoll(() => api.get<api.Inspect>(`${path}/inspect`), 3000, [name]);
  const { p, run, busy } = useAction();
  const w = ws.data?.workspace;

  const act = async (busyText: string, doneText: string, f: () => Promise<unknown>) => {
    await run(busyText, doneText, f);
    ws.reload();
  };

  if (!w) {
    return (
      <>
        <h1>{name}</h1>
        {ws.error ? <p role="alert" class="status error">Cannot load {name}: {ws.error}</p> : <p role="status">Loading…</p>}
        <p>
          <a href="#/">Back to the workspaces</a>
        </p>
      </>
    );
  }
  const running = w.state === "running";
  const stopped = w.state === "stopped" || w.state === "failed" || w.state === "lost";
  const u = ws.data?.usage;
  return (
    <>
      <div class="title-row">
        <h1>
          {w.name} <StateBadge state={w.state} />
        </h1>
        <div class="actions" role="group" aria-label="Workspace actions">
          {running && (
            <a class="button" href={`#/w/${api.enc(w.name)}/terminal`}>
              Open terminal
            </a>
          )}
          <button type="button" disabled={busy || !stopped} onClick={() => act(`Starting ${w.name}…`, `${w.name} is running`, () => api.call("POST", `${path}/start`))}>
            Start
          </button>
          <button type="button" disabled={busy || !running} onClick={() => act(`Stopping ${w.name}…`, `${w.name} is stopped`, () => api.call("POST", `${path}/stop`))}>
            Stop
          </button>
          <button
            type="button"
            class="danger"
            disabled={busy}
            onClick={async () => {
              if (!confirm(`Remove workspace ${w.name}? Its snapshots stay restorable for the server's grace period.`)) return;
              const ok = await run(`Removing ${w.name}…`, `${w.name} was removed`, () => api.call("DELETE", path));
              if (ok) location.hash = "#/";
            }}
          >
            Remove
          </button>
        </div>
      </div>
      <StatusLine p={p} />
      {w.error && <p class="status error">Last error: {w.error}</p>}
      {w.stop_reason && !running && <p class="status">Stopped: {w.stop_reason}</p>}
      <div class="cards">
        <Card title="Details" id="details-h">
          <dl class="facts">
            <dt>Owner</dt>
            <dd>{w.owner}</dd>
            <dt>Image</dt>
            <dd>{w.image_name ?? w.image.slice(0, 12)}</dd>
            <dt>Repository</dt>
            <dd class="source">{w.source}</dd>
            {w.node && (
              <>
                <dt>Node</dt>
                <dd>{w.node}</dd>
              </>
            )}
            <dt>Last activity</dt>
            <dd>{ago(w.last_active ?? w.updated_at)}</dd>
            <dt>Idle timeout</dt>
            <dd>{duration(w.idle_timeout)}</dd>
            <dt>CPU</dt>
            <dd>
              {u?.cpu_percent != null ? `${u.cpu_percent.toFixed(1)} % ` : ""}
              (limit {w.limits.cpus_milli ? `${w.limits.cpus_milli / 1000} CPUs` : "none"})
            </dd>
            <dt>Memory</dt>
            <dd>
              {running && u ? `${bytes(u.memory_bytes)} of ` : ""}
              {bytes(w.limits.memory_bytes)}
            </dd>
            <dt>Disk</dt>
            <dd>
              {u ? `${bytes(u.disk_bytes)} of ${bytes(u.disk_size)}` : bytes(w.limits.disk_bytes)}
            </dd>
            <dt>Created</dt>
            <dd>{ago(w.created_at)}</dd>
          </dl>
        </Card>
        <Connect w={w} me={me} />
        <Ports name={w.name} running={running} />
        <Snapshots name={w.name} />
      </div>
      <Logs name={w.name} />
    </>
  );
}

function Connect({ w, me }: { w: api.Workspace; me: api.User }) {
  const ssh = usePoll(() => api.get<api.SshInfo>("/v1/ssh"), 60000);
  const info = ssh.data;
  const host = info?.address && info.address !== "0.0.0.0" && info.address !== "::" ? info.address : location.hostname;
  const dir = repoDir(w.source);
  return (
    <Card title="Connect" id="connect-h">
      {!info?.port ? (
        <p>This server runs no SSH gateway (hearth server --ssh-listen).</p>
      ) : (
        <>
          <p>Add your public key once, then connect with any SSH client:</p>
          <pre class="cmd">
            hearth ssh-key add ~/.ssh/id_ed25519.pub{"\n"}
            ssh -p {info.port} {w.name}@{host}
          </pre>
          <p>
            For VS Code (Remote - SSH), write the <code>hearth.{w.name}</code> host entry once with{" "}
            <code>hearth config-ssh</code>, then:
          </p>
          <p>
            <a class="button secondary" href={`vscode://vscode-remote/ssh-remote+hearth.${w.name}${dir}`}>
              Open in VS Code
            </a>
          </p>
          {me.name !== w.owner && <p class="help">SSH logs in as the workspace's owner's keys ({w.owner}).</p>}
        </>
      )}
    </Card>
  );
}

function Ports({ name, running }: { name: string; running: boolean }) {
  const path = `/v1/workspaces/${api.enc(name)}/ports`;
  const ports = usePoll(() => api.get<api.Port[]>(path), 5000, [name]);
  const { p, run, busy } = useAction();
  const [newPort, setNewPort] = useState("");
  // A private port's URL asks for an API token; signed in here, the server gives a
  // one-minute login link instead. The tab is opened at the click (popup blockers allow
  // that), then sent on, with no way back to this page (the app is the workspace's).
  const openPrivate = async (port: number) => {
    const tab = window.open("about:blank", "_blank");
    const ok = await run(`Opening port ${port}…`, `Port ${port} opened in a new tab`, async () => {
      const r = await api.call<{ url: string }>("POST", `${path}/${port}/login`);
      if (!r?.url) throw new Error("the server sent no link");
      if (tab) {
        tab.opener = null;
        tab.location.href = r.url;
      } else {
        location.href = r.url;
      }
    });
    if (!ok) tab?.close();
  };
  const setVisibility = async (port: number, visibility: string) => {
    await run(`Making port ${port} ${visibility}…`, `Port ${port} is ${visibility}`, () =>
      api.call("PUT", `${path}/${port}`, { visibility }),
    );
    ports.reload();
  };
  return (
    <Card title="Ports" id="ports-h">
      {ports.error && <p role="alert" class="status error">Cannot list the ports: {ports.error}</p>}
      {ports.data && ports.data.length === 0 && <p>{running ? "Nothing listens in the workspace yet." : "The workspace is not running."}</p>}
      {ports.data && ports.data.length > 0 && (
        <ul class="ports">
          {ports.data.map((pt) => (
            <li key={pt.port}>
              <span class="port">
                {pt.url ? (
                  <a
                    href={pt.url}
                    target="_blank"
                    rel="noopener noreferrer"
                    onClick={(e) => {
                      if (pt.visibility !== "private") return;
                      e.preventDefault();
                      openPrivate(pt.port);
                    }}
                  >
                    {pt.port}
                  </a>
                ) : (
                  pt.port
                )}
              </span>{" "}
              {pt.label && <span class="port-label">{pt.label}</span>}{" "}
              {pt.protocol === "https" && <span class="badge">https</span>}{" "}
              <span class="help">{pt.listening ? `listening on ${pt.addresses.join(", ")}` : "not listening"}</span>{" "}
              <span class={`badge vis-${pt.visibility}`}>{pt.visibility}</span>{" "}
              <button
                type="button"
                class="small"
                disabled={busy}
                onClick={() => setVisibility(pt.port, pt.visibility === "public" ? "private" : "public")}
              >
                Make {pt.visibility === "public" ? "private" : "public"}
              </button>
            </li>
          ))}
        </ul>
      )}
      <form
        class="inline"
        onSubmit={async (e) => {
          e.preventDefault();
          const n = Number(newPort);
          if (!Number.isInteger(n) || n < 1 || n > 65535) {
            await run("Sharing the port…", "", () => Promise.reject(new Error("a port is a number from 1 to 65535")));
            return;
          }
          await setVisibility(n, "public");
          setNewPort("");
        }}
      >
        <label for="share-port">Share a port publicly</label>
        <input id="share-port" inputMode="numeric" value={newPort} onInput={(e) => setNewPort((e.target as HTMLInputElement).value)} />
        <button type="submit" class="small" disabled={busy}>
          Share
        </button>
      </form>
      <p class="help">
        Private ports open only for you (from here you are logged in to them; elsewhere their page asks for an API token, made on{" "}
        <a href="#/account">your account page</a>). Public ones open for anyone.
      </p>
      <StatusLine p={p} />
    </Card>
  );
}

function Snapshots({ name }: { name: string }) {
  const path = `/v1/workspaces/${api.enc(name)}/snapshots`;
  const snaps = usePoll(() => api.get<api.Snapshot[]>(path), 15000, [name]);
  const { p, run, busy } = useAction();
  const [forkOf, setForkOf] = useState<string | undefined>(undefined);
  const [forkName, setForkName] = useState("");
  return (
    <Card title="Snapshots" id="snaps-h">
      <button
        type="button"
        disabled={busy}
        onClick={async () => {
          await run("Taking a snapshot…", "Snapshot taken", () => api.call("POST", path));
          snaps.reload();
        }}
      >
        Take a snapshot
      </button>
      {snaps.error && <p role="alert" class="status error">Cannot list the snapshots: {snaps.error}</p>}
      {snaps.data && snaps.data.length === 0 && <p>No snapshots yet.</p>}
      {snaps.data && snaps.data.length > 0 && (
        <ul class="snapshots">
          {snaps.data.map((s) => (
            <li key={s.id}>
              <code>{s.id.slice(0, 12)}</code> {ago(s.time)}, {bytes(s.size)} in {s.files} files ({bytes(s.new_bytes)} new){" "}
              <button type="button" class="small" disabled={busy} onClick={() => setForkOf(s.id)} aria-label={`Fork snapshot ${s.id.slice(0, 12)}`}>
                Fork
              </button>
            </li>
          ))}
        </ul>
      )}
      {forkOf && (
        <form
          class="inline"
          onSubmit={async (e) => {
            e.preventDefault();
            const ok = await run(`Forking into ${forkName}…`, `Forked into ${forkName}`, () =>
              api.call("POST", `/v1/workspaces/${api.enc(name)}/fork`, { snapshot: forkOf, name: forkName.trim() }),
            );
            if (ok) location.hash = `#/w/${api.enc(forkName.trim())}`;
          }}
        >
          <label for="fork-name">New workspace from {forkOf.slice(0, 12)}</label>
          <input id="fork-name" value={forkName} onInput={(e) => setForkName((e.target as HTMLInputElement).value)} required />
          <button type="submit" class="small" disabled={busy}>
            Fork
          </button>
        </form>
      )}
      <StatusLine p={p} />
    </Card>
  );
}

function Logs({ name }: { name: string }) {
  const logs = usePoll(() => api.text(`/v1/workspaces/${api.enc(name)}/logs`), 5000, [name]);
  return (
    <section class="card wide" aria-labelledby="logs-h">
      <h2 id="logs-h">Logs</h2>
      {logs.error && <p role="alert" class="status error">Cannot read the logs: {logs.error}</p>}
      <pre class="log" tabIndex={0} aria-label="Console output of the workspace">
        {logs.data?.slice(-64 * 1024) || "(no output yet)"}
      </pre>
    </section>
  );
}
