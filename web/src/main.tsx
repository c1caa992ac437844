// The Hearth dashboard: a single page over the REST API, routed by the URL's hash
// (#/, #/new, #/w/NAME, #/w/NAME/terminal, #/account, #/audit, #/admin/users, #/admin/images).

import "@xterm/xterm/css/xterm.css";
import "./style.css";

import { render } from "preact";
import { useEffect, useState } from "preact/hooks";
import * as api from "./api";
import * as auth from "./auth";
import { Account } from "./account";
import { AdminImages, AdminUsers } from "./admin";
import { AuditLog } from "./audit";
import { NewWorkspace } from "./create";
import { SignIn } from "./signin";
import { TerminalPage } from "./terminal-page";
import { WorkspacePage } from "./workspace";
import { WorkspaceList } from "./workspaces";

function useRoute(): string[] {
  const parse = () =>
    location.hash
      .replace(/^#\/?/, "")
      .split("/")
      .filter(Boolean)
      .map((p) => decodeURIComponent(p));
  const [route, setRoute] = useState(parse());
  useEffect(() => {
    const on = () => setRoute(parse());
    addEventListener("hashchange", on);
    return () => removeEventListener("hashchange", on);
  }, []);
  return route;
}

function App() {
  const [ready, setReady] = useState(false);
  const [me, setMe] = useState<api.User | undefined>(undefined);
  const [meError, setMeError] = useState<string | undefined>(undefined);
  const route = useRoute();

  const loadMe = async () => {
    try {
      setMe(await api.get<api.User>("/v1/me"));
      setMeError(undefined);
    } catch (e) {
      setMe(undefined);
      if ((e as api.ApiError).status !== 401) setMeError((e as Error).message);
    }
  };

  useEffect(() => {
    api.setUnauthorizedHandler(() => setMe(undefined));
    auth.restore().then(async () => {
      if (auth.signedIn()) await loadMe();
      setReady(true);
    });
  }, []);

  useEffect(() => {
    const [page, name] = route;
    const title =
      page === "w" && name ? `${name} · Hearth` : page === "new" ? "New workspace · Hearth" : page === "admin" ? `Admin · Hearth` : "Hearth";
    document.title = me ? title : "Sign in · Hearth";
  }, [route, me]);

  if (!ready) return <p class="loading">Loading…</p>;
  if (!me) {
    return (
      <SignIn
        error={meError}
        onSignedIn={async () => {
          await loadMe();
        }}
      />
    );
  }

  const [page, a, b] = route;
  let body;
  if (page === "new") body = <NewWorkspace />;
  else if (page === "w" && a && b === "terminal") body = <TerminalPage name={a} />;
  else if (page === "w" && a) body = <WorkspacePage name={a} me={me} />;
  else if (page === "account") body = <Account me={me} />;
  else if (page === "audit") body = <AuditLog me={me} />;
  else if (page === "admin" && a === "users" && me.admin) body = <AdminUsers me={me} />;
  else if (page === "admin" && a === "images" && me.admin) body = <AdminImages />;
  else if (page && page !== "workspaces") body = <p role="alert">No such page: {location.hash}. <a href="#/">Back to your workspaces</a>.</p>;
  else body = <WorkspaceList me={me} />;

  const current = (h: string) => (location.hash === h || (h === "#/" && !location.hash) ? "page" : undefined);
  return (
    <>
      <a class="skip" href="#main" onClick={(e) => { e.preventDefault(); document.getElementById("main")?.focus(); }}>
        Skip to content
      </a>
      <header class="top">
        <a class="brand" href="#/">Hearth</a>
        <nav aria-label="Main">
          <a href="#/" aria-current={current("#/")}>Workspaces</a>
          <a href="#/new" aria-current={current("#/new")}>New workspace</a>
          {me.admin && <a href="#/admin/users" aria-current={current("#/admin/users")}>Users</a>}
          {me.admin && <a href="#/admin/images" aria-current={current("#/admin/images")}>Images</a>}
          {me.admin && <a href="#/audit" aria-current={current("#/audit")}>Audit log</a>}
        </nav>
        <div class="who">
          <a href="#/account" aria-current={current("#/account")}>
            {me.name}
            {me.admin ? " (admin)" : ""}
          </a>
          <button
            type="button"
            class="link"
            onClick={async () => {
              await auth.signOut();
              setMe(undefined);
              location.hash = "#/";
            }}
          >
            Sign out
          </button>
        </div>
      </header>
      <main id="main" tabIndex={-1}>
        {body}
      </main>
    </>
  );
}

const root = document.getElementById("app");
if (root) {
  root.textContent = "";
  render(<App />, root);
}
