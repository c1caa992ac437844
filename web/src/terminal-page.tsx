import { useEffect, useRef, useState } from "preact/hooks";
import * as api from "./api";
import { openTerminal, TerminalHandle } from "./terminal";

export function TerminalPage({ name }: { name: string }) {
  const el = useRef<HTMLDivElement>(null);
  const [status, setStatus] = useState("connecting…");
  const [ended, setEnded] = useState(false);
  const [session, setSession] = useState(0);
  useEffect(() => {
    if (!el.current) return;
    setEnded(false);
    let h: TerminalHandle | undefined = openTerminal(el.current, name, (s, end) => {
      setStatus(s);
      setEnded(end);
    });
    return () => {
      h?.close();
      h = undefined;
    };
  }, [name, session]);
  return (
    <>
      <div class="title-row">
        <h1>
          Terminal: <a href={`#/w/${api.enc(name)}`}>{name}</a>
        </h1>
        <p class={`status ${ended ? "error" : ""}`} role="status" aria-live="polite" id="term-status">
          {status}
        </p>
        {ended && (
          <button type="button" onClick={() => setSession((s) => s + 1)}>
            Reconnect
          </button>
        )}
      </div>
      <div class="terminal" ref={el} aria-label={`Shell in ${name}`} aria-describedby="term-status" key={session} />
    </>
  );
}
