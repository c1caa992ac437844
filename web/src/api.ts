// Typed calls to the Hearth REST API (the same one the CLI uses; see /v1/openapi.json).

import { authHeaders, errorText, forget } from "./auth";

export type State =
  | "creating" | "starting" | "running" | "stopping" | "stopped" | "removing" | "failed" | "lost";

export interface Limits {
  memory_bytes: number;
  pids: number;
  cpu_weight: number;
  disk_bytes: number;
  cpus_milli: number;
}

export interface Workspace {
  id: string;
  name: string;
  owner: string;
  image: string;
  image_name?: string | null;
  source: string;
  state: State;
  error?: string | null;
  ip?: string | null;
  paused?: string | null;
  limits: Limits;
  last_snapshot?: string | null;
  last_snapshot_at?: string | null;
  node?: string | null;
  idle_timeout: number;
  last_active?: string | null;
  stop_reason?: string | null;
  created_at: string;
  updated_at: string;
}

export interface Usage {
  cpu_percent?: number | null;
  memory_bytes?: number | null;
  disk_bytes: number;
  disk_size: number;
  pids?: number | null;
}

export interface Inspect {
  workspace: Workspace;
  usage: Usage;
}

export interface Image {
  id: string;
  names: string[];
  size: number;
  layers: number;
  loaded_at: string;
}

export interface Snapshot {
  id: string;
  time: number;
  parent?: string | null;
  size: number;
  files: number;
  new_bytes: number;
}

export interface Port {
  port: number;
  visibility: "private" | "public";
  listening: boolean;
  /** Named by the devcontainer.json's forwardPorts (listed while nothing listens). */
  forwarded?: boolean;
  /** Its portsAttributes label. */
  label?: string;
  protocol?: "http" | "https";
  addresses: string[];
  url?: string;
}

export interface User {
  name: string;
  admin: boolean;
  created_at: string;
}

export interface SshInfo {
  port?: number | null;
  address?: string | null;
  host_key?: string | null;
}

export class ApiError extends Error {
  constructor(message: string, readonly status: number) {
    super(message);
  }
}

/** Called when the server says the credentials are no longer good (HTTP 401). */
let onUnauthorized: () => void = () => undefined;
export function setUnauthorizedHandler(f: () => void): void {
  onUnauthorized = f;
}

async function send(method: string, path: string, body?: unknown): Promise<Response> {
  const mutating = method !== "GET";
  const headers: Record<string, string> = { ...authHeaders(mutating) };
  if (body !== undefined) headers["Content-Type"] = "application/json";
  let r: Response;
  try {
    r = await fetch(path, {
      method,
      headers,
      credentials: "same-origin",
      body: body === undefined ? undefined : JSON.stringify(body),
    });
  } catch (e) {
    throw new ApiError(`cannot reach the Hearth server: ${(e as Error).message}`, 0);
  }
  if (!r.ok) {
    const msg = await errorText(r, `${method} ${path} failed`);
    if (r.status === 401) {
      forget();
      onUnauthorized();
    }
    throw new ApiError(msg, r.status);
  }
  return r;
}

export async function get<T>(path: string): Promise<T> {
  return (await send("GET", path)).json();
}

export async function call<T = unknown>(method: string, path: string, body?: unknown): Promise<T | undefined> {
  const r = await send(method, path, body);
  if (r.status === 204) return undefined;
  const text = await r.text();
  return text ? (JSON.parse(text) as T) : undefined;
}

export async function text(path: string): Promise<string> {
  const r = await send("GET", path);
  return new TextDecoder().decode(await r.arrayBuffer());
}

/**
 * A long operation answered as ndjson (progress lines, then a result or an error line):
 * each progress line goes to `onProgress`; resolves with the result, throws the error.
 */
export async function stream<T>(method: string, path: string, body: unknown, onProgress: (line: string) => void): Promise<T> {
  const r = await send(method, path, body);
  if (!r.body) throw new ApiError("the server sent no body", r.status);
  const reader = r.body.pipeThrough(new TextDecoderStream()).getReader();
  let buf = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (value) buf += value;
    let nl: number;
    while ((nl = buf.indexOf("\n")) >= 0) {
      const line = buf.slice(0, nl).trim();
      buf = buf.slice(nl + 1);
      if (!line) continue;
      let parsed: { progress?: string; result?: T; error?: { message: string } };
      try {
        parsed = JSON.parse(line);
      } catch {
        onProgress(line);
        continue;
      }
      if (parsed.progress !== undefined) onProgress(parsed.progress);
      else if (parsed.error) throw new ApiError(parsed.error.message, r.status);
      else if ("result" in parsed) return parsed.result as T;
    }
    if (done) throw new ApiError("the server ended the stream without a result (see the server log)", r.status);
  }
}

export const enc = encodeURIComponent;
