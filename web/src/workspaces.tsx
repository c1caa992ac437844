import * as api from "./api";
import { ago, bytes, usePoll } from "./util";

/** One inspect per running workspace, for its live CPU, memory and disk use. */
async function loadAll(): Promise<{ list: api.Workspace[]; usage: Record<string, api.Usage> }> {
  const list = await api.get<api.Workspace[]>("/v1/workspaces");
  const usage: Record<string, api.Usage> = {};
  await Promise.all(
    list
      .filter((w) => w.state === "running")
      .map(async (w) => {
        try {
          usage[w.name] = (await api.get<api.Inspect>(`/v1/workspaces/${api.enc(w.name)}/inspect`)).usage;
        } catch {
          // gone or stopped since the list: shown without usage
        }
      }),
  );
  return { list, usage };
}

export function StateBadge({ state }: { state: api.State }) {
  return <span class={`badge state-${state}`}>{state}</span>;
}

export function WorkspaceList({ me }: { me: api.User }) {
  const { data, error } = usePoll(loadAll, 3000);
  return (
    <>
      <div class="title-row">
        <h1>{me.admin ? "All workspaces" : "My workspaces"}</h1>
        <a class="button" href="#/new">New workspace</a>
      </div>
      {error && <p role="alert" class="status error">Cannot load the workspaces: {error}</p>}
      {!data && !error && <p role="status">Loading workspaces…</p>}
      {data && data.list.length === 0 && (
        <p>
          No workspaces yet. <a href="#/new">Create one from a repository</a>.
        </p>
      )}
      {data && data.list.length > 0 && (
        <div class="table-wrap">
          <table class="workspaces">
            <caption class="sr-only">Workspaces, updated every few seconds</caption>
            <thead>
              <tr>
                <th scope="col">Name</th>
                <th scope="col">State</th>
                <th scope="col">Image</th>
                <th scope="col">Repository</th>
                <th scope="col">Last activity</th>
                <th scope="col">CPU</th>
                <th scope="col">Memory</th>
                <th scope="col">Disk</th>
              </tr>
            </thead>
            <tbody>
              {data.list.map((w) => {
                const u = data.usage[w.name];
                return (
                  <tr key={w.id} data-workspace={w.name}>
                    <th scope="row" data-label="Name">
                      <a href={`#/w/${api.enc(w.name)}`}>{w.name}</a>
                      {me.admin && w.owner !== me.name && <span class="owner"> ({w.owner})</span>}
                    </th>
                    <td data-label="State">
                      <StateBadge state={w.state} />
                    </td>
                    <td data-label="Image">{w.image_name ?? w.image.slice(0, 12)}</td>
                    <td data-label="Repository" class="source">{w.source}</td>
                    <td data-label="Last activity">{ago(w.last_active ?? w.updated_at)}</td>
                    <td data-label="CPU">{u?.cpu_percent != null ? `${u.cpu_percent.toFixed(1)} %` : "–"}</td>
                    <td data-label="Memory">
                      {u ? `${bytes(u.memory_bytes)} / ${bytes(w.limits.memory_bytes)}` : "–"}
                    </td>
                    <td data-label="Disk">{u ? `${bytes(u.disk_bytes)} / ${bytes(u.disk_size)}` : bytes(w.limits.disk_bytes)}</td>
                  </tr>
                );
              })}
            </tbody>
          </table>
        </div>
      )}
    </>
  );
}
