// Small shared pieces: formatting, the polling hook and the progress/error line.

import type { ComponentChildren } from "preact";
import { useEffect, useRef, useState } from "preact/hooks";

export function bytes(n?: number | null): string {
  if (n === undefined || n === null) return "–";
  const units = ["B", "KiB", "MiB", "GiB", "TiB"];
  let v = n;
  let i = 0;
  while (v >= 1024 && i < units.length - 1) {
    v /= 1024;
    i++;
  }
  return `${v < 10 && i > 0 ? v.toFixed(1) : Math.round(v)} ${units[i]}`;
}

export function ago(iso?: string | number | null): string {
  if (iso === undefined || iso === null) return "never";
  const t = typeof iso === "number" ? iso * 1000 : Date.parse(iso);
  if (Number.isNaN(t)) return String(iso);
  const s = Math.max(0, Math.round((Date.now() - t) / 1000));
  if (s < 60) return `${s}s ago`;
  if (s < 3600) return `${Math.round(s / 60)} min ago`;
  if (s < 86400) return `${Math.round(s / 3600)} h ago`;
  return `${Math.round(s / 86400)} days ago`;
}

export function duration(secs: number): string {
  if (secs === 0) return "never";
  if (secs % 3600 === 0) return `${secs / 3600} h`;
  if (secs % 60 === 0) return `${secs / 60} min`;
  return `${secs} s`;
}

/** Repository directory inside a workspace: /workspace/<repo name>. */
export function repoDir(source: string): string {
  const last = source.replace(/\/+$/, "").split(/[/:]/).pop() ?? "";
  const name = last.replace(/\.git$/, "");
  return name ? `/workspace/${name}` : "/workspace";
}

/**
 * Loads `load()` now and every `everyMs` while mounted (live updates without reload);
 * `reload()` asks again at once (after an action).
 */
export function usePoll<T>(load: () => Promise<T>, everyMs: number, deps: unknown[] = []) {
  const [data, setData] = useState<T | undefined>(undefined);
  const [error, setError] = useState<string | undefined>(undefined);
  const tick = useRef(0);
  const [nonce, setNonce] = useState(0);
  useEffect(() => {
    let live = true;
    let timer: number | undefined;
    const run = async () => {
      const mine = ++tick.current;
      try {
        const d = await load();
        if (live && mine === tick.current) {
          setData(d);
          setError(undefined);
        }
      } catch (e) {
        if (live) setError((e as Error).message);
      }
      if (live) timer = window.setTimeout(run, everyMs);
    };
    run();
    return () => {
      live = false;
      if (timer !== undefined) clearTimeout(timer);
    };
  }, [...deps, nonce]);
  return { data, error, reload: () => setNonce((n) => n + 1) };
}

export type Progress = { kind: "idle" } | { kind: "busy"; what: string } | { kind: "done"; what: string } | { kind: "error"; what: string };

/** A line saying what an action is doing, did, or why it failed; read out by screen readers. */
export function StatusLine({ p }: { p: Progress }) {
  if (p.kind === "idle") return <p class="status" role="status" aria-live="polite" />;
  if (p.kind === "error")
    return (
      <p class="status error" role="alert">
        {p.what}
      </p>
    );
  return (
    <p class={`status ${p.kind}`} role="status" aria-live="polite">
      {p.kind === "busy" && <span class="spinner" aria-hidden="true" />}
      {p.what}
    </p>
  );
}

/** Runs an action with its progress shown: "busy" text, then "done" text or the error. */
export function useAction() {
  const [p, setP] = useState<Progress>({ kind: "idle" });
  const run = async (busy: string, done: string, f: () => Promise<unknown>): Promise<boolean> => {
    setP({ kind: "busy", what: busy });
    try {
      await f();
      setP({ kind: "done", what: done });
      return true;
    } catch (e) {
      setP({ kind: "error", what: `${busy.replace(/…$/, "")} failed: ${(e as Error).message}` });
      return false;
    }
  };
  return { p, setP, run, busy: p.kind === "busy" };
}

export function Card({ title, children, id }: { title: string; children: ComponentChildren; id?: string }) {
  return (
    <section class="card" aria-labelledby={id}>
      <h2 id={id}>{title}</h2>
      {children}
    </section>
  );
}
