import { useEffect, useRef, useState } from "preact/hooks";
import * as api from "./api";
import { StatusLine, useAction } from "./util";

const GiB = 1024 * 1024 * 1024;

/** A positive number from a form field, or undefined when empty. */
function num(v: string, what: string): number | undefined {
  if (v.trim() === "") return undefined;
  const n = Number(v);
  if (!Number.isFinite(n) || n < 0) throw new Error(`${what} must be a positive number`);
  return n;
}

export function NewWorkspace() {
  const [images, setImages] = useState<api.Image[]>([]);
  const [source, setSource] = useState("");
  const [name, setName] = useState("");
  const [branch, setBranch] = useState("");
  const [useImage, setUseImage] = useState(false);
  const [image, setImage] = useState("");
  const [memory, setMemory] = useState("");
  const [cpus, setCpus] = useState("");
  const [disk, setDisk] = useState("");
  const [idle, setIdle] = useState("");
  const [log, setLog] = useState<string[]>([]);
  const [created, setCreated] = useState<api.Workspace | undefined>(undefined);
  const { p, run, busy } = useAction();
  const logEl = useRef<HTMLPreElement>(null);

  useEffect(() => {
    api.get<api.Image[]>("/v1/images").then(setImages, () => setImages([]));
  }, []);
  useEffect(() => {
    if (logEl.current) logEl.current.scrollTop = logEl.current.scrollHeight;
  }, [log]);

  const submit = async (e: Event) => {
    e.preventDefault();
    setLog([]);
    setCreated(undefined);
    await run("Creating the workspace…", "Workspace created and running", async () => {
      if (!source.trim()) throw new Error("give a repository: a git URL (or, for admins, a path on the server)");
      const mem = num(memory, "Memory");
      const cpu = num(cpus, "CPUs");
      const dsk = num(disk, "Disk");
      const idl = num(idle, "Idle timeout");
      const body: Record<string, unknown> = {
        source: source.trim(),
        limits: {
          memory_bytes: mem !== undefined ? Math.round(mem * GiB) : undefined,
          cpus_milli: cpu !== undefined ? Math.round(cpu * 1000) : undefined,
          disk_bytes: dsk !== undefined ? Math.round(dsk * GiB) : undefined,
        },
      };
      if (name.trim()) body.name = name.trim();
      if (branch.trim()) body.branch = branch.trim();
      if (useImage && image) body.image = image;
      if (idl !== undefined) body.idle_timeout = Math.round(idl * 60);
      const ws = await api.stream<api.Workspace>("POST", "/v1/workspaces", body, (line) =>
        setLog((l) => [...l, line]),
      );
      setCreated(ws);
    });
  };

  const field = (id: string, label: string, value: string, set: (v: string) => void, help?: string, extra: Record<string, unknown> = {}) => (
    <div class="field">
      <label for={id}>{label}</label>
      <input
        id={id}
        name={id}
        value={value}
        onInput={(e) => set((e.target as HTMLInputElement).value)}
        aria-describedby={help ? `${id}-help` : undefined}
        {...extra}
      />
      {help && (
        <p class="help" id={`${id}-help`}>
          {help}
        </p>
      )}
    </div>
  );

  return (
    <>
      <h1>New workspace</h1>
      <form class="create" onSubmit={submit}>
        {field("source", "Repository", source, setSource, "A git URL (https://…, git@…); admins may also give the absolute path of a repository on the server.", { required: true, spellcheck: false })}
        {field("name", "Name (optional)", name, setName, "Lowercase letters, digits and '-'; the repository's name when empty.", { pattern: "[a-z0-9]([a-z0-9-]*[a-z0-9])?", spellcheck: false })}
        {field("branch", "Branch (optional)", branch, setBranch, "The repository's default branch when empty.")}
        <fieldset>
          <legend>Environment</legend>
          <div class="radio">
            <input type="radio" id="env-dc" name="env" checked={!useImage} onChange={() => setUseImage(false)} />
            <label for="env-dc">The repository's devcontainer.json (or the server's default image)</label>
          </div>
          <div class="radio">
            <input type="radio" id="env-image" name="env" checked={useImage} onChange={() => setUseImage(true)} />
            <label for="env-image">An image</label>
          </div>
          {useImage && (
            <div class="field">
              <label for="image">Image</label>
              <select id="image" value={image} onChange={(e) => setImage((e.target as HTMLSelectElement).value)}>
                <option value="">Choose an image</option>
                {images.map((i) => (
                  <option key={i.id} value={i.names[0] ?? i.id}>
                    {i.names[0] ?? i.id.slice(0, 12)}
                  </option>
                ))}
              </select>
            </div>
          )}
        </fieldset>
        <fieldset>
          <legend>Limits (empty: the server's defaults)</legend>
          <div class="grid">
            {field("memory", "Memory (GiB)", memory, setMemory, undefined, { inputMode: "decimal" })}
            {field("cpus", "CPUs", cpus, setCpus, undefined, { inputMode: "decimal" })}
            {field("disk", "Disk (GiB)", disk, setDisk, undefined, { inputMode: "decimal" })}
            {field("idle", "Idle timeout (minutes, 0: never)", idle, setIdle, undefined, { inputMode: "numeric" })}
          </div>
        </fieldset>
        <button type="submit" disabled={busy}>
          Create workspace
        </button>
      </form>
      <StatusLine p={p} />
      {(log.length > 0 || busy) && (
        <section aria-labelledby="log-h">
          <h2 id="log-h">Creation log</h2>
          <pre class="log" ref={logEl} tabIndex={0} aria-live="polite">
            {log.join("\n")}
          </pre>
        </section>
      )}
      {created && (
        <p>
          <a class="button" href={`#/w/${api.enc(created.name)}`}>
            Open {created.name}
          </a>{" "}
          <a class="button secondary" href={`#/w/${api.enc(created.name)}/terminal`}>
            Open a terminal
          </a>
        </p>
      )}
    </>
  );
}
