// The Mesh console: a single-page app over the control plane's REST API, in plain JavaScript
// modules (no framework, no build step). Pages live in `pages/`; each exports `title` and
// `render(ctx, params)`, answering the node to show. Routing is by the URL's fragment
// (`#/devices`), so the control plane serves one page and needs no fallback route.

import * as api from "./api.js";
import { h, replace, notice } from "./dom.js";
import * as signIn from "./pages/sign-in.js";
import * as overview from "./pages/overview.js";
import * as devices from "./pages/devices.js";
import * as people from "./pages/people.js";
import * as workloads from "./pages/workloads.js";
import * as jobs from "./pages/jobs.js";
import * as credits from "./pages/credits.js";
import * as audit from "./pages/audit.js";
import * as playground from "./pages/playground.js";

const NETWORK_KEY = "mesh.network";

/** The pages in the navigation, in order: `[path, module, label]`. */
const PAGES = [
  ["overview", overview, "Overview"],
  ["devices", devices, "Devices"],
  ["people", people, "People"],
  ["workloads", workloads, "Workloads"],
  ["jobs", jobs, "Jobs"],
  ["credits", credits, "Credits"],
  ["audit", audit, "Audit log"],
  ["playground", playground, "Playground"],
];

/** Pages under another page: `[pattern, module]`, the pattern's `:name` parts as params. */
const DETAILS = [
  ["workloads/:hash", workloads.detail],
  ["jobs/:id", jobs.detail],
];

/** Who is signed in, and in which network: `null` until `/v1/me` answers. */
let session = null;
/** Cleanups the current page registered (timers, streams), run when it is left. */
let leaving = [];

const main = document.getElementById("main");
const nav = document.getElementById("nav");
const sessionBox = document.getElementById("session");

api.whenUnauthenticated((message) => {
  api.setToken(null);
  session = null;
  signIn.pendingMessage(message);
  go("sign-in");
});

function go(path) {
  if (location.hash !== `#/${path}`) location.hash = `#/${path}`;
  else route();
}

/** Whether the caller is an admin (or the owner) of `network`. */
function isAdmin(network) {
  return network?.role === "admin" || network?.role === "owner";
}

/** The current network (the one chosen, else the first). */
function currentNetwork() {
  if (!session || session.me.networks.length === 0) return null;
  const chosen = sessionStorage.getItem(NETWORK_KEY);
  return session.me.networks.find((n) => n.id === chosen) ?? session.me.networks[0];
}

async function loadSession() {
  if (!api.token()) return null;
  const me = await api.get("/v1/me");
  return { me };
}

function renderChrome(active) {
  const network = currentNetwork();
  if (!session) {
    replace(nav);
    replace(sessionBox);
    return;
  }
  replace(
    nav,
    h(
      "ul",
      {},
      PAGES.filter(([path]) => path !== "audit" || isAdmin(network)).map(([path, , label]) =>
        h("li", {}, h("a", { href: `#/${path}`, "aria-current": path === active ? "page" : null }, label)),
      ),
    ),
  );
  const children = [h("span", { class: "who" }, session.me.person.name)];
  if (session.me.networks.length > 1) {
    const select = h(
      "select",
      {
        id: "network-choice",
        "aria-label": "Network",
        onchange: () => {
          sessionStorage.setItem(NETWORK_KEY, select.value);
          route();
        },
      },
      session.me.networks.map((n) =>
        h("option", { value: n.id, selected: network && n.id === network.id }, `${n.name} (${n.role})`),
      ),
    );
    children.push(select);
  } else if (network) {
    children.push(h("span", { class: "badge" }, `${network.name} · ${network.role}`));
  }
  children.push(
    h("button", { type: "button", class: "secondary", id: "sign-out", onclick: signOut }, "Sign out"),
  );
  replace(sessionBox, children);
}

function signOut() {
  api.setToken(null);
  sessionStorage.removeItem(NETWORK_KEY);
  session = null;
  signIn.pendingMessage("Signed out.");
  go("sign-in");
}

function match(pattern, path) {
  const want = pattern.split("/");
  const got = path.split("/");
  if (want.length !== got.length) return null;
  const params = {};
  for (let i = 0; i < want.length; i += 1) {
    if (want[i].startsWith(":")) params[want[i].slice(1)] = decodeURIComponent(got[i]);
    else if (want[i] !== got[i]) return null;
  }
  return params;
}

let routing = 0;
async function route() {
  const turn = ++routing;
  for (const cleanup of leaving) cleanup();
  leaving = [];
  const path = location.hash.replace(/^#\/?/, "") || "overview";
  if (!session && api.token()) {
    try {
      session = await loadSession();
    } catch (e) {
      if (!(e instanceof api.ApiError) || e.status !== 401) {
        replace(main, notice("error", `Could not load your session: ${e.message}`));
        return;
      }
    }
  }
  if (turn !== routing) return;
  if (!session) {
    renderChrome(null);
    document.title = "Sign in · Mesh";
    replace(main, await signIn.render({ signedIn }));
    focusMain();
    return;
  }
  if (path === "sign-in") return go("overview");
  let page = null;
  let params = {};
  for (const [p, module] of PAGES) if (p === path) page = module;
  for (const [pattern, module] of DETAILS) {
    const found = match(pattern, path);
    if (found) [page, params] = [module, found];
  }
  const active = path.split("/")[0];
  renderChrome(active);
  const network = currentNetwork();
  if (!page) {
    replace(main, h("h1", {}, "Not found"), notice("error", `There is no page “${path}”.`));
    return;
  }
  if (!network) {
    replace(
      main,
      h("h1", {}, "No network yet"),
      notice("info", "You belong to no network. Create one with `mesh network create`, or ask an admin for an invite."),
    );
    return;
  }
  const ctx = {
    me: session.me.person,
    network,
    role: network.role,
    isAdmin: isAdmin(network),
    isOwner: network.role === "owner",
    go,
    rerender: () => route(),
    onLeave: (cleanup) => leaving.push(cleanup),
  };
  replace(main, h("p", { class: "empty", role: "status" }, "Loading…"));
  let node;
  try {
    node = await page.render(ctx, params);
  } catch (e) {
    node = h("div", {}, h("h1", {}, page.title ?? "Error"), notice("error", e.message));
  }
  if (turn !== routing) return;
  document.title = `${page.title ?? "Mesh"} · Mesh`;
  replace(main, node);
  focusMain();
}

function focusMain() {
  main.focus({ preventScroll: true });
}

async function signedIn(token) {
  api.setToken(token);
  session = await loadSession();
  go("overview");
}

window.addEventListener("hashchange", route);
route();
