// The browser terminal: xterm.js over the exec WebSocket, the same PTY sessions
// `hearth shell` opens (frame format: crates/hearth-api, `ClientFrame`/`ServerFrame`).
// The socket is authenticated by the session cookie the browser sends with it.

import { FitAddon } from "@xterm/addon-fit";
import { Terminal } from "@xterm/xterm";

/** What `hearth shell` runs: bash as a login shell where there is one, else sh. */
const SHELL = "if command -v bash >/dev/null 2>&1; then exec bash -l; else exec sh -l; fi";

const STDIN = 0;
const RESIZE = 2;
const STDOUT = 1;
const STDERR = 2;
const EXIT = 3;
const ERROR = 4;

export interface TerminalHandle {
  close(): void;
}

/**
 * Opens a shell in workspace `name` inside `el`. `onStatus` gets each change in words
 * (connecting, connected, exited with code N, the server's error).
 */
export function openTerminal(el: HTMLElement, name: string, onStatus: (s: string, ended: boolean) => void): TerminalHandle {
  const term = new Terminal({
    cursorBlink: true,
    fontFamily: "DejaVu Sans Mono, Menlo, Consolas, monospace",
    fontSize: 14,
    scrollback: 5000,
    theme: { background: "#111417", foreground: "#e8eaed" },
  });
  const fit = new FitAddon();
  term.loadAddon(fit);
  term.open(el);
  fit.fit();
  onStatus("connecting…", false);
  const proto = location.protocol === "https:" ? "wss:" : "ws:";
  const ws = new WebSocket(`${proto}//${location.host}/v1/workspaces/${encodeURIComponent(name)}/exec`);
  ws.binaryType = "arraybuffer";
  const encoder = new TextEncoder();
  let ended = false;

  const frame = (tag: number, payload: Uint8Array) => {
    const out = new Uint8Array(payload.length + 1);
    out[0] = tag;
    out.set(payload, 1);
    if (ws.readyState === WebSocket.OPEN) ws.send(out);
  };
  const sendSize = () => {
    const p = new Uint8Array(4);
    const v = new DataView(p.buffer);
    v.setUint16(0, term.rows);
    v.setUint16(2, term.cols);
    frame(RESIZE, p);
  };

  ws.onopen = () => {
    ws.send(
      JSON.stringify({
        argv: ["/bin/sh", "-c", SHELL],
        env: [["TERM", "xterm-256color"]],
        tty: true,
        rows: term.rows,
        cols: term.cols,
      }),
    );
    onStatus("connected", false);
    term.focus();
  };
  ws.onmessage = (ev) => {
    if (!(ev.data instanceof ArrayBuffer)) return;
    const data = new Uint8Array(ev.data);
    if (data.length === 0) return;
    const body = data.subarray(1);
    switch (data[0]) {
      case STDOUT:
      case STDERR:
        term.write(body);
        break;
      case EXIT: {
        const code = body.length === 4 ? new DataView(body.buffer, body.byteOffset, 4).getInt32(0) : -1;
        ended = true;
        onStatus(`the shell exited with code ${code}`, true);
        break;
      }
      case ERROR:
        ended = true;
        onStatus(`error: ${new TextDecoder().decode(body)}`, true);
        break;
    }
  };
  ws.onerror = () => {
    if (!ended) onStatus("error: the terminal connection failed (is the workspace running?)", true);
    ended = true;
  };
  ws.onclose = (ev) => {
    if (!ended) onStatus(`disconnected${ev.reason ? `: ${ev.reason}` : ""}`, true);
    ended = true;
  };

  const input = term.onData((d) => frame(STDIN, encoder.encode(d)));
  const binary = term.onBinary((d) => frame(STDIN, Uint8Array.from(d, (c) => c.charCodeAt(0) & 0xff)));
  const resized = term.onResize(() => sendSize());
  const observer = new ResizeObserver(() => {
    try {
      fit.fit();
    } catch {
      // the element is gone
    }
  });
  observer.observe(el);

  return {
    close() {
      observer.disconnect();
      input.dispose();
      binary.dispose();
      resized.dispose();
      ws.close();
      term.dispose();
    },
  };
}
