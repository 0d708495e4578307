// The audit log (admins): who did what, newest first, a page at a time.

import * as api from "../api.js";
import { h, replace, table, notice, when } from "../dom.js";

export const title = "Audit log";

/** The columns of an audit table; `names` shows people's and devices' ids as names. */
export function auditColumns(names) {
  const who = (id) =>
    names.has(id)
      ? h("span", {}, names.get(id), h("span", { class: "mono hint" }, ` ${id.slice(0, 12)}…`))
      : h("span", { class: "mono" }, id);
  return [
    ["When", (e) => when(e.at_ms)],
    ["Who", (e) => who(e.actor)],
    ["What", (e) => e.action],
    ["Detail", (e) => e.detail],
  ];
}

const LIMIT = 25;

export async function render(ctx) {
  const n = ctx.network.id;
  if (!ctx.isAdmin) {
    return h("div", {}, h("h1", {}, "Audit log"), notice("info", "The audit log is for the network's admins."));
  }
  const box = h("div", { id: "audit-list" });
  // Cursors of the pages seen so far: `cursors[i]` starts page i (`null`: the newest).
  const cursors = [null];
  const names = await api.directory(n);
  let page = 0;

  async function draw() {
    let entries;
    try {
      entries = await api.get(`/v1/networks/${n}/audit`, { limit: LIMIT, before: cursors[page] ?? undefined });
    } catch (e) {
      replace(box, notice("error", e.message));
      return;
    }
    const last = entries[entries.length - 1];
    if (entries.length === LIMIT && last) cursors[page + 1] = `${last.at_ms}:${last.id}`;
    const more = entries.length === LIMIT;
    replace(
      box,
      table(
        "Audit log",
        auditColumns(names),
        entries,
        page === 0 ? "Nothing has happened yet." : "No older events.",
      ),
      h(
        "div",
        { class: "row pager" },
        h("button", { type: "button", class: "secondary", id: "audit-newer", disabled: page === 0, onclick: () => { page -= 1; draw(); } }, "Newer"),
        h("span", {}, `Page ${page + 1}`),
        h("button", { type: "button", class: "secondary", id: "audit-older", disabled: !more, onclick: () => { page += 1; draw(); } }, "Older"),
      ),
    );
  }

  await draw();
  return h("div", {}, h("h1", {}, "Audit log"), box);
}
