import { useState } from "preact/hooks";
import * as api from "./api";
import { bytes, usePoll } from "./util";

interface AuditEntry {
  id: string;
  at: string;
  user?: string | null;
  action: string;
  target?: string | null;
  peer?: string | null;
  status?: number | null;
  ok: boolean;
  error?: string | null;
}

/** The audit log, newest first, filtered by user and time, paged with "Older". */
export function AuditLog({ me }: { me: api.User }) {
  const [user, setUser] = useState("");
  const [since, setSince] = useState("");
  const [filter, setFilter] = useState({ user: "", since: "" });
  const [before, setBefore] = useState<string[]>([]);
  const page = before[before.length - 1];
  const q = new URLSearchParams({ limit: "100" });
  if (filter.user) q.set("user", filter.user);
  if (filter.since) q.set("since", new Date(filter.since).toISOString());
  if (page) q.set("before", page);
  const log = usePoll(() => api.get<AuditEntry[]>(`/v1/audit?${q}`), page ? 600000 : 5000, [q.toString()]);
  return (
    <>
      <h1>{me.admin ? "Audit log" : "Your activity"}</h1>
      <form
        class="inline"
        onSubmit={(e) => {
          e.preventDefault();
          setBefore([]);
          setFilter({ user: user.trim(), since });
        }}
      >
        {me.admin && (
          <>
            <label for="audit-user">User</label>
            <input id="audit-user" value={user} onInput={(e) => setUser((e.target as HTMLInputElement).value)} />
          </>
        )}
        <label for="audit-since">Since</label>
        <input id="audit-since" type="datetime-local" value={since} onInput={(e) => setSince((e.target as HTMLInputElement).value)} />
        <button type="submit" class="small">
          Filter
        </button>
      </form>
      {log.error && <p role="alert" class="status error">Cannot read the audit log: {log.error}</p>}
      {log.data && log.data.length === 0 && <p>No entries.</p>}
      {log.data && log.data.length > 0 && (
        <div class="table-wrap">
          <table>
            <thead>
              <tr>
                <th scope="col">When</th>
                <th scope="col">Who</th>
                <th scope="col">What</th>
                <th scope="col">Target</th>
                <th scope="col">From</th>
                <th scope="col">Result</th>
              </tr>
            </thead>
            <tbody>
              {log.data.map((e) => (
                <tr key={e.id}>
                  <td data-label="When">{new Date(e.at).toLocaleString()}</td>
                  <td data-label="Who">{e.user ?? "(not signed in)"}</td>
                  <td data-label="What"><code>{e.action}</code></td>
                  <td data-label="Target">{e.target ?? ""}</td>
                  <td data-label="From">{e.peer ?? ""}</td>
                  <td data-label="Result" class={e.ok ? "" : "failed"}>
                    {e.ok ? "ok" : "failed"}
                    {e.status ? ` (${e.status})` : ""}
                    {e.error ? `: ${e.error}` : ""}
                  </td>
                </tr>
              ))}
            </tbody>
          </table>
        </div>
      )}
      <p class="actions">
        {before.length > 0 && (
          <button type="button" class="small secondary" onClick={() => setBefore(before.slice(0, -1))}>
            Newer
          </button>
        )}
        {log.data && log.data.length === 100 && (
          <button type="button" class="small secondary" onClick={() => setBefore([...before, log.data![log.data!.length - 1].id])}>
            Older
          </button>
        )}
      </p>
    </>
  );
}

export interface Quota {
  max_workspaces?: number | null;
  max_running?: number | null;
  memory_bytes?: number | null;
  disk_bytes?: number | null;
}

export interface UserQuota {
  user: string;
  source: "user" | "default";
  quota: Quota;
  usage: { workspaces: number; running: number; memory_bytes: number; disk_bytes: number };
}

const GiB = 1024 * 1024 * 1024;

/** "2 of 5 workspaces", or "2 workspaces (no limit)" when there is none. */
function use(used: string, max: number | null | undefined, what: string, fmt: (n: number) => string = String): string {
  return max === null || max === undefined ? `${used} ${what} (no limit)` : `${used} of ${fmt(max)} ${what}`;
}

/** "2 of 5 workspaces, 1 running (no limit), 1 GiB of 4 GiB memory, ..." */
export function quotaText(q: UserQuota): string {
  return [
    use(String(q.usage.workspaces), q.quota.max_workspaces, "workspaces"),
    use(String(q.usage.running), q.quota.max_running, "running"),
    use(bytes(q.usage.memory_bytes), q.quota.memory_bytes, "memory", bytes),
    use(bytes(q.usage.disk_bytes), q.quota.disk_bytes, "disk", bytes),
  ].join(", ");
}

/** A form for a whole quota (empty field: no limit); sizes in GiB. */
export function QuotaForm({ id, initial, busy, onSave, label }: { id: string; initial: Quota; busy: boolean; label: string; onSave: (q: Quota) => void }) {
  const gib = (n?: number | null) => (n === null || n === undefined ? "" : String(+(n / GiB).toFixed(2)));
  const [ws, setWs] = useState(initial.max_workspaces?.toString() ?? "");
  const [run, setRun] = useState(initial.max_running?.toString() ?? "");
  const [mem, setMem] = useState(gib(initial.memory_bytes));
  const [disk, setDisk] = useState(gib(initial.disk_bytes));
  const num = (v: string, scale = 1) => (v.trim() === "" ? null : Math.round(Number(v) * scale));
  const field = (key: string, text: string, v: string, set: (s: string) => void) => (
    <span class="field-inline">
      <label for={`${id}-${key}`}>{text}</label>
      <input id={`${id}-${key}`} inputMode="decimal" value={v} onInput={(e) => set((e.target as HTMLInputElement).value)} />
    </span>
  );
  return (
    <form
      class="inline quota"
      aria-label={label}
      onSubmit={(e) => {
        e.preventDefault();
        onSave({ max_workspaces: num(ws), max_running: num(run), memory_bytes: num(mem, GiB), disk_bytes: num(disk, GiB) });
      }}
    >
      {field("ws", "Workspaces", ws, setWs)}
      {field("run", "Running", run, setRun)}
      {field("mem", "Memory GiB", mem, setMem)}
      {field("disk", "Disk GiB", disk, setDisk)}
      <button type="submit" class="small" disabled={busy}>
        Save
      </button>
    </form>
  );
}
